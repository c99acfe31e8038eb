"""Z11 (seed 004: 5% = 1/20 on a 4-way task for both 4-bit and 2-bit; seed 003: 0.50 on a binary task) and Z8
(seed 002: NaN averages, a summary that its records do not give): collapse to chance is flagged with a binomial
test against 1/k, small samples warn, unresolved differences are inconclusive, NaN aggregation is refused."""
import math

import pytest

from qcheck.errors import DataError, InvariantViolation
from qcheck.inputs.tasks import load_arc_easy
from qcheck.invariants.aggregate import summarize
from qcheck.invariants.quality import assert_difference_resolved, assert_not_collapsed, assert_summary_recomputable
from qcheck.measure.choice import score_multiple_choice

W2 = {"name": "w2", "default": {"format": "int", "bits": 2, "group_size": 64}}
N_QUESTIONS = 30


def test_seed_004_one_in_twenty_on_a_four_way_task_fails_and_warns_about_n():
    with pytest.raises(InvariantViolation) as err:
        assert_not_collapsed(1, 20, 0.25, variant="4-bit", task="ARC")
    r = err.value.result
    assert r.name == "above_chance" and r.variant == "4-bit"
    assert "accuracy 1/20 = 5.0%" in r.message and "vs chance 25.0%" in r.message
    assert "significantly below chance (binomial p=0.0243)" in r.message
    assert "n=20 < 30: underpowered" in r.message
    assert r.evidence["interval"]["high"] < 0.25


def test_seed_004_identical_four_and_two_bit_results_resolve_nothing():
    flags = [True] + [False] * 19
    result = assert_difference_resolved(flags, flags, variant="2-bit", reference_name="4-bit")
    assert result.status.value == "INCONCLUSIVE"
    assert "no difference observed" in result.message and "n=20 < 30" in result.message


def test_seed_003_half_right_on_a_binary_task_is_collapsed():
    with pytest.raises(InvariantViolation, match="collapsed to chance, indistinguishable from guessing"):
        assert_not_collapsed(100, 200, 0.5, variant="fixed frac_width=2", task="binary")


@pytest.fixture(scope="module")
def arc_results(smollm2, smollm2_quantized):
    try:
        questions = load_arc_easy(N_QUESTIONS).items
    except DataError as exc:
        pytest.skip(f"ARC-Easy not available: {exc}")
    destroyed, _ = smollm2_quantized(W2)
    return {name: score_multiple_choice(model, smollm2.tokenizer, questions)
            for name, model in (("fp32", smollm2.model), ("w2", destroyed))}


def test_real_2bit_weights_lose_accuracy_and_the_chance_rule_is_applied(arc_results):
    ref, w2 = arc_results["fp32"], arc_results["w2"]
    assert ref.chance == 0.25 and ref.n == N_QUESTIONS
    assert assert_not_collapsed(ref, variant="fp32").status.value == "PASS"
    try:
        verdict = assert_not_collapsed(w2, variant="w2")
    except InvariantViolation as exc:
        verdict = exc.result
    assert w2.accuracy < ref.accuracy
    assert verdict.evidence["correct"] == sum(w2.flags) and verdict.evidence["chance"] == 0.25
    # the rule: FAIL exactly when the accuracy is at or below chance without being significantly above it
    assert (verdict.status.value == "FAIL") == (w2.accuracy <= 0.25 and verdict.evidence["p_above_chance"] >= 0.05)
    if verdict.status.value == "FAIL":
        assert "collapsed to chance" in verdict.message


def test_nan_aggregation_is_refused_naming_rows(arc_results):
    records = [r.to_dict() for r in arc_results["fp32"].records]
    scored = [{"id": r["id"], "f1": float(r["correct"])} for r in records]
    scored[3]["f1"] = float("nan")
    scored[7]["f1"] = None
    with pytest.raises(DataError) as err:
        summarize(scored, "f1")
    assert f"id={records[3]['id']!r}: nan" in str(err.value) and f"id={records[7]['id']!r}: None" in str(err.value)
    assert "2 of 30 rows" in str(err.value)


def test_summary_is_recomputed_from_the_saved_records(arc_results):
    metric = arc_results["fp32"].to_metric()
    assert assert_summary_recomputable(metric["value"], metric["records"], "correct").status.value == "PASS"
    with pytest.raises(InvariantViolation, match="but its 30 records give"):
        assert_summary_recomputable(metric["value"] + 0.1, metric["records"], "correct")
    assert not math.isnan(metric["interval"]["low"])
