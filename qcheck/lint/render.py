"""Render findings as text (default), JSON or Markdown."""
from __future__ import annotations

import json
from collections.abc import Sequence

from qcheck.lint.findings import Finding, Severity
from qcheck.results import to_jsonable

FORMATS = ("text", "json", "markdown")


def summary(findings: Sequence[Finding]) -> dict[str, int]:
    """Counts per severity."""
    counts = {s.value: 0 for s in Severity}
    for finding in findings:
        counts[finding.severity.value] += 1
    return counts


def _where(finding: Finding) -> str:
    parts = [finding.location]
    if finding.columns:
        parts.append("column" + ("s " if len(finding.columns) > 1 else " ") + ", ".join(finding.columns))
    return " ".join(parts)


def render_text(findings: Sequence[Finding], files: Sequence[str], verbose: bool = False) -> str:
    """One block per finding: 'location: severity rule-id', the message, optionally the evidence."""
    lines = []
    for finding in findings:
        lines.append(f"{_where(finding)}: {finding.severity.value} {finding.rule}")
        lines.append(f"  {finding.message}")
        if verbose and finding.evidence:
            lines.append("  evidence: " + json.dumps(to_jsonable(finding.evidence), sort_keys=True))
    counts = summary(findings)
    lines.append(f"{len(files)} file(s), {len(findings)} finding(s): {counts['error']} error(s), "
                 f"{counts['warning']} warning(s), {counts['info']} info")
    return "\n".join(lines)


def render_json(findings: Sequence[Finding], files: Sequence[str]) -> str:
    """Strict JSON: files, summary counts and findings with evidence and fingerprints."""
    payload = {"tool": "qcheck lint", "version": 1, "files": list(files), "summary": summary(findings),
               "findings": [f.to_dict() for f in findings]}
    return json.dumps(payload, indent=2, sort_keys=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(findings: Sequence[Finding], files: Sequence[str]) -> str:
    """A Markdown table of findings, ready for a PR comment."""
    counts = summary(findings)
    headline = (f"**qcheck lint**: {len(files)} file(s), {len(findings)} finding(s): {counts['error']} error(s), "
                f"{counts['warning']} warning(s), {counts['info']} info")
    lines = [headline, ""]
    if findings:
        lines += ["| severity | rule | where | rows | message |", "| --- | --- | --- | --- | --- |"]
        for f in findings:
            rows = ", ".join(f"{r} ({label})" for r, label in zip(f.rows[:8], f.row_labels[:8]))
            if len(f.rows) > 8:
                rows += f", ... ({len(f.rows)} rows)"
            lines.append(f"| {f.severity.value} | `{f.rule}` | {_cell(_where(f))} | {_cell(rows)} | "
                         f"{_cell(f.message)} |")
    return "\n".join(lines)


def render(findings: Sequence[Finding], files: Sequence[str], fmt: str, verbose: bool = False) -> str:
    """Dispatch on `fmt` (text, json, markdown)."""
    if fmt == "json":
        return render_json(findings, files)
    if fmt == "markdown":
        return render_markdown(findings, files)
    return render_text(findings, files, verbose)
