"""Z1 (seeds 000, 004) and Z2 (seed 000) through next-token distributions: a "variant" that is the reference
object itself, or an unchanged deep copy, has KL exactly 0 and is caught; a "4-bit" model that is really the
8-bit one breaks the KL ordering; a mixed model whose MLP fell to 2 bits lies above its uniform bounds; the
correct variants pass."""
import copy

import pytest
import torch

from qcheck.errors import InvariantViolation
from qcheck.formats import integer
from qcheck.invariants.fidelity import (
    DECIDED_REFERENCE_P,
    KL_BOUNDS,
    assert_kl_between,
    assert_kl_ordering,
    assert_kl_sane,
)
from qcheck.measure.fidelity import fidelity
from qcheck.measure.half_cpu import half_matmul
from qcheck.results import Status
from qcheck.variants import builtin_plan

TOKENS, CONTEXT = 1024, 512


@pytest.fixture(scope="module")
def kl(smollm2, smollm2_quantized, wikitext_slice):
    ref = smollm2.model
    int8, _ = smollm2_quantized(builtin_plan("int8"))
    w4, _ = smollm2_quantized(builtin_plan("w4g64"))
    bf16, _ = smollm2_quantized(builtin_plan("bf16"))
    # seed 004: the "4-bit" run silently kept the 8-bit weights
    planted_w4 = copy.deepcopy(int8)
    # seed 000: the mixed run's MLP layers ended up far below either uniform format (2 bits)
    planted_mixed = copy.deepcopy(w4)
    with torch.no_grad():
        for layer in planted_mixed.model.layers:
            for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                proj.weight.copy_(integer(proj.weight, 2, group_size=64))
    variants = {"itself": ref, "copy": copy.deepcopy(ref), "bf16": bf16, "int8": int8, "w4g64": w4,
                "w4g64-planted": planted_w4, "mixed-planted": planted_mixed}
    with half_matmul("fast"):  # bf16 on a CPU, as the engine computes it (qcheck.measure.half_cpu)
        return fidelity(ref, variants, smollm2.tokenizer, wikitext_slice, max_tokens=TOKENS, context=CONTEXT)


def test_variant_that_is_the_reference_object_is_caught(kl):
    result = kl["itself"]
    assert result.same_object and result.identical and result.kl_max == 0.0
    with pytest.raises(InvariantViolation) as err:
        assert_kl_sane(result, variant="w4g64")
    check = err.value.result
    assert check.name == "kl_sane" and check.status == Status.FAIL and check.variant == "w4g64"
    assert f"KL(ref || w4g64) is exactly 0 at all {result.n_tokens} tokens" in check.message
    assert "the variant is the reference object itself" in check.message and "(Z1)" in check.message
    assert check.evidence["fidelity"]["identical_tokens"] == result.n_tokens == 1022
    assert check.evidence["fidelity"]["same_object"] is True


def test_unchanged_deep_copy_is_caught(kl):
    with pytest.raises(InvariantViolation) as err:
        assert_kl_sane(kl["copy"], variant="bf16")
    check = err.value.result
    assert "its logits are bit-identical to the reference's" in check.message
    assert check.evidence["fidelity"]["same_object"] is False
    assert check.evidence["fidelity"]["max_abs_logit_diff"] == 0.0


def test_4bit_that_is_really_the_8bit_breaks_the_ordering(kl):
    with pytest.raises(InvariantViolation) as err:
        assert_kl_ordering([kl["int8"], kl["w4g64-planted"]], family="int")
    check = err.value.result
    assert check.name == "kl_ordering"
    assert "w4g64-planted gives exactly the same KL as int8 at all 1022 tokens" in check.message
    assert check.evidence["kl_mean"]["int8"] == check.evidence["kl_mean"]["w4g64-planted"] > 0


def test_mixed_with_2bit_mlp_lies_above_its_uniform_bounds(kl):
    with pytest.raises(InvariantViolation) as err:
        assert_kl_between(kl["mixed-planted"], {"int8": kl["int8"], "w4g64": kl["w4g64"]}, variant="mixed")
    check = err.value.result
    assert "mixed KL" in check.message and "above its worst uniform bound w4g64" in check.message
    assert check.evidence["mixed_minus_upper"]["low"] > 0


def test_a_bf16_run_that_holds_4bit_weights_fails_the_bf16_bounds_top1_included(kl):
    """Seed 004's mislabel in the other direction: a run published as "bf16" whose weights are really w4g64. Against a
    real reference, whose top-1 choices are decided (median top-1 probability ~0.3), the bf16 bounds are judged in
    full: the KL bound and the top-1 bound both fail, and the near-uniform-reference waiver does not apply."""
    mislabelled = kl["w4g64"]
    assert mislabelled.ref_top1_p_median > DECIDED_REFERENCE_P
    with pytest.raises(InvariantViolation) as err:
        assert_kl_sane(mislabelled, variant="bf16")
    check = err.value.result
    assert check.name == "kl_sane" and check.status == Status.FAIL and check.variant == "bf16"
    assert "above the 0.005 bound for bf16 beyond noise" in check.message
    assert "below the 94% bf16 must keep beyond noise" in check.message
    assert "not judged" not in check.message and "top1_not_judged" not in check.evidence


def test_correct_variants_pass(kl):
    bf16 = assert_kl_sane(kl["bf16"])
    assert bf16.status == Status.PASS and kl["bf16"].kl_mean < KL_BOUNDS["bf16"]["max_kl_mean"]
    assert kl["bf16"].top1_agreement > KL_BOUNDS["bf16"]["min_top1"] and kl["bf16"].identical_tokens == 0
    # real weights decide their top-1 (median probability ~0.3): the top-1 bound is judged, not waived
    assert kl["bf16"].ref_top1_p_median > 10 * DECIDED_REFERENCE_P and "not judged" not in bf16.message
    assert assert_kl_sane(kl["int8"]).status == Status.PASS
    ordering = assert_kl_ordering([kl["int8"], kl["w4g64"]], family="int")
    assert ordering.status == Status.PASS
    assert 0 < kl["bf16"].kl_mean < kl["int8"].kl_mean < kl["w4g64"].kl_mean
