"""pytest-benchmark `--benchmark-json` output: one row per benchmark with its mean time per call +- stddev (seconds),
median and min; the config from the benchmark's parameter (`test_forward[fp16]` -> fp16)."""
from __future__ import annotations

import re
from typing import Any

from qcheck.lint.tables import Table, table_from_records

FAMILY = "pytest-benchmark"
_PARAM = re.compile(r"\[(?P<param>.+)\]$")


def detect(data: Any) -> bool:
    """{'machine_info': ..., 'benchmarks': [{'name': ..., 'stats': {...}}, ...], ...}."""
    return (isinstance(data, dict) and isinstance(data.get("benchmarks"), list) and bool(data["benchmarks"])
            and all(isinstance(b, dict) and isinstance(b.get("stats"), dict) for b in data["benchmarks"])
            and ("machine_info" in data or "version" in data or "datetime" in data))


def _number(value: Any) -> str | None:
    return repr(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read(data: dict[str, Any], source: str) -> list[Table]:
    """One table ('benchmarks'); rows grouped by benchmark group (else the test's base name)."""
    rows = []
    for bench in data["benchmarks"]:
        stats = bench["stats"]
        name = str(bench.get("name", ""))
        match = _PARAM.search(name)
        base = name[: match.start()] if match else name
        param = bench.get("param")
        config = str(param) if param not in (None, "") else (match.group("param") if match else name)
        row: dict[str, Any] = {"benchmark": str(bench.get("group") or base), "config": config}
        mean, spread = _number(stats.get("mean")), _number(stats.get("stddev"))
        if mean is not None:
            row["mean time per call (s)"] = mean + (f" \u00b1 {spread}" if spread is not None else "")
        for key in ("median", "min"):
            if _number(stats.get(key)) is not None:
                row[f"{key} time per call (s)"] = _number(stats[key])
        if _number(stats.get("rounds")) is not None:
            row["rounds"] = str(int(stats["rounds"]))
        for key, value in (bench.get("extra_info") or {}).items():
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                row[str(key)] = value
        rows.append(row)
    hints = {"benchmark": "task", "config": "config", "mean time per call (s)": "latency",
             "median time per call (s)": "latency", "min time per call (s)": "latency", "rounds": "measure"}
    return [table_from_records(rows, source, "benchmarks", hints=hints, meta={"family": FAMILY},
                               absent_is_marker=True)]
