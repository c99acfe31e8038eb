"""optimum-quanto on CUDA (run on the device machine): SmolLM2's layer shapes with random weights in bf16. quanto
picks kernel-specific tensors there (TinyGemm for int4 groups of 128, Marlin for float8 where the shapes allow, its
CUDA extension compiled on first use); the manifest reads each back through its own dequantize()."""
import importlib.util

import pytest
import torch

from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.ptq import assert_ptq_applied
from qcheck.quant.backends import make_backend, produce_variant
from qcheck.quant.tensor_stats import weight_fingerprint

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("optimum") is None
                                 or importlib.util.find_spec("optimum.quanto") is None,
                                 reason="optimum-quanto not installed (carry its wheel)")]


@pytest.fixture(scope="module")
def reference():
    """Two SmolLM2-shaped layers: 576-wide inputs (int4 groups of 96) and a 1536-wide down_proj (groups of 128)."""
    config = tiny_llama_config(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    return random_init_like(config, seed=0, dtype=torch.bfloat16, device="cuda")


@pytest.mark.parametrize("weights,bits,classes", [
    ("int8", 8, {"QLinear[WeightQBytesTensor, qint8]"}),
    ("int4", 4, {"QLinear[TinyGemmWeightQBitsTensor, qint4]", "QLinear[WeightQBitsTensor, qint4]"}),
    ("float8", 8, {"QLinear[MarlinF8QBytesTensor, qfloat8_e4m3fn]", "QLinear[WeightQBytesTensor, qfloat8_e4m3fn]"}),
])
def test_quanto_on_cuda_reads_back_its_kernel_tensors(reference, weights, bits, classes):
    backend = make_backend("quanto", weights=weights, device="cuda")
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    before = weight_fingerprint(reference)
    variant = produce_variant(backend, reference, None)
    assert weight_fingerprint(reference) == before
    assert {r.module_class for r in variant.report.applied} == classes
    assert len(variant.report.applied) == 14
    x = torch.randn(4, 576, device="cuda", dtype=torch.bfloat16)
    for rec in variant.report.applied:
        assert rec.max_distinct_per_group <= 2 ** bits
        module = variant.model.get_submodule(rec.name)
        if module.in_features == 576:
            expected = x.float() @ module.weight.dequantize().float().t()
            torch.testing.assert_close(module(x).float(), expected, rtol=0.05, atol=0.05)
    assert assert_ptq_applied(reference, variant).status.value == "PASS"
