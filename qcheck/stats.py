"""Intervals and tests used by every comparison: Wilson / Clopper-Pearson intervals, exact binomial and
McNemar tests, bootstrap intervals, and the sample size a difference would need.

Pure functions on numbers and sequences; scipy supplies the distributions.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_SAMPLES = 30
"""Below this many samples a proportion is reported as underpowered (warn), whatever its interval."""


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval for a point estimate."""

    estimate: float
    low: float
    high: float
    level: float
    method: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float | str]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level, "method": self.method}


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion (good coverage at small n, never outside [0, 1])."""
    _check_counts(successes, n)
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0, level, "wilson")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), level, "wilson")


def clopper_pearson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Exact (conservative) binomial interval from the beta distribution."""
    _check_counts(successes, n)
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0, level, "clopper-pearson")
    from scipy.stats import beta

    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return Interval(successes / n, low, high, level, "clopper-pearson")


def binomial_test(successes: int, n: int, p: float, alternative: str = "greater") -> float:
    """Exact binomial test p-value of `successes` in `n` against rate `p` ('greater', 'less', 'two-sided')."""
    _check_counts(successes, n)
    from scipy.stats import binomtest

    return float(binomtest(successes, n, p, alternative=alternative).pvalue)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on paired binary outcomes: b = only A correct, c = only B correct."""

    b: int
    c: int
    n: int
    pvalue: float
    alternative: str

    def to_dict(self) -> dict[str, float | int | str]:
        return {"only_a": self.b, "only_b": self.c, "n_pairs": self.n, "pvalue": self.pvalue,
                "test": f"McNemar exact ({self.alternative})"}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool], alternative: str = "two-sided") -> McNemarResult:
    """Exact McNemar test for paired flags a[i], b[i]; alternative 'greater' means A is better than B."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = only_a + only_b
    if discordant == 0:
        pvalue = 1.0
    else:
        pvalue = binomial_test(only_a, discordant, 0.5, alternative=alternative)
    return McNemarResult(only_a, only_b, len(a), pvalue, alternative)


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    weights: Sequence[float] | np.ndarray | None = None,
) -> Interval:
    """Percentile bootstrap interval of `statistic` over `values` (seeded, so reports are reproducible).

    With `weights`, each resample computes sum(values*w)/sum(w), e.g. pooled NLL per token over windows.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if not np.all(np.isfinite(data)):
        raise ValueError("bootstrap refuses non-finite values (NaN/inf): remove or explain them first")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_resamples, data.size))
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        stats = (data[idx] * w[idx]).sum(axis=1) / w[idx].sum(axis=1)
        point = float((data * w).sum() / w.sum())
    else:
        stats = np.array([statistic(data[row]) for row in idx])
        point = float(statistic(data))
    alpha = 1 - level
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(low), float(high), level, f"bootstrap percentile ({n_resamples} resamples, seed {seed})")


def paired_bootstrap_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
    weights: Sequence[float] | None = None,
) -> Interval:
    """Interval of mean(b) - mean(a) resampling the same units for both (paired)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired bootstrap needs equal shapes, got {x.shape} and {y.shape}")
    return bootstrap_interval(y - x, level=level, n_resamples=n_resamples, seed=seed, weights=weights)


def samples_needed(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Samples per group a two-proportion z-test needs to tell p1 from p2 (normal approximation)."""
    from scipy.stats import norm

    if p1 == p2:
        return math.inf  # type: ignore[return-value]
    za = float(norm.ppf(1 - alpha / 2))
    zb = float(norm.ppf(power))
    pbar = (p1 + p2) / 2
    num = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2
    return math.ceil(num / (p1 - p2) ** 2)


def mann_whitney_less(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value that samples `a` tend to be smaller than samples `b`."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(a, b, alternative="less").pvalue)


def wilson_bounds(successes: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval bounds, element-wise (successes may be a rate times n: averaged runs)."""
    s = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    from scipy.stats import norm

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
