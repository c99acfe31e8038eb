"""`qcheck compare BASELINE.json NEW.json`: the regression gate between two run reports.

Per variant and metric, a change is a regression only when it is worse than the baseline by more than the
tolerance AND the interval of the change (from the measured noise) excludes no change:
- perplexity with per-window NLL on the same data slice: paired, token-weighted t interval over windows of the
  per-token NLL difference (log of the perplexity ratio);
- metrics with recorded intervals (or raw `samples`, or a rate with its `n`): the change's interval from both
  sides' half-widths (root of the sum of squares);
- a bare number has no measured noise: its change is listed as "unmeasured" and never gates.
A check that held in the baseline (PASS/WARN/INCONCLUSIVE/SKIPPED) and FAILs or ERRORs in the new run, a variant or a
check that ran in the baseline and is absent from the new report, a new report in which no check ran, and a new run
that did not finish, also fail the gate. Exit 1 on a regression, 0 otherwise, 2 on bad input, 3 on an internal error.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

from qcheck.errors import ConfigError, MissingDependencyError, QCheckError
from qcheck.report.io import load_report, validate_report
from qcheck.report.metrics import metric_interval, metric_value, weighted_t_interval, window_data

DEFAULT_TOLERANCES: dict[str, float] = {"perplexity": 0.02, "kl_mean": 0.10, "latency_ms": 0.10, "*": 0.05}
"""Relative tolerance per metric ('*' for the rest); prefixes latency/energy use latency_ms's 10%."""
DIRECTIONS: dict[str, int] = {"perplexity": -1, "kl_mean": -1, "sqnr_db": 1, "top1_agreement": 1, "boxed_rate": 1,
                              "arc_accuracy": 1, "clean_accuracy": 1, "robust_accuracy": 1, "latency_ms": -1,
                              "quantize_seconds": -1, "robustness_gap": -1, "top_dp_mean": -1, "memory": -1}
"""+1 higher is better, -1 lower is better; other names fall back to LOWER_IS_BETTER / HIGHER_IS_BETTER parts."""
EXACT_METRICS = {"memory": "none: bytes as stored"}
"""Metrics with no noise to measure (the weights' bytes as stored): a change beyond the tolerance is a change."""
LOWER_IS_BETTER = ("perplexity", "nll", "latency", "energy", "seconds", "_ms", "_joules")
HIGHER_IS_BETTER = ("accuracy", "agreement", "sqnr", "f1", "throughput", "tokens_per_s")
OK_STATES = {"PASS", "WARN", "INCONCLUSIVE", "SKIPPED"}
BAD_STATES = {"FAIL", "ERROR"}
RAN_STATES = {"PASS", "WARN", "INCONCLUSIVE", "FAIL", "ERROR"}
"""Statuses of a check that ran; SKIPPED did not, so it vouches for nothing."""
EXIT_INTERNAL = 3
"""A bug in qcheck, never 0 or 1 (pytest's convention)."""


