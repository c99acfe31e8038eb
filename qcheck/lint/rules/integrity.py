"""Rules on the cells themselves: missing values, aggregates, degenerate repeats, sentinels, summaries (Z8, Z10)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from qcheck.lint.cells import FAILED, NOT_RUN
from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.roles import ENERGY_ROLES, MEASUREMENT_ROLES, QUALITY_HIGHER, QUALITY_ROLES, TIME_ROLES
from qcheck.lint.rules.common import are, distinct_models, fmt, resolution
from qcheck.lint.rules.registry import rule
from qcheck.lint.view import TableView


@rule("Q002-missing-value", "error|info", "Z8", "NaN, None, empty, infinite or non-numeric cells in a metric column; "
      "reported failures (OOM) and runs not taken (-, N/A) as info", records=True)
def missing_value(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Flag metric cells that are not finite numbers; any mean over them is undefined or silently skips them.

    Cells the author marked (OOM, timeout, -, --, N/A, TODO) are not lost values: they are named in an info finding
    and left out of every comparison.
    """
    for name in view.columns(*MEASUREMENT_ROLES):
        column = view.table.columns[name]
        rows = view.data_rows
        bad = rows[column.missing[rows] | column.text[rows] | np.isinf(column.values[rows])]
        if bad.size:
            shown = sorted({view.cell(name, r) or "(empty)" for r in bad[:50]})
            yield view.finding(
                "Q002-missing-value", Severity.ERROR,
                f"column '{name}' has {bad.size} of {rows.size} cells that are not finite numbers "
                f"({', '.join(shown[:5])}) in {view.describe(bad)}: a mean over it is undefined, and an aggregate that "
                "skips them (pandas' default) hides failed runs; fix the runs or report them as failures",
                bad, [name], cells={str(int(r) + 1): view.cell(name, r) for r in bad[:1000]}, count=int(bad.size))
        failed = rows[column.is_state(FAILED)[rows]]
        skipped = rows[column.is_state(NOT_RUN)[rows]]
        if failed.size or skipped.size:
            marked = np.sort(np.r_[failed, skipped])
            parts = ([f"{failed.size} reported as failed ({', '.join(sorted({view.cell(name, r) for r in failed}))})"]
                     if failed.size else []) + \
                    ([f"{skipped.size} marked as not run ({', '.join(sorted({view.cell(name, r) for r in skipped}))})"]
                     if skipped.size else [])
            yield view.finding(
                "Q002-missing-value", Severity.INFO,
                f"column '{name}': {' and '.join(parts)} in {view.describe(marked)}; these cells are left out of "
                "every comparison (the table says why they hold no number)",
                marked, [name], cells={str(int(r) + 1): view.cell(name, r) for r in marked[:1000]},
                failed=int(failed.size), not_run=int(skipped.size))


@rule("Q003-aggregate-inconsistent", "error", "Z8", "an aggregate row that skips NaN members or differs from "
      "the recomputed aggregate")
