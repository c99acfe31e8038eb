"""Where a run's wall time goes: named marks in seconds since the process started, kept as data for the report.

A run marks `imported` (the CLI's main starts), `validated` (reference loaded, variants and inputs checked),
`collected` (pytest collection done), `opened` (the plugin has its run context), `measured` (the record store is
filled) and `judged` (the checks ran; the reports are written next). Time before the first mark is start-up;
time after the last is writing the reports and exiting, which the report itself cannot hold.

The clock starts when the process started, not when this module was imported, so interpreter start-up and
imports count. psutil is not a qcheck dependency: on Linux the start comes from `/proc/self/stat` (its start
time in clock ticks since boot, against CLOCK_BOOTTIME, the clock it is counted in); elsewhere, or where that
cannot be read, from the moment `qcheck.timeline` was first imported. Pure stdlib.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping

PHASES: dict[str, str] = {
    "imported": "start-up and imports",
    "validated": "validation and model load",
    "collected": "pytest collection",
    "opened": "opening the run",
    "measured": "measurements",
    "judged": "judging the checks",
}
"""What the time up to each mark (from the previous one) was spent on."""


def _process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the name in () may hold spaces
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return age if age >= 0 else None


_START: float = time.perf_counter() - (_process_age() or 0.0)
"""The process start on the perf_counter clock (marks are monotone whatever the wall clock does)."""
_MARKS: dict[str, float] = {}


def mark(name: str) -> None:
    """Record that the run reached `name` now, in seconds since the process started; a mark set again keeps its
    first value (the moment the run first got there)."""
    _MARKS.setdefault(name, time.perf_counter() - _START)


def marks() -> dict[str, float]:
    """The marks in the order they were set, in seconds since the process started (rounded to 0.01 s)."""
    return {name: round(t, 2) for name, t in _MARKS.items()}


def reset() -> None:
    """Forget the marks: a run that starts again in the same process (tests call the CLI in-process) starts afresh."""
    _MARKS.clear()


def phases(timeline: Mapping[str, float]) -> dict[str, float]:
    """Each mark's phase and its length in seconds: from the previous mark (the first from the process start) to
    the mark, labelled by PHASES."""
    out: dict[str, float] = {}
    previous = 0.0
    for i, (name, t) in enumerate(timeline.items()):
        label = PHASES.get(name, f"until {name}")
        if i == 0 and name != "imported":
            label = f"start-up and {label}"
        out[label] = round(float(t) - previous, 2)
        previous = float(t)
    return out
