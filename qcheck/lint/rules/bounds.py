"""Rules on values no measurement can produce: proportions off their scale, perplexity below 1, negative costs."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.rules.common import fmt
from qcheck.lint.rules.registry import rule
from qcheck.lint.scale import FRACTION, PERCENT, declared_scale, proportion_scale
from qcheck.lint.view import TableView

PROPORTION_ROLES = ("accuracy", "clean_acc", "robust_acc", "f1", "em")
NONNEGATIVE_ROLES = ("throughput", "latency", "sample_time", "total_time", "timing", "memory", "energy", "power", "n",
                     "correct", "params")
RULE = "Q022-impossible-value"


def _cells(view: TableView, name: str, rows: np.ndarray) -> str:
    shown = [view.cell(name, r) for r in rows[:5]]
    return ", ".join(shown) + (f" and {rows.size - 5} more" if rows.size > 5 else "")


def _proportions(view: TableView, config: LintConfig) -> Iterator[Finding]:
    for name in view.columns(*PROPORTION_ROLES, "score"):
        column = view.table.columns[name]
        rows = view.data_rows[np.isfinite(column.values[view.data_rows])]
        if rows.size == 0:
            continue
        values = column.values[rows]
        declared = declared_scale(view.table, name)
        scale = proportion_scale(values, column.unit, declared)
        if view.roles[name] == "score":
            if scale is None:   # scores on their own scale (MME sums to 2800, Elo ratings): no bound known
                continue
            if declared is None and column.unit != "%":
                scale = PERCENT   # a benchmark score column: percent or fraction, bounded by 100 either way
        top = scale if scale is not None else 100.0
        bad = rows[(values < 0) | (values > top)]
        if bad.size == 0:
            continue
        if declared is not None:
            name_scale = "fractions, [0, 1]" if declared == FRACTION else "percentages, [0, 100]"
            why = f"{view.table.meta.get('family', 'the file')} writes {name} as {name_scale}"
        elif view.roles[name] == "score" and column.unit != "%":
            why = ("the column holds benchmark scores written as percentages or fractions (its other values say so), "
                   "and neither reaches outside [0, 100]")
        elif column.unit == "%":
            why = "its cells are written as percentages, so every value must lie in [0, 100]"
        elif scale is None:
            why = "no reading of the column fits: fractions lie in [0, 1] and percentages in [0, 100]"
        else:
            others = np.setdiff1d(rows, bad)
            middle = fmt(float(np.median(column.values[others]))) if others.size else fmt(float(np.median(values)))
            name_scale = "fractions, [0, 1]" if scale == FRACTION else "percentages, [0, 100]"
            why = (f"the column's other values (median {middle}) are {name_scale}; a proportion cannot lie outside "
                   "that range")
        yield view.finding(
            RULE, Severity.ERROR,
            f"{name} holds impossible values ({_cells(view, name, bad)}) in {view.describe(bad)}: {why}. A score below "
            "zero or above everything is a parsing, unit or aggregation error (a sum instead of a mean, a percent "
            "added twice, a sign flipped)",
            bad, [name], scale=scale, values={str(int(r) + 1): float(column.values[r]) for r in bad[:1000]})


def _perplexity(view: TableView) -> Iterator[Finding]:
    for name in view.columns("ppl"):
        column = view.table.columns[name]
        rows = view.data_rows[np.isfinite(column.values[view.data_rows])]
        bad = rows[column.values[rows] < 1.0]
        if bad.size:
            yield view.finding(
                RULE, Severity.ERROR,
                f"{name} is below 1 ({_cells(view, name, bad)}) in {view.describe(bad)}: perplexity is exp(mean "
                "negative log-likelihood) and a probability never exceeds 1, so perplexity is at least 1. The column "
                "holds a log-perplexity, a bits-per-byte figure or a difference, or the loss was averaged wrongly",
                bad, [name], values={str(int(r) + 1): float(column.values[r]) for r in bad[:1000]})


def _negative(view: TableView) -> Iterator[Finding]:
    for name in view.columns(*NONNEGATIVE_ROLES):
        column = view.table.columns[name]
        rows = view.data_rows[np.isfinite(column.values[view.data_rows])]
        bad = rows[column.values[rows] < 0]
        if bad.size:
            yield view.finding(
                RULE, Severity.ERROR,
                f"{name} is negative ({_cells(view, name, bad)}) in {view.describe(bad)}: a {view.roles[name]} "
                "cannot be below zero; a subtraction of two timers or counters, or a sign, went wrong",
                bad, [name], values={str(int(r) + 1): float(column.values[r]) for r in bad[:1000]})


def _correct_above_n(view: TableView) -> Iterator[Finding]:
    correct, n = view.values("correct"), view.values("n")
    if correct is None or n is None:
        return
    rows = view.data_rows[np.isfinite(correct[view.data_rows]) & np.isfinite(n[view.data_rows])]
    bad = rows[correct[rows] > n[rows]]
    if bad.size:
        names = view.columns("correct")[:1] + view.columns("n")[:1]
        yield view.finding(
            RULE, Severity.ERROR,
            f"more correct answers than samples in {view.describe(bad)} ("
            + "; ".join(f"{fmt(float(correct[r]))} of {fmt(float(n[r]))}" for r in bad[:5])
            + "): the counts come from different runs or the sample count is wrong",
            bad, names, values={str(int(r) + 1): [float(correct[r]), float(n[r])] for r in bad[:1000]})


@rule(RULE, "error", "issue 17", "a value no measurement can produce: a proportion outside [0, 1] or [0, 100] (the "
      "scale inferred from the column), perplexity below 1, a negative time, throughput, memory, energy or count")
def impossible_value(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Values outside the range their quantity allows; each is a bug upstream, never a result."""
    yield from _proportions(view, config)
    yield from _perplexity(view)
    yield from _negative(view)
    yield from _correct_above_n(view)
