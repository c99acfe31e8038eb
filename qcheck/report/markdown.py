"""The Markdown report, what a person pastes into a PR: the verdict, then the checks that need attention with a
link to each one's evidence, the variants' metrics, the passes, the skips collapsed and grouped by reason, and
last the details (evidence) and the run's facts."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from qcheck.report.io import Reportable, atomic_write_text, report_data
from qcheck.report.metrics import METRIC_COLUMNS, lm_eval_note, metric_cell
from qcheck.report.sections import anchor, attention, basis, reason, skipped_groups, verdict_sentence, with_status

EVIDENCE_CHARS = 4000
"""Evidence JSON longer than this is cut in the Markdown (the JSON report keeps all of it)."""


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _inline(text: Any) -> str:
    """Text safe in running Markdown: a `<` that would open an HTML tag is escaped, `n < 30` is left alone."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", str(text))


def _fence(text: str, lang: str = "") -> list[str]:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return [ticks + lang, text, ticks]


def _verdict(data: dict[str, Any]) -> list[str]:
    meta = data.get("meta") or {}
    model = meta.get("model", "")
    model = model.get("name", model) if isinstance(model, dict) else model
    where = ", ".join(str(x) for x in (model, meta.get("device"), meta.get("gpu")) if x)
    lines = [f"# qcheck report: {data['status']}", "",
             _inline(verdict_sentence(data)) + (f" Model: {_inline(where)}." if where else ""), ""]
    if not data.get("complete", True):
        why = (data.get("interruption") or {}).get("reason", "the run stopped early")
        unfinished = len(data.get("unfinished") or [])
        banner = f"> **Run incomplete**: {_inline(why)}. {unfinished} test(s) did not finish (see Not finished)."
        lines += [banner, ""]
    return lines


def _attention(data: dict[str, Any]) -> list[str]:
    picked = attention(data.get("checks") or [])
    lines = [f"## Failures and warnings ({len(picked)})", ""]
    if not picked:
        ran = any(c.get("status") != "SKIPPED" for c in data.get("checks") or [])
        return lines + ["None: every check that ran passed." if ran else "None: no check ran.", ""]
    lines += ["| status | check | variant | reason | evidence |", "|---|---|---|---|---|"]
    for i, c in picked:
        lines.append(f"| **{c['status']}** | {cell(c['name'])} | {cell(c.get('variant') or '')} | "
                     f"{cell(_inline(reason(c)))} | [details](#{anchor(i, c)}) |")
    return lines + [""]


def _unfinished(data: dict[str, Any]) -> list[str]:
    unfinished = data.get("unfinished") or []
    if not unfinished and not data.get("interruption"):
        return []
    why = (data.get("interruption") or {}).get("reason", "the run stopped early")
    lines = ["## Not finished", "", f"The run is incomplete: {_inline(why)}. These tests did not finish:", ""]
    lines += [f"- `{nodeid}`" for nodeid in unfinished] or ["- (none recorded)"]
    return lines + [""]


