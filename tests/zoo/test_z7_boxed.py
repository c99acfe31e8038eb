"""Z7 (seed 002: quantized models return empty or unboxed answers, "Extracted: None", F1 = 0): a harness bug
that cuts generation to 0 new tokens and weights destroyed by 2-bit quantization everywhere both fail
assert_boxed_format against the reference on the same GSM8K prompts, with seed 002's symptoms named; the
reference compared with itself passes (with the small-sample warning)."""
import pytest

from qcheck.errors import DataError, InvariantViolation
from qcheck.inputs.tasks import load_gsm8k
from qcheck.invariants.quality import assert_boxed_format
from qcheck.measure.generation import FewShotPrompt, Generation, GenerationRun, GenerationSettings, generate_answers

N_PROMPTS = 8
SETTINGS = GenerationSettings(max_new_tokens=24, batch_size=N_PROMPTS, prompt="gsm8k_3shot_direct")
W2 = {"name": "w2", "default": {"format": "int", "bits": 2, "group_size": 64}}


@pytest.fixture(scope="module")
def problems():
    try:
        return load_gsm8k(N_PROMPTS).items
    except DataError as exc:
        pytest.skip(f"GSM8K not available: {exc}")


@pytest.fixture(scope="module")
def reference_run(smollm2, problems):
    return generate_answers(smollm2.model, smollm2.tokenizer, [p.question for p in problems], SETTINGS,
                            ids=[p.id for p in problems])


def planted_zero_budget_harness(model, tokenizer, problems, max_length=200):
    """The planted bug: the budget is computed as max_length - prompt length, and few-shot chat prompts are
    longer than max_length, so every answer is cut to 0 new tokens (the model never gets to speak)."""
    prompt = FewShotPrompt.load(SETTINGS.prompt)
    outputs = []
    for p in problems:
        n_prompt = len(tokenizer(prompt.render(tokenizer, p.question), add_special_tokens=False)["input_ids"])
        budget = max(0, max_length - n_prompt)
        assert budget == 0, "the planted bug needs prompts longer than max_length"
        outputs.append(Generation(p.id, "", n_prompt, budget, "budget"))
    return GenerationRun(outputs, SETTINGS, 0.0)


def test_reference_boxes_most_answers_and_passes_against_itself(reference_run):
    boxed = assert_boxed_format(reference_run, reference_run, variant="fp32-again")
    assert boxed.status.value == "WARN" and f"n={N_PROMPTS} < 30" in boxed.message
    assert boxed.evidence["reference_succeeds"] is True
    assert boxed.evidence["fp32"]["boxed"] >= 5


def test_generation_cut_to_zero_tokens_fails_with_seed_002_symptoms(smollm2, problems, reference_run):
    cut = planted_zero_budget_harness(smollm2.model, smollm2.tokenizer, problems)
    with pytest.raises(InvariantViolation) as err:
        assert_boxed_format(reference_run, cut, variant="w4-harness")
    r = err.value.result
    assert f"{N_PROMPTS}/{N_PROMPTS} outputs are empty" in r.message
    assert (f"seed 002's symptoms: {N_PROMPTS} empty responses ({N_PROMPTS} with 0 new tokens generated: the "
            "generation budget was cut to 0)") in r.message
    assert "the reference boxes" in r.message and "with the same prompts and settings" in r.message
    assert r.evidence["w4-harness"]["zero_new_tokens"] == N_PROMPTS
    assert [f["status"] for f in r.evidence["example_failures"]] == ["empty"] * 3


def test_weights_destroyed_by_2bit_everywhere_fail_with_seed_002_symptoms(smollm2, smollm2_quantized, problems,
                                                                          reference_run):
    destroyed, _ = smollm2_quantized(W2)
    run = generate_answers(destroyed, smollm2.tokenizer, [p.question for p in problems], SETTINGS,
                           ids=[p.id for p in problems])
    with pytest.raises(InvariantViolation) as err:
        assert_boxed_format(reference_run, run, variant="w2")
    r = err.value.result
    assert "significantly below the reference's" in r.message
    assert "seed 002's symptoms:" in r.message and "without \\boxed{} (extracted: None)" in r.message
    assert r.evidence["w2"]["boxed"] == 0
    assert r.evidence["mcnemar"]["pvalue"] < 0.05
    assert r.evidence["example_failures"] and r.evidence["example_failures"][0]["status"] in ("missing", "empty")
