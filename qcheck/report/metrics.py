"""Reading a report's metrics: the value a metric states, its stated interval or the note why it has none, and
the table text of both; plus the weighted t interval that perplexity intervals and `qcheck compare` use.

A metric is a number or a dict holding its value under one of VALUE_KEYS, optionally with
`"interval": {"low", "high", "level", "method"}` or `"interval_note"` (why there is no interval, e.g. too few
blocks of 128 tokens), `"n"` (samples behind it), `"samples"` (raw repeats), `"higher_is_better"`, and for
perplexity the per-window `window_nll` / `window_tokens` and per-block `block_nll` / `block_tokens`.
Intervals are stated by whoever made the metric; nothing here recomputes one.
"""
from __future__ import annotations

import json
import math
from typing import Any

from qcheck.results import to_jsonable

VALUE_KEYS = ("value", "perplexity", "estimate", "rate", "median_ms", "mean", "weights_mb")
"""Where a metric dict keeps its value, in order of preference (`weights_mb`: the `memory` metric, the weights'
bytes as stored, which a broken packing multiplies)."""
METRIC_COLUMNS = ("perplexity", "word_perplexity (lm-eval)", "byte_perplexity (lm-eval)", "sqnr_db", "kl_mean",
                  "top1_agreement", "boxed_rate", "arc_accuracy", "clean_accuracy", "robust_accuracy", "latency_ms")
"""The metrics the variant tables show, in column order."""
LM_EVAL_METRICS = ("word_perplexity (lm-eval)", "byte_perplexity (lm-eval)")


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
    """The metric's stated (low, high) interval, or None: an interval is never recomputed from windows here."""
    if not isinstance(metric, dict):
        return None
    interval = metric.get("interval")
    if isinstance(interval, dict):
        low, high = _number(interval.get("low")), _number(interval.get("high"))
        if low is not None and high is not None:
            return low, high
    return None


def interval_note(metric: Any) -> str | None:
    """Why the metric has no interval (e.g. "too few blocks for an interval ..."), when it says so."""
    if isinstance(metric, dict) and metric_interval(metric) is None:
        note = metric.get("interval_note")
        if isinstance(note, str) and note:
            return note
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
    """Interval of log-perplexity from per-window data (token-weighted t over windows); kept for callers that ask
    for it by name: the report itself shows only stated intervals."""
    data = window_data(metric)
    if data is None or len(data[0]) < 2:
        return None
    nll, tokens = data
    _, low, high = weighted_t_interval([x / t for x, t in zip(nll, tokens)], [float(t) for t in tokens], level)
    return low, high


def fmt(value: Any, digits: int = 4) -> str:
    """A number as table text: fixed decimals, or significant digits when very small or very large."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else \
            f"{value:.{digits}f}"
    if isinstance(value, dict) and "estimate" in value:
        return f"{fmt(value['estimate'])} [{fmt(value['low'])}, {fmt(value['high'])}]"
    return "" if value is None else str(value)


def metric_cell(value: Any) -> str:
    """A metric as table text: its value and [low, high] where stated, or its interval note where it has none."""
    number = metric_value(value)
    if number is None:
        return json.dumps(to_jsonable(value))[:60] if isinstance(value, dict) else fmt(value)
    text = fmt(number)
    interval = metric_interval(value)
    if interval is not None:
        return f"{text} [{fmt(interval[0])}, {fmt(interval[1])}]"
    note = interval_note(value)
    return f"{text} — {note}" if note else text


def lm_eval_note(variants: dict[str, Any]) -> str | None:
    """Under a variant table holding lm-eval's figures: what they and qcheck's `perplexity` are and why they differ
    (the differences recorded with the figures), or None when no variant has them."""
    metric = next((m.get(k) for m in (v.get("metrics") or {} for v in variants.values()) for k in LM_EVAL_METRICS
                   if isinstance(m.get(k), dict)), None)
    if metric is None:
        return None
    differences = metric.get("differs_from_qcheck_perplexity") or []
    return ("perplexity is qcheck's: per token of the run's slice, at the run's context. word_perplexity (lm-eval) "
            "and byte_perplexity (lm-eval) are what lm-evaluation-harness's wikitext task computes "
            f"(loglikelihood_rolling, max_length {metric.get('max_length')}) for the {metric.get('n_documents')} "
            f"whole document(s), {metric.get('n_tokens')} tokens, that the records name: compare them with lm-eval "
            "figures on the same documents. They differ from qcheck's perplexity on purpose: "
            + "; ".join(differences) + ".")
