"""What a reader meets first: the verdict in a sentence, then the checks that need attention (FAIL, ERROR, WARN,
INCONCLUSIVE, each with its one-line reason and an anchor to its evidence), then passes, then skips grouped by
reason. The Markdown and HTML writers both lay out the report data in this order.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

ATTENTION = ("FAIL", "ERROR", "WARN", "INCONCLUSIVE")
"""Statuses a reader must see first, in this order."""
REASON_CHARS = 240
"""A one-line reason longer than this is cut (the whole message is in the check's details)."""
VARIANT_MARK = "[variant]"
"""Stands for the check's variant in a reason shared by several skipped checks."""


def anchor(index: int, check: dict[str, Any]) -> str:
    """A stable, unique HTML id for a check's details: its position in the report, name and variant."""
    words = f"{check.get('name') or 'check'} {check.get('variant') or ''}"
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")
    return f"check-{index}-{slug}" if slug else f"check-{index}"


def attention(checks: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(index, check) of every FAIL, ERROR, WARN and INCONCLUSIVE check, in that order, each in report order."""
    rank = {status: i for i, status in enumerate(ATTENTION)}
    picked = [(i, c) for i, c in enumerate(checks) if str(c.get("status")) in rank]
    return sorted(picked, key=lambda item: rank[str(item[1].get("status"))])


def with_status(checks: list[dict[str, Any]], status: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, check) of the checks with this status, in report order."""
    return [(i, c) for i, c in enumerate(checks) if str(c.get("status")) == status]


def reason(check: dict[str, Any]) -> str:
    """The check's message as one line: its first non-empty line, cut at REASON_CHARS."""
    lines = [line.strip() for line in str(check.get("message") or "").splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    more = len(lines) > 1 or len(text) > REASON_CHARS
    return text[:REASON_CHARS].rstrip() + " …" if more else text


def basis(check: dict[str, Any]) -> str:
    """What the verdict rests on: compared what, on how many samples, with which test and threshold."""
    parts = (f"compared {check.get('compared')}" if check.get("compared") else "",
             f"n={check['n']}" if check.get("n") is not None else "", check.get("test") or "",
             f"threshold {check['threshold']}" if check.get("threshold") is not None else "")
    return "; ".join(x for x in parts if x)


def _variant_names(data: dict[str, Any]) -> set[str]:
    names = set(data.get("variants") or {})
    names |= {str(c["variant"]) for c in data.get("checks") or [] if c.get("variant")}
    names |= set((data.get("records") or {}).get("variants") or [])
    return {n for n in names if n}


def skipped_groups(data: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The SKIPPED checks grouped by reason, largest group first; in a reason shared by several checks, variant
    names are replaced by VARIANT_MARK so that "latency of int8 needs CUDA" and "... of w4g64 ..." group."""
    names = sorted(_variant_names(data), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])") if names else None
    groups: dict[str, list[dict[str, Any]]] = {}
    for _, check in with_status(data.get("checks") or [], "SKIPPED"):
        text = reason(check)
        key = pattern.sub(VARIANT_MARK, text) if pattern else text
        groups.setdefault(key, []).append(check)
    out = []
    for key, checks in groups.items():
        out.append((key if len(checks) > 1 else reason(checks[0]), checks))
    return sorted(out, key=lambda item: -len(item[1]))


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _join(parts: Iterable[str]) -> str:
    items = [p for p in parts if p]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def verdict_sentence(data: dict[str, Any]) -> str:
    """The verdict in one sentence: why the run has the status it has."""
    counts = data.get("counts") or {}
    n = {s: int(counts.get(s, 0)) for s in ("PASS", "FAIL", "ERROR", "WARN", "INCONCLUSIVE", "SKIPPED")}
    total = sum(n.values())
    status = str(data.get("status", ""))
    problems = _join([_plural(n["FAIL"], "check failed", "checks failed") if n["FAIL"] else "",
                      _plural(n["ERROR"], "check errored", "checks errored") if n["ERROR"] else "",
                      _plural(n["WARN"], "warned", "warned") if n["WARN"] else "",
                      _plural(n["INCONCLUSIVE"], "was inconclusive", "were inconclusive") if n["INCONCLUSIVE"]
                      else ""])
    rest = f"{n['PASS']} passed, {n['SKIPPED']} skipped, {total} in all"
    if status == "FAIL":
        text = f"{problems} ({rest})."
    elif status == "INCONCLUSIVE" and not data.get("complete", True):
        why = str((data.get("interruption") or {}).get("reason") or "the run stopped early")
        text = f"the run did not finish ({why}): it cannot vouch for what did not run ({rest})."
    elif status == "INCONCLUSIVE":
        text = f"no check ran: all {total} selected checks were skipped, so nothing was judged."
    elif status == "WARN":
        text = f"no check failed; {problems} ({rest})."
    elif status == "PASS":
        text = f"every check that ran held ({rest})."
    else:
        text = rest + "."
    return text[:1].upper() + text[1:]
