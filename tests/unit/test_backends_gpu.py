"""PTQ backends on CUDA (run on the device machine): torchao weight-only int8 / int4 and float8 on SmolLM2's
shape with random weights, bitsandbytes through BitsAndBytesConfig; manifests unpack the backends' weights."""
import importlib.util

import pytest
import torch

from qcheck.models import random_init_like, tiny_llama_config
from qcheck.ptq import assert_ptq_applied
from qcheck.quant.backends import make_backend, produce_variant
from qcheck.tensor_stats import weight_fingerprint

pytestmark = pytest.mark.gpu


def smollm2_shape(layers: int = 4):
    return tiny_llama_config(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)


@pytest.fixture(scope="module")
def reference():
    return random_init_like(smollm2_shape(), seed=0)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed (carry its wheel)")
@pytest.mark.parametrize("mode,bits", [
    ("int8-wo", 8),
    pytest.param("int4-wo", 4, marks=pytest.mark.xfail(
        reason="seen on an H100 with torchao 0.18 / torch 2.11: Int4TilePackedTo4dTensor implements no "
               "aten.dequantize, so qcheck cannot read the int4 weights back for its grid check", strict=False)),
    ("float8-wo", 8)])
def test_torchao_variant_is_quantized_with_real_kernels(reference, mode, bits):
    backend = make_backend("torchao", mode=mode, group_size=64, device="cuda")
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    before = weight_fingerprint(reference)
    variant = produce_variant(backend, reference, None)
    assert weight_fingerprint(reference) == before
    classes = {r.module_class for r in variant.report.applied}
    assert classes and all("Parameter" not in c for c in classes), classes
    if mode != "float8-wo":
        assert all(r.max_distinct_per_group <= 2 ** bits for r in variant.report.applied)
    result = assert_ptq_applied(reference, variant)
    assert result.evidence["logits"]["finite"]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_bnb_config_on_cuda(reference, mode):
    variant = produce_variant(make_backend("bnb-config", mode=mode, device="cuda", compute_dtype="fp16"),
                              reference, None)
    assert next(variant.model.parameters()).device.type == "cuda"
    assert {r.module_class for r in variant.report.applied} == {"Linear8bitLt" if mode == "int8" else "Linear4bit"}
    assert_ptq_applied(reference, variant)
    torch.cuda.empty_cache()