def aggregate_inconsistent(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Check 'mean'/'average'/'total' rows against the rows they summarise."""
    members = view.data_rows
    for agg in view.aggregate_rows:
        kind = view.identity[agg].strip().lower()
        for name in view.columns(*MEASUREMENT_ROLES):
            column = view.table.columns[name]
            value = column.values[agg]
            if not math.isfinite(value) or members.size == 0:
                continue
            bad = members[~np.isfinite(column.values[members])]
            if bad.size:
                yield view.finding(
                    "Q003-aggregate-inconsistent", Severity.ERROR,
                    f"aggregate row {int(agg) + 1} ('{view.identity[agg]}') reports {name} = {view.cell(name, agg)} "
                    f"although {view.describe(bad)} {are(bad)} not numbers: the aggregate skipped them, so it hides "
                    f"{bad.size} failed rows",
                    [agg], [name], aggregate=view.cell(name, agg), skipped_rows=[int(r) + 1 for r in bad[:1000]])
                continue
            finite = column.values[members]
            expected = {"mean": np.mean, "avg": np.mean, "average": np.mean, "median": np.median,
                        "total": np.sum}.get(kind)
            if expected is None:
                continue
            recomputed = float(expected(finite))
            tolerance = resolution(view.cell(name, agg)) + 1e-9 * max(1.0, abs(recomputed))
            if abs(recomputed - value) > tolerance:
                yield view.finding(
                    "Q003-aggregate-inconsistent", Severity.ERROR,
                    f"aggregate row {int(agg) + 1} ('{view.identity[agg]}') reports {name} = {view.cell(name, agg)} "
                    f"but the {kind} of the {members.size} data rows is {fmt(recomputed, 6)} "
                    f"(difference beyond the printed resolution {fmt(tolerance, 2)})",
                    [agg], [name], aggregate=value, recomputed=recomputed, tolerance=tolerance)


@rule("Q004-zero-score-across-models", "error", "Z7/Z8", "a score of exactly 0 for three or more distinct models")
def zero_score_across_models(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Exact-zero accuracy/F1/EM for several distinct models means no usable output, not weak models."""
    for name in view.columns(*QUALITY_HIGHER):
        values = view.table.columns[name].values
        for group in view.groups:
            zero = group[values[group] == 0.0]
            models = distinct_models(view, zero)
            if models < 3:
                continue
            yield view.finding(
                "Q004-zero-score-across-models", Severity.ERROR,
                f"{name} is exactly 0 for {models} distinct models ({view.describe(zero)}): no real model scores "
                "exactly zero; the outputs were empty or the answer extraction failed (e.g. no \\boxed{} in the "
                "replies). Check non-empty outputs and format compliance against the reference model",
                zero, [name], models=models, group_rows=int(group.size))


@rule("Q005-constant-across-models", "error", "Z8", "one non-zero value for a metric across four or more distinct "
      "models")
def constant_across_models(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """A metric that does not change across many distinct models is a placeholder, default or aggregation bug.

    Only recognised quality columns (perplexity, accuracy, F1, EM, benchmark scores, objective values): a column of
    unknown meaning may legitimately be constant (a sample count, a setting), so it is never called a placeholder.
    """
    for name in view.columns(*(r for r in QUALITY_ROLES if r != "metric")):
        values = view.table.columns[name].values
        for group in view.groups:
            finite = group[np.isfinite(values[group])]
            models = distinct_models(view, finite)
            if models < 4 or np.ptp(values[finite]) != 0 or values[finite[0]] == 0:
                continue
            yield view.finding(
                "Q005-constant-across-models", Severity.ERROR,
                f"{name} is {view.cell(name, finite[0])} in all {finite.size} rows ({models} distinct models, "
                f"{view.describe(finite, limit=4)}): a metric that does not depend on the model is a placeholder, "
                "a default value or an aggregation bug; recompute it from the per-sample records",
                finite, [name], value=float(values[finite[0]]), models=models)


@rule("Q019-sentinel-values", "error", "Z10", "trials whose objective is a repeated sentinel (0.0, -1, inf) far "
      "from every real value")
def sentinel_values(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Spot `except Exception: return 0.0` objectives: a sentinel value shared by many trials, far from the rest."""
    if "trial" not in view.roles.values() and "value" not in view.roles.values():
        return
    for name in view.columns("value", *QUALITY_ROLES):
        values = view.table.columns[name].values[view.data_rows]
        rows = view.data_rows
        for sentinel in (0.0, -1.0, math.inf, -math.inf):
            hit = values == sentinel
            count = int(hit.sum())
            if count < 2 or count < config.sentinel_fraction * rows.size:
                continue
            others = values[~hit & np.isfinite(values)]
            if others.size >= 2:
                gap = float(np.min(np.abs(others - sentinel)))
                if not gap > max(float(np.ptp(others)), 1e-12):
                    continue
            span = f"every other value lies in {fmt(float(others.min()))}-{fmt(float(others.max()))}" \
                if others.size else "no trial has any other value"
            yield view.finding(
                "Q019-sentinel-values", Severity.ERROR,
                f"{count} of {rows.size} trials ({100 * count / rows.size:.0f}%) have {name} exactly {sentinel:g}, and "
                f"{span}: an objective that returns a sentinel on failure (`except Exception: return 0.0`) hides "
                f"crashes and the sampler learns from them. Failed trials: {view.describe(rows[hit])}",
                rows[hit], [name], sentinel=sentinel, count=count, trials=int(rows.size),
                fraction=count / rows.size)


@rule("Q021-empty-outputs", "error|warning", "Z7", "empty model outputs in per-sample records", records=True)
def empty_outputs(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Empty generations: error when every output of a model is empty, warning when some are."""
    for name in view.columns("output"):
        column = view.table.columns[name]
        rows = view.data_rows
        empty = rows[np.fromiter((not column.raw[r].strip() for r in rows), dtype=bool, count=rows.size)]
        if empty.size == 0:
            continue
        per_model: dict[str, list[int]] = {}
        for r in rows:
            per_model.setdefault(view.identity[r], []).append(int(r))
        empty_set = set(empty.tolist())
        counts = {model: (sum(r in empty_set for r in members), len(members))
                  for model, members in per_model.items() if any(r in empty_set for r in members)}
        all_empty = [model for model, (k, total) in counts.items() if k == total]
        severity = Severity.ERROR if all_empty else Severity.WARNING
        detail = "; ".join(f"{model or 'all rows'}: {k} of {total} empty" for model, (k, total) in counts.items())
        yield view.finding(
            "Q021-empty-outputs", severity,
            f"column '{name}' is empty in {view.describe(empty)} ({detail}): a model that returns nothing scores 0 "
            "on every metric, so its scores measure the generation failure, not the model (check the chat template, "
            "stop tokens, max_new_tokens and that quantized weights loaded)",
            empty, [name], per_model={m: {"empty": k, "total": t} for m, (k, t) in counts.items()})


def _records_mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size and np.all(np.isfinite(values)) else math.nan


@rule("Q020-summary-not-reproduced", "error", "Z8", "a summary value that the per-sample records do not reproduce",
      scope="tables")
def summary_not_reproduced(views: Sequence[TableView], config: LintConfig) -> Iterator[Finding]:
    """Recompute each config's mean from per-sample records and compare it with the summary tables."""
    records = [v for v in views if v.is_records]
    summaries = [v for v in views if not v.is_records]
    for rec in records:
        for summary in summaries:
            keys = [n for n in rec.columns("config", "model") if summary.roles.get(n) in ("config", "model")]
            metrics = [n for n in rec.columns(*QUALITY_ROLES, *TIME_ROLES, *ENERGY_ROLES)
                       if summary.roles.get(n) in MEASUREMENT_ROLES]
            if not keys or not metrics:
                continue
            key = keys[0]
            groups: dict[str, list[int]] = {}
            for i in rec.data_rows:
                groups.setdefault(rec.cell(key, i), []).append(int(i))
            for metric in metrics:
                bad, evidence = [], {}
                column = summary.table.columns[metric]
                for row in summary.data_rows:
                    members = groups.get(summary.cell(key, row))
                    if not members:
                        continue
                    mean = _records_mean(rec.table.columns[metric].values[members])
                    value = float(column.values[row])
                    tolerance = resolution(summary.cell(metric, row)) + 1e-9 * max(1.0, abs(mean))
                    same = (math.isnan(mean) and math.isnan(value)) or abs(mean - value) <= tolerance
                    if not same:
                        bad.append(int(row))
                        evidence[str(int(row) + 1)] = {"summary": summary.cell(metric, row), "records_mean": mean,
                                                       "records": len(members)}
                if bad:
                    detail = "; ".join(f"row {r} says {e['summary']}, its {e['records']} records average "
                                       f"{fmt(e['records_mean'], 6)}" for r, e in list(evidence.items())[:5])
                    yield summary.finding(
                        "Q020-summary-not-reproduced", Severity.ERROR,
                        f"{metric} in {summary.describe(bad)} does not match the per-sample records in "
                        f"{rec.table.location} (mean per {key}): {detail}. The summary was not computed from "
                        "these records (stale file, different run, or a default filled in)",
                        bad, [metric], records_file=rec.table.location, mismatches=evidence)
