"""Unit tests of qcheck.audit.optuna's distributions, rules, tracer and probe (`audit_objective`).

Every objective here runs real Optuna (in-memory studies); a cheap arithmetic score stands in for a model.
"""
from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from qcheck.audit.optuna.distributions import classify_difference, describe_distribution
from qcheck.audit.optuna.findings import OptunaFinding
from qcheck.audit.optuna.probe import (
    assert_static_search_space,
    audit_objective,
    return_problem,
    stub_score,
)
from qcheck.audit.optuna.rules import RULES
from qcheck.errors import InvariantViolation, QCheckError
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.rules.registry import RULES as LINT_RULES
from qcheck.lint.rules.registry import RuleSpec
from qcheck.results import Status

THIS_FILE = "tests/unit/test_optuna_probe.py"


def site(func: Callable[..., Any], marker: str) -> str:
    """'tests/unit/test_optuna_probe.py:LINE' of the line in `func`'s source that carries `# <marker>`."""
    lines, start = inspect.getsourcelines(func)
    hits = [start + i for i, text in enumerate(lines) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, (marker, hits)
    return f"{THIS_FILE}:{hits[0]}"


@pytest.fixture(autouse=True)
def _repo_root_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------------------------------
# distributions


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (CategoricalDistribution((2, 4)), CategoricalDistribution((2, 4)), None),
        (CategoricalDistribution((2, 4)), CategoricalDistribution((2, 4, 8)), "choices"),
        (CategoricalDistribution(("a", "b", "c")), CategoricalDistribution(("c", "a", "b")), "order"),
        (CategoricalDistribution((1, 2)), IntDistribution(1, 2), "kind"),
        (IntDistribution(1, 8), FloatDistribution(1, 8), "kind"),
        (FloatDistribution(1e-4, 1.0, log=True), FloatDistribution(1e-4, 1.0), "log"),
        (IntDistribution(1, 8), IntDistribution(1, 16), "range"),
        (IntDistribution(0, 8, step=2), IntDistribution(0, 8, step=4), "range"),
    ],
)
def test_classify_difference(old: Any, new: Any, expected: str | None) -> None:
    assert classify_difference(old, new) == expected


def test_describe_distribution() -> None:
    assert describe_distribution(CategoricalDistribution((2, 4))) == "choices (2, 4)"
    assert describe_distribution(IntDistribution(1, 8)) == "int [1, 8]"
    assert describe_distribution(IntDistribution(0, 8, step=2)) == "int [0, 8] step 2"
    assert describe_distribution(FloatDistribution(1e-4, 1.0, log=True)) == "float [0.0001, 1.0] log"


def test_every_rule_has_a_fix_and_a_known_severity() -> None:
    assert list(RULES) == sorted(RULES)
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id and rule.id.startswith("OPT")
        assert rule.severity in (Severity.ERROR, Severity.WARNING) and rule.severity == rule.severities
        assert len(rule.fix) > 40 and rule.name and rule.summary and rule.zoo == "Z10"
        assert rule.scope in ("objective", "study", "objective, study")


def test_rules_and_findings_share_lints_types_but_not_its_rule_list() -> None:
    assert all(isinstance(rule, RuleSpec) for rule in RULES.values())
    assert not {spec.id for spec in LINT_RULES} & set(RULES)  # lint's engine runs every rule of its own list
    [finding] = audit_objective(range_depends_on_width, n_trials=5, target="unit:range").findings
    assert isinstance(finding, OptunaFinding) and isinstance(finding, Finding)
    assert (finding.rule, finding.id, finding.severity, finding.source) == ("OPT105", "OPT105", Severity.WARNING,
                                                                            "unit:range")
    assert finding.fingerprint() == "OPT105|unit:range|frac"


# --------------------------------------------------------------------------------------------------
# probing objectives


def kind_changes(trial: optuna.Trial) -> float:
    if trial.suggest_categorical("optimizer", ("sgd", "adam")) == "sgd":
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # float-lr
    else:
        lr = trial.suggest_categorical("lr", (1e-3, 1e-2))  # categorical-lr
    return lr


