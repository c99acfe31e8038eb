"""Scanning a stored study: open its storage without creating anything, read its trials, judge them by the rules.

A storage that does not exist, is not an Optuna storage, or lacks the study is bad input (QCheckError, exit 2);
Optuna itself would silently create an empty SQLite database at a mistyped path.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qcheck.audit.optuna._optuna import quiet_optuna, require_optuna
from qcheck.audit.optuna.findings import AuditReport
from qcheck.audit.optuna.rules import FAIL_SHARE, PRUNED_SHARE, SENTINEL_SHARE, ignored_ids, judge, thresholds_of
from qcheck.audit.optuna.trials import SuggestCall, TrialLog, TrialRecord, error_text
from qcheck.errors import QCheckError


def open_storage(storage: Any) -> Any:
    """An Optuna storage from a URL or a file path (SQLite, or a `.log`/`.jsonl` journal); objects pass through."""
    optuna = require_optuna()
    if not isinstance(storage, (str, os.PathLike)):
        return storage
    text = os.fspath(storage)
    if "://" not in text:
        path = Path(text)
        if not path.is_file():
            raise QCheckError(f"storage not found: {text!r} is neither a storage URL nor an existing file")
        if path.suffix in (".log", ".jsonl"):
            from optuna.storages.journal import JournalFileBackend

            try:
                return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
            except Exception as exc:  # any failure to read the user's journal is bad input (exit 2)
                raise QCheckError(f"cannot read Optuna journal {text!r}: {error_text(exc)}") from exc
        text = f"sqlite:///{path.resolve()}"
    if text.startswith("sqlite:///"):
        _check_sqlite_file(text[len("sqlite:///"):].split("?", 1)[0])
    try:
        return optuna.storages.RDBStorage(text)
    except Exception as exc:  # any failure to open the user's storage is bad input (exit 2)
        raise QCheckError(f"cannot open Optuna storage {text!r}: {error_text(exc)}") from exc


def _check_sqlite_file(path: str) -> None:
    import sqlite3

    if path in ("", ":memory:"):
        raise QCheckError("an in-memory SQLite URL holds no stored study; pass the URL of a database file")
    if not Path(path).is_file():
        raise QCheckError(f"SQLite storage not found: {path!r} does not exist (Optuna would silently create an "
                          "empty database there; check the path)")
    try:
        with sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise QCheckError(f"{path!r} is not a SQLite database: {exc}") from exc
    if "studies" not in tables:
        raise QCheckError(f"{path!r} is not an Optuna storage (it has no 'studies' table)")


def load_study(storage: Any, study_name: str | None) -> Any:
    """Load a study from a storage URL, a file path or an Optuna storage; QCheckError names what is missing."""
    optuna = require_optuna()
    if isinstance(storage, optuna.Study):
        return storage
    backend = open_storage(storage)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)]
    except Exception as exc:  # a storage Optuna cannot read is bad input (exit 2)
        raise QCheckError(f"cannot read the studies in {storage!r}: {error_text(exc)}") from exc
    available = ", ".join(repr(n) for n in names) if names else "none"
    if study_name is None:
        raise QCheckError(f"no study name given (--study NAME); studies in this storage: {available}")
    if study_name not in names:
        raise QCheckError(f"study {study_name!r} not found in the storage; studies there: {available}")
    with quiet_optuna():
        return optuna.load_study(study_name=study_name, storage=backend)


def trial_log(study: Any, target: str, thresholds: dict[str, float]) -> TrialLog:
    """The study's trials as the rules see them: state, parameters, values and stored distributions."""
    trials = study.get_trials(deepcopy=False)
    records = tuple(TrialRecord(t.number, t.state.name, dict(t.params),
                                tuple(t.values) if t.state.name == "COMPLETE" and t.values else None,
                                reported_steps=len(t.intermediate_values))
                    for t in trials)
    calls = tuple(SuggestCall(t.number, name, "", dist) for t in trials for name, dist in t.distributions.items())
    return TrialLog("study", target, records, calls, thresholds)


def audit_study(
    storage: Any,
    study_name: str | None = None,
    *,
    sentinel_share: float = SENTINEL_SHARE,
    fail_share: float = FAIL_SHARE,
    pruned_share: float = PRUNED_SHARE,
    ignore: Iterable[str] = (),
) -> AuditReport:
    """Audit a stored study (storage URL, file path, Optuna storage object or Study) for Z10 findings."""
    require_optuna()
    ignored_ids(ignore)
    opened = open_storage(storage) if isinstance(storage, (str, os.PathLike)) else None
    try:
        study = load_study(storage if opened is None else opened, study_name)
        target = f"{study.study_name!r}" + (f" in {storage}" if opened is not None else "")
        thresholds = thresholds_of("study", {"sentinel_share": sentinel_share, "fail_share": fail_share,
                                             "pruned_share": pruned_share})
        log = trial_log(study, target, thresholds)
        directions = [d.name for d in study.directions]
    finally:
        if opened is not None and hasattr(opened, "engine"):
            opened.engine.dispose()
    finished = log.in_state("COMPLETE", "PRUNED", "FAIL")
    summary = {
        "n_trials": len(finished),
        "n_stored": len(log.trials),
        "states": dict(sorted(Counter(t.state for t in log.trials).items())),
        "directions": directions,
        "params": sorted({c.name for c in log.calls}),
        "thresholds": thresholds,
    }
    return AuditReport("study", target, judge(log, ignore), summary)
