"""Where the benchmark scripts write their figures: `<stem>.json` and `<stem>.md` in one folder, atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qcheck.report import atomic_write_text


def save(folder: str | None, stem: str, data: Any, markdown: str) -> None:
    """Write `data` as JSON and `markdown` beside it under `folder` (nothing when folder is None)."""
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=2, default=str))
    atomic_write_text(out / f"{stem}.md", markdown if markdown.endswith("\n") else markdown + "\n")
