"""bitsandbytes builds on a GPU pass every weight through one pinned host buffer (qcheck.quant.bnb.HostStaging):
the quantized layers must be those of the plain pageable round trip, byte for byte, with no layer left pointing at
the reused buffer (run on the device machine)."""
import importlib.util

import pytest
import torch

from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.quant.apply import quantize
from qcheck.quant.bnb import dequantized_weight, is_bnb_module, make_bnb_linear
from qcheck.quant.spec import BnbSpec
from qcheck.variants import builtin_plan

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                 reason="bitsandbytes not installed (carry its wheel)")]


@pytest.mark.parametrize("name", ["bnb-int8", "bnb-nf4"])
def test_a_staged_build_equals_the_pageable_one(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config = tiny_llama_config(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2)
    reference = random_init_like(config, seed=0, device="cuda")
    staged, report = quantize(reference, builtin_plan(name))  # quantize() stages through pinned memory
    spec = next(a.rule.spec for a in builtin_plan(name).resolve(reference) if isinstance(a.rule.spec, BnbSpec))
    layers = [(n, m) for n, m in staged.named_modules() if is_bnb_module(m)]
    assert len(layers) == 3 * 7 == len(report.applied)
    for layer, module in layers:
        assert module.weight.device.type == "cuda", layer
        plain = make_bnb_linear(reference.get_submodule(layer), spec)  # outside quantize: the pageable copy
        assert torch.equal(module.weight.data, plain.weight.data), layer
        assert torch.equal(dequantized_weight(module), dequantized_weight(plain)), layer
    ids = torch.randint(0, 512, (2, 16), device="cuda")
    with torch.no_grad():
        logits = staged(ids).logits
    assert torch.isfinite(logits).all()
