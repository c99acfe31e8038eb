"""The scale of a proportion column: fractions in [0, 1] or percentages in [0, 100], read from the column itself."""
from __future__ import annotations

import numpy as np

FRACTION, PERCENT = 1.0, 100.0


def proportion_scale(values: np.ndarray, unit: str = "") -> float | None:
    """1.0 when the column is written as fractions, 100.0 as percentages, None when neither fits.

    A '%' unit decides. Otherwise the median of the finite values does: at most 1 -> fractions, at most 100 ->
    percentages. The median, not the maximum, so that one impossible cell (170.5 among values near 71) cannot
    change the scale its neighbours establish.
    """
    if unit == "%":
        return PERCENT
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return None
    middle = float(np.median(finite))
    if middle <= 1.0:
        return FRACTION
    if middle <= 100.0:
        return PERCENT
    return None
