"""Rules on quality metrics across precisions: ties, perplexity order, mixed bounds, plausibility (Z1, Z2, Z6)."""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy.stats import norm

from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.precision import MIXED
from qcheck.lint.references import find_ppl_reference
from qcheck.lint.roles import MEASUREMENT_ROLES, QUALITY_HIGHER, QUALITY_ROLES
from qcheck.lint.rules.common import distinct_models, fmt, interval_columns, resolution, row_sizes
from qcheck.lint.rules.registry import rule
from qcheck.lint.scale import declared_scale, proportion_scale, step
from qcheck.lint.view import TableView

PROPORTION_LIKE = ("accuracy", "clean_acc", "robust_acc", "em", "f1", "score")


def _uniform(view: TableView, rows: np.ndarray) -> np.ndarray:
    """Rows with a known bit width that are not mixed or unclassified configs."""
    return rows[view.uniform_mask()[rows]]


def _is_constant_column(view: TableView, values: np.ndarray, group: np.ndarray) -> bool:
    finite = group[np.isfinite(values[group])]
    return finite.size > 0 and np.ptp(values[finite]) == 0 and distinct_models(view, finite) >= 4


def _distinct_elsewhere(view: TableView, name: str, rows: np.ndarray) -> list[str]:
    """Measured columns other than `name` in which every pair of `rows` differs beyond print precision: evidence
    that the rows are separate runs, so a tie in `name` is a coincidence of printing, not a copied result."""
    columns = []
    for other in view.columns(*MEASUREMENT_ROLES):
        if other == name:
            continue
        column = view.table.columns[other]
        values = column.values[rows]
        if not np.all(np.isfinite(values)):
            continue
        slack = np.array([resolution(view.cell(other, r)) for r in rows])
        gaps = np.abs(values[:, None] - values[None, :]) > slack[:, None] + slack[None, :]
        np.fill_diagonal(gaps, True)
        if gaps.all():
            columns.append(other)
    return columns


def _within_uncertainty(view: TableView, name: str, rows: np.ndarray) -> bool:
    """A tied cell carries an uncertainty (value ± err) wider than its print resolution: equal within noise."""
    column = view.table.columns[name]
    return any(math.isfinite(column.errors[r]) and column.errors[r] > resolution(view.cell(name, r)) for r in rows)


def _effective_digits(view: TableView, name: str, row: int) -> int:
    """Significant digits a tie can be judged on: those printed, but for a proportion no more than its granularity
    allows (k/n moves in steps of 1/n: 4/12 printed as 0.3333333333333333 carries one digit of evidence, not 16)."""
    column = view.table.columns[name]
    printed = column.significant_digits(row)
    if view.roles[name] not in PROPORTION_LIKE:
        return printed
    scale = proportion_scale(column.values, column.unit, declared_scale(view.table, name)) or 1.0
    n = row_sizes(view)[row]
    granularity = step(float(column.values[row]), float(n), scale)
    if granularity <= 0:
        return printed
    steps = abs(float(column.values[row])) / granularity
    return min(printed, math.floor(math.log10(steps)) + 1 if steps >= 1 else 0)


@rule("Q001-identical-across-precision", "error|warning", "Z1", "the same metric value for configs that differ in "
      "precision")
