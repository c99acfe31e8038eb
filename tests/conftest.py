"""Project test configuration: offline hub, deterministic threads, the hypothesis `ci` profile by default."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from qcheck.strategies import load_profile

load_profile("ci")

pytest_plugins = ["pytester"]
