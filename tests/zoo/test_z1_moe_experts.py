"""Z1 in qcheck's own variants: transformers 5 keeps a mixture-of-experts layer's experts in one 3-D parameter, not
in nn.Linear, so a plan's layer rules never reach them. An int8 "Mixtral" then quantized attention alone, and
`quantization_applied`, which judges the layers the plan claimed, passed it. The plan is refused before anything
runs; a dense model quantizes as before."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from qcheck.errors import ConfigError
from qcheck.invariants import assert_quantization_applied
from qcheck.quant import plan as plan_module
from qcheck.quant.apply import quantize
from qcheck.variants import builtin_plan


def _tiny_mixtral():
    config = AutoConfig.for_model("mixtral", vocab_size=512, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  num_local_experts=4, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_int8_of_fused_experts_left_them_untouched_and_is_now_refused(monkeypatch):
    model = _tiny_mixtral()
    ids = torch.randint(3, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    # the bug, rebuilt: without the refusal, int8 quantizes attention and leaves every expert as it was
    monkeypatch.setattr(plan_module, "MAX_UNADDRESSED_SHARE", 1.0)
    quantized, report = quantize(model, builtin_plan("int8"))
    experts = [n for n, _ in model.named_parameters() if ".experts." in n]
    assert experts and all(torch.equal(quantized.get_parameter(n), model.get_parameter(n)) for n in experts)
    assert assert_quantization_applied(model, quantized, report, input_ids=ids).status.value == "PASS"
    assert report.summary()["outside_linear_share"] > 0.8
    monkeypatch.undo()
    # the check: refused before anything is built, naming the experts' parameter
    with pytest.raises(ConfigError) as err:
        quantize(model, builtin_plan("int8"))
    assert "MixtralExperts.gate_up_proj" in str(err.value) and "outside nn.Linear" in str(err.value)


def test_a_dense_model_quantizes_as_before(tiny_folder):
    model = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32).eval()
    _, report = quantize(model, builtin_plan("int8"))
    assert report.summary()["outside_linear_share"] == 0.0 and len(report.applied) > 0
