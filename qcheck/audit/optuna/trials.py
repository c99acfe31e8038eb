"""What an audit saw, as data: per trial its state, parameters, values, suggest calls and exceptions.

The probe (`probe.py`) and the stored-study scan (`study.py`) both produce a `TrialLog`; the rules (`rules.py`)
are pure functions of it. Stored trials keep no call sites, return values or exceptions, so those fields are
empty for a study.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallSite:
    """Where user code called a suggest method."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class SuggestCall:
    """One suggest call (probe) or stored distribution (study); `error` is set when Optuna raised inside the call."""

    trial: int
    name: str
    method: str
    distribution: Any
    site: CallSite | None = None
    error: str | None = None


@dataclass(frozen=True)
class CaughtError:
    """An exception that did not escape the objective: where it was raised and, when seen, where it was handled.

    `suggest` is the suggest call that raised it (Optuna refusing a distribution); `returned_from_handler` is
    True when the objective's return statement lies inside the `except` clause that handled it.
    """

    error: str
    raised_at: str
    handled_at: str | None = None
    returned_from_handler: bool = False
    suggest: SuggestCall | None = None


@dataclass(frozen=True)
class TrialRecord:
    """One finished (or stored) trial as the rules see it.

    `values` are the floats Optuna recorded (COMPLETE trials only). Probe trials also keep what the objective
    returned, the exception that escaped it (`raised`, `raised_at`; None when it escaped from the call itself,
    before any of the objective's code ran), why Optuna could not record the returned value
    (`invalid_return`), and the exceptions it caught. `reported_steps` counts its intermediate values
    (`trial.report`): a PRUNED trial with some was stopped early by a pruner, one with none rejected its
    configuration.
    """

    number: int
    state: str
    params: Mapping[str, Any]
    values: tuple[float, ...] | None = None
    returned: Any = None
    raised: str | None = None
    raised_at: str | None = None
    invalid_return: str | None = None
    caught: tuple[CaughtError, ...] = ()
    reported_steps: int = 0


@dataclass(frozen=True)
class TrialLog:
    """Everything one audit looked at: which kind ('objective' or 'study'), its target, trials and suggest calls."""

    kind: str
    target: str
    trials: tuple[TrialRecord, ...]
    calls: tuple[SuggestCall, ...]
    thresholds: Mapping[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How the trials are named in messages: 'probe trials' or 'trials'."""
        return "probe trials" if self.kind == "objective" else "trials"

    def in_state(self, *states: str) -> list[TrialRecord]:
        """The trials in one of these states (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
        return [t for t in self.trials if t.state in states]


def error_text(exc: BaseException) -> str:
    """'Type: message' on one line, as findings and one-line CLI errors show an exception."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