def _variants(data: dict[str, Any]) -> list[str]:
    variants = data.get("variants") or {}
    if not variants:
        return []
    cols = [c for c in METRIC_COLUMNS if any(c in v.get("metrics", {}) for v in variants.values())]
    lines = ["## Variants", "", "| variant | layers quantized | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for name, v in variants.items():
        s = v.get("manifest_summary") or {}
        layers = f"{s.get('applied', '')}/{s.get('layers', '')}" if s else ""
        row = [cell(_inline(metric_cell(v.get("metrics", {}).get(c)))) for c in cols]
        lines.append(f"| {cell(name)} | {layers} | " + " | ".join(row) + " |")
    note = lm_eval_note(variants)
    return lines + [""] + ([_inline(note), ""] if note else [])


def _passed(data: dict[str, Any]) -> list[str]:
    passed = with_status(data.get("checks") or [], "PASS")
    lines = [f"## Passed ({len(passed)})", ""]
    if not passed:
        return lines + ["None.", ""]
    lines += ["| check | variant | message | basis |", "|---|---|---|---|"]
    for _, c in passed:
        lines.append(f"| {cell(c['name'])} | {cell(c.get('variant') or '')} | {cell(_inline(c.get('message', '')))} | "
                     f"{cell(_inline(basis(c)))} |")
    return lines + [""]


def _skipped(data: dict[str, Any]) -> list[str]:
    groups = skipped_groups(data)
    if not groups:
        return []
    total = sum(len(checks) for _, checks in groups)
    summary = f"Skipped: {total} check{'s' if total != 1 else ''}, {len(groups)} reason{'s' if len(groups) != 1 else ''}"
    lines = ["<details>", f"<summary>{summary}</summary>", ""]
    for why, checks in groups:
        names = ", ".join(f"`{c['name']}`" + (f" ({c['variant']})" if c.get("variant") else "") for c in checks)
        lines.append(f"- **{_inline(why)}** ({len(checks)}): {names}")
    return lines + ["", "</details>", ""]


def _details(data: dict[str, Any]) -> list[str]:
    picked = attention(data.get("checks") or [])
    if not picked:
        return []
    lines = ["## Details of failures and warnings", ""]
    for i, c in picked:
        title = f"{c['status']}: {c['name']}" + (f" ({c['variant']})" if c.get("variant") else "")
        lines += [f'### <a id="{anchor(i, c)}"></a>{_inline(title)}', "", _inline(c.get("message", "")), ""]
        if basis(c):
            lines += [f"Basis: {_inline(basis(c))}", ""]
        if c.get("evidence"):
            text = json.dumps(c["evidence"], indent=1)
            if len(text) > EVIDENCE_CHARS:
                text = text[:EVIDENCE_CHARS] + f"\n... ({len(text) - EVIDENCE_CHARS} more characters in the JSON report)"
            lines += ["Evidence:", "", *_fence(text, "json"), ""]
    return lines


def placement_lines(meta: dict[str, Any]) -> list[str]:
    """The report's lines on where the models lived and the precision they computed in (from the run's meta)."""
    from qcheck.inputs.placement import describe

    lines = []
    placement = meta.get("placement")
    if isinstance(placement, dict) and placement.get("devices"):
        offload = " (offloaded: weights loaded onto the compute device on use)" if placement.get("offloaded") else ""
        budget = placement.get("max_memory")
        budget_text = f"; --max-memory per model {budget}" if budget else ""
        lines.append(f"placement: {describe(placement)}{offload}{budget_text}")
    precision = meta.get("precision")
    if isinstance(precision, dict):
        lines.append(f"reference dtype: {precision.get('reference_dtype')} (--reference-dtype "
                     f"{precision.get('requested')}); {precision.get('fake_quant')}")
        if precision.get("half_matmul"):
            lines.append(f"16-bit arithmetic on the CPU: {precision['half_matmul']}")
        if precision.get("attention"):
            lines.append(f"attention on the GPU: {precision['attention']}")
        if precision.get("note"):
            lines.append(f"note: {precision['note']}")
    workers = meta.get("workers")
    if isinstance(workers, int) and workers > 1:
        timed = meta.get("timed_after_workers")
        lines.append(f"workers: {workers} processes measured the variants; "
                     + (f"{timed.get('why')} ({', '.join(timed.get('measurements') or [])})" if isinstance(timed, dict)
                        else "each on a GPU of its own, its timings there included"))
    return lines


def decoding_lines(data: dict[str, Any]) -> list[str]:
    """Which greedy decoding each variant's generation ran, from its records: a line per method, with its variants
    (`generate`'s fallback keeps the reason the static path refused)."""
    variants: dict[str, list[str]] = {}
    for record in (data.get("records") or {}).get("records") or []:
        if record.get("measurement") != "generation" or record.get("status") != "ok":
            continue
        run = (record.get("data") or {}).get("run") or {}
        for method in (run.get("extra") or {}).get("decoding") or []:
            variants.setdefault(method, []).append(str(record.get("variant")))
    return [f"generation decoding: {method} ({', '.join(names)})" for method, names in variants.items()]


def timeline_lines(meta: dict[str, Any]) -> list[str]:
    """The report's line on where the run's wall time went, phase by phase (from meta["timeline"], qcheck.timeline)."""
    from qcheck.timeline import phases

    timeline = meta.get("timeline")
    marks = {k: v for k, v in timeline.items() if isinstance(v, (int, float))} if isinstance(timeline, dict) else {}
    if not marks:
        return []
    parts = ", ".join(f"{label} {seconds:.1f} s" for label, seconds in phases(marks).items())
    return [f"time by phase: {parts}; then the reports, from {max(marks.values()):.1f} s after qcheck started"]


def _run_facts(data: dict[str, Any]) -> list[str]:
    meta = data.get("meta") or {}
    lines = ["## Run", ""]
    model = meta.get("model", {})
    lines.append(f"- model: {_inline(model.get('name', model) if isinstance(model, dict) else model)}")
    for key in ("device", "gpu", "compute_capability", "qcheck", "torch", "transformers", "created", "duration_s"):
        if key in meta:
            lines.append(f"- {key}: {_inline(meta[key])}")
    lines += [f"- {line}" for line in placement_lines(meta) + decoding_lines(data) + timeline_lines(meta)]
    for name, entry in (meta.get("data") or {}).items():
        if isinstance(entry, dict):
            facts = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("path", "sha256"))
            sha = str(entry.get("sha256", ""))[:12]
            lines.append(f"- data {name}: {Path(str(entry.get('path', ''))).name} (sha256 {sha}…)"
                         + (f", {_inline(facts)}" if facts else ""))
    counts = ", ".join(f"{k} {v}" for k, v in (data.get("counts") or {}).items() if v)
    lines.append(f"- checks: {counts or 'none'}" + ("" if data.get("complete", True) else " (run incomplete)"))
    return lines + [""]


def render_markdown(report: Reportable | dict[str, Any]) -> str:
    """The Markdown report: verdict, failures and warnings, variants, passes, skips (collapsed), details, run."""
    data = report_data(report)
    lines = (_verdict(data) + _attention(data) + _unfinished(data) + _variants(data) + _passed(data)
             + _skipped(data) + _details(data) + _run_facts(data))
    return "\n".join(lines)


def write_markdown(report: Reportable | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """The Markdown report, written atomically."""
    return atomic_write_text(path, render_markdown(report))
