"""Where a run's wall time goes: named marks in seconds since qcheck started, kept as data for the report.

A run marks `imported` (the CLI's main starts), `memory_checked` (torch and transformers imported, the model's size
weighed against the device), `loaded` (the reference on its device), `validated` (variants and inputs checked),
`collected` (pytest collection done), `opened` (the plugin has its run context), `measured` (the record store is
filled) and `judged` (the checks ran; the reports are written next). Time before the first mark is start-up;
time after the last is writing the reports and exiting, which the report itself cannot hold.

The clock starts when this module is first imported: the CLI and the pytest plugin import it first thing, so only
the interpreter's own start-up (tens of milliseconds) is left out. The process's start time (Linux /proc) is not
used: a shell that runs other commands and then execs `qcheck run` keeps its process, and its start time, so the
README's set-up line counted two minutes of pip installs as qcheck's start-up (found in session 13). Pure stdlib.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

PHASES: dict[str, str] = {
    "imported": "start-up and imports",
    "memory_checked": "heavy imports and the memory pre-check",
    "loaded": "loading the reference",
    "validated": "validation and model load",
    "collected": "pytest collection",
    "opened": "opening the run",
    "measured": "measurements",
    "judged": "judging the checks",
}
"""What the time up to each mark (from the previous one) was spent on."""


_START: float = time.perf_counter()
"""When qcheck started, on the perf_counter clock (marks are monotone whatever the wall clock does)."""
_MARKS: dict[str, float] = {}


def mark(name: str) -> None:
    """Record that the run reached `name` now, in seconds since qcheck started; a mark set again keeps its
    first value (the moment the run first got there)."""
    _MARKS.setdefault(name, time.perf_counter() - _START)


def marks() -> dict[str, float]:
    """The marks in the order they were set, in seconds since qcheck started (rounded to 0.01 s)."""
    return {name: round(t, 2) for name, t in _MARKS.items()}


def reset() -> None:
    """Forget the marks: a run that starts again in the same process (tests call the CLI in-process) starts afresh."""
    _MARKS.clear()


def phases(timeline: Mapping[str, float]) -> dict[str, float]:
    """Each mark's phase and its length in seconds: from the previous mark (the first from qcheck's start) to
    the mark, labelled by PHASES."""
    out: dict[str, float] = {}
    previous = 0.0
    for i, (name, t) in enumerate(timeline.items()):
        label = PHASES.get(name, f"until {name}")
        if name == "validated" and "loaded" in timeline:
            label = "validating variants and inputs"
        if i == 0 and name != "imported":
            label = f"start-up and {label}"
        out[label] = round(float(t) - previous, 2)
        previous = float(t)
    return out
