"""Z10: the Optuna objective or stored study named in the run options has a static search space,
swallows no exceptions, and holds no sentinel values.

Configure with `--qcheck-optuna-objective MODULE:FUNCTION` (probe the objective on throw-away in-memory
studies) and/or `--qcheck-optuna-storage URL --qcheck-optuna-study NAME` (audit a stored study).
Error-level findings fail the test with their evidence; warnings are recorded and pass.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from qcheck.errors import InvariantViolation, QCheckError
from qcheck.results import CheckResult

NOT_CONFIGURED = (
    "no Optuna objective or study configured "
    "(--qcheck-optuna-objective / --qcheck-optuna-storage + --qcheck-optuna-study)"
)


def _option(options: Any, name: str) -> Any:
    return getattr(options, name, None)


def _skip_if_nothing_configured(options: Any) -> None:
    names = ("optuna_objective", "optuna_storage", "optuna_study")
    if not any(_option(options, name) for name in names):
        pytest.skip(NOT_CONFIGURED)


def _record_and_assert(report: Any, record: Callable[[CheckResult], CheckResult]) -> None:
    result = report.to_check_result()
    if report.errors:
        raise InvariantViolation(result)  # the plugin's report hook records it
    record(result)


Record = Callable[[CheckResult], CheckResult]


@pytest.mark.qcheck_check("optuna.search_space")
def test_optuna_objective_search_space(qcheck_options: Any, qcheck_record: Record) -> None:
    """Probe the configured objective: one distribution per parameter name, no swallowed exceptions."""
    _skip_if_nothing_configured(qcheck_options)
    spec = _option(qcheck_options, "optuna_objective")
    if not spec:
        pytest.skip("no Optuna objective configured (--qcheck-optuna-objective MODULE:FUNCTION)")
    from qcheck.audit.optuna.probe import DEFAULT_N_TRIALS, audit_objective
    from qcheck.audit.optuna.resolve import resolve_objective

    n_trials = _option(qcheck_options, "optuna_n_trials") or DEFAULT_N_TRIALS
    report = audit_objective(resolve_objective(spec), n_trials=n_trials, target=spec)
    _record_and_assert(report, qcheck_record)


@pytest.mark.qcheck_check("optuna.study")
def test_optuna_stored_study(qcheck_options: Any, qcheck_record: Record) -> None:
    """Audit the configured stored study: consistent distributions, no sentinel values, FAIL/PRUNED shares."""
    _skip_if_nothing_configured(qcheck_options)
    storage = _option(qcheck_options, "optuna_storage")
    study = _option(qcheck_options, "optuna_study")
    if not storage and not study:
        pytest.skip("no stored Optuna study configured (--qcheck-optuna-storage URL --qcheck-optuna-study NAME)")
    if not storage:
        raise QCheckError("--qcheck-optuna-study needs --qcheck-optuna-storage URL (the storage that holds the study)")
    if not study:
        raise QCheckError("--qcheck-optuna-storage needs --qcheck-optuna-study NAME (the study to audit)")
    from qcheck.audit.optuna.study import audit_study

    _record_and_assert(audit_study(storage, study), qcheck_record)
