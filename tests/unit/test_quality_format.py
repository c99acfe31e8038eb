"""assert_boxed_format on synthetic paired outputs: McNemar, empty-output bound, symptoms, inconclusive cases."""
import pytest

from qcheck.errors import DataError, InvariantViolation
from qcheck.invariants.quality import assert_boxed_format
from qcheck.measure.generation import Generation, GenerationRun, GenerationSettings

BOXED = r"so 3 + 4 = 7. The final answer is \boxed{7}."
PLAIN = "so 3 + 4 = 7. The answer is 7."


def run(texts, new_tokens=None, settings=None):
    outs = [Generation(f"q{i}", t, 100, (new_tokens if new_tokens is not None else 20) if t else 0,
                       "eos" if t else "budget") for i, t in enumerate(texts)]
    return GenerationRun(outs, settings or GenerationSettings(max_new_tokens=64), 1.0)


def test_same_compliance_passes_with_enough_prompts():
    ref = run([BOXED] * 30 + [PLAIN] * 10)
    cand = run([BOXED] * 28 + [PLAIN] * 12)
    result = assert_boxed_format(ref, cand, variant="int8")
    assert result.status.value == "PASS"
    assert result.evidence["reference_succeeds"] is True
    assert result.evidence["mcnemar"]["only_a"] == 2
    assert "boxed 28/40 vs fp32 30/40" in result.message


def test_small_n_warns_or_is_inconclusive():
    assert assert_boxed_format(run([BOXED] * 6), run([BOXED] * 6), variant="x").status.value == "WARN"
    result = assert_boxed_format(run([BOXED] * 6), run([BOXED] * 4 + [PLAIN] * 2), variant="x")
    assert result.status.value == "INCONCLUSIVE"
    assert "n=6 < 30" in result.message


def test_empty_outputs_fail_naming_seed_002_symptoms():
    ref = run([BOXED] * 8)
    cand = run([""] * 8)
    with pytest.raises(InvariantViolation) as err:
        assert_boxed_format(ref, cand, variant="w4")
    r = err.value.result
    assert r.name == "boxed_format" and r.variant == "w4"
    assert "8/8 outputs are empty" in r.message
    assert "significantly below the reference's 8/8" in r.message
    assert "seed 002's symptoms: 8 empty responses (8 with 0 new tokens generated" in r.message
    assert "the reference boxes 8/8 answers with the same prompts and settings" in r.message
    assert r.evidence["w4"]["status_counts"] == {"ok": 0, "empty": 8, "missing": 0, "malformed": 0}
    assert len(r.evidence["example_failures"]) == 3
    assert r.evidence["example_failures"][0]["status"] == "empty"


def test_unboxed_outputs_fail_by_mcnemar():
    with pytest.raises(InvariantViolation) as err:
        assert_boxed_format(run([BOXED] * 7 + [PLAIN]), run([PLAIN] * 7 + [r"\boxed{7"]), variant="w2")
    r = err.value.result
    assert "McNemar exact one-sided p=0.0078" in r.message
    assert "7 responses without \\boxed{} (extracted: None)" in r.message
    assert "1 malformed boxes" in r.message


def test_reference_failing_too_is_inconclusive_not_blamed_on_quantization():
    result = assert_boxed_format(run([PLAIN] * 10), run([PLAIN] * 10), variant="int8")
    assert result.status.value == "INCONCLUSIVE"
    assert "the reference boxes no answer" in result.message
    assert result.evidence["reference_succeeds"] is False


def test_different_settings_are_not_comparable():
    ref = run([BOXED] * 5, settings=GenerationSettings(max_new_tokens=64))
    cand = run([BOXED] * 5, settings=GenerationSettings(max_new_tokens=32))
    with pytest.raises(InvariantViolation, match="generation settings differ"):
        assert_boxed_format(ref, cand, variant="int8")


def test_plain_strings_and_unpaired_inputs():
    assert assert_boxed_format([BOXED] * 3, [BOXED] * 3, variant="x").n == 3
    with pytest.raises(DataError, match="same non-empty prompt list"):
        assert_boxed_format([BOXED] * 3, [BOXED] * 2, variant="x")
    shuffled = run([BOXED] * 2)
    shuffled.outputs.reverse()
    with pytest.raises(DataError, match="not paired"):
        assert_boxed_format(run([BOXED] * 2), shuffled, variant="x")