def test_distribution_kind_changed_between_branches() -> None:
    report = audit_objective(kind_changes, n_trials=20)
    assert report.status is Status.FAIL
    [finding] = report.by_id("OPT103")
    assert finding.param == "lr" and finding.severity == "error"
    sites = sorted(s for v in finding.evidence["variants"] for s in v["call_sites"])
    assert sites == sorted([site(kind_changes, "float-lr"), site(kind_changes, "categorical-lr")])
    described = {v["described"] for v in finding.evidence["variants"]}
    assert described == {"float [0.0001, 0.1] log", "choices (0.001, 0.01)"}
    assert site(kind_changes, "float-lr") in finding.message


def log_changes(trial: optuna.Trial) -> float:
    wide = trial.suggest_categorical("wide", (True, False))
    return trial.suggest_float("scale", 1e-3, 1.0, log=wide)  # scale


def test_log_flag_changed() -> None:
    report = audit_objective(log_changes, n_trials=20)
    [finding] = report.by_id("OPT104")
    assert finding.param == "scale"
    assert [v["call_sites"] for v in finding.evidence["variants"]] == [[site(log_changes, "scale")]] * 2
    assert finding.evidence["differences"] == ["log"]


def range_depends_on_width(trial: optuna.Trial) -> float:
    width = trial.suggest_int("width", 4, 16, step=4)
    frac = trial.suggest_int("frac", 1, width - 1)  # frac
    return frac / width


def test_changed_int_range_is_a_warning_not_an_error() -> None:
    report = audit_objective(range_depends_on_width, n_trials=20)
    assert report.ids == ["OPT105"]
    assert report.status is Status.WARN
    [finding] = report.warnings
    assert finding.param == "frac" and finding.evidence["differences"] == ["range"]
    described = {v["described"] for v in finding.evidence["variants"]}
    assert described == {"int [1, 3]", "int [1, 7]", "int [1, 11]", "int [1, 15]"}
    result = assert_static_search_space(range_depends_on_width, n_trials=20)
    assert result.status is Status.WARN


def distinct_names_per_branch(trial: optuna.Trial) -> float:
    fmt = trial.suggest_categorical("format", ("int", "minifloat"))
    if fmt == "int":
        bits = trial.suggest_categorical("int_bits", (2, 4, 8))
        return 1.0 - 1.0 / bits
    exp_bits = trial.suggest_int("minifloat_exp_bits", 2, 5)
    return 1.0 - 1.0 / (exp_bits + trial.suggest_int("minifloat_man_bits", 1, 3))


def test_conditional_space_with_distinct_names_passes() -> None:
    report = audit_objective(distinct_names_per_branch, n_trials=20)
    assert report.findings == ()
    assert report.status is Status.PASS
    assert report.summary["params"] == ["format", "int_bits", "minifloat_exp_bits", "minifloat_man_bits"]
    assert report.summary["n_trials"] == 40 and report.summary["states"] == {"COMPLETE": 40}
    result = assert_static_search_space(distinct_names_per_branch, n_trials=20)
    assert result.status is Status.PASS and result.name == "optuna.search_space"


def same_name_two_paths(trial: optuna.Trial) -> float:
    bits = trial.suggest_categorical("bits", (4, 8))
    if bits == 4:
        group = trial.suggest_categorical("group_size", (32, 64))  # path-a
    else:
        group = trial.suggest_categorical("group_size", (64, 128))  # path-b
    return bits * 1000 + group


def test_same_name_with_different_choices_on_two_code_paths() -> None:
    report = audit_objective(same_name_two_paths, n_trials=20)
    [finding] = report.by_id("OPT101")
    assert finding.param == "group_size"
    variants = {v["described"]: v["call_sites"] for v in finding.evidence["variants"]}
    assert variants == {
        "choices (32, 64)": [site(same_name_two_paths, "path-a")],
        "choices (64, 128)": [site(same_name_two_paths, "path-b")],
    }
    assert variants and all(v["methods"] == ["suggest_categorical"] for v in finding.evidence["variants"])
    # nothing swallows Optuna's ValueError here: the later trials fail visibly
    [raised] = report.by_id("OPT112")
    assert "CategoricalDistribution does not support dynamic value space." in raised.evidence["error"]
    assert raised.evidence["raised_at"] in (site(same_name_two_paths, "path-a"), site(same_name_two_paths, "path-b"))
    with pytest.raises(InvariantViolation) as info:
        assert_static_search_space(same_name_two_paths, n_trials=20)
    ids = [f["id"] for f in info.value.result.evidence["findings"]]
    assert ids == ["OPT101", "OPT112"]
    assert "group_size" in str(info.value)