@dataclass(frozen=True)
class Change:
    """One metric of one variant in both reports, and the verdict on its change."""

    variant: str
    metric: str
    baseline: float | None
    new: float | None
    relative: float | None
    change_low: float | None
    change_high: float | None
    tolerance: float
    noise: str
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Every change between two reports, check regressions, what vanished, notes, and the gate's verdict.

    `vanished_variants` and `vanished_checks` were in the baseline (checks: ran there) and are absent from the
    new report; `checks_run` counts the new report's checks that ran (not SKIPPED). Each of them, when non-empty
    (or zero), is a regression: a report that measured less cannot show that nothing got worse.
    """

    baseline: str
    new: str
    changes: tuple[Change, ...]
    check_regressions: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]
    level: float
    vanished_variants: tuple[str, ...] = ()
    vanished_checks: tuple[dict[str, Any], ...] = ()
    checks_run: int | None = None

    @property
    def regressions(self) -> list[Change]:
        """The metric changes judged regressions."""
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def no_check_ran(self) -> bool:
        """True when the new report's checks are known and none of them ran."""
        return self.checks_run == 0

    @property
    def failed(self) -> bool:
        """Whether the gate fails: a regressed metric or check, something vanished, nothing ran, or a gate note."""
        return bool(self.regressions or self.check_regressions or self.vanished_variants or self.vanished_checks
                    or self.no_check_ran or any(n.startswith("gate:") for n in self.notes))

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON data of the comparison, with its verdict."""
        return {"baseline": self.baseline, "new": self.new, "verdict": "REGRESSION" if self.failed else "OK",
                "level": self.level, "changes": [c.to_dict() for c in self.changes],
                "check_regressions": list(self.check_regressions),
                "vanished_variants": list(self.vanished_variants), "vanished_checks": list(self.vanished_checks),
                "checks_run": self.checks_run, "notes": list(self.notes)}

    def gate_messages(self) -> list[str]:
        """One line per structural regression (vanished variant or check, no check run), for the renderers."""
        lines = [f"variant vanished: {v} is in the baseline but absent from the new report"
                 for v in self.vanished_variants]
        lines += [f"check vanished: {c['name']}{' ' + c['variant'] if c['variant'] else ''} ran in the baseline "
                  f"({c['baseline']}) but is absent from the new report" for c in self.vanished_checks]
        if self.no_check_ran:
            lines.append("no check ran: the new report has no check that ran (every check absent or SKIPPED), "
                         "so it cannot show the absence of regressions")
        return lines


def direction(metric_name: str, metric: Any = None) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when unknown (a metric dict may say so itself)."""
    if isinstance(metric, dict) and isinstance(metric.get("higher_is_better"), bool):
        return 1 if metric["higher_is_better"] else -1
    if metric_name in DIRECTIONS:
        return DIRECTIONS[metric_name]
    name = metric_name.lower()
    if any(k in name for k in HIGHER_IS_BETTER):
        return 1
    if any(k in name for k in LOWER_IS_BETTER):
        return -1
    return 0


def tolerance_for(metric: str, tolerances: dict[str, float]) -> float:
    """The relative tolerance of a metric: exact name, then latency/energy prefix, then '*'."""
    if metric in tolerances:
        return tolerances[metric]
    if metric.startswith(("latency", "energy")) and "latency_ms" in tolerances:
        return tolerances["latency_ms"]
    return tolerances.get("*", DEFAULT_TOLERANCES["*"])


def parse_tolerances(values: list[str]) -> dict[str, float]:
    """`0.05`, `5%` or `perplexity=0.02` (repeatable) merged over DEFAULT_TOLERANCES."""
    out = dict(DEFAULT_TOLERANCES)
    for raw in values:
        name, _, number = raw.rpartition("=")
        text = number.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ConfigError(f"--tolerance {raw!r}: expected a fraction (0.05), a percentage (5%) or "
                              "METRIC=VALUE", field="--tolerance") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"--tolerance {raw!r}: must be a finite, non-negative number", field="--tolerance")
        if name:
            out[name.strip()] = value
        else:
            out = {k: value for k in out}
            out["*"] = value
    return out


def _half_width(metric: Any, value: float, level: float) -> float | None:
    """Half-width of a metric's own interval: stated, from raw samples (bootstrap median), or Wilson for rates."""
    interval = metric_interval(metric)
    if interval is None and isinstance(metric, dict):
        samples = metric.get("samples")
        if isinstance(samples, list) and len(samples) >= 2 and all(isinstance(s, (int, float)) for s in samples):
            import numpy as np

            from qcheck.stats import bootstrap_interval

            iv = bootstrap_interval(samples, statistic=np.median, level=level)
            interval = (iv.low, iv.high)
        n = metric.get("n")
        if interval is None and isinstance(n, int) and n > 0 and 0.0 <= value <= 1.0:
            from qcheck.stats import wilson_interval

            iv = wilson_interval(round(value * n), n, level)
            interval = (iv.low, iv.high)
    if interval is None:
        return None
    return max(abs(value - interval[0]), abs(interval[1] - value))


