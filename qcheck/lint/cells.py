"""One table cell as written: a number with its unit and uncertainty, a missing value, a reported marker, or text.

Published tables write more than plain numbers: `6.233160 ± 0.037828`, `4.50 GB (19.05%)`, `**205** t/s`, `OOM`,
`-`. Each is read here once, so every rule sees the same value, uncertainty and unit.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

VALUE, MISSING, TEXT, FAILED, NOT_RUN, ABSENT = "value", "missing", "text", "failed", "not_run", "absent"
"""Cell states: a number; a computed missing value (NaN, None, null, empty); unreadable text; a failure the author
reported (OOM, timeout); a run not taken (`-`, `--`, `N/A`, `...`, `TODO`); a cell a reader left out because the
metric does not exist for that row (lm-eval tasks without that metric)."""

MARKERS = (FAILED, NOT_RUN, ABSENT)

MISSING_TOKENS = frozenset({"", "nan", "-nan", "none", "null", "nat"})
FAILED_TOKENS = frozenset({"oom", "out of memory", "oot", "timeout", "time out", "timed out", "crash", "crashed",
                           "error", "failed", "fail", "diverged", "killed"})
NOT_RUN_TOKENS = frozenset({"-", "--", "---", "\u2013", "\u2014", "n/a", "na", "n.a.", "?", "...", "\u2026", "tbd",
                            "todo", "skip", "skipped", "not run", "unsupported", "not supported", "x", "\u2717",
                            "\u2718", "/"})

_NUMBER = r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.?\d+)(?:[eE][-+]?\d+)?"
_UNIT = r"[%a-zA-Z\u00b5\u03bc/]+(?:\s?/\s?[a-zA-Z]+)?"
NUMBER_WITH_UNIT = re.compile(rf"^\s*~?\s*({_NUMBER})\s*({_UNIT})?\s*$")
"""A number with an optional unit right after it ('11.7ms', '40.87%', '181 t/s', '13.0G')."""
_FULL = re.compile(
    rf"^\s*[~\u2248]?\s*(?P<value>{_NUMBER})\s*(?P<unit>{_UNIT})?"
    rf"(?:\s*(?:\u00b1|\+/-|\+-)\s*(?P<err>{_NUMBER})\s*(?P<err_unit>{_UNIT})?)?"
    r"\s*(?P<note>\([^()]*\)|\[[^\[\]]*\]|\*+)?\s*$")
_EMPHASIS = re.compile(r"\*\*|__|`")


@dataclass(frozen=True)
class Cell:
    """A parsed cell: value (NaN unless a number), its uncertainty (NaN when none), unit, and state."""

    value: float
    error: float = math.nan
    unit: str = ""
    state: str = VALUE


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("\u2212", "-"))


def _marker(lowered: str) -> str | None:
    if lowered in FAILED_TOKENS:
        return FAILED
    if lowered in NOT_RUN_TOKENS or lowered.startswith(("todo(", "todo ", "tbd ")):
        return NOT_RUN
    return None


def parse(cell: Any) -> Cell:
    """Parse one cell (a JSON scalar or the text of a CSV cell)."""
    if cell is None:
        return Cell(math.nan, state=MISSING)
    if isinstance(cell, bool):
        return Cell(float(cell))
    if isinstance(cell, (int, float)):
        value = float(cell)
        return Cell(value, state=MISSING if math.isnan(value) else VALUE)
    text = _EMPHASIS.sub("", str(cell)).strip()
    lowered = text.lower()
    if lowered in MISSING_TOKENS:
        return Cell(math.nan, state=MISSING)
    try:
        value = float(text)
        return Cell(value, state=MISSING if math.isnan(value) else VALUE)
    except ValueError:
        pass
    marker = _marker(lowered)
    if marker:
        return Cell(math.nan, state=marker)
    match = _FULL.match(text)
    if match:
        unit = match.group("unit") or match.group("err_unit") or ""
        error = _number(match.group("err")) if match.group("err") else math.nan
        return Cell(_number(match.group("value")), abs(error), unit.replace(" ", ""))
    return Cell(math.nan, state=TEXT)


def significant_digits(text: str) -> int:
    """Count the significant digits of a number as written; 0 for zero or non-numbers."""
    match = _FULL.match(_EMPHASIS.sub("", text))
    if not match:
        return 0
    try:
        number = Decimal(match.group("value").replace(",", "").replace("\u2212", "-"))
    except InvalidOperation:
        return 0
    if number.is_zero():
        return 0
    return len(number.as_tuple().digits)


def resolution(text: str) -> float:
    """Half a unit of the last printed digit of a cell ('0.52' -> 0.005); 0 when it cannot be read."""
    match = _FULL.match(_EMPHASIS.sub("", text))
    if not match:
        return 0.0
    try:
        exponent = Decimal(match.group("value").replace(",", "").replace("\u2212", "-")).as_tuple().exponent
    except InvalidOperation:
        return 0.0
    return 0.5 * 10.0 ** int(exponent) if isinstance(exponent, int) else 0.0