def evaluate(bits: int, group: int) -> float:
    if bits == 2 and group == 128:
        raise RuntimeError("CUDA out of memory")  # oom
    return 0.8 - 0.1 / bits - group / 10_000


def swallows_runtime_error(trial: optuna.Trial) -> float:
    bits = trial.suggest_categorical("bits", (2, 4, 8))
    group = trial.suggest_categorical("group", (32, 128))
    try:
        return evaluate(bits, group)
    except RuntimeError:  # handler
        return -1.0


def test_exception_turned_into_a_return_value_outside_suggest_calls() -> None:
    report = audit_objective(swallows_runtime_error, n_trials=30)
    [finding] = report.findings
    assert finding.id == "OPT111" and finding.severity == "error"
    assert finding.evidence["error"] == "RuntimeError: CUDA out of memory"
    assert finding.evidence["raised_at"] == site(evaluate, "oom")
    assert finding.evidence["handled_at"] == site(swallows_runtime_error, "handler")
    assert finding.evidence["returned"] == -1.0
    assert "returned -1.0" in finding.message
    probe_trials = finding.evidence["trials"]
    assert probe_trials and len(probe_trials) < 60


class CallableObjective:
    """An objective as a callable instance, as Optuna's FAQ shows for objectives with arguments."""

    def __init__(self, sentinel: float) -> None:
        self.sentinel = sentinel

    def __call__(self, trial: optuna.Trial, offset: float = 0.0) -> float:
        try:
            bits = trial.suggest_categorical("bits", (2, 4, 8))
            return evaluate(bits, trial.suggest_categorical("group", (32, 128))) + offset
        except Exception:  # noqa: BLE001  # class-handler
            return self.sentinel


@pytest.mark.parametrize("wrap", ["instance", "partial"])
def test_swallowed_exception_in_callable_instance_and_partial(wrap: str) -> None:
    objective: Callable[..., float] = CallableObjective(0.0)
    if wrap == "partial":
        objective = functools.partial(objective, offset=0.5)
    report = audit_objective(objective, n_trials=30)
    [finding] = report.by_id("OPT111")
    assert finding.evidence["handled_at"] == site(CallableObjective.__call__, "class-handler")
    assert finding.evidence["returned"] == 0.0


def returns_zero_for_invalid(trial: optuna.Trial) -> float:
    width = trial.suggest_categorical("width", (4, 8))
    frac = trial.suggest_categorical("frac", (2, 4, 8))
    if frac >= width:
        return 0.0
    return 0.9 - 0.2 / frac - 0.01 * width


def test_sentinel_return_without_exception_is_found_by_the_probe() -> None:
    report = audit_objective(returns_zero_for_invalid, n_trials=30)
    [finding] = report.findings
    assert finding.id == "OPT202" and finding.evidence["value"] == 0.0
    assert finding.evidence["distinct_configurations"] == 3  # (4, 4), (4, 8), (8, 8)
    assert finding.evidence["share"] >= 0.3


def raises_uncaught(trial: optuna.Trial) -> float:
    bits = trial.suggest_categorical("bits", (2, 4))
    if bits == 2:
        raise ValueError("2-bit kernels are not implemented")  # uncaught
    return 0.5


def test_uncaught_exception_is_a_warning() -> None:
    report = audit_objective(raises_uncaught, n_trials=20)
    [finding] = report.findings
    assert finding.id == "OPT112" and finding.severity == "warning"
    assert finding.evidence["raised_at"] == site(raises_uncaught, "uncaught")
    assert finding.evidence["error"] == "ValueError: 2-bit kernels are not implemented"
    assert report.summary["states"]["FAIL"] == len(finding.evidence["trials"])


def test_probe_restores_an_existing_tracer_and_keeps_feeding_it() -> None:
    seen: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is swallows_runtime_error.__code__:
            seen.append(event)
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        report = audit_objective(swallows_runtime_error, n_trials=5)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
    assert report.summary["n_trials"] == 10
    assert seen.count("call") == 10


