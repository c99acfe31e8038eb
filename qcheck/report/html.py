"""The self-contained HTML report: verdict, metadata, variant and check tables, and matplotlib plots as PNG data URIs.

Plots: perplexity vs bits per family (qcheck.variants.FAMILIES), latency/energy bars with intervals, boxed
compliance and accuracy per variant, and per-layer bits of mixed plans. A plot without data is replaced by a
line saying so; a plot that fails to render says why, and the rest of the page still renders.
Works from report data (RunReport.to_dict() or a loaded JSON file), so old reports can be re-rendered.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qcheck.report.run import (
    METRIC_COLUMNS,
    _basis,
    _fmt,
    atomic_write_text,
    metric_cell,
    metric_interval,
    metric_value,
)

RATE_METRICS = ("boxed_rate", "arc_accuracy", "clean_accuracy", "robust_accuracy", "top1_agreement")
"""Proportions plotted per variant (bars with their intervals)."""
COST_PREFIXES = ("latency", "energy")
"""Metrics whose name starts with one of these are plotted as cost bars with intervals."""
REFERENCE_BITS = {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0}
STATUS_COLOURS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "ERROR": "#a40e26", "WARN": "#9a6700",
                  "INCONCLUSIVE": "#8250df", "SKIPPED": "#6e7781"}


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
    low = [v - i[0] if i else 0.0 for v, i in zip(values, intervals)]
    high = [i[1] - v if i else 0.0 for v, i in zip(values, intervals)]
    return [[max(0.0, x) for x in low], [max(0.0, x) for x in high]]


def plot_perplexity_vs_bits(data: dict[str, Any]) -> str | None:
    """Perplexity (with intervals) against mean bits, one line per family; fp32 as a dashed reference."""
    from qcheck.variants import FAMILIES, REFERENCE

    variants = data["variants"]
    series = []
    for family, names in FAMILIES.items():
        points = []
        for name in names:
            v = variants.get(name)
            ppl = metric_value((v or {}).get("metrics", {}).get("perplexity"))
            bits = variant_bits(v) if v else None
            if ppl is not None and bits is not None and math.isfinite(ppl):
                points.append((bits, ppl, metric_interval(v["metrics"]["perplexity"]), name))
        if points:
            series.append((family, sorted(points)))
    others = [(name, v) for name, v in variants.items()
              if name != REFERENCE and not any(name in names for names in FAMILIES.values())
              and metric_value(v.get("metrics", {}).get("perplexity")) is not None and variant_bits(v) is not None]
    reference = metric_value(variants.get(REFERENCE, {}).get("metrics", {}).get("perplexity"))
    if not series and not others:
        return None

    def draw(ax: Any) -> None:
        for family, points in series:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.errorbar(xs, ys, yerr=_errors(ys, [p[2] for p in points]), marker="o", capsize=4, label=family)
            for x, y, _, name in points:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        for name, v in others:
            x, y = variant_bits(v), metric_value(v["metrics"]["perplexity"])
            ax.errorbar([x], [y], yerr=_errors([y], [metric_interval(v["metrics"]["perplexity"])]), marker="s",
                        capsize=4, linestyle="none", label=name)
        if reference is not None and math.isfinite(reference):
            ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"{REFERENCE} ({reference:.3f})")
        values = [p[1] for _, points in series for p in points] + [metric_value(v["metrics"]["perplexity"])
                                                                       for _, v in others]
        low, high = min(values), max(values)
        if reference is not None and math.isfinite(reference):
            low, high = min(low, reference), max(high, reference)
        ax.set_ylim(low - 0.5 * (high - low) - 0.1 * low, high + 0.5 * (high - low) + 0.1 * high)
        ax.set_xlabel("bits per quantized weight (mean over quantized layers)")
        ax.set_ylabel("perplexity (lower is better)")
        ax.set_title("Perplexity vs bits, per format family (long error bars are clipped)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return _figure_png(draw)


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


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#1f2328;max-width:1200px}
h1 .status{padding:.1em .5em;border-radius:.3em;color:#fff}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{color:#fff;padding:.05em .4em;border-radius:.3em;font-size:.85em;font-weight:600}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #d0d7de}
.note{color:#57606a;font-style:italic} pre{white-space:pre-wrap;font-size:.8em;background:#f6f8fa;padding:.5em}
.warning{background:#fff8c5;border:1px solid #d4a72c;padding:.5em 1em}
"""


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f'<span class="badge" style="background:{colour}">{html.escape(status)}</span>'


def _plot_html(title: str, render: Callable[[], str | None], missing: str) -> str:
    try:
        png = render()
    except Exception as exc:  # a broken plot must not cost the reader the rest of the report
        return f'<h3>{html.escape(title)}</h3><p class="note">plot failed: {html.escape(type(exc).__name__)}: ' \
               f'{html.escape(str(exc))}</p>'
    if png is None:
        return f'<h3>{html.escape(title)}</h3><p class="note">{html.escape(missing)}</p>'
    return (f'<figure><h3>{html.escape(title)}</h3><img class="plot" alt="{html.escape(title)}" '
            f'src="data:image/png;base64,{png}"></figure>')


