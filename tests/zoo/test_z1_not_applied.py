"""Z1 (seed 000, 004): "quantization" that never reached the weights must be reported, naming the layers."""
import copy

import pytest
import torch

from qcheck.errors import InvariantViolation
from qcheck.invariants import assert_quantization_applied
from qcheck.invariants.closeness import CLOSE_TO_REFERENCE, assert_close_to_reference
from qcheck.measure.half_cpu import half_matmul
from qcheck.measure.perplexity import perplexity_of_ids
from qcheck.quant.apply import quantize
from qcheck.variants import builtin_plan


def identity_quantizer(model, report):
    """Planted bug: returns a copy with the weights unchanged, and the manifest of a real run of the plan."""
    return copy.deepcopy(model), report


def cast_and_discard_quantizer(model):
    """Planted bug: casts each weight to fp16 and back inside a temporary it then throws away."""
    q = copy.deepcopy(model)
    for module in q.modules():
        if isinstance(module, torch.nn.Linear):
            _ = module.weight.detach().half().float()
    return q


@pytest.fixture(scope="module")
def probe(smollm2, wikitext_slice):
    ids = smollm2.tokenizer(wikitext_slice[:2000], add_special_tokens=False)["input_ids"][:64]
    return torch.tensor(ids).reshape(2, 32)


def test_identity_quantizer_is_caught_with_layer_names(smollm2, smollm2_quantized, probe):
    _, w4g64_report = smollm2_quantized(builtin_plan("w4g64"))
    q, report = identity_quantizer(smollm2.model, w4g64_report)
    with pytest.raises(InvariantViolation) as err:
        assert_quantization_applied(smollm2.model, q, report, input_ids=probe, variant="w4g64")
    result = err.value.result
    assert result.name == "quantization_applied"
    assert "logits are bit-identical to the reference: quantization was not applied" in result.message
    assert "model.layers.0.self_attn.q_proj" in result.evidence["problems"]["unchanged"]
    assert len(result.evidence["problems"]["unchanged"]) == 210
    assert len(result.evidence["problems"]["off_grid"]) == 210


def test_cast_and_discard_is_caught_without_a_manifest(smollm2, probe):
    q = cast_and_discard_quantizer(smollm2.model)
    with pytest.raises(InvariantViolation) as err:
        assert_quantization_applied(smollm2.model, q, input_ids=probe, variant="fp16")
    message = err.value.result.message
    assert "quantization not applied to 211 of 211 layers" in message
    assert "model.layers.0.self_attn.q_proj" in message
    assert err.value.result.evidence["logits"]["identical"] is True


@pytest.fixture(scope="module")
def tokens(smollm2, wikitext_slice):
    return smollm2.tokenizer(wikitext_slice, add_special_tokens=False)["input_ids"][:1024]


@pytest.fixture(scope="module")
def fp32_ppl(smollm2, tokens):
    return perplexity_of_ids(smollm2.model, tokens, context=256, batch_size=1)


def _close(name, model, tokens, reference):
    bound = CLOSE_TO_REFERENCE[name]
    with half_matmul("fast"):  # 16-bit models on a CPU, as the engine computes them (qcheck.measure.half_cpu)
        measured = perplexity_of_ids(model, tokens, context=256, batch_size=1)
    return assert_close_to_reference(reference, measured, variant=name, bound=bound.relative, basis=bound.basis)


def test_identical_perplexity_to_ten_decimals_says_not_applied(smollm2, tokens, fp32_ppl):
    """Seed 000: FP32 and '16-bit' agree to 10 decimals; here the '16-bit' model is an untouched copy."""
    with pytest.raises(InvariantViolation, match="identical to fp32's to 10 decimals: quantization was not applied"):
        _close("bf16", copy.deepcopy(smollm2.model), tokens, fp32_ppl)


def test_a_near_lossless_claim_far_off_fails_beyond_its_interval(smollm2, tokens, fp32_ppl):
    """Planted: an 'int8' whose quantizer really uses 3 bits: the whole interval of the change lies past the bound."""
    q, _ = quantize(smollm2.model, {"default": {"format": "int", "bits": 3}})
    with pytest.raises(InvariantViolation) as err:
        _close("int8", q, tokens, fp32_ppl)
    result = err.value.result
    assert result.name == "precision_differs_from_fp32" and "the whole interval lies beyond" in result.message
    change = result.evidence["relative_change"]
    assert change["low"] > CLOSE_TO_REFERENCE["int8"].relative and result.evidence["bound_basis"]


