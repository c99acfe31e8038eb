"""optimum-benchmark output: `benchmark.json` (config and report) or `benchmark_report.json` (report only). One row
per stage (load_model, prefill, decode, per_token, ...) with latency mean +- stdev, throughput and memory in the
units the report states."""
from __future__ import annotations

import os
from typing import Any

from qcheck.lint.tables import Table, table_from_records

FAMILY = "optimum-benchmark"
_MEASUREMENTS = frozenset({"memory", "latency", "throughput", "energy", "efficiency"})


def _is_report(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(v is None or (isinstance(v, dict) and set(v) <= _MEASUREMENTS) for v in data.values())
            and any(isinstance(v, dict) and v for v in data.values()))


def detect(data: Any) -> bool:
    """A benchmark.json ({config: {backend, scenario, ...}, report: {...}}) or a bare benchmark_report.json."""
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "report" in data:
        return "backend" in data["config"] and _is_report(data["report"])
    return _is_report(data)


def _label(backend: dict[str, Any], source: str) -> str:
    parts = []
    scheme = backend.get("quantization_scheme")
    if scheme:
        parts.append(str(scheme))
        for key, value in (backend.get("quantization_config") or {}).items():
            if key in ("bits", "group_size", "quant_type", "weights", "activations", "version", "quant_method") \
                    and str(value) != str(scheme):
                parts.append(f"{key}={value}")
    if backend.get("torch_dtype"):
        parts.append(str(backend["torch_dtype"]))
    return " ".join(parts) or _run_name(source)


def _run_name(source: str) -> str:
    folder = os.path.basename(os.path.dirname(os.path.abspath(source)))
    return folder or os.path.splitext(os.path.basename(source))[0]


def _number(value: Any) -> str | None:
    return repr(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _stage_row(stage: str, measured: dict[str, Any]) -> dict[str, str]:
    row: dict[str, str] = {}
    latency = measured.get("latency") or {}
    if _number(latency.get("mean")) is not None:
        unit = latency.get("unit", "s")
        name = f"load time ({unit})" if stage.startswith("load") else f"latency mean ({unit})"
        spread = _number(latency.get("stdev"))
        row[name] = _number(latency["mean"]) + (f" \u00b1 {spread}" if spread is not None else "")
        if _number(latency.get("count")) is not None:
            row["latency count"] = str(int(latency["count"]))
    throughput = measured.get("throughput") or {}
    if _number(throughput.get("value")) is not None:
        row[f"throughput ({throughput.get('unit', '1/s')})"] = _number(throughput["value"])
    memory = measured.get("memory") or {}
    for key, value in memory.items():
        if key != "unit" and _number(value) is not None:
            row[f"{key} ({memory.get('unit', 'MB')})"] = _number(value)
    energy = measured.get("energy") or {}
    for key, value in energy.items():
        if key != "unit" and _number(value) is not None:
            row[f"energy {key} ({energy.get('unit', 'kWh')})"] = _number(value)
    efficiency = measured.get("efficiency") or {}
    if _number(efficiency.get("value")) is not None:
        row[f"efficiency ({efficiency.get('unit', '')})"] = _number(efficiency["value"])
    return row


def read(data: dict[str, Any], source: str) -> list[Table]:
    """One table ('stages') with a row per measured stage."""
    config = data.get("config") if "report" in data else None
    report = data["report"] if config is not None else data
    backend = (config or {}).get("backend") or {}
    scenario = (config or {}).get("scenario") or {}
    shapes = scenario.get("input_shapes") or {}
    generate = scenario.get("generate_kwargs") or {}
    model = str(backend.get("model") or "")
    base: dict[str, str] = {"model": model or _run_name(source), "config": _label(backend, source)}
    for key in ("batch_size", "sequence_length"):
        if key in shapes:
            base[key] = str(shapes[key])
    if "max_new_tokens" in generate:
        base["new_tokens"] = str(generate["max_new_tokens"])
    rows = []
    for stage, measured in report.items():
        if not isinstance(measured, dict):
            continue
        row = _stage_row(stage, measured)
        if row:
            rows.append({**base, "stage": stage, **row})
    if not rows:
        return []
    hints = {"model": "model", "config": "config", "stage": "condition", "batch_size": "batch",
             "sequence_length": "context_length", "new_tokens": "condition", "latency count": "measure"}
    for row in rows:
        for key in row:
            if key.startswith("efficiency"):
                hints[key] = "measure"
    return [table_from_records(rows, source, "stages", hints=hints, meta={"family": FAMILY, "model": model or None},
                               absent_is_marker=True)]
