"""The report's per-variant view, rendered from the record store: plan, manifest and the metrics each measurement
yields (value, interval, n), in the layout `qcheck compare`, the Markdown and the HTML writers read."""
from __future__ import annotations

import math
from typing import Any

MANIFEST_KEYS = ("name", "format", "bits", "rule", "applied", "kept_reason", "dtype", "module_class", "rel_change",
                 "sqnr_db", "saturation_rate", "underflow_rate", "sparsity")
MIN_BLOCKS_FOR_INTERVAL = 4
"""Fewer blocks of 128 tokens than this give no perplexity interval (the report says so instead)."""


def perplexity_metric(data: dict[str, Any], level: float = 0.95) -> dict[str, Any]:
    """A perplexity record as a report metric: the pooled perplexity with a t interval over blocks of 128 tokens
    (exponentiated), or the reason there is none."""
    from qcheck.report.metrics import weighted_t_interval

    metric = dict(data)
    nll, tokens = data.get("block_nll") or [], data.get("block_tokens") or []
    units = [(n / t, float(t)) for n, t in zip(nll, tokens) if t > 0]
    if len(units) >= MIN_BLOCKS_FOR_INTERVAL:
        _, low, high = weighted_t_interval([u[0] for u in units], [u[1] for u in units], level)
        metric["interval"] = {"low": math.exp(low), "high": math.exp(high), "level": level,
                              "method": f"t interval of NLL/token over {len(units)} blocks of "
                                        f"{data.get('block_size', 128)} tokens, exponentiated"}
    else:
        metric["interval_note"] = (f"too few blocks for an interval ({len(units)} of 128 tokens, "
                                   f"< {MIN_BLOCKS_FOR_INTERVAL})")
    return metric


def variant_view(store: Any, name: str) -> dict[str, Any]:
    """{plan, manifest_summary, manifest, metrics} of one variant from its records."""
    out: dict[str, Any] = {"name": name, "plan": {}, "manifest_summary": {}, "manifest": [], "metrics": {}}
    metrics = out["metrics"]
    for measurement, record in store.of_variant(name).items():
        if not record.ok:
            continue
        data = record.data
        render = _RENDER.get(measurement)
        if measurement == "build":
            out["plan"] = data.get("plan") or {}
            manifest = data.get("manifest") or {}
            out["manifest_summary"] = manifest.get("summary") or {}
            out["manifest"] = [{k: layer.get(k) for k in MANIFEST_KEYS} for layer in manifest.get("layers", [])]
            if "seconds" in data:
                metrics["quantize_seconds"] = data["seconds"]
        elif render is not None:
            metrics.update(render(data))
    return out


def _fidelity(data: dict[str, Any]) -> dict[str, Any]:
    from qcheck.measure.fidelity import fidelity_from_record

    result = fidelity_from_record(data)
    return {"kl_mean": result.metric("kl_mean"), "top1_agreement": result.metric("top1_agreement"),
            "fidelity": result.to_dict()}


def _robustness(data: dict[str, Any]) -> dict[str, Any]:
    from qcheck.measure.robustness import RobustnessEvaluation

    ev = RobustnessEvaluation.from_dict(data)
    return {"clean_accuracy": ev.metric("clean_accuracy"), "robust_accuracy": ev.metric("robust_accuracy"),
            "robustness_gap": ev.gap_metric(), "robustness_seconds": round(ev.seconds, 2)}


def _latency(data: dict[str, Any]) -> dict[str, Any]:
    from qcheck.measure.timing import Timing

    timing = Timing.from_dict(data["timing"])
    kind = data.get("kind") or {}
    return {"latency_ms": timing.to_metric(simulated=kind.get("simulated"), kind=kind.get("reason"),
                                           shape=data.get("shape"), regime=(data.get("regime") or {}).get("kind"),
                                           tf32=False),
            "memory": data.get("memory") or {}}


def _energy(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, energy in (data.get("energy") or {}).items():
        if energy.get("supported") and energy.get("joules_per_call") is not None:
            out[f"energy_j_per_token_{name}"] = {"value": energy["joules_per_call"] / data["tokens"],
                                                 "unit": "J/token", **energy}
    return out


LM_EVAL_COLUMNS = {"word_perplexity": "word_perplexity (lm-eval)", "byte_perplexity": "byte_perplexity (lm-eval)"}
"""lm-eval's figures as the variant tables name them: lm-eval's own names, marked as lm-eval's."""


def _lm_eval_perplexity(data: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's word and byte perplexity as report metrics, each with what it was computed on and why it differs
    from qcheck's perplexity."""
    settings = data.get("settings") or {}
    shared = {"higher_is_better": False, "definition": data.get("definition"), "n_documents": data.get("n_documents"),
              "n_tokens": data.get("n_tokens"), "max_length": settings.get("max_length"),
              "differs_from_qcheck_perplexity": list(data.get("differs_from_qcheck_perplexity") or [])}
    units = {"word_perplexity": ("word", "n_words"), "byte_perplexity": ("byte", "n_bytes")}
    return {label: {"value": data[key], "unit": units[key][0], units[key][1]: data.get(units[key][1]), **shared}
            for key, label in LM_EVAL_COLUMNS.items() if key in data}


_RENDER = {
    "perplexity": lambda d: {"perplexity": perplexity_metric(d)},
    "perplexity_short": lambda d: {"perplexity_context128": perplexity_metric(d)},
    "rtn_perplexity": lambda d: {"rtn_perplexity": perplexity_metric(d)},
    "lm_eval_perplexity": _lm_eval_perplexity,
    "fidelity": _fidelity,
    "choice": lambda d: {"arc_accuracy": d},
    "generation": lambda d: {"boxed_rate": d["boxed"]},
    "robustness": _robustness,
    "latency": _latency,
    "energy": _energy,
}
