"""The scale of a proportion column: fractions in [0, 1] or percentages in [0, 100], read from the column itself."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from qcheck.lint.tables import Table

FRACTION, PERCENT = 1.0, 100.0
MAX_DENOMINATOR = 10_000
"""Largest sample count recognised from a full-precision float alone (0.3333333333333333 -> 1/3 steps); above it a
float's digits are taken at face value."""


def proportion_scale(values: np.ndarray, unit: str = "", declared: float | None = None) -> float | None:
    """1.0 when the column is written as fractions, 100.0 as percentages, None when neither fits.

    A scale the reader declared decides, then a '%' unit. Otherwise the median of the finite values does: at most 1 -> fractions, at most 100 ->
    percentages. The median, not the maximum, so that one impossible cell (170.5 among values near 71) cannot
    change the scale its neighbours establish.
    """
    if declared is not None:
        return declared
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


def declared_scale(table: Table, name: str) -> float | None:
    """The scale a reader knows for a column (lm-eval writes accuracies as fractions), or None."""
    scales = table.meta.get("scales") or {}
    value = scales.get(name)
    return float(value) if value is not None else None


def step(value: float, n: float = math.nan, scale: float = FRACTION) -> float:
    """The granularity of a proportion: scale / n when n is known, else the step of an exact fraction k/d with a small
    d (a float printed to full precision, 0.3333333333333333 -> 1/3), else 0 (no granularity known)."""
    if math.isfinite(n) and n >= 1:
        return scale / n
    if not math.isfinite(value) or scale == 0:
        return 0.0
    exact = Fraction(value / scale).limit_denominator(MAX_DENOMINATOR)
    if exact.denominator > 1 and abs(float(exact) - value / scale) < 1e-12 and len(repr(value)) > 8:
        return scale / exact.denominator
    return 0.0
