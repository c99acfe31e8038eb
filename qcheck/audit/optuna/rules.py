"""The audit's rules: each a pure function of a `TrialLog`, registered with a stable id, severity, scope and fix.

Entries are lint's `RuleSpec` (id, severity, zoo bug, summary, function, scope) extended with the rule's short
name and fix (`AuditRule`). They live in this module's own `RULES`, not in `qcheck.lint`'s list: lint's engine
runs every rule of its list on every table. A function that emits several ids (the distribution conflicts,
OPT101-OPT105) is registered under each and run once. Scopes: 'objective' (the probe), 'study', or both.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qcheck.audit.optuna.distributions import (
    DIFFERENCES,
    classify_difference,
    describe_distribution,
    distribution_data,
    distribution_key,
)
from qcheck.audit.optuna.findings import OptunaFinding
from qcheck.audit.optuna.trials import SuggestCall, TrialLog, TrialRecord
from qcheck.errors import QCheckError
from qcheck.lint.findings import Severity
from qcheck.lint.rules.registry import RuleSpec
from qcheck.results import to_jsonable

SENTINEL_SHARE = 0.3
"""A value shared by at least this share of COMPLETE trials (from different configurations) is a sentinel.
Seed 003's sentinel held 70% of its trials; a real repeated score, chance-level accuracy of degenerate
configurations, held 5% and ~8% of seed 003's fixed searches: 30% lies 2.3x below the one, 3.75x above the other."""

SENTINEL_MIN_TRIALS = 3
"""... and by at least this many trials with this many distinct configurations (two equal scores are a tie)."""

FAIL_SHARE = 0.1
"""Warn when at least this share of finished trials FAILed (a warning: FAIL trials are visible, not hidden)."""

PRUNED_SHARE = 0.5
"""Warn when at least this share of finished trials was PRUNED: then most of the space is invalid combinations."""

Rule = Callable[[TrialLog], Iterable[OptunaFinding]]


@dataclass(frozen=True)
class AuditRule(RuleSpec):
    """A registered audit rule: lint's RuleSpec (`severities` holds its one severity) plus a name and a fix."""

    name: str = ""
    fix: str = ""

    @property
    def severity(self) -> Severity:
        """The severity of every finding of this rule."""
        return Severity(self.severities)


RULES: dict[str, AuditRule] = {}
"""Every audit rule by id, in id order once this module is imported."""


def audit_rule(rule_id: str, name: str, severity: Severity, scope: str, summary: str, fix: str) -> Callable[[Rule], Rule]:
    """Register `func` as the function that emits `rule_id` in `scope` ('objective', 'study' or 'objective, study')."""
    def register(func: Rule) -> Rule:
        RULES[rule_id] = AuditRule(rule_id, severity.value, "Z10", summary, func, scope, False, name, fix)
        return func
    return register


def finding(log: TrialLog, rule_id: str, message: str, param: str | None = None, **evidence: Any) -> OptunaFinding:
    """A finding of a registered rule about the audited target."""
    rule = RULES[rule_id]
    return OptunaFinding(rule.id, rule.severity, message, log.target, evidence=evidence, name=rule.name,
                         param=param, fix=rule.fix)


def ignored_ids(ignore: Iterable[str]) -> set[str]:
    """The rule ids to leave out, upper-cased; QCheckError (bad input) for an id no rule has."""
    ignored = {i.upper() for i in ignore}
    unknown = ignored - set(RULES)
    if unknown:
        raise QCheckError(f"unknown finding id(s) to ignore: {', '.join(sorted(unknown))}; known: {', '.join(RULES)}")
    return ignored


def judge(log: TrialLog, ignore: Iterable[str] = ()) -> tuple[OptunaFinding, ...]:
    """Run every rule of the log's scope once; the findings not ignored, errors first, then by id and parameter."""
    ignored = ignored_ids(ignore)
    funcs = list(dict.fromkeys(r.func for r in RULES.values() if log.kind in r.scope))
    found = [f for func in funcs for f in func(log) if f.id not in ignored]
    return tuple(sorted(found, key=lambda f: (f.severity is not Severity.ERROR, f.id, f.param or "")))


