"""Vectorised statistics for lint rules: Wilson bounds, Newcombe difference intervals, exact binomial tails."""
from __future__ import annotations

import numpy as np
from scipy.stats import binom, norm


def wilson_bounds(successes: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval bounds, element-wise (same formula as qcheck.stats.wilson_interval)."""
    s = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    z = float(norm.ppf(0.5 + level / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = s / m
        denom = 1 + z * z / m
        centre = (p + z * z / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def newcombe_difference(s1: np.ndarray, n1: np.ndarray, s2: np.ndarray, n2: np.ndarray,
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Newcombe's hybrid-score interval for p1 - p2 of two independent proportions: (diff, low, high)."""
    l1, u1 = wilson_bounds(s1, n1, level)
    l2, u2 = wilson_bounds(s2, n2, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1 = np.asarray(s1, dtype=np.float64) / n1
        p2 = np.asarray(s2, dtype=np.float64) / n2
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def binomial_greater(successes: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Exact one-sided p-value P(X >= successes) for X ~ Binomial(n, p), element-wise."""
    return binom.sf(np.asarray(successes) - 1, n, p)


def binomial_less(successes: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Exact one-sided p-value P(X <= successes) for X ~ Binomial(n, p), element-wise."""
    return binom.cdf(successes, n, p)
