"""Rules on speed and energy: flat timings, impossible speed, slow quantized variants, physics (Z4, Z5, Z9, Z12)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.precision import HALF, MIXED
from qcheck.lint.references import params_from_name
from qcheck.lint.roles import DIRECTED_TIME_ROLES, TIME_ROLES, normalize
from qcheck.lint.rules.common import are, fmt, row_sizes
from qcheck.lint.rules.registry import rule
from qcheck.lint.view import TableView


def _cost(view: TableView, name: str) -> np.ndarray:
    """A column as 'cost' (higher = slower): throughput is inverted, times and energy kept."""
    values = view.table.columns[name].values
    if view.roles[name] == "throughput":
        with np.errstate(divide="ignore"):
            return np.where(values > 0, 1.0 / values, np.nan)
    return values


def _seconds_scale(view: TableView, name: str) -> float:
    """Seconds per unit of a time column, from its name ('latency_ms') or its cells' unit ('11.7ms')."""
    tokens = normalize(name).split("_")
    unit = view.table.columns[name].unit.lower()
    if "ms" in tokens or unit == "ms":
        return 1e-3
    if "us" in tokens or unit in ("us", "\u00b5s", "\u03bcs"):
        return 1e-6
    if tokens[-1] in ("min", "mins", "minutes") or unit == "min":
        return 60.0
    return 1.0


@rule("Q014-speed-flat-across-precision", "warning", "Z4", "throughput or latency flat (within 5%) across real "
      "precisions at least 2x apart")
