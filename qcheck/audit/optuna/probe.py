"""Probing an objective: run it on throw-away in-memory studies, record what it does, judge it by the rules.

Phase 1 runs `n_trials` trials on one study, as Optuna would (so errors Optuna raises and the objective
swallows happen for real); phase 2 runs `n_trials` more, each on a fresh study, so that no earlier
registration stops a trial early and every code path's suggest calls are recorded.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from qcheck.audit.optuna._optuna import quiet_optuna, require_optuna
from qcheck.audit.optuna.findings import AuditReport
from qcheck.audit.optuna.rules import ignored_ids, judge, thresholds_of
from qcheck.audit.optuna.tracer import ExceptionTracer, SuggestRecorder, innermost_user, objective_code
from qcheck.audit.optuna.trials import CaughtError, SuggestCall, TrialLog, TrialRecord, error_text
from qcheck.errors import InvariantViolation, QCheckError
from qcheck.results import CheckResult, to_jsonable

DEFAULT_N_TRIALS = 30
"""Probe trials per phase: random sampling reaches a branch of probability p in one of 30 trials with
probability 1 - (1 - p)**30 (96% for p = 0.1), and the 60 runs of the objective stay cheap."""


def return_problem(returned: Any) -> str | None:
    """Why Optuna cannot record `returned` as a trial's value(s), or None when it can."""
    for value in returned if isinstance(returned, (list, tuple)) else (returned,):
        if value is None or isinstance(value, (str, bytes)):
            return f"{'None' if value is None else 'a ' + type(value).__name__} is not a number"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"a value of type {type(value).__name__} cannot be converted to float"
        if math.isnan(number):
            return "NaN is not an acceptable value"
    return None


def run_trial(study: Any, number: int, objective: Callable[..., Any],
              tracer: ExceptionTracer) -> tuple[TrialRecord, list[SuggestCall]]:
    """Run the objective on one trial of `study` with its suggest calls and exceptions recorded."""
    optuna = require_optuna()
    TrialState = optuna.trial.TrialState
    trial = study.ask()
    recorder = SuggestRecorder(trial, number)
    tracer.reset()
    fields: dict[str, Any] = {}
    try:
        returned = objective(trial)
    except optuna.TrialPruned:
        frozen = study.tell(trial, state=TrialState.PRUNED)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the objective failed; even sys.exit() is a FAIL trial
        fields.update(raised=error_text(exc), raised_at=innermost_user(exc.__traceback__))
        frozen = study.tell(trial, state=TrialState.FAIL)
    else:
        n_values = len(returned) if isinstance(returned, (list, tuple)) else 1
        if n_values != len(study.directions):
            study.tell(trial, state=TrialState.FAIL)
            raise QCheckError(f"the objective returned {n_values} values but the probe has {len(study.directions)} "
                              "direction(s): pass directions=[...] (CLI: --directions minimize,maximize)")
        fields.update(returned=returned, invalid_return=return_problem(returned))
        if fields["invalid_return"]:
            frozen = study.tell(trial, state=TrialState.FAIL)
        else:
            frozen = study.tell(trial, returned)
    state = frozen.state.name
    values = tuple(float(v) for v in frozen.values) if state == "COMPLETE" else None
    record = TrialRecord(number, state, dict(frozen.params), values,
                         caught=_caught(state, recorder, tracer), reported_steps=len(frozen.intermediate_values),
                         **fields)
    return record, recorder.calls


def _caught(state: str, recorder: SuggestRecorder, tracer: ExceptionTracer) -> tuple[CaughtError, ...]:
    """Suggest errors of a trial that ended COMPLETE or PRUNED, and (COMPLETE) other exceptions handled in the
    objective's frame."""
    if state not in ("COMPLETE", "PRUNED"):
        return ()
    handled = tracer.handled()
    caught = []
    for exc_id, call in recorder.errors.items():
        seen = handled.get(exc_id)
        caught.append(CaughtError(call.error or "", str(call.site), tracer.site(seen.handled_line) if seen else None,
                                  bool(seen and seen.returned_from_handler), call))
    if state == "COMPLETE":
        caught += [CaughtError(error_text(h.exc), h.raised_at, tracer.site(h.handled_line),
                               h.returned_from_handler) for key, h in handled.items() if key not in recorder.errors]
    return tuple(caught)


def audit_objective(
    objective: Callable[..., Any],
    n_trials: int = DEFAULT_N_TRIALS,
    *,
    seed: int = 0,
    explore: bool = True,
    directions: Sequence[str] | None = None,
    ignore: Iterable[str] = (),
    target: str | None = None,
) -> AuditReport:
    """Probe an objective on throw-away in-memory studies and report search-space and exception findings."""
    optuna = require_optuna()
    if n_trials < 1:
        raise QCheckError(f"n_trials must be >= 1, got {n_trials}")
    ignored_ids(ignore)
    directions = list(directions) if directions else ["minimize"]

    def new_study(sampler_seed: int) -> Any:
        return optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                   sampler=optuna.samplers.RandomSampler(seed=sampler_seed),
                                   pruner=optuna.pruners.NopPruner(), directions=directions)

    trials: list[TrialRecord] = []
    calls: list[SuggestCall] = []
    tracer = ExceptionTracer(objective_code(objective))
    with quiet_optuna(), tracer:
        shared = new_study(seed)
        studies = [(shared, number) for number in range(n_trials)]
        if explore:
            studies += [(new_study(seed + 1 + i), n_trials + i) for i in range(n_trials)]
        for study, number in studies:
            record, recorded = run_trial(study, number, objective, tracer)
            trials.append(record)
            calls += recorded

    thresholds = thresholds_of("objective")
    log = TrialLog("objective", target or _callable_name(objective), tuple(trials), tuple(calls), thresholds)
    summary = {
        "n_trials": len(trials),
        "n_shared": n_trials,
        "n_isolated": n_trials if explore else 0,
        "seed": seed,
        "sampler": "RandomSampler",
        "states": dict(sorted(Counter(t.state for t in trials).items())),
        "n_suggest_calls": len(calls),
        "params": sorted({c.name for c in calls}),
        "thresholds": thresholds,
    }
    return AuditReport("objective", log.target, judge(log, ignore), summary)


def _callable_name(objective: Callable[..., Any]) -> str:
    base: Any = objective
    while isinstance(base, functools.partial):
        base = base.func
    module = getattr(base, "__module__", None) or "?"
    name = getattr(base, "__qualname__", None) or type(base).__qualname__
    return f"{module}:{name}"


def assert_static_search_space(
    objective: Callable[..., Any], n_trials: int = DEFAULT_N_TRIALS, **kwargs: Any
) -> CheckResult:
    """Probe `objective` and raise InvariantViolation (with the findings as evidence) on an error-level finding."""
    report = audit_objective(objective, n_trials=n_trials, **kwargs)
    result = report.to_check_result()
    if report.errors:
        raise InvariantViolation(result)
    return result


def stub_score(*args: Any, **kwargs: Any) -> float:
    """A deterministic stand-in score in [0, 1) that differs between configurations, for probing cheaply.

    Replace the expensive evaluation (quantize + evaluate a model) with it when auditing an objective:
    unlike a constant, it cannot look like a shared sentinel value (OPT202).
    """
    text = json.dumps(to_jsonable([list(args), kwargs]), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return int(digest[:13], 16) / 16**13