def numbers(values: Sequence[int], limit: int = 8) -> str:
    """'0, 3, 5' or the first `limit` and how many in all."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _states(trials: Sequence[TrialRecord]) -> dict[str, int]:
    return dict(sorted(Counter(t.state for t in trials).items()))


# --------------------------------------------------------------------------------------------------
# one distribution per parameter name

_FIX_FIXED_SPACE = (
    "Give the parameter one fixed distribution: suggest from a fixed superset of choices and "
    "`raise optuna.TrialPruned()` (or return early) for invalid combinations; or use a distinct "
    "parameter name per branch (e.g. f\"{name}_w{width}\"); or `suggest_int` over an index into the "
    "list of valid choices (integer ranges may change between trials)."
)
_DIFF_TEXT = {"kind": "distribution kind", "log": "log flag", "choices": "choice set", "order": "choice order",
              "range": "bounds/step"}
_DIFF_RULE = {"kind": "OPT103", "log": "OPT104", "choices": "OPT101", "order": "OPT102", "range": "OPT105"}
_BOTH = "objective, study"


@audit_rule("OPT101", "dynamic-choices", Severity.ERROR, _BOTH,
            "one parameter name, different categorical choice sets", _FIX_FIXED_SPACE)
@audit_rule("OPT102", "reordered-choices", Severity.ERROR, _BOTH,
            "same choices in a different order (Optuna compares tuples by position)",
            "Pass the choices in one fixed order: a module-level tuple, or sorted(...) of the set, never an "
            "order computed from other parameters; Optuna compares choice tuples by position, so a reordered "
            "tuple is a different distribution.")
@audit_rule("OPT103", "distribution-kind-changed", Severity.ERROR, _BOTH,
            "e.g. `suggest_float` in one branch, `suggest_categorical` in another",
            "Use a distinct parameter name per kind of distribution (e.g. 'lr_sgd' = suggest_float, "
            "'lr_choice' = suggest_categorical); Optuna cannot store two kinds under one name.")
@audit_rule("OPT104", "log-flag-changed", Severity.ERROR, _BOTH,
            "`log=True` in one place, `log=False` in another",
            "Use one log setting per parameter name, or a distinct name per branch (e.g. 'lr_log' and 'lr_linear').")
@audit_rule("OPT105", "range-changed", Severity.WARNING, _BOTH,
            "int/float bounds or step change; Optuna accepts it",
            "Optuna accepts integer/float ranges that change between trials, but samplers model the "
            "parameter as one distribution; if the range is meant to depend on another parameter, keep it, "
            "otherwise use one fixed range and prune invalid values, or a distinct name per branch.")
def distribution_conflicts(log: TrialLog) -> list[OptunaFinding]:
    """Parameter names suggested (or stored) with more than one distribution, by the worst difference."""
    grouped: dict[str, dict[str, list[SuggestCall]]] = defaultdict(dict)
    for call in log.calls:
        grouped[call.name].setdefault(distribution_key(call.distribution), []).append(call)
    findings = []
    for name, by_dist in grouped.items():
        if len(by_dist) < 2:
            continue
        variants = [_variant(calls) for calls in by_dist.values()]
        first = variants[0]["dist"]
        kinds = sorted({d for v in variants[1:] if (d := classify_difference(first, v["dist"]))},
                       key=DIFFERENCES.index)
        parts = [f"{describe_distribution(v['dist'])}{' at ' + ', '.join(v['sites']) if v['sites'] else ''} "
                 f"({log.label} {numbers(v['trials'])})" for v in variants]
        message = (f"parameter '{name}' is suggested with {len(variants)} different distributions "
                   f"(differing: {', '.join(_DIFF_TEXT[k] for k in kinds)}): " + "; ".join(parts)
                   + ". Optuna requires one distribution per parameter name in a study")
        if kinds[0] == "range":
            message += "; it accepts changed ranges, but samplers model the parameter as one distribution"
        else:
            message += " and raises ValueError on the later ones"
        message += "."
        if log.kind == "study":
            message = (message[:-1] + " (stored trials keep no call sites: probe the objective with `qcheck optuna "
                       "MODULE:FUNCTION` to locate the suggest calls).")
        evidence = [{"distribution": distribution_data(v["dist"]), "described": describe_distribution(v["dist"]),
                     "call_sites": v["sites"], "methods": v["methods"], "trials": v["trials"]} for v in variants]
        findings.append(finding(log, _DIFF_RULE[kinds[0]], message, param=name, differences=kinds,
                                variants=evidence))
    return findings


def _variant(calls: list[SuggestCall]) -> dict[str, Any]:
    sites = sorted({str(c.site) for c in calls if c.site is not None}, key=_site_order)
    return {"dist": calls[0].distribution, "trials": sorted({c.trial for c in calls}), "sites": sites,
            "methods": sorted({c.method for c in calls if c.method})}


def _site_order(site: str) -> tuple[str, int]:
    path, _, line = site.rpartition(":")
    return path, int(line) if line.isdigit() else 0


# --------------------------------------------------------------------------------------------------
# exceptions and return values seen by the probe


@audit_rule("OPT110", "swallowed-suggest-error", Severity.ERROR, "objective",
            "a suggest call raised and the objective returned a value (or pruned) anyway",
            "Do not catch broad exceptions around suggest calls: fix the search space so the suggest call "
            "cannot raise (see OPT101-OPT104), and let other errors propagate so Optuna marks the trial FAIL; "
            "raise optuna.TrialPruned() for configurations that are invalid by design.")
def swallowed_suggest_errors(log: TrialLog) -> list[OptunaFinding]:
    """Suggest calls that raised in trials that still ended COMPLETE or PRUNED."""
    groups: dict[tuple[Any, ...], list[tuple[TrialRecord, SuggestCall]]] = defaultdict(list)
    for record in log.in_state("COMPLETE", "PRUNED"):
        for caught in record.caught:
            call = caught.suggest
            if call is not None:
                key = (call.name, str(call.site), call.error, caught.handled_at, record.state, repr(record.returned))
                groups[key].append((record, call))
    findings = []
    for (name, site, error, handled_at, state, returned), items in groups.items():
        trials = [r.number for r, _ in items]
        caught_text = f"caught it at {handled_at}" if handled_at else "caught it"
        outcome = f"returned {returned}" if state == "COMPLETE" else "raised optuna.TrialPruned"
        message = (f"{items[0][1].method}('{name}') at {site} raised {error} in {len(trials)} of {len(log.trials)} "
                   f"probe trials ({numbers(trials)}); the objective {caught_text} and {outcome}, so the trial ends "
                   f"{state} with '{name}' missing from trial.params")
        if state == "COMPLETE":
            message += f" and the sentinel {returned} recorded as a real score"
        findings.append(finding(log, "OPT110", message + ".", param=name, call_site=site, error=error,
                                handled_at=handled_at, trial_state=state, returned=items[0][0].returned,
                                trials=trials))
    return findings


@audit_rule("OPT111", "swallowed-exception", Severity.ERROR, "objective",
            "another exception reached the objective, which returned a value from inside the `except` clause",
            "Do not turn an exception into an objective value: a sentinel score is recorded as a real "
            "result and samplers learn from it. Let the exception propagate (trial FAIL, or "
            "optuna.study.Study.optimize(catch=...)) or raise optuna.TrialPruned() for invalid configurations.")
@audit_rule("OPT113", "handled-exception", Severity.WARNING, "objective",
            "an exception reached the objective, was handled, and a value was returned later (`score = 0.0` in "
            "the handler, or plain control flow)",
            "Check what the handler does: if it substitutes a score or a default configuration, let the "
            "exception propagate (trial FAIL) or raise optuna.TrialPruned() instead; if it is ordinary "
            "control flow, ignore this finding (--ignore OPT113).")
def handled_exceptions(log: TrialLog) -> list[OptunaFinding]:
    """Other exceptions handled in the objective's own frame of a COMPLETE trial: returned from the handler or later."""
    groups: dict[tuple[Any, ...], list[TrialRecord]] = defaultdict(list)
    for record in log.in_state("COMPLETE"):
        for c in record.caught:
            if c.suggest is None:
                groups[(c.error, c.raised_at, c.handled_at, c.returned_from_handler, repr(record.returned))].append(
                    record)
    findings = []
    for (error, raised_at, handled_at, from_handler, returned), records in groups.items():
        trials = [r.number for r in records]
        message = (f"{error} (raised at {raised_at}) reached the objective in {len(trials)} of {len(log.trials)} "
                   f"probe trials ({numbers(trials)}); it was caught at {handled_at} and the objective returned "
                   f"{returned}")
        if from_handler:
            message += " from inside that except clause, which Optuna records as a COMPLETE trial's score"
        else:
            message += " later; if the handler substitutes a value (score = 0.0), that value is a sentinel"
        findings.append(finding(log, "OPT111" if from_handler else "OPT113", message + ".", error=error,
                                raised_at=raised_at, handled_at=handled_at, returned=records[0].returned,
                                trials=trials))
    return findings


