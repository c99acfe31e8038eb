"""Z1 (seed 000, 004): "quantization" that never reached the weights must be reported, naming the layers."""
import copy

import pytest
import torch

from qcheck.errors import InvariantViolation
from qcheck.invariants import assert_16bit_differs, assert_quantization_applied
from qcheck.quant.apply import quantize


def identity_quantizer(model, plan):
    """Planted bug: returns a copy with the weights unchanged, and a manifest claiming the plan."""
    _, report = quantize(model, plan)
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


def test_identity_quantizer_is_caught_with_layer_names(smollm2, probe):
    q, report = identity_quantizer(smollm2.model, {"default": {"format": "int", "bits": 4, "group_size": 64}})
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


def test_identical_perplexity_to_ten_decimals_says_not_applied():
    with pytest.raises(InvariantViolation, match="identical to fp32's to 10 decimals: quantization was not applied"):
        assert_16bit_differs(171.96, 171.96, variant="16-bit")
    with pytest.raises(InvariantViolation, match="more than the 1%"):
        assert_16bit_differs(22.55, 23.10, variant="bf16")


def test_real_fp16_and_int8_pass(smollm2, probe):
    for plan in ({"dtype": "fp16", "default": {"format": "fp16"}}, {"default": {"format": "int", "bits": 8}}):
        q, report = quantize(smollm2.model, plan)
        result = assert_quantization_applied(smollm2.model, q, report, input_ids=probe)
        assert result.status.value == "PASS"
        assert 15 < result.evidence["logits"]["sqnr_db"] < 80
    assert assert_16bit_differs(22.55, 22.56, variant="bf16").status.value == "PASS"