def speed_flat_across_precision(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Timings that do not move when the bit width halves or more: simulated formats or broken timing."""
    for name in view.columns(*TIME_ROLES):
        values = view.table.columns[name].values
        for group in view.groups:
            rows = group[view.uniform_mask()[group]]
            rows = rows[np.isfinite(values[rows]) & (values[rows] > 0)]
            if rows.size < 2:
                continue
            bits = sorted({view.kinds[r].bits for r in rows}, reverse=True)
            if len(bits) < 2 or bits[0] / bits[-1] < 2:
                continue
            spread = float(values[rows].max() / values[rows].min() - 1)
            if spread > config.flat_tolerance:
                continue
            yield view.finding(
                "Q014-speed-flat-across-precision", Severity.WARNING,
                f"{name} is flat across precisions in {view.describe(rows)}: {fmt(float(values[rows].min()), 6)}-"
                f"{fmt(float(values[rows].max()), 6)}, a {spread:.1%} spread (threshold {config.flat_tolerance:.0%}) "
                f"across {', '.join(f'{b:g}' for b in bits)} bits. Real low-precision kernels change speed (fp16 "
                "beats fp32 several-fold on tensor cores); a flat column means simulated (fake-quant) formats, which "
                "must not report speed, or timing dominated by warm-up, host overhead or a missing device sync",
                rows, [name], spread=spread, bits=bits, values={str(int(r) + 1): float(values[r]) for r in rows})


def _counts_tokens(view: TableView, name: str) -> bool:
    """A throughput in tokens per second (by name or by the cells' unit, '181 t/s'), not samples per second."""
    unit = view.table.columns[name].unit.lower()
    return "tok" in normalize(name) or unit.startswith(("t/", "tok"))


def _per_sample_seconds(view: TableView, name: str) -> np.ndarray | None:
    role = view.roles[name]
    values = view.table.columns[name].values
    if role == "sample_time":
        return values * _seconds_scale(view, name)
    if role == "total_time":
        n = row_sizes(view)
        return values * _seconds_scale(view, name) / n
    if role == "throughput" and not _counts_tokens(view, name):
        with np.errstate(divide="ignore"):
            return np.where(values > 0, 1.0 / values, np.nan)
    return None


@rule("Q015-implausible-speed", "error", "Z12", "a per-sample time below the arithmetic floor 2 x params x tokens / "
      "peak FLOP/s")
def implausible_speed(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Per-sample times faster than any accelerator could do the model's arithmetic."""
    params_col, tokens_col = view.values("params"), view.values("tokens_per_sample")
    model_col = view.column("model")
    n = view.table.n_rows
    params = params_col if params_col is not None else np.array(
        [params_from_name(model_col.raw[r] if model_col is not None else view.default_model or view.identity[r])
         for r in range(n)])
    if config.params is not None:
        params = np.where(np.isfinite(params), params, config.params)
    tokens = np.full(n, float(config.tokens_per_sample))
    if tokens_col is not None:
        tokens = np.where(np.isfinite(tokens_col) & (tokens_col >= 1) & (tokens_col < 1e12), tokens_col, tokens)
    floor = 2.0 * params * tokens / config.peak_flops
    for name in view.columns(*TIME_ROLES):
        seconds = _per_sample_seconds(view, name)
        if seconds is None:
            continue
        rows = view.data_rows
        bad = rows[np.isfinite(seconds[rows]) & np.isfinite(floor[rows]) & (seconds[rows] < floor[rows])]
        if bad.size == 0:
            continue
        r = int(bad[0])
        how = f" (= {name} / n)" if view.roles[name] == "total_time" else ""
        yield view.finding(
            "Q015-implausible-speed", Severity.ERROR,
            f"{name} in {view.describe(bad)} implies {fmt(float(seconds[r]), 2)} s per sample{how}, below the "
            f"arithmetic floor {fmt(float(floor[r]), 2)} s: a {fmt(float(params[r]), 2)}-parameter model needs at "
            f"least 2 x params x {int(tokens[r])} tokens = {fmt(float(2 * params[r] * tokens[r]), 2)} FLOP per sample "
            f"and no accelerator exceeds {fmt(config.peak_flops, 2)} FLOP/s. These times cannot come from running the "
            "model: a mock or simulated evaluation, cached outputs, or a timer stopped before the work",
            bad, [name], per_sample_s={str(int(b) + 1): float(seconds[b]) for b in bad[:1000]},
            floor_s={str(int(b) + 1): float(floor[b]) for b in bad[:1000]}, peak_flops=config.peak_flops,
            params=float(params[r]), tokens_per_sample=int(tokens[r]))


@rule("Q016-quantized-much-slower", "warning", "Z9", "a quantized variant 5x or more slower than its reference "
      "(the uncompressed row, else the fp16/bf16 row)")
def quantized_much_slower(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Slowdowns beyond any known low-bit kernel cost point at fallbacks or offloading."""
    reference = view.baseline_rows()
    candidates = view.data_rows[view.compressed_mask()[view.data_rows] & (reference[view.data_rows] >= 0)]
    for name in view.columns(*DIRECTED_TIME_ROLES):
        cost = _cost(view, name)
        refs = reference[candidates]
        ok = np.isfinite(cost[candidates]) & np.isfinite(cost[refs]) & (cost[refs] > 0)
        rows, refs = candidates[ok], refs[ok]
        ratio = cost[rows] / cost[refs]
        slow = ratio >= config.slowdown_ratio
        found = [int(r) for r in rows[slow]]
        ratios = {int(r): (int(f), float(x)) for r, f, x in zip(rows[slow], refs[slow], ratio[slow])}
        if not found:
            continue
        detail = "; ".join(f"{view.labels[r]} {view.cell(name, r)} vs {view.labels[ref]} {view.cell(name, ref)} "
                           f"({ratio:.1f}x)" for r, (ref, ratio) in list(ratios.items())[:5])
        yield view.finding(
            "Q016-quantized-much-slower", Severity.WARNING,
            f"{view.describe(found)} {are(found)} {config.slowdown_ratio:g}x or more slower than their uncompressed "
            f"references ({name}: {detail}). Real low-bit kernels cost at most a few x (LLM.int8 4.3x, NF4 1.9x vs "
            "fp16 on an H100); beyond that look for a CPU fallback, offloaded layers or dequantization on every call",
            found, [name], slowdowns={str(r + 1): {"reference_row": ref + 1, "ratio": ratio}
                                      for r, (ref, ratio) in list(ratios.items())[:1000]},
            threshold=config.slowdown_ratio)


@rule("Q017-reduced-precision-slower", "warning", "Z5", "fp16/bf16/mixed slower or more energy than fp32")
def reduced_precision_slower(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Half precision or autocast slower / costlier than the fp32 reference: only valid without tensor cores."""
    columns = view.columns(*DIRECTED_TIME_ROLES, "energy")
    if not columns:
        return
    costs = {name: _cost(view, name) for name in columns}
    reference = view.reference_rows()
    rows = view.data_rows[view.kind_mask(HALF, MIXED)[view.data_rows] & (reference[view.data_rows] >= 0)]
    found: dict[int, list[str]] = {}
    for name in columns:
        cost, values = costs[name], view.table.columns[name].values
        refs = reference[rows]
        slower = np.isfinite(cost[rows]) & np.isfinite(cost[refs]) & (cost[refs] > 0) & \
            (cost[rows] > cost[refs] * (1 + config.reduced_slower_tolerance))
        for count, (r, ref) in enumerate(zip(rows[slower].tolist(), refs[slower].tolist())):
            if count >= 1000:  # every row is listed; only the first thousand carry a written detail
                found.setdefault(r, [])
                continue
            change = values[r] / values[ref] - 1
            found.setdefault(r, []).append(f"{name} {view.cell(name, r)} vs {view.cell(name, ref)} ({change:+.0%}) "
                                           f"against {view.labels[ref]}")
    if not found:
        return
    detail = "; ".join(f"{view.labels[r]}: {', '.join(parts)}" for r, parts in list(found.items())[:5])
    yield view.finding(
        "Q017-reduced-precision-slower", Severity.WARNING,
        f"{view.describe(found)} {are(found)} slower, or costlier in energy, than the fp32 reference ({detail}; tolerance "
        f"{config.reduced_slower_tolerance:.0%}). Half precision and autocast pay off only on tensor cores (compute "
        "capability >= 7.0) at compute-bound shapes; on older GPUs (P100 is 6.0) or launch-bound shapes autocast "
        "only adds casts. State the GPU and shape, or do not claim an ordering",
        sorted(found), sorted({p.split(" ", 1)[0] for parts in found.values() for p in parts}),
        details={str(r + 1): parts for r, parts in found.items() if parts})


@rule("Q018-energy-against-physics", "error", "physics", "less time and less power but more energy than another row")
def energy_against_physics(view: TableView, config: LintConfig) -> Iterator[Finding]:
    """Energy = power x time: a row faster and lower-power than another cannot use more energy."""
    energy, power = view.values("energy"), view.values("power")
    times = [n for n in view.columns("latency", "sample_time", "total_time")]
    if energy is None or power is None or not times:
        return
    time = view.table.columns[times[0]].values
    pairs = []
    for group in view.groups:
        rows = group[np.isfinite(energy[group]) & np.isfinite(power[group]) & np.isfinite(time[group])]
        if rows.size > 400:
            rows = rows[:400]
        t, p, e = time[rows], power[rows], energy[rows]
        bad = (t[:, None] < t[None, :]) & (p[:, None] < p[None, :]) & (e[:, None] > e[None, :] * 1.01)
        pairs.extend((int(rows[i]), int(rows[j])) for i, j in zip(*np.nonzero(bad)))
    if not pairs:
        return
    energy_name, power_name = view.columns("energy")[0], view.columns("power")[0]
    detail = "; ".join(f"{view.labels[i]} vs {view.labels[j]}: {view.cell(times[0], i)} < {view.cell(times[0], j)}, "
                       f"{view.cell(power_name, i)} < {view.cell(power_name, j)} but {view.cell(energy_name, i)} > "
                       f"{view.cell(energy_name, j)}" for i, j in pairs[:4])
    rows = sorted({i for i, _ in pairs})
    yield view.finding(
        "Q018-energy-against-physics", Severity.ERROR,
        f"{view.describe(rows)}: less time at lower power than another row, yet more energy ({detail}); "
        "energy is power x time, so one of the three columns is mismeasured (energy counter window, idle power "
        "included, or units)",
        rows, [times[0], power_name, energy_name], pairs=[[i + 1, j + 1] for i, j in pairs[:1000]])
