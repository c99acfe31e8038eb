"""Z1 and Z6 with a bf16 reference (--reference-dtype bf16/auto, how 8B-70B checkpoints are compared): an honest fp16
cast differs from a bf16 reference by the reference's own bf16 noise, so fp16's 2e-4 bound (stated for an fp32
reference) made `kl_sane[fp16]` FAIL it, a false alarm. It is now judged by the coarser dtype's bound (bf16's), and
a run published as "fp16" whose weights are really fp8 still fails it. The float family's perplexity order puts the
fp16 cast before a bf16 reference (more mantissa bits first): the fp8 "fp16" breaks it, the honest cast keeps it."""
import copy

import pytest
import torch

from qcheck.errors import InvariantViolation
from qcheck.formats.minifloat import fp8_e4m3
from qcheck.invariants.fidelity import KL_BOUNDS, assert_kl_sane, cast_bounds
from qcheck.invariants.quality import assert_perplexity_order
from qcheck.measure.fidelity import fidelity
from qcheck.measure.half_cpu import half_matmul
from qcheck.measure.perplexity import perplexity_of_ids
from qcheck.results import Status
from qcheck.variants import float_chain

TOKENS, CONTEXT = 1024, 512


@pytest.fixture(scope="module")
def models_bf16(smollm2):
    reference = copy.deepcopy(smollm2.model).to(torch.bfloat16)
    honest = copy.deepcopy(reference).to(torch.float16)
    # the planted bug: published as an fp16 cast, its weights went through fp8 (e4m3) on the way
    planted = copy.deepcopy(honest)
    with torch.no_grad():
        for module in planted.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(fp8_e4m3(module.weight.float()).to(torch.float16))
    return {"fp32": reference, "fp16": honest, "fp16-planted": planted}


@pytest.fixture(scope="module")
def kl_bf16(smollm2, wikitext_slice, models_bf16):
    reference, *_ = models_bf16.values()
    variants = {k: v for k, v in models_bf16.items() if k != "fp32"}
    with half_matmul("fast"):  # 16-bit on a CPU, as the engine computes it (qcheck.measure.half_cpu)
        return fidelity(reference, variants, smollm2.tokenizer, wikitext_slice, max_tokens=TOKENS, context=CONTEXT)


def test_the_bound_is_the_coarser_dtypes():
    assert cast_bounds("fp16") == ("fp16", KL_BOUNDS["fp16"])
    assert cast_bounds("fp16", "bf16") == ("bf16", KL_BOUNDS["bf16"])
    assert cast_bounds("bf16", "fp16") == ("bf16", KL_BOUNDS["bf16"])
    assert cast_bounds("int8", "bf16") == (None, {})


def test_an_honest_fp16_cast_of_a_bf16_reference_passes_and_fp16s_own_bound_would_fail_it(kl_bf16):
    honest = kl_bf16["fp16"]
    # the reference's bf16 noise, not fp16's: fp32 || bf16 measured 1.07e-3 on this model and data
    assert KL_BOUNDS["fp16"]["max_kl_mean"] < honest.kl_mean < KL_BOUNDS["bf16"]["max_kl_mean"] / 2
    check = assert_kl_sane(honest, variant="fp16", reference_dtype="bf16")
    assert check.status == Status.PASS, check.message
    assert check.threshold["bounds_of"] == "bf16" and check.threshold["max_kl_mean"] == 5e-3
    with pytest.raises(InvariantViolation) as err:  # the rule before: fp16's bound against any reference
        assert_kl_sane(honest, variant="fp16")
    assert "above the 0.0002 bound for fp16 beyond noise" in err.value.result.message


def test_an_fp16_run_holding_fp8_weights_fails_against_a_bf16_reference(kl_bf16):
    planted = kl_bf16["fp16-planted"]
    with pytest.raises(InvariantViolation) as err:
        assert_kl_sane(planted, variant="fp16", reference_dtype="bf16")
    check = err.value.result
    assert check.name == "kl_sane" and check.status == Status.FAIL and check.variant == "fp16"
    assert "bound for fp16 against a bf16 reference (bf16's) beyond noise" in check.message
    assert check.evidence["kl_mean_interval"]["low"] > KL_BOUNDS["bf16"]["max_kl_mean"]


def test_the_float_familys_perplexity_order_puts_fp16_before_a_bf16_reference(smollm2, wikitext_slice, models_bf16):
    assert float_chain(["fp16", "bf16"], "fp32") == ["fp32", "fp16", "bf16"]
    assert float_chain(["fp16"], "bf16") == ["fp16", "fp32"]
    assert float_chain(["bf16"], "fp16") == ["fp32", "bf16"]
    ids = smollm2.tokenizer(wikitext_slice, add_special_tokens=False)["input_ids"][:TOKENS * 2]
    with half_matmul("fast"):
        ppl = {n: perplexity_of_ids(m, ids, context=CONTEXT, pad_id=smollm2.tokenizer.pad_token_id)
               for n, m in models_bf16.items()}
    chain = float_chain(["fp16"], "bf16")
    honest = assert_perplexity_order({n: ppl[n] for n in chain}, family="float")
    assert honest.status == Status.PASS, honest.message
    with pytest.raises(InvariantViolation) as err:
        assert_perplexity_order({"fp16": ppl["fp16-planted"], "fp32": ppl["fp32"]}, family="float")
    assert "fp32 (" in err.value.result.message and "lower perplexity than fp16" in err.value.result.message
    assert ppl["fp16-planted"].perplexity > ppl["fp32"].perplexity
