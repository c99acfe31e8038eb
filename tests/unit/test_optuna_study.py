"""Unit tests of qcheck.audit.optuna's stored-study scan (`audit_study`): values, parameters and states of stored
trials, and opening storages without creating anything.

Every study here is a real Optuna study (in-memory or SQLite in tmp_path).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from qcheck.audit.optuna.study import audit_study, load_study
from qcheck.errors import QCheckError
from qcheck.lint.findings import Severity
from qcheck.results import Status


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------------------------------
# auditing stored studies


def _study(**kwargs: Any) -> optuna.Study:
    return optuna.create_study(**kwargs)


def test_repeated_best_configuration_is_not_a_sentinel() -> None:
    study = _study(direction="maximize")
    dists = {"bits": CategoricalDistribution((4, 8)), "group": CategoricalDistribution((32, 64))}
    for _ in range(12):  # a sampler that converged re-evaluates the same configuration
        study.add_trial(create_trial(params={"bits": 8, "group": 32}, distributions=dists, value=0.87232))
    for bits, group, value in ((4, 32, 0.81), (4, 64, 0.80), (8, 64, 0.86)):
        study.add_trial(create_trial(params={"bits": bits, "group": group}, distributions=dists, value=value))
    report = audit_study(study)
    assert report.findings == () and report.status is Status.PASS
    assert report.summary["n_trials"] == 15


def test_failed_and_pruned_shares() -> None:
    study = _study()
    dist = {"x": IntDistribution(0, 9)}
    for i in range(10):
        state = TrialState.FAIL if i < 2 else TrialState.PRUNED if i < 8 else TrialState.COMPLETE
        value = float(i) if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(params={"x": i}, distributions=dist, state=state, value=value))
    report = audit_study(study)
    assert report.ids == ["OPT203", "OPT204"]
    failed, pruned = report.findings
    assert (failed.evidence["count"], failed.evidence["share"], failed.evidence["trials"]) == (2, 0.2, [0, 1])
    assert (pruned.evidence["count"], pruned.evidence["share"]) == (6, 0.6)
    assert report.status is Status.WARN


def test_missing_params_alone_is_a_warning() -> None:
    study = _study()
    dists = {"fmt": CategoricalDistribution(("int", "fp16")), "bits": IntDistribution(2, 8)}
    study.add_trial(create_trial(params={"fmt": "int", "bits": 4}, distributions=dists, value=0.7))
    study.add_trial(create_trial(params={"fmt": "int", "bits": 8}, distributions=dists, value=0.8))
    study.add_trial(create_trial(params={"fmt": "fp16"}, distributions={"fmt": dists["fmt"]}, value=0.85))
    report = audit_study(study)
    [finding] = report.findings
    assert finding.id == "OPT201" and finding.severity == "warning"
    assert finding.evidence["missing_by_param"] == {"bits": [2]}
    assert report.status is Status.WARN
    assert audit_study(study, ignore=["OPT201"]).status is Status.PASS


def test_empty_study_holds_no_score_and_is_an_error() -> None:
    report = audit_study(_study(study_name="empty"))
    [finding] = report.findings
    assert finding.id == "OPT205" and finding.severity is Severity.ERROR
    assert finding.message == "the study holds no score: it has no trials, so nothing in it can be audited or used."
    assert finding.evidence == {"states": {}, "n_trials": 0}
    assert report.to_check_result().status is Status.FAIL
    ignored = audit_study(_study(), ignore=["OPT205"])
    assert ignored.findings == () and ignored.status is Status.INCONCLUSIVE  # nothing audited, and not a PASS


@pytest.mark.parametrize("state", [TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING])
def test_study_without_a_complete_trial_is_an_error(state: TrialState) -> None:
    study = _study()
    for bits in (2, 4, 8):
        study.add_trial(create_trial(params={"bits": bits}, distributions={"bits": IntDistribution(2, 8)}, state=state))
    report = audit_study(study)
    [finding] = report.by_id("OPT205")
    assert finding.evidence == {"states": {state.name: 3}, "n_trials": 3}
    assert f"none of its 3 trials is COMPLETE (states {{'{state.name}': 3}})" in finding.message
    assert report.status is Status.FAIL


def test_one_complete_trial_is_enough_to_audit() -> None:
    study = _study()
    dist = {"bits": IntDistribution(2, 8)}
    study.add_trial(create_trial(params={"bits": 2}, distributions=dist, state=TrialState.FAIL))
    study.add_trial(create_trial(params={"bits": 8}, distributions=dist, value=0.8))
    assert "OPT205" not in audit_study(study).ids


def test_multi_objective_sentinel() -> None:
    study = _study(directions=["maximize", "minimize"])
    dist = {"bits": IntDistribution(2, 16)}
    for bits in range(2, 12):
        values = [0.0, 0.0] if bits % 3 else [0.5 + bits / 100, 1.0 / bits]
        study.add_trial(create_trial(params={"bits": bits}, distributions=dist, values=values))
    report = audit_study(study)
    [finding] = report.findings
    assert finding.id == "OPT202" and finding.evidence["value"] == [0.0, 0.0] and finding.evidence["count"] == 7


# --------------------------------------------------------------------------------------------------
# storage errors are bad input, and create nothing


def test_storage_errors_do_not_create_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(QCheckError, match="SQLite storage not found"):
        audit_study(f"sqlite:///{missing}", "s")
    assert not missing.exists()
    with pytest.raises(QCheckError, match="neither a storage URL nor an existing file"):
        audit_study(str(tmp_path / "nothing.db"), "s")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE results (x)")
    with pytest.raises(QCheckError, match="not an Optuna storage"):
        audit_study(f"sqlite:///{other}", "s")
    with sqlite3.connect(other) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["results"]
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    with pytest.raises(QCheckError, match="not a SQLite database"):
        audit_study(str(junk), "s")


def test_study_name_errors_list_the_studies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("alpha", "beta"):
        optuna.create_study(storage=url, study_name=name)
    with pytest.raises(QCheckError, match="study 'gamma' not found in the storage; studies there: 'alpha', 'beta'"):
        load_study(url, "gamma")
    with pytest.raises(QCheckError, match=r"no study name given \(--study NAME\); studies in this storage: 'alpha'"):
        load_study(url, None)
    assert audit_study(url, "alpha").ids == ["OPT205"]