def _same_slice(base: dict[str, Any], new: dict[str, Any]) -> bool:
    slices = (base.get("meta", {}).get("data") or {}), (new.get("meta", {}).get("data") or {})
    key = "perplexity_text"
    if key not in slices[0] or key not in slices[1]:
        return True
    return all(slices[0][key].get(k) == slices[1][key].get(k) for k in ("sha256", "max_tokens", "context"))


def compare_metric(variant: str, name: str, base_metric: Any, new_metric: Any, tolerance: float,
                   level: float = 0.95, paired: bool = True) -> Change:
    """Judge one metric's change: regression / improved / within tolerance / within noise / unmeasured / ..."""
    b, n = metric_value(base_metric), metric_value(new_metric)

    def change(relative: float | None, low: float | None, high: float | None, noise: str, verdict: str) -> Change:
        return Change(variant, name, b, n, relative, low, high, tolerance, noise, verdict)

    if base_metric is None:
        return change(None, None, None, "", "new metric")
    if new_metric is None:
        return change(None, None, None, "", "missing in new")
    if b is None or n is None or not math.isfinite(b) or not math.isfinite(n):
        return change(None, None, None, "", "not comparable (non-finite or no value)")
    scale = abs(b) if b != 0 else 1.0
    relative = (n - b) / scale
    sign = direction(name, new_metric if isinstance(new_metric, dict) else base_metric)
    low = high = None
    noise = "none recorded"
    wb, wn = window_data(base_metric), window_data(new_metric)
    if paired and wb and wn and wb[1] == wn[1] and len(wb[1]) >= 2:
        diffs = [x / t - y / t for x, y, t in zip(wn[0], wb[0], wb[1])]
        _, lo, hi = weighted_t_interval(diffs, [float(t) for t in wb[1]], level)
        low, high = math.expm1(lo), math.expm1(hi)
        relative = math.exp(math.log(n) - math.log(b)) - 1 if b > 0 and n > 0 else relative
        noise = f"paired t over {len(diffs)} windows (same tokens)"
    elif name in EXACT_METRICS:
        low = high = relative
        noise = EXACT_METRICS[name]
    else:
        hb, hn = _half_width(base_metric, b, level), _half_width(new_metric, n, level)
        if hb is not None and hn is not None:
            half = math.hypot(hb, hn) / scale
            low, high = relative - half, relative + half
            noise = "intervals of both runs"
    if low is None or high is None:
        return change(relative, None, None, noise, "unmeasured" if abs(relative) > tolerance else "within tolerance")
    excludes_zero = low > 0 or high < 0
    if abs(relative) <= tolerance:
        verdict = "within tolerance"
    elif not excludes_zero:
        verdict = "within noise"
    elif sign == 0:
        verdict = "changed"
    else:
        verdict = "regression" if sign * relative < 0 else "improved"
    return change(relative, low, high, noise, verdict)


def _check_key(check: dict[str, Any]) -> tuple[str, str]:
    return str(check.get("name")), str(check.get("variant") or "")


