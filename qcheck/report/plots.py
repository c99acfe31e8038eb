"""The report's plots, drawn with matplotlib from report data and returned as base64 PNG: perplexity vs bits per
format family, latency/energy bars, boxed compliance and accuracy per variant, per-layer bits of mixed plans.

Every bar is a stated interval (qcheck.report.metrics.metric_interval); a metric whose interval note says why it
has none (too few blocks of 128 tokens) is drawn without a bar and the note is written on the plot.
"""
from __future__ import annotations

import base64
import io
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from qcheck.report.metrics import interval_note, metric_interval, metric_value

RATE_METRICS = ("boxed_rate", "arc_accuracy", "clean_accuracy", "robust_accuracy", "top1_agreement")
"""Proportions plotted per variant (bars with their intervals)."""
COST_PREFIXES = ("latency", "energy")
"""Metrics whose name starts with one of these are plotted as cost bars with intervals."""
REFERENCE_BITS = {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0}
"""Bits of the float variants that have no quantized layers."""


def variant_bits(variant: dict[str, Any]) -> float | None:
    """Mean bits per quantized layer (from the manifest summary), or the float width of fp16/bf16/fp32."""
    bits = (variant.get("manifest_summary") or {}).get("bits") or {}
    pairs = [(float(k), int(v)) for k, v in bits.items() if _is_number(k) and int(v) > 0]
    if pairs:
        return sum(b * n for b, n in pairs) / sum(n for _, n in pairs)
    return REFERENCE_BITS.get(str(variant.get("name")))


