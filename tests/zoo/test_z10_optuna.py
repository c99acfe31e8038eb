"""Z10 (seed 003): an Optuna search space that changes between trials, hidden by `except Exception: return 0.0`.

Planted bugs, all on real Optuna studies (in-memory, SQLite and journal-file storage):
- seed 003's objective (width-dependent frac_width choices + broad except) is caught with its cause and
  call site; the fixed objective (static choices, invalid combinations pruned) passes;
- categorical choices reordered between trials;
- a study assembled with add_trial whose distributions disagree;
- a study where 70% of COMPLETE trials share the value 0.0;
- objectives that cannot run (return a string, take no argument, always raise) and stored studies without a
  COMPLETE trial: errors (OPT205), not a clean search space; the correct objective over the same space passes;
- a module that cannot be imported, a storage or study that does not exist: bad input, exit 2 in one line.
- a pruner that stops most trials after they report is no space of invalid combinations (no OPT204); trials
  rejected before reporting still are.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from qcheck.audit.optuna.probe import assert_static_search_space, audit_objective
from qcheck.audit.optuna.resolve import resolve_objective
from qcheck.audit.optuna.study import audit_study
from qcheck.cli import main as qcheck_main
from qcheck.errors import InvariantViolation
from qcheck.lint.findings import Severity
from qcheck.results import Status

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVES = "fixtures/objectives"
DYNAMIC = "CategoricalDistribution does not support dynamic value space."


def marked_line(filename: str, marker: str) -> str:
    """'fixtures/objectives/FILE:LINE' of the single line ending with '# qcheck: <marker>'."""
    lines = (ROOT / OBJECTIVES / filename).read_text().splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(f"# qcheck: {marker}")]
    assert len(hits) == 1, (filename, marker, hits)
    return f"{OBJECTIVES}/{filename}:{hits[0]}"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def seed003_module() -> Any:
    return __import__("fixtures.objectives.seed003", fromlist=["objective"])


# --------------------------------------------------------------------------------------------------
# probing objectives


def test_seed003_objective_is_caught_with_cause_and_call_site() -> None:
    objective = resolve_objective(f"{OBJECTIVES}/seed003.py:objective")
    report = audit_objective(objective, n_trials=30)
    assert report.status is Status.FAIL
    suggest_site = marked_line("seed003.py", "dynamic-choices")
    handler_site = marked_line("seed003.py", "swallowed")
    frac_params = [f"{layer}_data_in_frac_width" for layer in ("key", "output", "query", "value")]

    # the cause: one parameter name, three choice sets, all from the same suggest call
    dynamic = report.by_id("OPT101")
    assert [f.param for f in dynamic] == frac_params
    for finding in dynamic:
        described = sorted(v["described"] for v in finding.evidence["variants"])
        assert described == ["choices (2, 4)", "choices (2, 4, 8)", "choices (2,)"]
        assert {s for v in finding.evidence["variants"] for s in v["call_sites"]} == {suggest_site}
        assert finding.evidence["differences"] == ["choices"]

    # the mask: Optuna's ValueError caught by `except Exception` and turned into 0.0
    swallowed = report.by_id("OPT110")
    assert [f.param for f in swallowed] == frac_params
    for finding in swallowed:
        assert finding.evidence["call_site"] == suggest_site
        assert finding.evidence["error"] == f"ValueError: {DYNAMIC}"
        assert finding.evidence["handled_at"] == handler_site
        assert finding.evidence["returned"] == 0.0
        assert finding.evidence["trial_state"] == "COMPLETE"
        assert f"caught it at {handler_site} and returned 0.0" in finding.message
    assert set(report.ids) == {"OPT101", "OPT110"}

    with pytest.raises(InvariantViolation) as info:
        assert_static_search_space(objective, n_trials=30)
    assert info.value.result.status is Status.FAIL
    assert suggest_site in str(info.value)


def test_seed003_fixed_objective_passes() -> None:
    objective = resolve_objective(f"{OBJECTIVES}/seed003_fixed.py:objective")
    report = audit_objective(objective, n_trials=30)
    assert report.findings == ()
    assert report.status is Status.PASS
    assert set(report.summary["states"]) == {"COMPLETE", "PRUNED"}
    result = assert_static_search_space(objective, n_trials=30)
    assert result.status is Status.PASS


def test_choices_reordered_between_trials() -> None:
    objective = resolve_objective("fixtures.objectives.reordered:objective")
    report = audit_objective(objective, n_trials=20)
    site = marked_line("reordered.py", "reordered-choices")
    [finding] = report.by_id("OPT102")
    assert finding.param == "format" and finding.severity == "error"
    assert sorted(v["described"] for v in finding.evidence["variants"]) == [
        "choices ('fixed', 'int', 'minifloat')",
        "choices ('int', 'fixed', 'minifloat')",
    ]
    assert all(v["call_sites"] == [site] for v in finding.evidence["variants"])
    [raised] = report.by_id("OPT112")
    assert raised.evidence == {**raised.evidence, "error": f"ValueError: {DYNAMIC}", "raised_at": site}
    assert report.ids == ["OPT102", "OPT112"]


# --------------------------------------------------------------------------------------------------
# stored studies


def _add_inconsistent_trials(study: optuna.Study) -> None:
    frac = "query_data_in_frac_width"
    study.add_trial(create_trial(params={frac: 2}, distributions={frac: CategoricalDistribution((2, 4))}, value=0.81))
    wider = CategoricalDistribution((2, 4, 8))
    study.add_trial(create_trial(params={frac: 8}, distributions={frac: wider}, value=0.84))
    study.add_trial(create_trial(params={frac: 4}, distributions={frac: CategoricalDistribution((2, 4))}, value=0.83))
    study.add_trial(
        create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)}, value=0.8)
    )
    study.add_trial(create_trial(params={"lr": 0.02}, distributions={"lr": FloatDistribution(1e-4, 1.0)}, value=0.79))


def test_add_trial_with_inconsistent_distributions_in_memory() -> None:
    study = optuna.create_study(direction="maximize")
    _add_inconsistent_trials(study)
    report = audit_study(study)
    assert [(f.id, f.param) for f in report.errors] == [("OPT101", "query_data_in_frac_width"), ("OPT104", "lr")]
    choices, log = report.errors
    assert [(v["described"], v["trials"]) for v in choices.evidence["variants"]] == [
        ("choices (2, 4)", [0, 2]),
        ("choices (2, 4, 8)", [1]),
    ]
    assert [(v["described"], v["trials"]) for v in log.evidence["variants"]] == [
        ("float [0.0001, 1.0] log", [3]),
        ("float [0.0001, 1.0]", [4]),
    ]
    assert "stored trials keep no call sites" in choices.message


def test_add_trial_with_inconsistent_distributions_in_a_journal_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "study.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    _add_inconsistent_trials(optuna.create_study(storage=storage, study_name="assembled", direction="maximize"))
    assert qcheck_main(["optuna", "--storage", str(path), "--study", "assembled", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(f["id"], f["param"]) for f in data["findings"]] == [
        ("OPT101", "query_data_in_frac_width"),
        ("OPT104", "lr"),
        ("OPT201", None),
    ]


def test_sqlite_refuses_what_add_trial_accepts_in_memory(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'refuses.db'}", study_name="s")
    with pytest.raises(ValueError, match="dynamic value space"):
        _add_inconsistent_trials(study)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_seventy_percent_of_complete_trials_share_zero(backend: str, tmp_path: Path) -> None:
    storage = None if backend == "memory" else f"sqlite:///{tmp_path / 'seed003.db'}"
    study = optuna.create_study(storage=storage, study_name="seed003", direction="maximize")
    seed003_module().run_seed003_study(study, n_trials=20, n_failing=14)
    zero_trials = [t.number for t in study.trials if t.value == 0.0]
    assert len(zero_trials) == 14 and all(t.state.name == "COMPLETE" for t in study.trials)
    # as reproduced with Optuna 5.0.0: COMPLETE, value 0.0, the frac_width parameter missing
    for number in zero_trials:
        trial = study.trials[number]
        failing_layer = ("query", "key", "value", "output")[number % 4]
        assert f"{failing_layer}_data_in_width" in trial.params
        assert f"{failing_layer}_data_in_frac_width" not in trial.params

    report = audit_study(storage if storage else study, "seed003")
    assert report.ids == ["OPT202", "OPT201"]
    sentinel, missing = report.findings
    assert sentinel.evidence["value"] == 0.0
    assert (sentinel.evidence["count"], sentinel.evidence["n_complete"], sentinel.evidence["share"]) == (14, 20, 0.7)
    assert sentinel.evidence["trials"] == zero_trials
    assert sentinel.evidence["trials_missing_params"] == zero_trials
    assert "14 of 20 COMPLETE trials (70%) share the value 0.0" in sentinel.message
    assert missing.evidence["trials"] == zero_trials
    assert missing.evidence["missing_by_param"]["output_data_in_frac_width"] == zero_trials
    assert report.to_check_result().status is Status.FAIL


# --------------------------------------------------------------------------------------------------
# the CLI: exit 0 clean, 1 on a finding, 2 on bad input


def test_cli_exit_codes_for_objectives(capsys: pytest.CaptureFixture[str]) -> None:
    assert qcheck_main(["optuna", f"{OBJECTIVES}/seed003_fixed.py:objective", "--n-trials", "20"]) == 0
    assert "PASS: 0 error(s), 0 warning(s)" in capsys.readouterr().out
    assert qcheck_main(["optuna", "fixtures.objectives.seed003:objective", "--n-trials", "20"]) == 1
    out = capsys.readouterr().out
    assert "error   OPT101 dynamic-choices [query_data_in_frac_width]" in out
    assert marked_line("seed003.py", "dynamic-choices") in out
    assert qcheck_main(["optuna", f"{OBJECTIVES}/seed003.py:objective", "--n-trials", "20", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "FAIL" and {f["id"] for f in data["findings"]} == {"OPT101", "OPT110"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fixtures.objectives.nope:objective"], "cannot import module 'fixtures.objectives.nope'"),
        ([f"{OBJECTIVES}/seed003.py:nope"], "has no attribute 'nope'"),
        ([f"{OBJECTIVES}/seed003.py"], "expected MODULE:FUNCTION"),
        ([f"{OBJECTIVES}/missing.py:objective"], "objective file not found"),
        (["--storage", "sqlite:///does/not/exist.db", "--study", "s"], "SQLite storage not found"),
        (["--study", "s"], "--study needs --storage URL"),
        ([], "nothing to audit"),
    ],
)
def test_cli_bad_input_exits_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert qcheck_main(["optuna", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qcheck optuna: error: ") and message in err


def test_cli_stored_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'seed003.db'}"
    seed003_module().run_seed003_study(optuna.create_study(storage=url, study_name="seed003", direction="maximize"))
    sampler = optuna.samplers.RandomSampler(seed=0)
    fixed = optuna.create_study(storage=url, study_name="fixed", direction="maximize", sampler=sampler)
    fixed.optimize(resolve_objective(f"{OBJECTIVES}/seed003_fixed.py:objective"), n_trials=10)
    assert qcheck_main(["optuna", "--storage", url, "--study", "seed003"]) == 1
    assert "error   OPT202 sentinel-value" in capsys.readouterr().out
    ignore = ["--ignore", "OPT201", "--ignore", "OPT204"]
    assert qcheck_main(["optuna", "--storage", url, "--study", "fixed", *ignore]) == 0
    capsys.readouterr()
    assert qcheck_main(["optuna", "--storage", url, "--study", "missing"]) == 2
    assert "study 'missing' not found in the storage; studies there: 'seed003', 'fixed'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# objectives that cannot run and studies without a score: errors, not a clean search space (issue 17)

NO_SCORE = "No configuration produced a score, so the search space could not be audited"


def test_objective_returning_a_string_never_completes() -> None:
    report = audit_objective(resolve_objective(f"{OBJECTIVES}/unrunnable.py:returns_formatted_score"), n_trials=30)
    assert report.status is Status.FAIL and report.ids == ["OPT205", "OPT114"]
    [never] = report.errors
    assert never.severity is Severity.ERROR
    assert never.evidence["states"] == {"FAIL": 42, "PRUNED": 18}
    returned = next(k for k in never.evidence["causes"] if k.startswith("returned '0."))
    assert returned.endswith("(a str is not a number)") and len(never.evidence["causes"][returned]) == 42
    pruned = never.evidence["causes"]["raised optuna.TrialPruned"]
    assert sorted(pruned + never.evidence["causes"][returned]) == list(range(60))
    assert NO_SCORE in never.message and "(a str is not a number) in 42" in never.message
    [invalid] = report.warnings
    assert invalid.evidence["reason"] == "a str is not a number" and len(invalid.evidence["trials"]) == 42
    assert all(r.startswith("'0.") for r in invalid.evidence["returned"][:3])


def test_objective_without_a_trial_argument_never_completes() -> None:
    report = audit_objective(resolve_objective(f"{OBJECTIVES}/unrunnable.py:objective_without_trial"), n_trials=30)
    assert report.ids == ["OPT205", "OPT112"]
    error = "TypeError: objective_without_trial() takes 0 positional arguments but 1 was given"
    [never] = report.errors
    assert never.evidence == {
        "states": {"FAIL": 60},
        "causes": {f"raised {error} (when called with a trial, before any of its code ran)": list(range(60))},
    }
    assert f"the objective raised {error} (when called with a trial, before any of its code ran) in 60" in never.message
    raised = report.by_id("OPT112")[0].evidence
    assert (raised["error"], raised["raised_at"], raised["trials"]) == (error, None, list(range(60)))


def test_objective_that_always_raises_never_completes() -> None:
    objective = resolve_objective(f"{OBJECTIVES}/unrunnable.py:always_raises")
    report = audit_objective(objective, n_trials=30)
    site = marked_line("unrunnable.py", "always-raises")
    error = "FileNotFoundError: checkpoint not found: bert-tiny-qat.pt"
    assert report.ids == ["OPT205", "OPT112"]
    [never] = report.errors
    assert never.evidence["states"] == {"FAIL": 42, "PRUNED": 18}
    assert f"raised {error} (at {site}) in 42" in never.message and NO_SCORE in never.message
    assert report.by_id("OPT112")[0].evidence["raised_at"] == site
    with pytest.raises(InvariantViolation) as info:
        assert_static_search_space(objective, n_trials=30)
    assert info.value.result.message == "OPT205 no-complete-trial; OPT112 objective-raised"


def test_correct_objective_over_the_same_space_passes() -> None:
    report = audit_objective(resolve_objective(f"{OBJECTIVES}/unrunnable.py:runs"), n_trials=30)
    assert report.findings == () and report.status is Status.PASS
    assert report.summary["states"] == {"COMPLETE": 42, "PRUNED": 18}


@pytest.mark.parametrize("function", ["returns_formatted_score", "objective_without_trial", "always_raises"])
def test_cli_exits_1_on_an_objective_that_cannot_run(function: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert qcheck_main(["optuna", f"{OBJECTIVES}/unrunnable.py:{function}", "--n-trials", "10"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 1 error(s), 1 warning(s)" in out and "error   OPT205 no-complete-trial" in out
    assert qcheck_main(["optuna", f"{OBJECTIVES}/unrunnable.py:runs", "--n-trials", "10"]) == 0
    assert "PASS: 0 error(s), 0 warning(s)" in capsys.readouterr().out


def test_stored_study_whose_every_trial_failed_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    broken = optuna.create_study(storage=url, study_name="broken", direction="maximize",
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    broken.optimize(resolve_objective(f"{OBJECTIVES}/unrunnable.py:always_raises"), n_trials=12,
                    catch=(FileNotFoundError,))
    states = {t.state.name for t in broken.trials}
    assert states <= {"FAIL", "PRUNED"} and "FAIL" in states  # as Optuna stores it: no COMPLETE trial
    report = audit_study(url, "broken")
    [never] = report.by_id("OPT205")
    counts = {s: sum(t.state.name == s for t in broken.trials) for s in sorted(states)}
    assert never.evidence == {"states": counts, "n_trials": 12}
    assert never.message == (f"the study holds no score: none of its 12 trials is COMPLETE (states {counts}), so "
                             "nothing in it can be audited or used.")
    assert report.status is Status.FAIL and report.errors == (never,)
    assert qcheck_main(["optuna", "--storage", url, "--study", "broken"]) == 1
    assert "error   OPT205 no-complete-trial" in capsys.readouterr().out

    working = optuna.create_study(storage=url, study_name="working", direction="maximize",
                                  sampler=optuna.samplers.RandomSampler(seed=0))
    working.optimize(resolve_objective(f"{OBJECTIVES}/unrunnable.py:runs"), n_trials=12)
    report = audit_study(url, "working")
    assert "OPT205" not in report.ids and report.errors == ()


def test_empty_stored_study_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(storage=url, study_name="created-never-run")
    assert qcheck_main(["optuna", "--storage", url, "--study", "created-never-run", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "FAIL"
    assert [(f["id"], f["severity"], f["message"]) for f in data["findings"]] == [
        ("OPT205", "error", "the study holds no score: it has no trials, so nothing in it can be audited or used.")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fixtures.objectives.nope:objective"], "cannot import module 'fixtures.objectives.nope': No module named"),
        (["{tmp}/needs_gpu_lib.py:objective"],
         "importing '{tmp}/needs_gpu_lib.py' failed: ModuleNotFoundError: No module named 'qcheck_missing_gpu_library'"),
        (["--storage", "{tmp}/none.db", "--study", "s"], "storage not found: '{tmp}/none.db' is neither"),
        (["--storage", "sqlite:///{tmp}/none.db", "--study", "s"], "SQLite storage not found: '{tmp}/none.db'"),
        (["--storage", "sqlite:///{tmp}/one.db", "--study", "two"],
         "study 'two' not found in the storage; studies there: 'one'"),
    ],
)
def test_what_cannot_be_loaded_is_bad_input_in_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "needs_gpu_lib.py").write_text("import qcheck_missing_gpu_library\n")
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'one.db'}", study_name="one")
    assert qcheck_main(["optuna", *(a.format(tmp=tmp_path) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qcheck optuna: error: ") and err.count("\n") == 1
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "none.db").exists()



# --------------------------------------------------------------------------------------------------
# a pruner's early stops are not invalid combinations (found on a real TPE + MedianPruner study, session 29)

def _learning_curve_study(reject_invalid: bool) -> optuna.Study:
    """A real study of 300 trials: random search with a MedianPruner over noisy learning curves (20 reported
    steps), the way quantization-aware searches run. With `reject_invalid`, configurations the kernels lack (bits 2
    and 3, group size 96) are refused before anything is reported, as seed 003's fixed objective does."""
    import random

    rnd = random.Random(0)

    def objective(trial: optuna.Trial) -> float:
        bits = trial.suggest_categorical("bits", [2, 3, 4, 8])
        group = trial.suggest_categorical("group_size", [32, 64, 96, 128, -1])
        if reject_invalid and (bits in (2, 3) or group == 96):
            raise optuna.TrialPruned()
        score = 0.4 + 0.05 * bits - 0.0004 * (group if group > 0 else 256)
        value = 0.0
        for step in range(20):
            value = score * (1 - 0.5 ** (step + 1)) + rnd.gauss(0, 0.01)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3))
    study.optimize(objective, n_trials=300)
    return study


def test_a_pruner_stopping_most_trials_early_is_not_a_space_of_invalid_combinations() -> None:
    """A MedianPruner stopping most trials after they reported: before session 29 OPT204 warned "mostly invalid
    combinations" (the 3,000-trial study of RESULTS.md: 68% PRUNED). Those stops are the pruner's work; trials
    pruned before reporting anything are still counted, and warned about past half."""
    honest = _learning_curve_study(reject_invalid=False)
    pruned = [t for t in honest.trials if t.state.name == "PRUNED"]
    assert len(pruned) / len(honest.trials) >= 0.5 and all(t.intermediate_values for t in pruned)
    assert "OPT204" not in audit_study(honest).ids

    rejecting = _learning_curve_study(reject_invalid=True)
    report = audit_study(rejecting)
    [warned] = [f for f in report.findings if f.id == "OPT204"]
    rejected = [t.number for t in rejecting.trials if t.state.name == "PRUNED" and not t.intermediate_values]
    assert warned.evidence["trials"] == rejected and warned.evidence["stopped_by_pruner"] > 0
    assert "before reporting any intermediate value" in warned.message and "stopped early by the pruner" in warned.message