def _vanished_checks(base: dict[str, Any], new: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Checks that ran in the baseline and are absent from the new report; and how many absent ones were SKIPPED."""
    present = {_check_key(c) for c in new["checks"]}
    vanished, skipped = [], 0
    for c in base["checks"]:
        key = _check_key(c)
        if key in present:
            continue
        if c.get("status") in RAN_STATES:
            vanished.append({"name": key[0], "variant": key[1] or None, "baseline": c.get("status")})
        else:
            skipped += 1
        present.add(key)
    return vanished, skipped


def _holds_no_value(metric: Any) -> bool:
    """Absent, or a dict with none of VALUE_KEYS: nothing for the gate to compare (not "not comparable")."""
    from qcheck.report.metrics import VALUE_KEYS

    return metric is None or (isinstance(metric, dict) and not any(k in metric for k in VALUE_KEYS))


def compare_reports(base: dict[str, Any], new: dict[str, Any], tolerances: dict[str, float] | None = None,
                    level: float = 0.95, baseline_name: str = "baseline", new_name: str = "new") -> Comparison:
    """Compare two loaded reports metric by metric and check by check."""
    tolerances = tolerances or dict(DEFAULT_TOLERANCES)
    notes: list[str] = []
    paired = _same_slice(base, new)
    if not paired:
        notes.append("the perplexity text slices differ (sha256, tokens or context): windows are not paired, "
                     "so only recorded intervals count as noise")
    changes = []
    for variant in sorted(set(base["variants"]) | set(new["variants"])):
        bm = (base["variants"].get(variant) or {}).get("metrics") or {}
        nm = (new["variants"].get(variant) or {}).get("metrics") or {}
        for metric in sorted(set(bm) | set(nm)):
            if _holds_no_value(bm.get(metric)) and _holds_no_value(nm.get(metric)):
                continue  # a record kept whole (the fidelity summary: its kl_mean and top1_agreement are metrics)
            changes.append(compare_metric(variant, metric, bm.get(metric), nm.get(metric),
                                          tolerance_for(metric, tolerances), level, paired))
    base_checks = {_check_key(c): c for c in base["checks"]}
    check_regressions = []
    for c in new["checks"]:
        old = base_checks.get(_check_key(c))
        if c.get("status") in BAD_STATES and (old is None or old.get("status") in OK_STATES):
            check_regressions.append({"name": c.get("name"), "variant": c.get("variant"),
                                      "baseline": old.get("status") if old else None, "new": c.get("status"),
                                      "message": c.get("message", "")})
    vanished_variants = tuple(v for v in base["variants"] if v not in new["variants"])
    vanished_checks, vanished_skipped = _vanished_checks(base, new)
    if vanished_skipped:
        notes.append(f"{vanished_skipped} check(s) SKIPPED in the baseline are absent from the new report "
                     "(they vouched for nothing there, so their absence is not a regression)")
    checks_run = sum(1 for c in new["checks"] if c.get("status") in RAN_STATES)
    if not new.get("complete", True):
        reason = (new.get("interruption") or {}).get("reason", "stopped early")
        notes.append(f"gate: the new run is incomplete ({reason}; {len(new.get('unfinished') or [])} tests did "
                     "not finish), so it cannot show the absence of regressions")
    if base.get("meta", {}).get("model") != new.get("meta", {}).get("model"):
        notes.append("the two reports describe different models")
    return Comparison(baseline_name, new_name, tuple(changes), tuple(check_regressions), tuple(notes), level,
                      vanished_variants, tuple(vanished_checks), checks_run)


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.2f}%"


def _rows(comparison: Comparison, show_all: bool) -> list[list[str]]:
    rows = []
    for c in comparison.changes:
        if not show_all and c.verdict in ("within tolerance",) and (c.relative or 0) == 0:
            continue
        interval = f"[{_pct(c.change_low)}, {_pct(c.change_high)}]" if c.change_low is not None else ""
        rows.append([c.verdict, c.variant, c.metric, _num(c.baseline), _num(c.new), _pct(c.relative), interval,
                     f"{c.tolerance * 100:g}%", c.noise])
    return rows


HEADER = ["verdict", "variant", "metric", "baseline", "new", "change", "change interval", "tolerance", "noise"]


def render_markdown(comparison: Comparison, show_all: bool = False) -> str:
    """A Markdown table of the changes (regressions first), for CI comments."""
    verdict = "REGRESSION" if comparison.failed else "OK"
    lines = [f"## qcheck compare: {verdict}", "",
             (f"Baseline `{comparison.baseline}` vs new `{comparison.new}`. A regression is worse than the tolerance "
              f"AND outside the {comparison.level:.0%} interval of the measured noise."), ""]
    order = {"regression": 0, "unmeasured": 1, "changed": 2, "improved": 3, "within noise": 4}
    rows = sorted(_rows(comparison, show_all), key=lambda r: order.get(r[0], 9))
    if rows:
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        for r in rows:
            r = [f"**{r[0]}**" if r[0] == "regression" else r[0], *r[1:]]
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    else:
        lines.append("No metric changed.")
    if comparison.check_regressions:
        lines += ["", "### Checks that now fail", "", "| check | variant | baseline | new | message |",
                  "|---|---|---|---|---|"]
        for c in comparison.check_regressions:
            lines.append(f"| {c['name']} | {c['variant'] or ''} | {c['baseline'] or 'absent'} | {c['new']} | "
                         f"{str(c['message']).replace('|', '/').replace(chr(10), ' ')[:300]} |")
    gate = comparison.gate_messages()
    if gate:
        lines += ["", "### Missing from the new report", ""] + [f"- **{m}**" for m in gate]
    if comparison.notes:
        lines += [""] + [f"- {n}" for n in comparison.notes]
    lines.append("")
    return "\n".join(lines)


def render_text(comparison: Comparison, show_all: bool = False) -> str:
    """An aligned plain-text table for terminals."""
    rows = [HEADER, *_rows(comparison, show_all)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"qcheck compare: {'REGRESSION' if comparison.failed else 'OK'} ({comparison.baseline} -> {comparison.new})"]
    if len(rows) > 1:
        lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    else:
        lines.append("no metric changed")
    for c in comparison.check_regressions:
        lines.append(f"check now {c['new']}: {c['name']} {c['variant'] or ''} (baseline {c['baseline'] or 'absent'})"
                     f": {c['message']}")
    lines += comparison.gate_messages()
    lines += [f"note: {n}" for n in comparison.notes]
    return "\n".join(lines) + "\n"


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", metavar="BASELINE.json", help="the baseline qcheck report")
    parser.add_argument("new", metavar="NEW.json", help="the new qcheck report")
    parser.add_argument("--tolerance", action="append", default=[], metavar="[METRIC=]VALUE",
                        help="relative tolerance, e.g. 0.05, 5%% or perplexity=0.02 (repeat); defaults: "
                             + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TOLERANCES.items()))
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the noise intervals")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument("--all", action="store_true", help="also list metrics that did not change at all")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip JSON Schema validation (otherwise done when jsonschema is installed)")


def _check_shape(data: dict[str, Any], path: str) -> None:
    """What compare reads must have the shape it reads (also without the JSON Schema): QCheckError otherwise."""
    def bad(where: str, expected: str) -> QCheckError:
        return QCheckError(f"{path}: not a qcheck report ({where} must be {expected})")

    if not isinstance(data.get("meta"), dict):
        raise bad("'meta'", "an object")
    slices = data["meta"].get("data")
    if slices is not None and not (isinstance(slices, dict) and all(isinstance(v, dict) for v in slices.values())):
        raise bad("'meta.data'", "an object of objects")
    for name, variant in data["variants"].items():
        if variant and not (isinstance(variant, dict) and isinstance(variant.get("metrics") or {}, dict)):
            raise bad(f"variants/{name}", "an object whose 'metrics' is an object")
    for i, check in enumerate(data["checks"]):
        if not isinstance(check, dict):
            raise bad(f"checks/{i}", "an object")


def _load(path: str, validate: bool) -> dict[str, Any]:
    data = load_report(path)
    if validate:
        try:
            validate_report(data)
        except MissingDependencyError:
            pass
        except QCheckError as exc:
            raise QCheckError(f"{path}: {exc}") from None
    _check_shape(data, path)
    return data


def cli_main(args: argparse.Namespace) -> int:
    """Run `qcheck compare`: exit 1 on a regression, 0 otherwise; QCheckError (exit 2) on bad input; 3 on a bug."""
    if not 0 < args.level < 1:
        raise ConfigError(f"--level must be between 0 and 1, got {args.level}", field="--level")
    tolerances = parse_tolerances(args.tolerance)
    base, new = _load(args.baseline, not args.no_validate), _load(args.new, not args.no_validate)
    try:
        comparison = compare_reports(base, new, tolerances, args.level, args.baseline, args.new)
        if args.format == "json":
            text = json.dumps(comparison.to_dict(), indent=2) + "\n"
        elif args.format == "markdown":
            text = render_markdown(comparison, args.all)
        else:
            text = render_text(comparison, args.all)
    except Exception as exc:  # noqa: BLE001 - a bug here must not read as OK (0) or REGRESSION (1)
        print(f"qcheck compare: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    print(text, end="")
    return 1 if comparison.failed else 0