def test_real_fp16_and_int8_pass(smollm2, smollm2_quantized, probe):
    for plan in (builtin_plan("fp16"), builtin_plan("int8")):  # {"dtype": "fp16", default fp16}, {default int 8}
        q, report = smollm2_quantized(plan)
        with half_matmul("fast"):
            result = assert_quantization_applied(smollm2.model, q, report, input_ids=probe)
        assert result.status.value == "PASS"
        assert 15 < result.evidence["logits"]["sqnr_db"] < 80


def test_real_bf16_and_int8_stay_within_their_bounds(smollm2_quantized, tokens, fp32_ppl):
    for name in ("bf16", "int8"):  # {"dtype": "bf16", default bf16}, {default int 8}
        q, _ = smollm2_quantized(builtin_plan(name))
        assert _close(name, q, tokens, fp32_ppl).status.value == "PASS"


def test_a_probe_that_cannot_see_the_weights_is_inconclusive_not_a_fail(wikitext_slice, tiny_folder):
    """Issue 17: tests/zoo/ptq_fixtures/tiny-float's tokenizer maps every text to id 0 (its padding row), so the
    probe's logits are the same whatever the weights. 98% of the weights changed: that is not "not applied"."""
    from pathlib import Path

    from qcheck.inputs.models import load_model
    from qcheck.invariants.applied import judge_quantization_applied
    from qcheck.measure.weights import quantization_evidence
    from qcheck.results import Status

    blind = load_model(Path(__file__).parent / "ptq_fixtures" / "tiny-float")
    ids = blind.tokenizer(wikitext_slice[:3000], add_special_tokens=False)["input_ids"][:64]
    assert set(ids) == {0}
    q, report = quantize(blind.model, {"default": {"format": "int", "bits": 8}})
    evidence = quantization_evidence(blind.model, q, report, input_ids=torch.tensor(ids).reshape(2, 32))
    result = judge_quantization_applied(evidence, variant="int8")
    assert result.status == Status.INCONCLUSIVE
    assert "the logits cannot tell" in result.message and "same at every one of the probe's 64 positions" in \
        result.message
    seeing = load_model(tiny_folder)
    ids = seeing.tokenizer(wikitext_slice[:3000], add_special_tokens=False)["input_ids"][:64]
    q, report = quantize(seeing.model, {"default": {"format": "int", "bits": 8}})
    evidence = quantization_evidence(seeing.model, q, report, input_ids=torch.tensor(ids).reshape(2, 32))
    assert judge_quantization_applied(evidence, variant="int8").status == Status.PASS


def fp32_only_rtn(model: torch.nn.Module, bits: int = 8) -> torch.nn.Module:
    """Planted bug (bf16 checkpoints): per-channel RTN that only touches fp32 weights (`if w.dtype == torch.float32`,
    written and tested on fp32 models), so a bf16 model comes back with every weight as it was."""
    q = copy.deepcopy(model)
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for module in q.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32:
                scale = module.weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
                module.weight.copy_((module.weight / scale).round().clamp(-qmax, qmax) * scale)
    return q


@pytest.fixture(scope="module")
def bf16_reference(smollm2):
    """SmolLM2 in bf16: the reference of `--reference-dtype auto` on a bf16 checkpoint (8B-70B models ship so)."""
    return copy.deepcopy(smollm2.model).to(torch.bfloat16)


def test_a_quantizer_that_skips_a_bf16_reference_is_caught_and_the_real_one_passes(bf16_reference, probe):
    """With a bf16 reference, grid layers keep fp32 values (issue 20's false-alarm fix); that must not hide a
    variant whose weights were never quantized."""
    honest, report = quantize(bf16_reference, builtin_plan("int8"))
    result = assert_quantization_applied(bf16_reference, honest, report, input_ids=probe, variant="int8")
    assert result.status.value == "PASS", result.message
    with pytest.raises(InvariantViolation) as err:
        assert_quantization_applied(bf16_reference, fp32_only_rtn(bf16_reference), report, input_ids=probe,
                                    variant="int8")
    result = err.value.result
    assert result.name == "quantization_applied"
    assert "logits are bit-identical to the reference: quantization was not applied" in result.message
    assert "model.layers.0.self_attn.q_proj" in result.evidence["problems"]["unchanged"]
    assert len(result.evidence["problems"]["unchanged"]) == 210
