"""The run report: what one run produced (metadata, per-variant plans, manifests and metrics, per-check results)
and the facts recorded with every run. Writers render its `to_dict()` data; see qcheck.report.writers.

A run that is interrupted still writes what finished: `mark_unfinished` lists the tests that did not finish and
marks the report incomplete. Metrics are described in qcheck.report.metrics.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcheck.report.io import SCHEMA_VERSION
from qcheck.results import CheckResult, Status, to_jsonable


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
    records: Any = None
    """The run's RecordStore: the variants' plans, manifests and metrics are rendered from it."""

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
        """Record one metric of a variant (a number or a dict, as qcheck.report.metrics describes)."""
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
            meta = self.records.meta if self.records is not None else {}
            cut = meta.get("cut_in")
            if cut:  # the measurement step the stop cut (`qcheck.engine`), in the records this run measured; with
                # --workers, each stopped worker's
                cuts = [cut, *(c for c in (meta.get("workers_cut_in") or {}).values() if c != cut)]
                self.interruption.update(cut_in=cut, reason="; ".join([self.interruption["reason"],
                                                                        *map(_describe_cut, cuts)]))

    @property
    def status(self) -> Status:
        """FAIL when a check failed or errored; INCONCLUSIVE when the run is incomplete or no check ran (all
        skipped: nothing was judged); WARN with warnings or inconclusive checks; else PASS."""
        states = {c.status for c in self.checks}
        if Status.FAIL in states or Status.ERROR in states:
            return Status.FAIL
        if not self.complete or not states - {Status.SKIPPED}:
            return Status.INCONCLUSIVE
        if Status.INCONCLUSIVE in states or Status.WARN in states:
            return Status.WARN
        return Status.PASS

    def variant_views(self) -> dict[str, dict[str, Any]]:
        """Per variant: what the records say (plan, manifest, metrics), with metrics added by hand on top."""
        from qcheck.report.from_records import variant_view

        names = list(self.records.variants) if self.records is not None else []
        names += [n for n in self.variants if n not in names]
        out = {}
        for name in names:
            view = variant_view(self.records, name) if self.records is not None else {
                "name": name, "plan": {}, "manifest_summary": {}, "manifest": [], "metrics": {}}
            extra = self.variants.get(name)
            if extra is not None:
                view["metrics"].update(extra.metrics)
                for key in ("plan", "manifest_summary", "manifest"):
                    view[key] = getattr(extra, key) or view[key]
            out[name] = view
        return out

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
            "variants": self.variant_views(),
            "checks": [c.to_dict() for c in self.checks],
            "unfinished": list(self.unfinished),
            "interruption": self.interruption,
            **({"records": self.records.to_dict()} if self.records is not None else {}),
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


def _describe_cut(cut: dict[str, Any]) -> str:
    """The step a stopped run was cut in, for the interruption's reason: which, after how long, what it had noted."""
    facts = {k: v for k, v in cut.items() if k not in ("variant", "measurement", "after_s")}
    noted = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in facts.items())
    step = ("while loading the model" if cut.get("measurement") == "load"  # a worker stopped before measuring
            else f"in {cut.get('variant')}'s {cut.get('measurement')}")
    return f"cut {step} after {cut.get('after_s')} s" + (f" ({noted})" if noted else "")
