"""The self-contained HTML report: the verdict, then every failure and warning with its reason and a link to its
evidence (all on the first screen), the variants' metrics, passes, skips collapsed by reason, the plots, the
details of each failure and warning, and the run's facts. Plots are embedded as PNG data URIs (qcheck.report.plots);
a plot without data is replaced by a line saying so, a plot that fails says why, and the rest still renders.
Works from report data (RunReport.to_dict() or a loaded JSON file), so old reports can be re-rendered.
"""
from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qcheck.report.io import atomic_write_text
from qcheck.report.markdown import decoding_lines, placement_lines, timeline_lines
from qcheck.report.metrics import METRIC_COLUMNS, fmt, lm_eval_note, metric_cell
from qcheck.report.plots import (
    mixed_variants,
    perplexity_notes,
    plot_costs,
    plot_layer_bits,
    plot_perplexity_vs_bits,
    plot_rates,
    variant_bits,
)
from qcheck.report.sections import anchor, attention, basis, reason, skipped_groups, verdict_sentence, with_status

STATUS_COLOURS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "ERROR": "#a40e26", "WARN": "#9a6700",
                  "INCONCLUSIVE": "#8250df", "SKIPPED": "#6e7781"}
EVIDENCE_CHARS = 20000
"""Evidence JSON longer than this is cut on the page (the JSON report keeps all of it)."""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1em 2em;color:#1f2328;max-width:1200px}
h1{font-size:1.6em;margin:.2em 0 .3em} h1 .status{padding:.1em .5em;border-radius:.3em;color:#fff}
h2{font-size:1.25em;margin:1.2em 0 .4em} p.verdict{margin:.3em 0 .6em;font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
table.attention{width:100%} table.attention td{padding:.2em .5em}
table.attention .clamp{display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
table.attention tr.FAIL td,table.attention tr.ERROR td{background:#ffebe9}
table.attention tr.WARN td,table.attention tr.INCONCLUSIVE td{background:#fff8c5}
.badge{color:#fff;padding:.05em .4em;border-radius:.3em;font-size:.85em;font-weight:600;white-space:nowrap}
details.skipped>summary{font-size:1.25em;font-weight:600;margin:1.2em 0 .4em;cursor:pointer}
section.detail{border-top:1px solid #d0d7de;padding:.3em 0}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #d0d7de}
figcaption,.note{color:#57606a;font-style:italic} pre{white-space:pre-wrap;font-size:.8em;background:#f6f8fa;padding:.5em}
.warning{background:#fff8c5;border:1px solid #d4a72c;padding:.4em 1em;margin:.3em 0}
"""

e = html.escape


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f'<span class="badge" style="background:{colour}">{e(status)}</span>'


def _text(value: Any) -> str:
    return e(value if isinstance(value, str) else json.dumps(value))


def _plot_html(title: str, render: Callable[[], str | None], missing: str, caption: str = "") -> str:
    try:
        png = render()
    except Exception as exc:  # noqa: BLE001 - a broken plot must not cost the reader the rest of the report
        return f'<h3>{e(title)}</h3><p class="note">plot failed: {e(type(exc).__name__)}: {e(str(exc))}</p>'
    if png is None:
        return f'<h3>{e(title)}</h3><p class="note">{e(missing)}</p>'
    return (f'<figure><h3>{e(title)}</h3><img class="plot" alt="{e(title)}" src="data:image/png;base64,{png}">'
            + (f"<figcaption>{e(caption)}</figcaption>" if caption else "") + "</figure>")


def _head(data: dict[str, Any]) -> list[str]:
    status = str(data.get("status", ""))
    meta = data.get("meta") or {}
    model = meta.get("model", "")
    model = model.get("name", "") if isinstance(model, dict) else model
    where = ", ".join(str(x) for x in (model, meta.get("device"), meta.get("gpu")) if x)
    colour = STATUS_COLOURS.get(status, "#57606a")
    parts = [f'<h1>qcheck report <span class="status" style="background:{colour}">{e(status)}</span></h1>',
             f'<p class="verdict">{e(verdict_sentence(data))}' + (f" Model: {e(where)}." if where else "") + "</p>"]
    if not data.get("complete", True):
        why = (data.get("interruption") or {}).get("reason", "the run stopped early")
        parts.append(f'<p class="warning">Run incomplete: {e(str(why))}. '
                     f"{len(data.get('unfinished') or [])} test(s) did not finish (listed below).</p>")
    return parts


def _attention(data: dict[str, Any]) -> list[str]:
    checks = data.get("checks") or []
    picked = attention(checks)
    parts = [f'<h2 id="attention">Failures and warnings ({len(picked)})</h2>']
    if not picked:
        ran = any(c.get("status") != "SKIPPED" for c in checks)
        return parts + [f'<p>{"None: every check that ran passed." if ran else "None: no check ran."}</p>']
    rows = []
    for i, c in picked:
        status = str(c.get("status"))
        rows.append(f'<tr class="check-row {e(status)}" data-status="{e(status)}"><td>{_badge(status)}</td>'
                    f"<td>{e(str(c.get('name')))}</td><td>{e(str(c.get('variant') or ''))}</td>"
                    f'<td title="{e(str(c.get("message", "")))}"><div class="clamp">{e(reason(c))}</div></td>'
                    f'<td><a href="#{anchor(i, c)}">details</a></td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("status", "check", "variant", "reason", "evidence"))
    return parts + [f'<table class="attention"><tr>{head}</tr>{"".join(rows)}</table>']


def _unfinished(data: dict[str, Any]) -> list[str]:
    unfinished = data.get("unfinished") or []
    if not unfinished:
        return []
    return ["<h2>Not finished</h2><ul>" + "".join(f"<li><code>{e(n)}</code></li>" for n in unfinished) + "</ul>"]


def _variants(data: dict[str, Any]) -> list[str]:
    variants = data.get("variants") or {}
    if not variants:
        return []
    cols = [c for c in METRIC_COLUMNS if any(c in v.get("metrics", {}) for v in variants.values())]
    head = "".join(f"<th>{e(c)}</th>" for c in ["variant", "layers quantized", "mean bits", *cols])
    body = []
    for name, v in variants.items():
        s = v.get("manifest_summary") or {}
        bits = variant_bits(v)
        cells = [e(name), e(f"{s.get('applied', '')}/{s.get('layers', '')}" if s else ""),
                 e(fmt(bits) if bits is not None else "")]
        cells += [e(metric_cell(v.get("metrics", {}).get(c))) for c in cols]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = lm_eval_note(variants)
    return [f"<h2>Variants</h2><table><tr>{head}</tr>{''.join(body)}</table>"
            + (f'<p class="note">{e(note)}</p>' if note else "")]


def _evidence(check: dict[str, Any]) -> str:
    text = json.dumps(check.get("evidence", {}), indent=1)
    return f"<pre>{e(text[:EVIDENCE_CHARS])}</pre>"


def _passed(data: dict[str, Any]) -> list[str]:
    passed = with_status(data.get("checks") or [], "PASS")
    parts = [f'<h2 id="passed">Passed ({len(passed)})</h2>']
    if not passed:
        return parts + ["<p>None.</p>"]
    rows = [f'<tr class="check-row PASS" data-status="PASS"><td>{e(str(c.get("name")))}</td>'
            f"<td>{e(str(c.get('variant') or ''))}</td><td>{e(str(c.get('message', '')))}</td><td>{e(basis(c))}</td>"
            f"<td><details><summary>evidence</summary>{_evidence(c)}</details></td></tr>" for _, c in passed]
    return parts + ["<table><tr><th>check</th><th>variant</th><th>message</th><th>basis</th><th>evidence</th></tr>"
                    + "".join(rows) + "</table>"]


def _skipped(data: dict[str, Any]) -> list[str]:
    groups = skipped_groups(data)
    if not groups:
        return []
    total = sum(len(checks) for _, checks in groups)
    items = []
    for why, checks in groups:
        names = ", ".join(f"<code>{e(str(c.get('name')))}</code>" + (f" ({e(str(c['variant']))})"
                                                                     if c.get("variant") else "") for c in checks)
        items.append(f"<li><b>{e(why)}</b> ({len(checks)}): {names}</li>")
    summary = f'Skipped: {total} check{"s" if total != 1 else ""}, {len(groups)} reason{"s" if len(groups) != 1 else ""}'
    return [f'<details class="skipped" id="skipped"><summary>{summary}</summary><ul>{"".join(items)}</ul></details>']


def _plots(data: dict[str, Any]) -> list[str]:
    notes = perplexity_notes(data)
    parts = ["<h2>Plots</h2>",
             _plot_html("Perplexity vs bits per family", lambda: plot_perplexity_vs_bits(data),
                        "no perplexity recorded for the variants of a format family in this run",
                        caption="Drawn without a bar: " + "; ".join(notes) if notes else "")]
    try:
        costs = plot_costs(data)
    except Exception as exc:  # noqa: BLE001 - same rule as _plot_html
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
        parts.append(_plot_html("Per-layer bits of mixed plans", lambda: None, "no mixed-precision variant in this run"))
    return parts


def _details(data: dict[str, Any]) -> list[str]:
    picked = attention(data.get("checks") or [])
    if not picked:
        return []
    parts = ["<h2>Details of failures and warnings</h2>"]
    for i, c in picked:
        variant = f" ({e(str(c['variant']))})" if c.get("variant") else ""
        parts.append(f'<section class="detail" id="{anchor(i, c)}"><h3>{_badge(str(c.get("status")))} '
                     f"{e(str(c.get('name')))}{variant}</h3><p>{e(str(c.get('message', '')))}</p>"
                     + (f"<p><b>Basis:</b> {e(basis(c))}</p>" if basis(c) else "")
                     + (f"<p><b>Evidence:</b></p>{_evidence(c)}" if c.get("evidence") else "") + "</section>")
    return parts


def _run_facts(data: dict[str, Any]) -> list[str]:
    meta = data.get("meta") or {}
    model = meta.get("model", "")
    rows = [("model", model.get("name", json.dumps(model)) if isinstance(model, dict) else model)]
    rows += [(k, meta[k]) for k in ("device", "gpu", "compute_capability", "qcheck", "torch", "transformers",
                                    "python", "platform", "created", "duration_s", "seeds", "argv") if k in meta]
    lines = placement_lines(meta) + decoding_lines(data) + timeline_lines(meta)
    rows += [tuple(line.split(": ", 1)) for line in lines]
    rows += [(f"data: {name}", json.dumps(entry)) for name, entry in (meta.get("data") or {}).items()]
    counts = ", ".join(f"{k} {v}" for k, v in (data.get("counts") or {}).items() if v)
    rows.append(("checks", counts or "none"))
    return ["<h2>Run</h2><table>" + "".join(f"<tr><th>{e(str(k))}</th><td>{_text(v)}</td></tr>" for k, v in rows)
            + "</table>"]


def render_html(data: dict[str, Any]) -> str:
    """The whole report as one HTML page (no scripts, nothing fetched), failures and warnings first."""
    status = str(data.get("status", ""))
    meta = data.get("meta") or {}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>qcheck report: {e(status)}</title><style>{CSS}</style></head><body>"]
    parts += (_head(data) + _attention(data) + _unfinished(data) + _variants(data) + _passed(data) + _skipped(data)
              + _plots(data) + _details(data) + _run_facts(data))
    parts.append(f'<p class="note">schema {e(str(data.get("schema_version")))}; written by qcheck '
                 f'{e(str(meta.get("qcheck", "")))}</p></body></html>')
    return "\n".join(parts) + "\n"


def write_html(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render and write the HTML report atomically."""
    return atomic_write_text(path, render_html(data))
