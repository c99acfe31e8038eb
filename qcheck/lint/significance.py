"""Vectorised exact binomial tails for lint rules (Wilson and Newcombe intervals are in qcheck.stats)."""
from __future__ import annotations

import numpy as np
from scipy.stats import binom


def binomial_greater(successes: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Exact one-sided p-value P(X >= successes) for X ~ Binomial(n, p), element-wise."""
    return binom.sf(np.asarray(successes) - 1, n, p)


def binomial_less(successes: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Exact one-sided p-value P(X <= successes) for X ~ Binomial(n, p), element-wise."""
    return binom.cdf(successes, n, p)
