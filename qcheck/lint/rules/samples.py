"""Rules that need sample counts: robust vs clean, chance, underpowered samples, differences vs noise (Z3, Z11)."""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy.stats import norm

from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.rules.common import fmt, row_sizes
from qcheck.lint.rules.registry import rule
from qcheck.lint.scale import declared_scale, proportion_scale
from qcheck.lint.significance import binomial_greater, binomial_less
from qcheck.lint.view import TableView, fraction
from qcheck.stats import newcombe_difference, wilson_bounds

PROPORTION_ROLES = ("accuracy", "clean_acc", "robust_acc", "em")


def _successes(view: TableView, column: str, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    correct = view.values("correct")
    counts = np.rint(p * n)
    if correct is not None and view.columns("accuracy")[:1] == [column]:
        counts = np.where(np.isfinite(correct), correct, counts)
    return counts


@rule("Q006-robust-above-clean", "error", "Z3", "robust (adversarial) accuracy above clean accuracy")
def robust_above_clean(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Robust accuracy on the same samples with a deterministic model can never exceed clean accuracy."""
    for clean_name in view.columns("clean_acc"):
        for robust_name in view.columns("robust_acc"):
            clean, robust = fraction(view, clean_name), fraction(view, robust_name)
            rows = view.data_rows
            bad = rows[robust[rows] > clean[rows]]
            if bad.size == 0:
                continue
            detail = "; ".join(f"{view.labels[r]}: {view.cell(robust_name, r)} > {view.cell(clean_name, r)}"
                               for r in bad[:5])
            yield view.finding(
                "Q006-robust-above-clean", Severity.ERROR,
                f"{robust_name} exceeds {clean_name} in {view.describe(bad)} ({detail}). An attack on the same "
                "samples with a deterministic model can only lower accuracy: robust > clean means the two were "
                "measured on different samples, the model is randomized (dropout, random precision), or "
                "clean-incorrect samples were counted as robust-correct. Attack only clean-correct samples and "
                "compare paired outcomes",
                bad, [clean_name, robust_name],
                values={str(int(r) + 1): [float(clean[r]), float(robust[r])] for r in bad[:1000]})


@rule("Q007-at-chance", "warning", "Z11", "accuracy not above the chance rate 1/k (exact binomial test)")
def at_chance(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Exact one-sided binomial test of each accuracy against 1/num_classes; without n, a margin around chance."""
    classes = view.values("num_classes")
    if classes is None:
        if config.num_classes is None:
            return
        classes = np.full(view.table.n_rows, float(config.num_classes))
    n = row_sizes(view)
    for name in view.columns("accuracy", "clean_acc"):
        p = fraction(view, name)
        rows = view.data_rows[np.isfinite(p[view.data_rows]) & np.isfinite(classes[view.data_rows])
                               & (classes[view.data_rows] >= 2)]
        if rows.size == 0:
            continue
        chance = 1.0 / classes[rows]
        k = _successes(view, name, p, n)[rows]
        known = np.isfinite(n[rows]) & (n[rows] > 0) & np.isfinite(k)
        p_greater = np.where(known, binomial_greater(np.where(known, k, 0), np.where(known, n[rows], 1), chance), 1.0)
        p_less = np.where(known, binomial_less(np.where(known, k, 0), np.where(known, n[rows], 1), chance), math.nan)
        flagged = np.where(known, p_greater >= config.alpha, p[rows] <= chance + config.chance_margin)
        if not flagged.any():
            continue
        bad = rows[flagged]
        parts, evidence = [], {}
        for i in np.flatnonzero(flagged):
            r = int(rows[i])
            if known[i]:
                below = f", below chance p={p_less[i]:.3g}" if p_less[i] < config.alpha else ""
                parts.append(f"{view.labels[r]}: {int(k[i])}/{int(n[r])} vs 1/{int(classes[r])}, "
                             f"P(X>={int(k[i])})={p_greater[i]:.3g}{below}")
                evidence[str(r + 1)] = {"successes": int(k[i]), "n": int(n[r]), "chance": float(chance[i]),
                                        "p_greater": float(p_greater[i]), "p_less": float(p_less[i])}
            else:
                parts.append(f"{view.labels[r]}: {view.cell(name, r)} vs 1/{int(classes[r])} (n unknown)")
                evidence[str(r + 1)] = {"accuracy": float(p[r]), "chance": float(chance[i]), "n": None}
        test = (f"exact one-sided binomial test vs 1/k at alpha={config.alpha} where n is given; without n, "
                f"accuracy <= chance + {config.chance_margin} (no test possible)")
        yield view.finding(
            "Q007-at-chance", Severity.WARNING,
            f"{name} is not above chance in {view.describe(bad)} ({'; '.join(parts[:6])}"
            f"{'; ...' if len(parts) > 6 else ''}). Test: {test}. A model at chance has collapsed (too few bits, "
            "too few fractional bits) or its labels are misaligned; it measures nothing",
            bad, [name], test=test, rows_detail=evidence)


@rule("Q008-underpowered", "warning", "Z11", "fewer than 30 samples behind a reported figure")
def underpowered(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Rows evaluated on fewer than `min_samples` samples, with the Wilson interval of their accuracy."""
    n = row_sizes(view)
    rows = view.data_rows[np.isfinite(n[view.data_rows]) & (n[view.data_rows] < config.min_samples)]
    if rows.size == 0:
        return
    accuracy_columns = view.columns(*PROPORTION_ROLES)
    parts, evidence = [], {}
    for r in rows[:1000]:
        entry: dict[str, object] = {"n": float(n[r])}
        if accuracy_columns and n[r] > 0:
            p = fraction(view, accuracy_columns[0])[r]
            k = _successes(view, accuracy_columns[0], np.array([p]), np.array([n[r]]))[0]
            if math.isfinite(p) and math.isfinite(k):
                low, high = wilson_bounds(np.array([k]), np.array([n[r]]), config.level)
                entry.update(successes=int(k), wilson_low=float(low[0]), wilson_high=float(high[0]))
                if len(parts) < 4:
                    parts.append(f"{view.labels[r]}: {int(k)}/{int(n[r])}, {int(config.level * 100)}% Wilson "
                                 f"interval [{fmt(float(low[0]), 3)}, {fmt(float(high[0]), 3)}]")
        evidence[str(int(r) + 1)] = entry
    detail = f" ({'; '.join(parts)})" if parts else ""
    yield view.finding(
        "Q008-underpowered", Severity.WARNING,
        f"n < {config.min_samples} in {view.describe(rows)}{detail}: intervals this wide cannot separate configs "
        "or rank them; evaluate on more samples before comparing",
        rows, view.columns("n"), min_samples=config.min_samples, rows_detail=evidence)


def _compare_to_baseline(view: TableView, config: LintConfig):
    """Yield (column, row, reference, diff, low, high, n_row, n_ref) for compressed rows above their baseline."""
    n = row_sizes(view)
    reference = view.baseline_rows()
    candidates = view.data_rows[view.compressed_mask()[view.data_rows] & (reference[view.data_rows] >= 0)]
    for name in view.columns(*PROPORTION_ROLES):
        p = fraction(view, name)
        refs = reference[candidates]
        keep = np.isfinite(p[candidates]) & np.isfinite(p[refs]) & (p[candidates] > p[refs])
        rows, refs = candidates[keep], refs[keep]
        if rows.size == 0:
            continue
        known = np.isfinite(n[rows]) & np.isfinite(n[refs]) & (n[rows] > 0) & (n[refs] > 0)
        nr, nf = np.where(known, n[rows], 1.0), np.where(known, n[refs], 1.0)
        counts = _successes(view, name, p, n)
        _, low, high = newcombe_difference(np.where(known, counts[rows], 0), nr, np.where(known, counts[refs], 0), nf,
                                           config.level)
        err_low, err_high = _stderr_interval(view, name, rows, refs, p, config.level)
        for i in range(rows.size):
            r, ref = int(rows[i]), int(refs[i])
            d = float(p[r] - p[ref])
            if known[i]:
                yield name, r, ref, d, float(low[i]), float(high[i]), n[r], n[ref]
            else:
                yield name, r, ref, d, float(err_low[i]), float(err_high[i]), math.nan, math.nan


def _stderr_interval(view: TableView, name: str, rows: np.ndarray, refs: np.ndarray, p: np.ndarray,
                     level: float) -> tuple[np.ndarray, np.ndarray]:
    """Normal interval d +- z * sqrt(se1^2 + se2^2) from the standard errors the table reports (`0.7303 ± 0.0044`,
    lm-eval's `acc_stderr`); a row without one is taken to have its partner's (same test set, similar accuracy).
    NaN where neither row reports one."""
    column = view.table.columns[name]
    scale = proportion_scale(column.values, column.unit, declared_scale(view.table, name)) or 1.0
    e_row, e_ref = column.errors[rows] / scale, column.errors[refs] / scale
    e_row, e_ref = np.where(np.isfinite(e_row), e_row, e_ref), np.where(np.isfinite(e_ref), e_ref, e_row)
    z = float(norm.ppf(0.5 + level / 2))
    half = z * np.sqrt(e_row ** 2 + e_ref ** 2)
    d = p[rows] - p[refs]
    return d - half, d + half


def _comparison_text(view: TableView, name: str, r: int, ref: int, d: float, low: float, high: float,
                     nr: float, nf: float, level: float) -> str:
    base = f"{view.labels[r]} {view.cell(name, r)} vs {view.labels[ref]} {view.cell(name, ref)}, {d:+.4f}"
    if math.isnan(low):
        return base + " (n unknown: no interval)"
    if math.isnan(nr):
        return base + f" [{int(level * 100)}% interval from the reported standard errors {low:+.4f}, {high:+.4f}]"
    return base + f" [{int(level * 100)}% Newcombe interval {low:+.4f}, {high:+.4f}; n={int(nr)}/{int(nf)}]"


@rule("Q009-difference-within-noise", "info", "Z11", "a compressed variant above its baseline by less than the "
      "sample can resolve")
def difference_within_noise(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """A visible improvement (>= min_effect) over the baseline whose interval includes zero: inconclusive."""
    items: dict[str, list] = {}
    for name, r, ref, d, low, high, nr, nf in _compare_to_baseline(view, config):
        if d >= config.min_effect and not low > 0:
            items.setdefault(name, []).append((r, ref, d, low, high, nr, nf))
    for name, entries in items.items():
        text = "; ".join(_comparison_text(view, name, r, ref, d, lo, hi, nr, nf, config.level)
                         for r, ref, d, lo, hi, nr, nf in entries[:6])
        yield view.finding(
            "Q009-difference-within-noise", Severity.INFO,
            f"inconclusive: {name} of {view.describe([e[0] for e in entries])} is above its uncompressed baseline "
            f"but the sample cannot resolve the difference ({text}). Test: Newcombe hybrid-score interval for a "
            "difference of two proportions (unpaired; conservative for the same test set), or, without n, a normal "
            "interval from the reported standard errors; do not claim an improvement",
            [e[0] for e in entries], [name],
            comparisons=[{"row": e[0] + 1, "baseline_row": e[1] + 1, "difference": e[2], "low": e[3], "high": e[4],
                          "n": e[5], "n_baseline": e[6]} for e in entries[:1000]])


@rule("Q010-compressed-beats-baseline", "warning", "seed 003", "a compressed variant beating its uncompressed baseline "
      "beyond noise")
def compressed_beats_baseline(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """QAT, pruned or quantized rows significantly above their own uncompressed baseline."""
    items: dict[str, list] = {}
    for name, r, ref, d, low, high, nr, nf in _compare_to_baseline(view, config):
        if low > 0:
            items.setdefault(name, []).append((r, ref, d, low, high, nr, nf))
    for name, entries in items.items():
        text = "; ".join(_comparison_text(view, name, r, ref, d, lo, hi, nr, nf, config.level)
                         for r, ref, d, lo, hi, nr, nf in entries[:6])
        yield view.finding(
            "Q010-compressed-beats-baseline", Severity.WARNING,
            f"{view.describe([e[0] for e in entries])} beat their uncompressed baseline beyond noise ({text}"
            f"{'; ...' if len(entries) > 6 else ''}). A compressed copy of a model should not beat the model "
            "itself: the baseline is probably under-trained (the compressed variant got extra training) or the "
            "evaluation leaks; train the baseline as long, or compare against the baseline the variant started from",
            [e[0] for e in entries], [name],
            comparisons=[{"row": e[0] + 1, "baseline_row": e[1] + 1, "difference": e[2], "low": e[3], "high": e[4],
                          "n": e[5], "n_baseline": e[6]} for e in entries[:1000]])