def _is_number(text: Any) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def _figure_png(draw: Callable[[Any], None], width: float = 7.0, height: float = 3.6) -> str:
    from matplotlib.figure import Figure  # a bare Figure renders through Agg; pyplot's backend is left alone

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    draw(fig.add_subplot(1, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _errors(values: list[float], intervals: list[tuple[float, float] | None]) -> list[list[float]]:
    """Error-bar lengths below and above each value; NaN (no bar, no caps) where no interval is stated."""
    low = [max(0.0, v - i[0]) if i else math.nan for v, i in zip(values, intervals)]
    high = [max(0.0, i[1] - v) if i else math.nan for v, i in zip(values, intervals)]
    return [low, high]


def _perplexity(variant: dict[str, Any] | None) -> Any:
    return ((variant or {}).get("metrics") or {}).get("perplexity")


def perplexity_notes(data: dict[str, Any]) -> list[str]:
    """One line per interval note of the variants' perplexity ("int8, w4g64: too few blocks for an interval ..."):
    those points are drawn without a bar."""
    by_note: dict[str, list[str]] = {}
    for name, v in (data.get("variants") or {}).items():
        note = interval_note(_perplexity(v))
        if note and metric_value(_perplexity(v)) is not None:
            by_note.setdefault(note, []).append(name)
    return [f"{', '.join(names)}: {note}" for note, names in by_note.items()]


def _points(ax: Any, points: list[tuple[float, float, tuple[float, float] | None, str]], marker: str,
            label: str, line: bool) -> None:
    """The points joined (or not) by a line, with an error bar only where an interval is stated."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    (drawn,) = ax.plot(xs, ys, marker=marker, linestyle="-" if line else "none", label=label)
    barred = [p for p in points if p[2] is not None]
    if barred:
        ax.errorbar([p[0] for p in barred], [p[1] for p in barred], yerr=_errors([p[1] for p in barred],
                    [p[2] for p in barred]), fmt="none", capsize=4, ecolor=drawn.get_color())


def plot_perplexity_vs_bits(data: dict[str, Any]) -> str | None:
    """Perplexity against mean bits, one line per family, fp32 as a dashed reference; a bar where an interval is
    stated, and the note (e.g. too few blocks for an interval) written on the plot where it is not."""
    series, others = perplexity_series(data)
    if not series and not others:
        return None
    return _figure_png(lambda ax: draw_perplexity_vs_bits(ax, data))


def perplexity_series(data: dict[str, Any]) -> tuple[list[tuple[str, list[tuple[float, float, Any, str]]]],
                                                      list[tuple[float, float, Any, str]]]:
    """(per family: its (bits, perplexity, stated interval, name) points by bits; the other variants' points)."""
    from qcheck.variants import FAMILIES, REFERENCE

    variants = data["variants"]
    series = []
    for family, names in FAMILIES.items():
        points = []
        for name in names:
            v = variants.get(name)
            ppl = metric_value(_perplexity(v))
            bits = variant_bits(v) if v else None
            if ppl is not None and bits is not None and math.isfinite(ppl):
                points.append((bits, ppl, metric_interval(_perplexity(v)), name))
        if points:
            series.append((family, sorted(points, key=lambda p: (p[0], p[1]))))
    others = []
    for name, v in variants.items():
        ppl, bits = metric_value(_perplexity(v)), variant_bits(v)
        if name != REFERENCE and not any(name in names for names in FAMILIES.values()) and ppl is not None \
                and bits is not None and math.isfinite(ppl):
            others.append((bits, ppl, metric_interval(_perplexity(v)), name))
    return series, others


def draw_perplexity_vs_bits(ax: Any, data: dict[str, Any]) -> None:
    """Draw the perplexity-vs-bits plot on a matplotlib Axes."""
    from qcheck.variants import REFERENCE

    series, others = perplexity_series(data)
    reference = metric_value(_perplexity(data["variants"].get(REFERENCE)))
    for family, points in series:
        _points(ax, points, "o", family, line=True)
        for x, y, _, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for point in others:
        _points(ax, [point], "s", point[3], line=False)
    if reference is not None and math.isfinite(reference):
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"{REFERENCE} ({reference:.3f})")
    values = [p[1] for _, points in series for p in points] + [p[1] for p in others]
    low, high = min(values), max(values)
    if reference is not None and math.isfinite(reference):
        low, high = min(low, reference), max(high, reference)
    ax.set_ylim(low - 0.5 * (high - low) - 0.1 * low, high + 0.5 * (high - low) + 0.1 * high)
    notes = perplexity_notes(data)
    if notes:
        ax.text(0.01, 0.02, "no bar: " + "; ".join(notes), transform=ax.transAxes, fontsize=7, va="bottom",
                wrap=True)
    ax.set_xlabel("bits per quantized weight (mean over quantized layers)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Perplexity vs bits, per format family (long error bars are clipped)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _bars(ax: Any, labels: list[str], values: list[float], intervals: list[tuple[float, float] | None],
          colour: str) -> None:
    ax.bar(labels, values, width=0.6, yerr=_errors(values, intervals), capsize=5, color=colour, alpha=0.85)
    ax.set_xlim(-0.8, len(labels) - 0.2)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_costs(data: dict[str, Any]) -> list[tuple[str, str]]:
    """One bar chart per latency/energy metric present, with the recorded intervals as error bars."""
    keys = sorted({k for v in data["variants"].values() for k in v.get("metrics", {})
                   if k.startswith(COST_PREFIXES)})
    plots = []
    for key in keys:
        rows = [(name, metric_value(v["metrics"][key]), metric_interval(v["metrics"][key]))
                for name, v in data["variants"].items() if key in v.get("metrics", {})]
        rows = [r for r in rows if r[1] is not None and math.isfinite(r[1])]
        if not rows:
            continue

        def draw(ax: Any, rows: list = rows, key: str = key) -> None:
            _bars(ax, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], "#4c72b0")
            ax.set_ylabel(key)
            ax.set_title(f"{key} per variant (error bars: recorded intervals)")

        plots.append((key, _figure_png(draw)))
    return plots


def plot_rates(data: dict[str, Any]) -> str | None:
    """Grouped bars of boxed-answer compliance and accuracies per variant, with intervals."""
    keys = [k for k in RATE_METRICS if any(k in v.get("metrics", {}) for v in data["variants"].values())]
    if not keys:
        return None
    names = [n for n, v in data["variants"].items() if any(k in v.get("metrics", {}) for k in keys)]

    def draw(ax: Any) -> None:
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            xs, ys, ivs = [], [], []
            for j, name in enumerate(names):
                metric = data["variants"][name]["metrics"].get(key)
                value = metric_value(metric)
                if value is not None and math.isfinite(value):
                    xs.append(j + (i - (len(keys) - 1) / 2) * width)
                    ys.append(value)
                    ivs.append(metric_interval(metric))
            ax.bar(xs, ys, width=width, yerr=_errors(ys, ivs), capsize=3, label=key)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_xlim(-0.8, len(names) - 0.2)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("rate")
        ax.set_title("Boxed-answer compliance and accuracy per variant (95% intervals)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)

    return _figure_png(draw)


def mixed_variants(data: dict[str, Any]) -> list[str]:
    """Variants whose quantized layers use more than one bit width (mixed plans)."""
    out = []
    for name, v in data["variants"].items():
        bits = {float(layer["bits"]) for layer in v.get("manifest") or []
                if layer.get("applied") and _is_number(layer.get("bits"))}
        if len(bits) > 1:
            out.append(name)
    return out


def plot_layer_bits(data: dict[str, Any], name: str) -> str:
    """Bits of every layer of a mixed plan, in model order, coloured by format; kept layers drawn hollow."""
    layers = data["variants"][name]["manifest"]
    formats = list(dict.fromkeys(str(layer.get("format")) for layer in layers))
    cmap = {f: c for f, c in zip(formats, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"))}

    def draw(ax: Any) -> None:
        for i, layer in enumerate(layers):
            bits = layer.get("bits")
            height = float(bits) if _is_number(bits) else 32.0
            ax.bar(i, height, width=0.9, color=cmap.get(str(layer.get("format")), "grey") if layer.get("applied")
                   else "none", edgecolor=cmap.get(str(layer.get("format")), "grey"))
        for fmt, colour in cmap.items():
            ax.bar([], [], color=colour, label=fmt)
        ax.set_xlabel(f"layer index (0..{len(layers) - 1}, model order); hollow = kept in the reference dtype")
        ax.set_ylabel("bits")
        counts = Counter(str(x.get("bits")) for x in layers if x.get("applied"))
        ax.set_title(f"Per-layer bits of {name} (" + ", ".join(f"{n} layers at {b} bits" for b, n in counts.items())
                     + ")")
        ax.legend(fontsize=8)

    return _figure_png(draw, width=9.0)