def _raised_where(raised_at: str | None) -> str:
    return f"at {raised_at}" if raised_at else "when called with a trial, before any of its code ran"


@audit_rule("OPT112", "objective-raised", Severity.WARNING, "objective",
            "an exception escaped the objective: the trial ends FAIL (visible, but broken)",
            "The trial ends FAIL in a real study: fix the error, or raise optuna.TrialPruned() if the "
            "configuration is invalid by design.")
def objective_raised(log: TrialLog) -> list[OptunaFinding]:
    """Exceptions that escaped the objective, by error and place."""
    raised: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for record in log.in_state("FAIL"):
        if record.raised:
            raised[(record.raised, record.raised_at)].append(record.number)
    return [finding(log, "OPT112", f"the objective raised {error} ({_raised_where(raised_at)}) in {len(trials)} of "
                    f"{len(log.trials)} probe trials ({numbers(trials)}); those trials end FAIL.",
                    error=error, raised_at=raised_at, trials=trials)
            for (error, raised_at), trials in raised.items()]


@audit_rule("OPT114", "invalid-return", Severity.WARNING, "objective",
            "the objective returned something Optuna cannot record as a score (None, a string, NaN): the trial "
            "ends FAIL",
            "Return a float (a sequence of floats, one per direction, for a multi-objective study) on every "
            "path; raise optuna.TrialPruned() for configurations that are invalid by design.")
