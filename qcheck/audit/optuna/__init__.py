"""Optuna search-space audit (bug Z10): static spaces, swallowed exceptions, sentinel values, objectives that
cannot run.

Optuna requires one distribution per parameter name within a study. An objective whose `suggest_categorical`
choices depend on an earlier parameter makes Optuna raise `ValueError: CategoricalDistribution does not support
dynamic value space.`; an objective that wraps its body in `except Exception: return 0.0` turns that error into a
COMPLETE trial with value 0.0 and the parameter missing from `trial.params` (seed 003: 70% of 20 trials).

Modules, one job each (Optuna is imported inside functions only, so importing them stays free of it):
- `rules`: the rule registry (ids, severities, fixes, thresholds) and the rules, pure functions of a `TrialLog`;
- `trials`: what an audit saw, per trial, as data (`TrialLog`);
- `tracer`: recording an objective's suggest calls and the exceptions that reach its frame;
- `probe`: `audit_objective`, running the objective on throw-away in-memory studies;
- `study`: `audit_study`, opening a stored study without creating anything;
- `findings`: `OptunaFinding` (lint's Finding plus name, parameter and fix) and `AuditReport`;
- `distributions`, `resolve`, `cli` (`qcheck optuna`).
"""
from __future__ import annotations

from qcheck.audit.optuna.distributions import classify_difference, describe_distribution
from qcheck.audit.optuna.findings import AuditReport, OptunaFinding
from qcheck.audit.optuna.probe import DEFAULT_N_TRIALS, assert_static_search_space, audit_objective, stub_score
from qcheck.audit.optuna.resolve import resolve_objective
from qcheck.audit.optuna.rules import RULES
from qcheck.audit.optuna.study import audit_study, load_study

__all__ = ["DEFAULT_N_TRIALS", "RULES", "AuditReport", "OptunaFinding", "assert_static_search_space",
           "audit_objective", "audit_study", "classify_difference", "describe_distribution", "load_study",
           "resolve_objective", "stub_score"]