def render_html(data: dict[str, Any]) -> str:
    """The whole report as one HTML page (no external resources)."""
    e = html.escape
    meta = data.get("meta", {})
    status = str(data.get("status", ""))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>qcheck report: {e(status)}</title><style>{CSS}</style></head><body>",
             f'<h1>qcheck report <span class="status" style="background:{STATUS_COLOURS.get(status, "#57606a")}">'
             f"{e(status)}</span></h1>"]
    if not data.get("complete", True):
        reason = (data.get("interruption") or {}).get("reason", "the run stopped early")
        parts.append(f'<p class="warning">Run incomplete: {e(str(reason))}. '
                     f"{len(data.get('unfinished') or [])} test(s) did not finish (listed below).</p>")
    model = meta.get("model", "")
    rows = [("model", model.get("name", json.dumps(model)) if isinstance(model, dict) else model)]
    rows += [(k, meta[k]) for k in ("device", "gpu", "compute_capability", "qcheck", "torch", "transformers",
                                    "python", "platform", "created", "duration_s", "seeds", "argv") if k in meta]
    for name, entry in (meta.get("data") or {}).items():
        rows.append((f"data: {name}", json.dumps(entry)))
    counts = ", ".join(f"{k} {v}" for k, v in (data.get("counts") or {}).items() if v)
    rows.append(("checks", counts or "none"))
    parts.append("<h2>Run</h2><table>" + "".join(
        f"<tr><th>{e(str(k))}</th><td>{e(v if isinstance(v, str) else json.dumps(v))}</td></tr>" for k, v in rows)
        + "</table>")
    variants = data.get("variants") or {}
    if variants:
        cols = [c for c in METRIC_COLUMNS if any(c in v.get("metrics", {}) for v in variants.values())]
        head = "".join(f"<th>{e(c)}</th>" for c in ["variant", "layers quantized", "mean bits", *cols])
        body = []
        for name, v in variants.items():
            s = v.get("manifest_summary") or {}
            bits = variant_bits(v)
            cells = [e(name), e(f"{s.get('applied', '')}/{s.get('layers', '')}" if s else ""),
                     e(_fmt(bits) if bits is not None else "")]
            cells += [e(metric_cell(v.get("metrics", {}).get(c))) for c in cols]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append(f"<h2>Variants</h2><table><tr>{head}</tr>{''.join(body)}</table>")
    parts.append("<h2>Plots</h2>")
    parts.append(_plot_html("Perplexity vs bits per family", lambda: plot_perplexity_vs_bits(data),
                            "no perplexity recorded for the variants of a format family in this run"))
    try:
        costs = plot_costs(data)
    except Exception as exc:  # same rule as _plot_html
        parts.append(f'<p class="note">latency/energy plots failed: {e(type(exc).__name__)}: {e(str(exc))}</p>')
    else:
        if costs:
            parts += [_plot_html(f"{key} with intervals", lambda png=png: png, "") for key, png in costs]
        else:
            parts.append(_plot_html("Latency / energy", lambda: None, "no latency or energy metrics in this run"))
    parts.append(_plot_html("Boxed-answer compliance and accuracy per variant", lambda: plot_rates(data),
                            "no boxed-compliance or accuracy metrics in this run"))
    mixed = mixed_variants(data)
    for name in mixed:
        parts.append(_plot_html(f"Per-layer bits: {name}", lambda name=name: plot_layer_bits(data, name), ""))
    if not mixed:
        parts.append(_plot_html("Per-layer bits of mixed plans", lambda: None,
                                "no mixed-precision variant in this run"))
    parts.append("<h2>Checks</h2><table><tr><th>status</th><th>check</th><th>variant</th><th>message</th>"
                 "<th>basis</th><th>evidence</th></tr>")
    for c in data.get("checks") or []:
        evidence = json.dumps(c.get("evidence", {}), indent=1)
        parts.append(f"<tr><td>{_badge(str(c.get('status')))}</td><td>{e(str(c.get('name')))}</td>"
                     f"<td>{e(str(c.get('variant') or ''))}</td><td>{e(str(c.get('message', '')))}</td>"
                     f"<td>{e(_basis(c))}</td><td><details><summary>evidence</summary>"
                     f"<pre>{e(evidence[:20000])}</pre></details></td></tr>")
    parts.append("</table>")
    unfinished = data.get("unfinished") or []
    if unfinished:
        parts.append("<h2>Not finished</h2><ul>" + "".join(f"<li><code>{e(n)}</code></li>" for n in unfinished)
                     + "</ul>")
    parts.append(f'<p class="note">schema {e(str(data.get("schema_version")))}; written by qcheck '
                 f'{e(str(meta.get("qcheck", "")))}</p></body></html>')
    return "\n".join(parts) + "\n"


def write_html(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render and write the HTML report atomically."""
    return atomic_write_text(path, render_html(data))
