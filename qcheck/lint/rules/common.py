"""Small helpers shared by rules: number formatting, print resolution, interval columns, row selections."""
from __future__ import annotations

import math

import numpy as np

from qcheck.lint.cells import resolution
from qcheck.lint.view import TableView

__all__ = ["are", "distinct_models", "fmt", "interval_columns", "resolution", "row_sizes"]


def fmt(value: float, digits: int = 4) -> str:
    """A short human form of a float ('0.8233', '1.8e-04', 'NaN')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.2g}" if digits <= 2 else f"{value:.{digits - 2}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def interval_columns(view: TableView, column: str) -> tuple[str, str] | None:
    """The (low, high) interval columns that belong to `column` (e.g. ppl_low / ppl_high), if present."""
    names = set(view.table.columns)
    for low, high in (("_low", "_high"), ("_lo", "_hi"), ("_ci_low", "_ci_high"), ("_lower", "_upper")):
        if column + low in names and column + high in names:
            return column + low, column + high
    return None


def row_sizes(view: TableView) -> np.ndarray:
    """Sample count per row from the n column (NaN where unknown)."""
    values = view.values("n")
    return values if values is not None else np.full(view.table.n_rows, math.nan)


def distinct_models(view: TableView, rows: np.ndarray) -> int:
    """How many distinct config/model labels the rows carry (0 when the table has no such column)."""
    return len({view.identity[int(r)] for r in rows if view.identity[int(r)]})


def are(rows: object) -> str:
    """'is' for one row, 'are' for several (for messages)."""
    return "is" if len(rows) == 1 else "are"  # type: ignore[arg-type]