def invalid_returns(log: TrialLog) -> list[OptunaFinding]:
    """Return values Optuna refuses (the trial ends FAIL), by reason."""
    groups: dict[str, list[TrialRecord]] = defaultdict(list)
    for record in log.in_state("FAIL"):
        if record.invalid_return:
            groups[record.invalid_return].append(record)
    findings = []
    for reason, records in groups.items():
        trials = [r.number for r in records]
        returned = _examples(records)
        findings.append(finding(
            log, "OPT114", f"the objective returned {' or '.join(returned)} in {len(trials)} of {len(log.trials)} "
            f"probe trials ({numbers(trials)}): {reason}, so Optuna cannot record it as a score and those trials "
            "end FAIL.", reason=reason, returned=returned, trials=trials))
    return findings


def _examples(records: Sequence[TrialRecord], limit: int = 3) -> list[str]:
    """The distinct returned values (repr), the first `limit` and a count of the others."""
    distinct = list(dict.fromkeys(repr(r.returned) for r in records))
    return distinct[:limit] + ([f"{len(distinct) - limit} other values"] if len(distinct) > limit else [])


# --------------------------------------------------------------------------------------------------
# values, parameters and states of finished trials


@audit_rule("OPT201", "missing-params", Severity.WARNING, "study",
            "COMPLETE trials lack parameters other COMPLETE trials have (normal in conditional spaces)",
            "Expected in a conditional search space (parameters suggested only on some branches). "
            "Otherwise the objective stopped before these suggest calls (an exception was swallowed): "
            "probe it with `qcheck optuna MODULE:FUNCTION`.")
def missing_params(log: TrialLog) -> list[OptunaFinding]:
    """COMPLETE trials that lack parameters other COMPLETE trials have."""
    complete = log.in_state("COMPLETE")
    missing_by_trial = missing_params_by_trial(complete)
    if not missing_by_trial:
        return []
    names: Counter[str] = Counter(name for t in complete for name in t.params)
    by_param: dict[str, list[int]] = defaultdict(list)
    for number, missing in missing_by_trial.items():
        for name in missing:
            by_param[name].append(number)
    most_missing = sorted(by_param.items(), key=lambda kv: -len(kv[1]))
    described = ", ".join(f"'{name}' ({len(trials)} trials)" for name, trials in most_missing[:6])
    more = f" and {len(by_param) - 6} more" if len(by_param) > 6 else ""
    message = (f"{len(missing_by_trial)} of {len(complete)} COMPLETE trials lack parameters that other COMPLETE "
               f"trials have: {described}{more}.")
    return [finding(log, "OPT201", message, missing_by_param=dict(sorted(by_param.items())),
                    trials=sorted(missing_by_trial), param_counts=dict(sorted(names.items())))]


