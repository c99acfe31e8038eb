"""A published accuracy checked against what qcheck measured (`--lm-eval-results`, issue 19): a results file whose
ARC-Easy accuracy no run of this model could give is reported (right check, the two figures, the interval); the
figure lm-eval really gives for SmolLM2 passes. Bad files are bad input (exit 2), named."""
import json

import pytest

from qcheck.errors import DataError, InvariantViolation, QCheckError
from qcheck.inputs.lm_eval_results import read_lm_eval_file
from qcheck.invariants.ecosystem import assert_lm_eval_agrees, judge_lm_eval_lint


def results_file(path, acc, n, dtype="float32", stderr=0.01):
    """An lm-eval results file with the fields lm-eval 0.4 writes (results, n-samples, configs, config)."""
    path.write_text(json.dumps({
        "results": {"arc_easy": {"alias": "arc_easy", "acc,none": acc, "acc_stderr,none": stderr,
                                 "acc_norm,none": acc - 0.04, "acc_norm_stderr,none": stderr}},
        "configs": {"arc_easy": {"task": "arc_easy", "num_fewshot": 0}}, "versions": {"arc_easy": 1.0},
        "n-shot": {"arc_easy": 0}, "n-samples": {"arc_easy": {"original": n, "effective": n}},
        "config": {"model": "hf", "model_args": f"pretrained=SmolLM2-135M-Instruct,dtype={dtype}"}}))
    return path


@pytest.fixture(scope="module")
def measured(smollm2):
    from qcheck.inputs.tasks import load_arc_easy
    from qcheck.measure.choice import score_multiple_choice

    try:
        questions = load_arc_easy(40)
    except DataError as exc:
        pytest.skip(f"ARC-Easy not available: {exc}")
    return score_multiple_choice(smollm2.model, smollm2.tokenizer, questions.items, batch_size=16)


def test_a_published_accuracy_no_run_of_the_model_gives_is_reported(tmp_path, measured):
    """Planted: a table claims 0.90 on ARC-Easy for SmolLM2-135M (2,376 questions)."""
    entry = read_lm_eval_file(str(results_file(tmp_path / "r.json", 0.90, 2376)), ["fp32"]).tasks["arc_easy"]
    with pytest.raises(InvariantViolation) as err:
        assert_lm_eval_agrees(entry, measured, variant="fp32")
    result = err.value.result
    assert result.name == "lm_eval_agrees" and "disagrees with what qcheck measured" in result.message
    assert result.evidence["reported"]["value"] == 0.90 and result.evidence["measured"]["n"] == 40
    assert result.evidence["difference"]["low"] > 0


def test_the_figure_lm_eval_gives_for_smollm2_passes(tmp_path, measured):
    """lm-eval 0.4.13 gave acc 0.510 on the first 200 ARC-Easy questions for this model (issue 19)."""
    entry = read_lm_eval_file(str(results_file(tmp_path / "r.json", 0.510, 200)), ["fp32"]).tasks["arc_easy"]
    assert assert_lm_eval_agrees(entry, measured, variant="fp32").status.value == "PASS"


def test_lint_of_the_given_files_fails_on_an_impossible_number():
    finding = {"rule": "Q022-impossible-value", "severity": "error", "message": "acc 1.7 outside [0, 1]"}
    with pytest.raises(InvariantViolation, match="Q022-impossible-value"):
        judge_lm_eval_lint([finding], ["a.json"])
    assert judge_lm_eval_lint([], ["a.json", "b.json"]).status.value == "PASS"


def test_bad_results_files_are_bad_input_named(tmp_path):
    with pytest.raises(QCheckError, match="cannot read"):
        read_lm_eval_file(str(tmp_path / "missing.json"), ["fp32"])
    (tmp_path / "table.json").write_text('[{"model": "a", "acc": 0.5}]')
    with pytest.raises(QCheckError, match="not an lm-evaluation-harness results file"):
        read_lm_eval_file(str(tmp_path / "table.json"), ["fp32"])
    good = results_file(tmp_path / "ok.json", 0.5, 100)
    with pytest.raises(QCheckError, match="'w3' is not a variant of this run"):
        read_lm_eval_file(f"w3={good}", ["fp32", "int8"])
    assert read_lm_eval_file(f"int8={good}", ["fp32", "int8"]).variant == "int8"
