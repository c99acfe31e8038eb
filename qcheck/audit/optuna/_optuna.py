"""Optuna, imported only where an audit uses it (a clear message when it is missing), and quiet while it runs."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qcheck.errors import require


def require_optuna() -> Any:
    """The optuna module, or MissingDependencyError naming the audit that needs it."""
    return require("optuna", "the Optuna audit")


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO logs and warnings off while the audit runs or loads its studies."""
    optuna = require_optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"optuna\..*")
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)
