"""lm-evaluation-harness results files (`results_<date>.json`, `--output_path`): one table per task, one row per
file (model and variant from `config.model_args`), metrics with their `_stderr`, n from `n-samples`."""
from __future__ import annotations

import os
from typing import Any

from qcheck.lint.tables import Table, table_from_records

FAMILY = "lm-eval"
_NOT_VARIANT = frozenset({"pretrained", "tokenizer", "trust_remote_code", "device", "device_map", "parallelize",
                          "max_length", "batch_size", "max_batch_size", "add_bos_token", "use_fast_tokenizer",
                          "cache_dir", "backend", "logits_cache", "truncation", "attn_implementation", "peft",
                          "delta", "think_end_token", "enable_thinking"})
_SKIP_KEYS = frozenset({"alias", "name", "sample_len", " ", ""})
FRACTION_METRICS = frozenset({"acc", "acc_norm", "exact_match", "em", "f1", "mcc", "acc_mutual_info", "pass@1",
                              "prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                              "inst_level_loose_acc", "contains", "brier_score"})
"""Metrics lm-eval reports as fractions in [0, 1] (its metric registry: mean of per-document 0/1 or [0, 1] scores)."""


def detect(data: Any) -> bool:
    """An lm-eval results file: `results` maps tasks to metric dicts, beside `versions`, `configs` or `n-samples`."""
    return (isinstance(data, dict) and isinstance(data.get("results"), dict) and bool(data["results"])
            and all(isinstance(v, dict) for v in data["results"].values())
            and any(key in data for key in ("versions", "configs", "n-samples", "config", "n-shot")))


def _model_args(config: dict[str, Any]) -> dict[str, str]:
    args = config.get("model_args") or {}
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items()}
    pairs = {}
    for part in str(args).split(","):
        key, sep, value = part.partition("=")
        if sep:
            pairs[key.strip()] = value.strip()
    return pairs


def variant(data: dict[str, Any], source: str) -> tuple[str, str]:
    """(model, variant label): the model from `pretrained` (or `model_name`), the variant from the other
    `model_args` (dtype, load_in_4bit, revision, ...), else from `model_dtype`."""
    config = data.get("config") or {}
    args = _model_args(config)
    pretrained = args.get("pretrained") or data.get("model_name") or config.get("model") or ""
    model = os.path.basename(str(pretrained).rstrip("/")) or os.path.basename(os.path.dirname(source))
    parts = [f"{k}={v}" for k, v in args.items() if k not in _NOT_VARIANT]
    if not any(k in args for k in ("dtype", "torch_dtype")) and config.get("model_dtype") and not parts:
        parts.append(f"dtype={str(config['model_dtype']).replace('torch.', '')}")
    return model, ", ".join(parts) or str(config.get("model") or "default")


def _metrics(values: dict[str, Any]) -> dict[str, str]:
    """'acc,none' -> 'acc' (other filters keep their name), each with its '_stderr' as '±'."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if key in _SKIP_KEYS or "_stderr" in key or isinstance(value, (dict, list)):
            continue
        metric, _, filt = key.partition(",")
        name = metric if filt in ("", "none") else key
        stderr = values.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr")
        text = repr(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        if isinstance(stderr, (int, float)) and not isinstance(stderr, bool) and isinstance(value, (int, float)):
            text = f"{text} \u00b1 {float(stderr)!r}"
        out[name] = text
    return out


def read(data: dict[str, Any], source: str) -> list[Table]:
    """One table per task in `results`; the row carries model, variant, n, shots and the task's metrics."""
    model, label = variant(data, source)
    n_samples = data.get("n-samples") or {}
    shots = data.get("n-shot") or {}
    tables = []
    for task, values in data["results"].items():
        counts = n_samples.get(task) or {}
        n = counts.get("effective", counts.get("original")) if isinstance(counts, dict) else None
        if n is None:
            n = values.get("sample_len")
        row: dict[str, Any] = {"model": model, "config": label, "task": values.get("alias", task).strip() or task}
        if n is not None:
            row["n"] = n
        if task in shots:
            row["n-shot"] = shots[task]
        metrics = _metrics(values)
        if not metrics:
            continue
        row.update(metrics)
        scales = {name: 1.0 for name in metrics if name.split(",")[0] in FRACTION_METRICS}
        tables.append(table_from_records(
            [row], source, str(task), hints={"model": "model", "config": "config", "task": "task", "n": "n",
                                              "n-shot": "condition"},
            meta={"family": FAMILY, "model": model, "scales": scales}))
    return tables