def test_probe_is_deterministic_for_a_seed_and_reports_it() -> None:
    first = audit_objective(same_name_two_paths, n_trials=10, seed=3)
    second = audit_objective(same_name_two_paths, n_trials=10, seed=3)
    assert first.to_dict() == second.to_dict()
    assert first.summary["seed"] == 3 and first.summary["sampler"] == "RandomSampler"


def test_ignore_and_bad_arguments() -> None:
    report = audit_objective(same_name_two_paths, n_trials=10, ignore=["opt112"])
    assert report.ids == ["OPT101"]
    with pytest.raises(QCheckError, match="unknown finding id"):
        audit_objective(same_name_two_paths, n_trials=10, ignore=["OPT999"])
    with pytest.raises(QCheckError, match="n_trials must be >= 1"):
        audit_objective(same_name_two_paths, n_trials=0)


def test_report_is_strict_json_and_converts_to_a_check_result() -> None:
    report = audit_objective(same_name_two_paths, n_trials=10, target="unit:same_name_two_paths")
    text = json.dumps(report.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["status"] == "FAIL" and data["target"] == "unit:same_name_two_paths"
    assert [f["id"] for f in data["findings"]] == ["OPT101", "OPT112"]
    result = report.to_check_result()
    assert result.status is Status.FAIL and result.n == 20 and result.variant == "unit:same_name_two_paths"
    assert result.message == "OPT101 dynamic-choices [group_size]; OPT112 objective-raised"
    json.dumps(result.to_dict(), allow_nan=False)
    assert "OPT101" in report.render()


def make_objective(evaluate: Callable[[dict[str, Any]], float]) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        config = {"bits": trial.suggest_categorical("bits", (2, 4, 8)), "group": trial.suggest_int("group", 1, 4)}
        return evaluate(config)

    return objective


def test_stub_score_stands_in_for_the_model_without_looking_like_a_sentinel() -> None:
    assert stub_score({"bits": 4}) == stub_score({"bits": 4})
    assert stub_score({"bits": 4}) != stub_score({"bits": 8})
    assert 0.0 <= stub_score({"bits": 4}) < 1.0
    assert audit_objective(make_objective(stub_score), n_trials=20).findings == ()
    constant = audit_objective(make_objective(lambda config: 0.5), n_trials=20)
    assert constant.ids == ["OPT202"]


# --------------------------------------------------------------------------------------------------
# where a handled exception goes: returned from the except clause (error) or handled, then a value later


def handled_then_returned_later(trial: optuna.Trial) -> float:
    bits = trial.suggest_categorical("bits", (2, 4, 8))
    group = trial.suggest_categorical("group", (32, 128))
    try:
        accuracy = evaluate(bits, group)
    except KeyError:  # key-clause
        accuracy = -2.0
    except RuntimeError:  # runtime-clause
        accuracy = 0.0
    return accuracy  # later-return


def one_line_handler(trial: optuna.Trial) -> float:
    bits = trial.suggest_categorical("bits", (2, 4, 8))
    group = trial.suggest_categorical("group", (32, 128))
    try:
        return evaluate(bits, group)
    except RuntimeError: return float("-inf")  # one-line


def control_flow_only(trial: optuna.Trial) -> float:
    bits = trial.suggest_categorical("bits", (2, 4, 8))
    table = {4: 0.8, 8: 0.85}
    try:
        accuracy = table[bits]
    except KeyError:  # lookup
        accuracy = evaluate(bits, 32)
    return accuracy


def test_handled_exception_returned_later_is_a_warning_naming_the_matching_clause() -> None:
    report = audit_objective(handled_then_returned_later, n_trials=30)
    [finding] = report.findings
    assert finding.id == "OPT113" and finding.severity == "warning"
    assert finding.evidence["handled_at"] == site(handled_then_returned_later, "runtime-clause")
    assert finding.evidence["returned"] == 0.0
    assert report.status is Status.WARN


def test_one_line_except_clause_returning_a_value_is_an_error() -> None:
    report = audit_objective(one_line_handler, n_trials=30)
    [finding] = report.findings
    assert finding.id == "OPT111"
    assert finding.evidence["handled_at"] == site(one_line_handler, "one-line")
    assert finding.evidence["returned"] == float("-inf")
    json.dumps(report.to_dict(), allow_nan=False)


def test_exception_used_as_control_flow_is_only_a_warning() -> None:
    report = audit_objective(control_flow_only, n_trials=20)
    assert report.ids == ["OPT113"]
    assert report.by_id("OPT113")[0].evidence["error"] == "KeyError: 2"
    assert report.by_id("OPT113")[0].evidence["handled_at"] == site(control_flow_only, "lookup")
    assert audit_objective(control_flow_only, n_trials=20, ignore=["OPT113"]).status is Status.PASS


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    bits = trial.suggest_int("bits", 2, 8)
    if bits < 5:
        return 0.0, 0.0
    return 1.0 - 1.0 / bits, bits / 8


def test_multi_objective_probe_needs_directions_and_finds_tuple_sentinels() -> None:
    with pytest.raises(QCheckError, match="returned 2 values but the probe has 1 direction"):
        audit_objective(two_objectives, n_trials=5)
    report = audit_objective(two_objectives, n_trials=20, directions=["maximize", "minimize"])
    [finding] = report.findings
    assert finding.id == "OPT202" and finding.evidence["value"] == [0.0, 0.0]


def test_probe_without_the_exploration_phase() -> None:
    report = audit_objective(same_name_two_paths, n_trials=12, explore=False)
    assert (report.summary["n_trials"], report.summary["n_shared"], report.summary["n_isolated"]) == (12, 12, 0)
    assert report.ids == ["OPT101", "OPT112"]


# --------------------------------------------------------------------------------------------------
# values Optuna cannot record (OPT114) and objectives that never complete a trial (OPT205)


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        (0.5, None),
        ((0.5, 1.0), None),
        (True, None),
        (None, "None is not a number"),
        ("0.81", "a str is not a number"),
        (b"0.81", "a bytes is not a number"),
        (float("nan"), "NaN is not an acceptable value"),
        ((0.5, float("nan")), "NaN is not an acceptable value"),
        ({"accuracy": 0.8}, "a value of type dict cannot be converted to float"),
    ],
)
def test_return_problem(returned: Any, problem: str | None) -> None:
    assert return_problem(returned) == problem


