"""A user's lm-evaluation-harness results (`qcheck run --lm-eval-results [VARIANT=]FILE`) checked against what
qcheck measured: the reported ARC-Easy accuracy of each variant agrees with qcheck's scoring of the same task within
sampling noise, and the files, read as one comparison, pass qcheck lint's rules. Without such files every test here
skips, saying how to give them."""
from __future__ import annotations

import pytest

from qcheck.invariants.ecosystem import TASKS, assert_lm_eval_agrees, judge_lm_eval_lint
from qcheck.measure.choice import mc_result_from_dict
from qcheck.variants import REFERENCE

needs = pytest.mark.qcheck_needs
_NONE = "no lm-eval results given (qcheck run --lm-eval-results [VARIANT=]FILE, or --qcheck-lm-eval-results)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lm_eval_variant" in metafunc.fixturenames:
        from qcheck.inputs.lm_eval_results import parse_spec
        from qcheck.pytest_plugin import run_options

        names = list(dict.fromkeys(parse_spec(s)[0] for s in run_options(metafunc.config).lm_eval_results))
        metafunc.parametrize("lm_eval_variant", names or [pytest.param("none", marks=pytest.mark.skip(reason=_NONE))])


@pytest.mark.qcheck_check("lm_eval_agrees", param="lm_eval_variant")
@needs("lm_eval_results", variants=lambda params, names: [params["lm_eval_variant"]])
@needs("choice", variants=lambda params, names: [params["lm_eval_variant"]])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_lm_eval_agrees(lm_eval_variant, task, qcheck_records, qcheck_record):
    data = qcheck_records.data(lm_eval_variant, "lm_eval_results")
    reported = [f["tasks"][task] for f in data["files"] if task in f["tasks"]]
    if not reported:
        pytest.skip(f"the lm-eval results of {lm_eval_variant} hold no {task}")
    measured = mc_result_from_dict(qcheck_records.data(lm_eval_variant, "choice"))
    for entry in reported:
        qcheck_record(assert_lm_eval_agrees(entry, measured, variant=lm_eval_variant, task=task))


@needs("lm_eval_results", variants=lambda params, names: [REFERENCE, *names])
def test_lm_eval_results_lint(qcheck_records, qcheck_record):
    given = [v for v in qcheck_records.variants if qcheck_records.has(v, "lm_eval_results")]
    if not given:
        pytest.skip(_NONE)
    data = qcheck_records.data(given[0], "lm_eval_results")
    qcheck_record(judge_lm_eval_lint(data["lint"], data["linted"]))