def missing_params_by_trial(complete: Sequence[TrialRecord]) -> dict[int, list[str]]:
    """For each COMPLETE trial lacking parameters that other COMPLETE trials have: those parameter names."""
    names = {name for t in complete for name in t.params}
    missing = {t.number: sorted(names - set(t.params)) for t in complete}
    return {number: names for number, names in missing.items() if names}


@audit_rule("OPT202", "sentinel-value", Severity.ERROR, _BOTH,
            ">= 30% (and >= 3) of COMPLETE trials share one value, from >= 3 configurations",
            "Do not return a constant for failed or invalid configurations: let the error propagate (FAIL) "
            "or raise optuna.TrialPruned(); then rerun the study, since samplers such as TPE have learnt "
            "from the sentinel values.")
def sentinel_values(log: TrialLog) -> list[OptunaFinding]:
    """One value shared by many COMPLETE trials of different configurations (probe: those not already explained
    by a swallowed exception)."""
    if log.kind == "objective":
        complete = [t for t in log.in_state("COMPLETE") if not _explained(t)]
        label, missing_by_trial = "probe trials without a swallowed exception", None
    else:
        complete = log.in_state("COMPLETE")
        label, missing_by_trial = "trials", missing_params_by_trial(complete)
    share = log.thresholds.get("sentinel_share", SENTINEL_SHARE)
    min_trials = int(log.thresholds.get("sentinel_min_trials", SENTINEL_MIN_TRIALS))
    groups: dict[tuple[float, ...], list[TrialRecord]] = defaultdict(list)
    for t in complete:
        groups[tuple(t.values or ())].append(t)
    findings = []
    for values, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        configs = {json.dumps(to_jsonable(dict(t.params)), sort_keys=True) for t in members}
        fraction = len(members) / len(complete)
        if len(members) < min_trials or fraction < share or len(configs) < min_trials:
            continue
        value = values[0] if len(values) == 1 else list(values)
        trials = [t.number for t in members]
        message = (f"{len(members)} of {len(complete)} COMPLETE {label} ({fraction:.0%}) share the value {value!r}, "
                   f"from {len(configs)} different configurations: a sentinel returned for failed or invalid "
                   "configurations, not a measured score")
        evidence: dict[str, Any] = {"value": value, "count": len(members), "n_complete": len(complete),
                                    "share": round(fraction, 4), "distinct_configurations": len(configs),
                                    "trials": trials}
        if missing_by_trial is not None:
            truncated = [n for n in trials if missing_by_trial.get(n)]
            evidence["trials_missing_params"] = truncated
            if truncated:
                message += (f"; {len(truncated)} of them lack parameters other trials have (OPT201), the signature "
                            "of a suggest call that raised and an exception turned into a return value")
        findings.append(finding(log, "OPT202", message + ".", **evidence))
    return findings


def _explained(trial: TrialRecord) -> bool:
    return any(c.suggest is not None or c.returned_from_handler for c in trial.caught)


@audit_rule("OPT203", "failed-trials", Severity.WARNING, "study",
            ">= 10% of finished trials FAIL",
            "Look at the FAIL trials' errors in the Optuna log; a configuration that is invalid by design "
            "should raise optuna.TrialPruned() instead.")
@audit_rule("OPT204", "pruned-trials", Severity.WARNING, "study",
            ">= 50% of finished trials PRUNED before reporting any intermediate value: mostly invalid combinations "
            "(a pruner's early stops, after `trial.report`, are not counted)",
            "Most trials are pruned: the search space is mostly invalid combinations. Suggest over the "
            "valid combinations only (e.g. suggest_int over an index into a list of valid configurations).")
