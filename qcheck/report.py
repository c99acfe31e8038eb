"""The run report: metadata, per-variant metrics and manifests, per-check results; JSON and Markdown writers.

Reports are written atomically (temp file + rename), so a reader never sees half a report; a run that is
interrupted still writes what finished and marks itself incomplete.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcheck.results import CheckResult, Status, to_jsonable

SCHEMA_VERSION = "1.0"


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

    def variant(self, name: str) -> VariantReport:
        if name not in self.variants:
            self.variants[name] = VariantReport(name)
        return self.variants[name]

    def add_check(self, result: CheckResult) -> CheckResult:
        self.checks.append(result)
        return result

    def add_metric(self, variant: str, key: str, value: Any) -> None:
        self.variant(variant).metrics[key] = value

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
        out = {s.value: 0 for s in Status}
        for c in self.checks:
            out[c.status.value] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "schema_version": SCHEMA_VERSION,
            "status": self.status.value,
            "complete": self.complete,
            "counts": self.counts(),
            "meta": {**self.meta, "duration_s": round(time.time() - self.started, 3)},
            "variants": {k: {"name": v.name, "plan": v.plan, "manifest_summary": v.manifest_summary,
                             "metrics": v.metrics, "manifest": v.manifest} for k, v in self.variants.items()},
            "checks": [c.to_dict() for c in self.checks],
        })


def run_metadata(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, platform and device facts recorded with every run."""
    import torch

    import qcheck

    meta: dict[str, Any] = {
        "qcheck": qcheck.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cuda_available": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads(),
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
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(report: RunReport, path: str | os.PathLike[str]) -> Path:
    """The JSON report (strict JSON: NaN and infinities are written as strings)."""
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.{digits}f}"
    if isinstance(value, dict) and "estimate" in value:
        return f"{_fmt(value['estimate'])} [{_fmt(value['low'])}, {_fmt(value['high'])}]"
    return "" if value is None else str(value)


METRIC_COLUMNS = ("perplexity", "sqnr_db", "kl_mean", "top1_agreement", "boxed_rate", "arc_accuracy",
                  "clean_accuracy", "robust_accuracy", "latency_ms")


def render_markdown(report: RunReport) -> str:
    """A summary a person pastes into a PR: verdict, per-variant metrics, every check with its basis."""
    data = report.to_dict()
    meta = data["meta"]
    lines = [f"# qcheck report: {data['status']}", ""]
    model = meta.get("model", {})
    lines.append(f"- model: {model.get('name', model) if isinstance(model, dict) else model}")
    for key in ("device", "qcheck", "torch", "transformers", "created", "duration_s"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    if "data" in meta:
        lines.append(f"- data: {json.dumps(meta['data'])}")
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items() if v)
    lines += [f"- checks: {counts or 'none'}" + ("" if report.complete else " (run incomplete)"), ""]
    if report.variants:
        cols = [c for c in METRIC_COLUMNS if any(c in v.metrics for v in report.variants.values())]
        lines += ["## Variants", "", "| variant | layers quantized | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for v in report.variants.values():
            s = v.manifest_summary
            layers = f"{s.get('applied', '')}/{s.get('layers', '')}" if s else ""
            row = [_metric_cell(v.metrics.get(c)) for c in cols]
            lines.append(f"| {v.name} | {layers} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Checks", "", "| status | check | variant | message | basis |", "|---|---|---|---|---|"]
    for c in report.checks:
        basis = "; ".join(x for x in (f"compared {c.compared}" if c.compared else "", f"n={c.n}" if c.n is not None
                                      else "", c.test, f"threshold {c.threshold}" if c.threshold is not None else "")
                          if x)
        lines.append(f"| {c.status.value} | {c.name} | {c.variant or ''} | {_cell(c.message)} | {_cell(basis)} |")
    lines.append("")
    return "\n".join(lines)


def _metric_cell(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("value", "perplexity", "estimate", "rate", "median_ms"):
            if key in value:
                interval = value.get("interval")
                text = _fmt(value[key])
                if isinstance(interval, dict):
                    text += f" [{_fmt(interval.get('low'))}, {_fmt(interval.get('high'))}]"
                return text
        return _cell(json.dumps(to_jsonable(value))[:60])
    return _fmt(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(report: RunReport, path: str | os.PathLike[str]) -> Path:
    return atomic_write_text(path, render_markdown(report))


def write_reports(report: RunReport, out_dir: str | os.PathLike[str], stem: str = "qcheck-report") -> list[Path]:
    """Write every report format into `out_dir`; returns the paths written."""
    out = Path(out_dir)
    return [write_json(report, out / f"{stem}.json"), write_markdown(report, out / f"{stem}.md")]
