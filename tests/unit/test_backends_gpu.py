"""PTQ backends on CUDA (run on the device machine): torchao weight-only int8 / int4 and float8 on SmolLM2's
shape with random weights, bitsandbytes through BitsAndBytesConfig; manifests unpack the backends' weights."""
import copy
import importlib.util
import re

import pytest
import torch

from qcheck.errors import InvariantViolation
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.ptq import assert_ptq_applied
from qcheck.quant.backends import make_backend, produce_variant
from qcheck.quant.tensor_stats import weight_fingerprint

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
    ("int4-wo", 4),  # Int4TilePackedTo4dTensor has no aten.dequantize: read back through its kernel
    ("float8-wo", 8)])
def test_torchao_variant_is_quantized_with_real_kernels(reference, mode, bits):
    backend = make_backend("torchao", mode=mode, group_size=64, device="cuda")
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    before = weight_fingerprint(reference)
    variant = produce_variant(backend, reference, None)
    assert variant.name == f"torchao-{mode}" + ("-64" if mode == "int4-wo" else "")
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


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed (carry its wheel)")
def test_int4_slowdown_names_the_kernel_its_time_goes_to(reference):
    """torchao int4 at a prefill shape (32 x 512) is slower than bf16 (tinygemm is a decode kernel); the slowdown
    check's message names the kernel that takes the time, so the user sees a kernel cost, not a fallback."""
    from qcheck.invariants.latency import assert_slowdown_bound
    from qcheck.measure.latency import profile_call, time_by_kernel
    from qcheck.measure.timing import forward_callable, random_input_ids, time_forward
    from qcheck.results import Status

    backend = make_backend("torchao", mode="int4-wo", group_size=64, device="cuda")
    if backend.unavailable_reason() is not None:
        pytest.skip(backend.unavailable_reason())
    int4 = produce_variant(backend, reference, None).model
    bf16 = copy.deepcopy(reference).to("cuda", torch.bfloat16).eval()
    ids = random_input_ids(reference.config.vocab_size, 32, 512, device="cuda")
    budget = {"warmup": 3, "min_repeats": 20, "min_time_s": 0.5}
    ref, slow = (time_forward(m, ids, tf32=False, **budget) for m in (bf16, int4))
    kernels = time_by_kernel(profile_call(forward_callable(int4, ids), "cuda"), "cuda")
    print(f"int4 {slow.median_ms:.2f} ms vs bf16 {ref.median_ms:.2f} ms; kernels: {kernels}")
    assert kernels and all(k["clock"] == "device" for k in kernels)
    assert any(re.search("int4|tinygemm", k["name"], re.IGNORECASE) for k in kernels[:3]), kernels
    try:
        result = assert_slowdown_bound(ref, slow, variant="torchao-int4-wo-64", reference_name="bf16",
                                       backend_format="torchao-int4-wo", kernels=kernels)
    except InvariantViolation as err:
        result = err.result
    if result.status != Status.PASS:
        assert kernels[0]["kernel"] in result.message and result.evidence["time_by_kernel"] == kernels
