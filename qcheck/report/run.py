"""The run report: metadata, per-variant metrics and manifests, per-check results; JSON, Markdown and HTML writers.

Reports are written atomically (temp file + rename), so a reader never sees half a report; a run that is
interrupted still writes what finished, lists the tests that did not finish and marks itself incomplete.
The JSON layout is described by `report_schema.json` (versioned by SCHEMA_VERSION); `load_report` reads a
report back and refuses files that are not qcheck reports or that use another major schema version.

A metric is a number or a dict holding its value under one of VALUE_KEYS, optionally with
`"interval": {"low", "high", "level", "method"}`, `"n"` (samples behind it), `"samples"` (raw repeats),
`"higher_is_better"`, and for perplexity the per-window `window_nll` / `window_tokens`.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qcheck.errors import QCheckError
from qcheck.results import CheckResult, Status, to_jsonable

SCHEMA_VERSION = "1.0"
"""Major.minor: a minor bump only adds optional fields; readers refuse another major version."""
STEM = "qcheck-report"
VALUE_KEYS = ("value", "perplexity", "estimate", "rate", "median_ms", "mean")
"""Where a metric dict keeps its value, in order of preference."""


@dataclass
class VariantReport:
    """One model variant: its plan, manifest summary and metrics (each metric a dict with its basis)."""

    name: str
    plan: dict[str, Any] = field(default_factory=dict)
    manifest_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunReport:
    """Everything one run produced; `status` is FAIL if any check failed or errored."""

    meta: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, VariantReport] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    complete: bool = True
    started: float = field(default_factory=time.time)
    finished_tests: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    interruption: dict[str, Any] | None = None

    def variant(self, name: str) -> VariantReport:
        """The variant's entry, created on first use."""
        if name not in self.variants:
            self.variants[name] = VariantReport(name)
        return self.variants[name]

    def add_check(self, result: CheckResult) -> CheckResult:
        """Append a check result and return it."""
        self.checks.append(result)
        return result

    def add_metric(self, variant: str, key: str, value: Any) -> None:
        """Record one metric of a variant (a number or a dict as described in the module docstring)."""
        self.variant(variant).metrics[key] = value

    def add_data_slice(self, name: str, path: str | os.PathLike[str], **facts: Any) -> dict[str, Any]:
        """Record a data slice (file, its sha256 and how it was cut, e.g. rows=50) under meta["data"][name]."""
        from qcheck.inputs.data import sha256_of

        entry = {"path": str(path), "sha256": sha256_of(Path(path)), **facts}
        self.meta.setdefault("data", {})[name] = entry
        return entry

    def note_finished(self, nodeid: str) -> None:
        """Remember that a test ran to its end (setup, call and teardown)."""
        self.finished_tests.append(nodeid)

    def mark_unfinished(self, planned: list[str], reason: str | None = None, exit_status: int | None = None) -> None:
        """List the planned tests that did not finish; any such test (or a reason) makes the run incomplete."""
        done = set(self.finished_tests)
        self.unfinished = [nodeid for nodeid in planned if nodeid not in done]
        if self.unfinished or reason:
            self.complete = False
            self.interruption = {"reason": reason or f"{len(self.unfinished)} test(s) did not finish",
                                 "exit_status": exit_status, "unfinished": len(self.unfinished)}

    @property
    def status(self) -> Status:
        states = {c.status for c in self.checks}
        if Status.FAIL in states or Status.ERROR in states:
            return Status.FAIL
        if not self.complete:
            return Status.INCONCLUSIVE
        if Status.INCONCLUSIVE in states or Status.WARN in states:
            return Status.WARN
        return Status.PASS

    def counts(self) -> dict[str, int]:
        """Number of checks per status."""
        out = {s.value: 0 for s in Status}
        for c in self.checks:
            out[c.status.value] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report as strict-JSON data, in the layout of report_schema.json."""
        return to_jsonable({
            "schema_version": SCHEMA_VERSION,
            "status": self.status.value,
            "complete": self.complete,
            "counts": self.counts(),
            "meta": {**self.meta, "duration_s": round(time.time() - self.started, 3)},
            "variants": {k: {"name": v.name, "plan": v.plan, "manifest_summary": v.manifest_summary,
                             "metrics": v.metrics, "manifest": v.manifest} for k, v in self.variants.items()},
            "checks": [c.to_dict() for c in self.checks],
            "unfinished": list(self.unfinished),
            "interruption": self.interruption,
        })


def run_metadata(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, platform, device facts and the command line, recorded with every run."""
    import torch

    import qcheck

    meta: dict[str, Any] = {
        "qcheck": qcheck.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "machine": platform.machine(), "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cuda_available": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "argv": list(sys.argv),
        "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "CI", "OMP_NUM_THREADS")
                if k in os.environ},
    }
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(0)
        meta["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        meta["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        meta["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    meta.update(extra or {})
    return meta


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` through a temp file in the same folder and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a report is as readable as any new file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(report: RunReport, path: str | os.PathLike[str]) -> Path:
    """The JSON report (strict JSON: NaN and infinities are written as strings)."""
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n")


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the report, shipped as qcheck/report/schema.json."""
    return json.loads(resources.files("qcheck.report").joinpath("schema.json").read_text(encoding="utf-8"))


def validate_report(data: dict[str, Any]) -> None:
    """Validate report data against the schema; raises QCheckError naming the first problem (needs jsonschema)."""
    from qcheck.errors import require

    jsonschema = require("jsonschema", "validating qcheck reports against report_schema.json")
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top level)"
        raise QCheckError(f"report does not match report_schema.json at {where}: {errors[0].message}"
                          + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""))


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a qcheck JSON report; QCheckError when unreadable, not a qcheck report, or of another major version."""
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QCheckError(f"{source}: cannot read the report ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QCheckError(f"{source}: not a JSON file ({exc})") from exc
    required = ("schema_version", "status", "meta", "variants", "checks")
    if not isinstance(data, dict) or any(k not in data for k in required):
        raise QCheckError(f"{source}: not a qcheck report (a qcheck report is a JSON object with the keys "
                          f"{', '.join(required)})")
    version = str(data["schema_version"])
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise QCheckError(f"{source}: report schema version {version} does not match this qcheck's "
                          f"{SCHEMA_VERSION} (major versions differ); regenerate the report with this qcheck")
    if not isinstance(data["variants"], dict) or not isinstance(data["checks"], list):
        raise QCheckError(f"{source}: not a qcheck report ('variants' must be an object and 'checks' a list)")
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return None


def metric_value(metric: Any) -> float | None:
    """The number a metric states (first of VALUE_KEYS in a dict), or None when it states none."""
    if isinstance(metric, dict):
        for key in VALUE_KEYS:
            if key in metric:
                return _number(metric[key])
        return None
    return _number(metric)


def metric_interval(metric: Any) -> tuple[float, float] | None:
    """The metric's (low, high) interval: stated, else computed from per-window NLL (perplexity), else None."""
    if not isinstance(metric, dict):
        return None
    interval = metric.get("interval")
    if isinstance(interval, dict):
        low, high = _number(interval.get("low")), _number(interval.get("high"))
        if low is not None and high is not None:
            return low, high
    windows = window_log_interval(metric)
    if windows is not None:
        return math.exp(windows[0]), math.exp(windows[1])
    return None


def window_data(metric: Any) -> tuple[list[float], list[int]] | None:
    """Per-window NLL sums and scored-token counts of a perplexity metric, when recorded and consistent."""
    if not isinstance(metric, dict):
        return None
    nll, tokens = metric.get("window_nll"), metric.get("window_tokens")
    if not isinstance(nll, list) or not isinstance(tokens, list) or len(nll) != len(tokens) or not nll:
        return None
    values = [_number(x) for x in nll]
    if any(v is None or not math.isfinite(v) for v in values) or any(not isinstance(t, int) or t <= 0 for t in tokens):
        return None
    return [float(v) for v in values], [int(t) for t in tokens]


def weighted_t_interval(values: list[float], weights: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of a weighted mean with a t interval over the units (needs >= 2 units)."""
    from scipy.special import stdtrit  # the t quantile, without importing all of scipy.stats

    n = len(values)
    if n < 2:
        raise ValueError("a t interval needs at least 2 units")
    total = sum(weights)
    mean = sum(v * w for v, w in zip(values, weights)) / total
    var = sum((w / total) ** 2 * (v - mean) ** 2 for v, w in zip(values, weights)) * n / (n - 1)
    half = float(stdtrit(n - 1, 0.5 + level / 2)) * math.sqrt(var)
    return mean, mean - half, mean + half


def window_log_interval(metric: Any, level: float = 0.95) -> tuple[float, float] | None:
    """Interval of log-perplexity (NLL per token) from per-window data: token-weighted t interval over windows."""
    data = window_data(metric)
    if data is None or len(data[0]) < 2:
        return None
    nll, tokens = data
    _, low, high = weighted_t_interval([x / t for x, t in zip(nll, tokens)], [float(t) for t in tokens], level)
    return low, high


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else \
            f"{value:.{digits}f}"
    if isinstance(value, dict) and "estimate" in value:
        return f"{_fmt(value['estimate'])} [{_fmt(value['low'])}, {_fmt(value['high'])}]"
    return "" if value is None else str(value)


METRIC_COLUMNS = ("perplexity", "sqnr_db", "kl_mean", "top1_agreement", "boxed_rate", "arc_accuracy",
                  "clean_accuracy", "robust_accuracy", "latency_ms")


def metric_cell(value: Any) -> str:
    """A metric as table text: value and, where known, [low, high]."""
    number = metric_value(value)
    if number is None:
        return _cell(json.dumps(to_jsonable(value))[:60]) if isinstance(value, dict) else _fmt(value)
    text = _fmt(number)
    interval = metric_interval(value)
    if interval is not None:
        text += f" [{_fmt(interval[0])}, {_fmt(interval[1])}]"
    return text


def _basis(check: dict[str, Any]) -> str:
    parts = (f"compared {check.get('compared')}" if check.get("compared") else "",
             f"n={check['n']}" if check.get("n") is not None else "", check.get("test") or "",
             f"threshold {check['threshold']}" if check.get("threshold") is not None else "")
    return "; ".join(x for x in parts if x)


def render_markdown(report: RunReport | dict[str, Any]) -> str:
    """A summary a person pastes into a PR: verdict, per-variant metrics, every check with its basis."""
    data = report.to_dict() if isinstance(report, RunReport) else report
    meta = data["meta"]
    lines = [f"# qcheck report: {data['status']}", ""]
    model = meta.get("model", {})
    lines.append(f"- model: {model.get('name', model) if isinstance(model, dict) else model}")
    for key in ("device", "gpu", "compute_capability", "qcheck", "torch", "transformers", "created", "duration_s"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    for name, entry in (meta.get("data") or {}).items():
        if isinstance(entry, dict):
            facts = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("path", "sha256"))
            sha = str(entry.get("sha256", ""))[:12]
            lines.append(f"- data {name}: {Path(str(entry.get('path', ''))).name} (sha256 {sha}…)"
                         + (f", {facts}" if facts else ""))
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items() if v)
    lines += [f"- checks: {counts or 'none'}" + ("" if data.get("complete", True) else " (run incomplete)"), ""]
    variants = data["variants"]
    if variants:
        cols = [c for c in METRIC_COLUMNS if any(c in v.get("metrics", {}) for v in variants.values())]
        lines += ["## Variants", "", "| variant | layers quantized | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for name, v in variants.items():
            s = v.get("manifest_summary") or {}
            layers = f"{s.get('applied', '')}/{s.get('layers', '')}" if s else ""
            row = [metric_cell(v.get("metrics", {}).get(c)) for c in cols]
            lines.append(f"| {name} | {layers} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Checks", "", "| status | check | variant | message | basis |", "|---|---|---|---|---|"]
    for c in data["checks"]:
        lines.append(f"| {c['status']} | {c['name']} | {c.get('variant') or ''} | {_cell(c['message'])} | "
                     f"{_cell(_basis(c))} |")
    lines.append("")
    unfinished = data.get("unfinished") or []
    if unfinished or data.get("interruption"):
        reason = (data.get("interruption") or {}).get("reason", "the run stopped early")
        lines += ["## Not finished", "", f"The run is incomplete: {reason}. These tests did not finish:", ""]
        lines += [f"- `{nodeid}`" for nodeid in unfinished] or ["- (none recorded)"]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(report: RunReport | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """The Markdown summary, written atomically."""
    return atomic_write_text(path, render_markdown(report))


def write_reports(report: RunReport, out_dir: str | os.PathLike[str], stem: str = STEM) -> list[Path]:
    """Write the JSON, Markdown and HTML reports into `out_dir` (JSON first); returns the paths written."""
    from qcheck.report.html import write_html

    out = Path(out_dir)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    paths = [atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=2, allow_nan=False) + "\n"),
             write_markdown(data, out / f"{stem}.md")]
    paths.append(write_html(data, out / f"{stem}.html"))
    return paths