def identical_across_precision(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Exact ties between bit widths that chance cannot explain.

    Chance ties expected among m rows printed with d significant digits: C(m, 2) x 10^-d. Error when d >= tie_digits
    and that is <= 0.01; warning when a format below 8 bits ties and it is <= 0.1, unless the tie is explained: the
    rows differ in another measured column, a tied cell's own uncertainty exceeds its print precision, or every tied
    format has 8 bits or more (near-lossless by design).
    """
    for name in view.columns(*QUALITY_ROLES):
        column = view.table.columns[name]
        values = column.values
        for group in view.groups:
            if _is_constant_column(view, values, group):
                continue
            rows = _uniform(view, group)
            if rows.size < 2:
                continue
            rows = rows[np.isfinite(values[rows]) & (values[rows] != 0)]
            order = rows[np.argsort(values[rows], kind="stable")]
            sorted_values = values[order]
            starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
            ends = np.r_[starts[1:], order.size]
            for start, end in zip(starts, ends):
                if end - start < 2:
                    continue
                tied = np.sort(order[start:end])
                bits = sorted({view.kinds[r].bits for r in tied})
                if len(bits) < 2:
                    continue
                digits = min(_effective_digits(view, name, int(r)) for r in tied)
                chance = rows.size * (rows.size - 1) / 2 * 10.0 ** -digits
                bit_text = " vs ".join(f"{b:g}" for b in sorted(bits, reverse=True))
                if digits >= config.tie_digits and chance <= 0.01:
                    severity = Severity.ERROR
                    why = (f"a tie to {digits} significant digits does not happen by chance (expected chance ties "
                           f"among these {rows.size} rows ~{chance:.1g}): the lower precision was probably never "
                           "applied (check weights on the format's grid and the per-layer manifest)")
                elif min(bits) < 8 and chance <= 0.1 and not _within_uncertainty(view, name, tied) \
                        and not _distinct_elsewhere(view, name, tied):
                    severity = Severity.WARNING
                    why = (f"only {digits} significant digit(s) are printed, so a chance tie is possible (expected "
                           f"chance ties ~{chance:.1g}), but formats below 8 bits normally change results when "
                           "their width changes, and no other column of these rows differs: check that quantization "
                           "was applied")
                else:
                    continue
                yield view.finding(
                    "Q001-identical-across-precision", severity,
                    f"{name} is identical ({view.cell(name, tied[0])}) in {view.describe(tied)} although their "
                    f"precisions differ ({bit_text} bits): {why}",
                    tied, [name], value=float(values[tied[0]]), significant_digits=digits, bits=bits,
                    expected_chance_ties=chance, candidate_rows=int(rows.size))


@rule("Q011-ppl-improves-with-fewer-bits", "warning|info", "Z2", "perplexity lower at fewer bits than at the "
      "highest precision")
def ppl_improves_with_fewer_bits(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Lower-bit rows with lower perplexity than the highest-precision row: warning beyond the intervals, else info."""
    for name in view.columns("ppl"):
        values = view.table.columns[name].values
        bounds = interval_columns(view, name)
        column = view.table.columns[name]
        errors = column.errors
        z = float(norm.ppf(0.5 + config.level / 2))
        for group in view.groups:
            rows = _uniform(view, group)
            rows = rows[np.isfinite(values[rows])] if rows.size else rows
            if rows.size < 2:
                continue
            ref = int(max(rows, key=lambda r: (view.kinds[r].bits, -r)))
            better = [int(r) for r in rows if view.kinds[r].bits < view.kinds[ref].bits
                      and values[r] < values[ref] * (1 - config.ppl_min_change)]
            if not better:
                continue
            text = ", ".join(f"{view.labels[r]} {view.cell(name, r)}" for r in better)
            if bounds is None and all(math.isfinite(errors[r]) for r in better + [ref]):
                beyond = [r for r in better if values[r] + z * errors[r] < values[ref] - z * errors[ref]]
                if beyond:
                    yield view.finding(
                        "Q011-ppl-improves-with-fewer-bits", Severity.WARNING,
                        f"{name} of {view.describe(beyond)} is below the {view.kinds[ref].bits:g}-bit reference "
                        f"{view.labels[ref]} ({view.cell(name, ref)}) beyond their reported uncertainties "
                        f"({int(config.level * 100)}% normal intervals from the ± values): removing precision does "
                        "not remove error; suspect a different evaluation set, context length or token count",
                        beyond, [name], reference_row=ref + 1, z=z)
                continue
            if bounds is not None:
                low, high = (view.table.columns[c].values for c in bounds)
                beyond = [r for r in better if high[r] < low[ref]]
                if not beyond:
                    continue
                yield view.finding(
                    "Q011-ppl-improves-with-fewer-bits", Severity.WARNING,
                    f"{name} of {view.describe(beyond)} is below the {view.kinds[ref].bits:g}-bit reference "
                    f"{view.labels[ref]} ({view.cell(name, ref)}) beyond their intervals ({bounds[0]}/{bounds[1]}): "
                    "removing precision does not remove error; suspect a different evaluation set, context length "
                    "or token count between rows",
                    beyond, [name], reference_row=ref + 1, intervals=list(bounds))
            else:
                yield view.finding(
                    "Q011-ppl-improves-with-fewer-bits", Severity.INFO,
                    f"{name} is lower at fewer bits ({text}) than at {view.kinds[ref].bits:g} bits ({view.labels[ref]} "
                    f"{view.cell(name, ref)}), by more than {config.ppl_min_change:.0%}; the table has no interval "
                    f"columns ({name}_low/{name}_high), so whether this is beyond noise cannot be judged. Quantization "
                    "rarely lowers perplexity: check that every row used the same tokens and context length",
                    better, [name], reference_row=ref + 1,
                    relative_change={str(r + 1): float(values[r] / values[ref] - 1) for r in better})


@rule("Q012-mixed-outside-uniform-bounds", "error", "Z2", "a mixed-precision config outside the range of the uniform "
      "configs")
def mixed_outside_uniform_bounds(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """A mix of formats must land between the uniform formats it mixes (tolerance `mixed_tolerance`)."""
    for name in view.columns("ppl", *QUALITY_HIGHER):
        values = view.table.columns[name].values
        for group in view.groups:
            uniform = _uniform(view, group)
            uniform = uniform[np.isfinite(values[uniform])] if uniform.size else uniform
            mixed = [int(r) for r in group if view.kinds[r].kind == MIXED and math.isfinite(values[r])]
            if uniform.size == 0 or not mixed:
                continue
            low, high = float(values[uniform].min()), float(values[uniform].max())
            outside = [r for r in mixed if values[r] > high + config.mixed_tolerance * abs(high)
                       or values[r] < low - config.mixed_tolerance * abs(low)]
            if not outside:
                continue
            worst = int(uniform[np.argmax(values[uniform])] if name in view.columns("ppl")
                        else uniform[np.argmin(values[uniform])])
            detail = "; ".join(f"{view.labels[r]} {view.cell(name, r)} ({values[r] / values[worst]:.2f}x the worst "
                               f"uniform config {view.labels[worst]})" if values[worst] else
                               f"{view.labels[r]} {view.cell(name, r)}" for r in outside)
            yield view.finding(
                "Q012-mixed-outside-uniform-bounds", Severity.ERROR,
                f"{name} of {view.describe(outside)} lies outside the range of the uniform configs "
                f"{fmt(low, 6)}-{fmt(high, 6)} ({view.describe(uniform, limit=6)}) by more than "
                f"{config.mixed_tolerance:.0%}: {detail}. A mix of formats must land between the formats it "
                "mixes; check which format each layer actually got (per-layer manifest)",
                outside, [name], uniform_range=[low, high], uniform_rows=[int(r) + 1 for r in uniform],
                tolerance=config.mixed_tolerance)


@rule("Q013-ppl-implausible", "warning", "Z6", "perplexity far above the published figure for the named model")
def ppl_implausible(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Compare perplexity with a published reference when the model and data set are named."""
    model_col, task_col, ctx_col = view.column("model"), view.column("task"), view.column("context_length")
    for name in view.columns("ppl"):
        values = view.table.columns[name].values
        flagged: dict[tuple, list[int]] = {}
        for r in view.data_rows:
            model = model_col.raw[r] if model_col is not None else (config.model or view.default_model
                                                                     or view.identity[r])
            dataset = task_col.raw[r] if task_col is not None else (config.dataset or "")
            reference = find_ppl_reference(model, dataset)
            if reference is None or not math.isfinite(values[r]) or values[r] <= reference.ppl * config.ppl_factor:
                continue
            ctx = ctx_col.values[r] if ctx_col is not None else (config.context_length or math.nan)
            flagged.setdefault((reference, ctx), []).append(int(r))
        for (reference, ctx), rows in flagged.items():
            ratio = max(values[rows]) / reference.ppl
            if math.isnan(ctx):
                context = ("the table does not state the context length: report it (and the stride), since short "
                           "non-overlapping windows raise perplexity")
            elif ctx < reference.context_length:
                context = (f"the table's context length is {ctx:g} tokens, shorter than the reference's "
                           f"{reference.context_length}: short windows raise perplexity (each restarts without "
                           "context), so use a strided evaluation (stride < context), but a short context alone does "
                           f"not explain {ratio:.1f}x; also check that the loss is averaged per token")
            else:
                context = (f"at a context length of {ctx:g} tokens the gap is not explained by context: check "
                           "per-token loss averaging, tokenization and that the model weights loaded")
            yield view.finding(
                "Q013-ppl-implausible", Severity.WARNING,
                f"{name} in {view.describe(rows)} is up to {ratio:.1f}x the published {reference.ppl:g} for "
                f"{reference.model} on {reference.dataset} at {reference.context_length}-token context "
                f"({reference.source}; threshold {config.ppl_factor:g}x); {context}",
                rows, [name] + ([ctx_col.name] if ctx_col is not None else []),
                reference={"model": reference.model, "dataset": reference.dataset, "ppl": reference.ppl,
                           "context_length": reference.context_length, "source": reference.source},
                context_length=None if math.isnan(ctx) else ctx, ratio=ratio)