def state_shares(log: TrialLog) -> list[OptunaFinding]:
    """FAIL and PRUNED shares of the finished trials above their thresholds. A PRUNED trial counts only where it
    reported no intermediate value: one that did was stopped early by a pruner (MedianPruner, Hyperband), which is
    the pruner's work; a real TPE + MedianPruner study of 3,000 trials had 68% of them so (RESULTS.md, session 29)."""
    finished = log.in_state("COMPLETE", "PRUNED", "FAIL")
    early = [t.number for t in finished if t.state == "PRUNED" and t.reported_steps]
    findings = []
    for state, rule_id, key, default in (("FAIL", "OPT203", "fail_share", FAIL_SHARE),
                                         ("PRUNED", "OPT204", "pruned_share", PRUNED_SHARE)):
        threshold = log.thresholds.get(key, default)
        trials = [t.number for t in finished if t.state == state and not (state == "PRUNED" and t.reported_steps)]
        if finished and trials and len(trials) / len(finished) >= threshold:
            share = len(trials) / len(finished)
            extra = ({"stopped_by_pruner": len(early)} if state == "PRUNED" else {})
            what = (f"PRUNED before reporting any intermediate value (threshold {threshold:.0%})"
                    + (f"; {len(early)} more were stopped early by the pruner, not counted" if early else "")
                    if state == "PRUNED" else f"{state} (threshold {threshold:.0%})")
            findings.append(finding(log, rule_id, f"{len(trials)} of {len(finished)} finished trials ({share:.0%}) "
                                    f"are {what}.", count=len(trials), n_finished=len(finished),
                                    share=round(share, 4), trials=trials, **extra))
    return findings


@audit_rule("OPT205", "no-complete-trial", Severity.ERROR, _BOTH,
            "no trial ended COMPLETE: the objective cannot run (it raises, returns no number, takes no trial) "
            "or the study holds no score",
            "Make the objective run: it takes the optuna.Trial and returns a float (one per direction); fix what "
            "it raises (OPT112) or returns (OPT114), and pass a stand-in score (qcheck.audit.optuna.stub_score) "
            "where the real evaluation cannot run during the audit. Audit a stored study after trials complete.")
def no_complete_trial(log: TrialLog) -> list[OptunaFinding]:
    """No trial produced a score: nothing shows the search space works, and a study without scores is unusable."""
    if log.in_state("COMPLETE"):
        return []
    states = _states(log.trials)
    if log.kind == "study":
        held = (f"none of its {len(log.trials)} trials is COMPLETE (states {states})" if log.trials
                else "it has no trials")
        return [finding(log, "OPT205", f"the study holds no score: {held}, so nothing in it can be audited or used.",
                        states=states, n_trials=len(log.trials))]
    causes = _failure_causes(log.trials)
    message = (f"none of the {len(log.trials)} probe trials ended COMPLETE (states {states}): the objective "
               + "; ".join(f"{text} in {len(trials)}" for text, trials in causes.items())
               + ". No configuration produced a score, so the search space could not be audited: an objective "
               "that cannot run is not a clean search space.")
    return [finding(log, "OPT205", message, states=states, causes=causes)]


def _failure_causes(trials: Sequence[TrialRecord]) -> dict[str, list[int]]:
    """What the probe trials did instead of completing, as text -> trial numbers."""
    causes: dict[tuple[str, str], list[TrialRecord]] = defaultdict(list)
    for t in trials:
        if t.raised:
            causes[("raised", f"raised {t.raised} ({_raised_where(t.raised_at)})")].append(t)
        elif t.invalid_return:
            causes[("returned", t.invalid_return)].append(t)
        elif t.state == "PRUNED":
            causes[("pruned", "raised optuna.TrialPruned")].append(t)
        else:
            causes[("other", f"ended {t.state}")].append(t)
    ordered = sorted(causes.items(), key=lambda kv: -len(kv[1]))
    return {(f"returned {' or '.join(_examples(group))} ({text})" if kind == "returned" else text):
            [t.number for t in group] for (kind, text), group in ordered}


RULES = dict(sorted(RULES.items()))


def thresholds_of(log_kind: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The thresholds an audit of this kind uses (defaults above, overridden by `overrides`), for its summary."""
    values: dict[str, float] = {"sentinel_share": SENTINEL_SHARE, "sentinel_min_trials": SENTINEL_MIN_TRIALS}
    if log_kind == "study":
        values.update(fail_share=FAIL_SHARE, pruned_share=PRUNED_SHARE)
    values.update(overrides or {})
    return values