def forgets_a_return(trial: optuna.Trial) -> float:
    bits = trial.suggest_int("bits", 2, 8)
    if bits >= 4:
        return 1.0 - 1.0 / bits
    # no return for fewer bits: Python returns None


def test_value_optuna_cannot_record_is_a_warning_while_other_trials_complete() -> None:
    report = audit_objective(forgets_a_return, n_trials=20)
    [finding] = report.findings
    assert finding.id == "OPT114" and finding.severity is Severity.WARNING
    assert finding.evidence["reason"] == "None is not a number" and finding.evidence["returned"] == ["None"]
    assert report.summary["states"]["FAIL"] == len(finding.evidence["trials"]) > 0
    assert "the objective returned None in" in finding.message
    assert report.status is Status.WARN


def exits(trial: optuna.Trial) -> float:
    trial.suggest_int("bits", 2, 8)
    sys.exit(0)  # exit


def test_objective_calling_sys_exit_is_a_failed_trial_not_the_audits_exit() -> None:
    report = audit_objective(exits, n_trials=3)
    assert report.ids == ["OPT205", "OPT112"]
    raised = report.by_id("OPT112")[0].evidence
    assert (raised["error"], raised["raised_at"]) == ("SystemExit: 0", site(exits, "exit"))
    assert report.status is Status.FAIL


def prunes_everything(trial: optuna.Trial) -> float:
    bits = trial.suggest_int("bits", 2, 8)
    raise optuna.TrialPruned(f"{bits} bits: no kernel")


def test_objective_that_prunes_every_trial_never_completes() -> None:
    report = audit_objective(prunes_everything, n_trials=5)
    [finding] = report.findings
    assert finding.id == "OPT205" and finding.severity is Severity.ERROR
    assert finding.evidence == {"states": {"PRUNED": 10}, "causes": {"raised optuna.TrialPruned": list(range(10))}}
    assert "none of the 10 probe trials ended COMPLETE (states {'PRUNED': 10})" in finding.message
    with pytest.raises(InvariantViolation):
        assert_static_search_space(prunes_everything, n_trials=5)
    assert "OPT205" not in audit_objective(prunes_everything, n_trials=5, ignore=["OPT205"]).ids
