"""A pytest-xdist worker's share of the report, handed to the controller, which writes the one report.

Under `pytest -n N` the checks run in worker processes and the controller runs none: the report the controller
wrote said "no check ran" while pytest counted passes and failures (session 29). Each worker now puts its checks,
hand-added metrics, finished tests and records into `config.workeroutput` (what xdist sends back when the worker
ends, as pytest-cov does with its data), and the controller merges them before it writes the report.
"""
from __future__ import annotations

import json
from typing import Any

from qcheck.records import RecordStore
from qcheck.results import CheckResult, to_jsonable

KEY = "qcheck_report"
"""The key of a worker's share in `config.workeroutput`."""


def worker_payload(report: Any) -> str:
    """The worker's share of `report` (a RunReport) as JSON text: checks, metrics added by hand, finished tests, the
    records it measured or read, and its data slices."""
    return json.dumps(to_jsonable({
        "checks": [c.to_dict() for c in report.checks],
        "metrics": {name: v.metrics for name, v in report.variants.items() if v.metrics},
        "finished": list(report.finished_tests),
        "data": report.meta.get("data") or {},
        "records": report.records.to_dict() if report.records is not None else None,
    }), allow_nan=False)


def merge_worker_payload(report: Any, payload: str, worker: str) -> None:
    """Add one worker's share to the controller's `report`. Records two workers both measured (each loads the
    model and measures what its own tests read, the reference's perplexity for one) are kept once, the first
    worker's; the same measurement of the same model gives the same figures apart from timings."""
    data = json.loads(payload)
    report.checks.extend(CheckResult(**c) for c in data["checks"])
    for name, metrics in data["metrics"].items():
        report.variant(name).metrics.update(metrics)
    report.finished_tests.extend(data["finished"])
    report.meta.setdefault("data", {}).update(data["data"])
    report.meta.setdefault("xdist_workers", []).append(worker)
    if data["records"] is None:
        return
    store = RecordStore.from_dict(data["records"], source=f"pytest-xdist worker {worker}")
    if report.records is None:
        report.records = store
    else:
        report.records.merge(store, overlap=True)
