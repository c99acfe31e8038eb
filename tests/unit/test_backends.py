"""PTQ backends: registry, reference guard, bitsandbytes through BitsAndBytesConfig, checkpoint folders,
calibration sets and the PTQ checks, on tiny random Llama models (weights do not matter here)."""
import json

import pytest
import torch

from qcheck.errors import ConfigError, DataError, InvariantViolation, ModelLoadError, QCheckError
from qcheck.inputs.calibration import CHAT_INSTRUCTION, CalibrationSpec, build_calibration
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.ptq import assert_ptq_applied, assert_reference_untouched
from qcheck.quant.backends import (
    ReferenceMutatedError,
    backend_names,
    make_backend,
    manifest_of,
    produce_variant,
    unpacked_weight,
)
from qcheck.quant.backends.checkpoint import detect_quantization
from qcheck.quant.backends.llmcompressor import LLMCompressorBackend
from qcheck.quant.backends.torchao import TorchAOBackend
from qcheck.quant.tensor_stats import weight_fingerprint


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config(tie_word_embeddings=False), seed=0)


@pytest.fixture(scope="module")
def nf4_variant(tiny):
    return produce_variant(make_backend("bnb-config", mode="nf4"), tiny, None)


def test_registry_names_builtin_backends_and_refuses_unknown():
    assert {"checkpoint", "llmcompressor", "bnb-config", "torchao"} <= set(backend_names())
    with pytest.raises(ConfigError, match="unknown PTQ backend 'gptqq'"):
        make_backend("gptqq")


def test_backend_options_are_validated():
    with pytest.raises(ConfigError, match="mode 'nf3'"):
        make_backend("bnb-config", mode="nf3")
    with pytest.raises(ConfigError, match="algorithm 'rtn'"):
        LLMCompressorBackend(algorithm="rtn")
    with pytest.raises(ConfigError, match="torchao mode"):
        TorchAOBackend(mode="int2")
    assert LLMCompressorBackend(algorithm="smoothquant-w8a8").variant_name == "w8a8-sq-wikitext"
    assert LLMCompressorBackend(calibration={"source": "chat-gsm8k"}).variant_name == "gptq-w4g64-chat-gsm8k"


def test_group_size_that_does_not_divide_the_width_is_refused(tiny):
    with pytest.raises(ConfigError, match="group_size 48 does not divide"):
        LLMCompressorBackend(group_size=48).check_shapes(tiny)


def test_unavailable_backend_is_an_error_naming_why(tiny):
    backend = TorchAOBackend(device="cuda")
    if backend.unavailable_reason() is None:
        pytest.skip("torchao and CUDA are both present here")
    with pytest.raises(QCheckError, match="PTQ backend 'torchao' cannot run here"):
        produce_variant(backend, tiny, None)


@pytest.mark.parametrize("mode,cls,bits", [("int8", "Linear8bitLt", 8), ("nf4", "Linear4bit", 4),
                                           ("fp4", "Linear4bit", 4)])
def test_bnb_config_variant_has_backend_modules_on_grid(tiny, mode, cls, bits):
    before = weight_fingerprint(tiny)
    variant = produce_variant(make_backend("bnb-config", mode=mode), tiny, None)
    assert weight_fingerprint(tiny) == before
    classes = {r.module_class for r in variant.report.layers if r.applied}
    assert classes == {cls}
    assert variant.report.layer("lm_head").kept_reason.startswith("left in float")
    assert all(r.max_distinct_per_group <= 2 ** bits for r in variant.report.applied)
    result = assert_ptq_applied(tiny, variant)
    assert result.evidence["module_classes"][cls] == 14
    if mode == "int8":
        assert variant.details["config"]["llm_int8_threshold"] == 6.0
    else:
        assert variant.details["config"]["bnb_4bit_use_double_quant"] is True


def test_unpacked_weight_of_int_weights_with_group_scales():
    q = torch.tensor([[-8, 7, 1, 0], [2, -2, 3, -3]], dtype=torch.int8)
    scale = torch.tensor([[0.5, 2.0], [1.0, 0.25]])
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(q, requires_grad=False)
    module.weight_scale = scale
    expected = torch.tensor([[-4.0, 3.5, 2.0, 0.0], [2.0, -2.0, 0.75, -0.75]])
    assert torch.equal(unpacked_weight(module), expected)


def test_checkpoint_folder_loads_as_variant_without_requantizing(tiny, nf4_variant, tmp_path):
    nf4_variant.model.save_pretrained(tmp_path)
    info = detect_quantization(tmp_path)
    assert (info.method, info.bits, info.group_size, info.ignore) == ("bitsandbytes", 4, 64, ("lm_head",))
    loaded = produce_variant(make_backend("checkpoint", folder=str(tmp_path)), tiny, None)
    assert loaded.report.backend == "checkpoint:bitsandbytes"
    for rec in loaded.report.applied:
        original = nf4_variant.report.layer(rec.name)
        assert rec.module_class == "Linear4bit"
        assert rec.sqnr_db == pytest.approx(original.sqnr_db, abs=1e-9)
    assert_ptq_applied(tiny, loaded)


@pytest.mark.parametrize("qc,expected", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, ("gptq", 4, 128)),
    ({"quant_method": "awq", "bits": 4, "group_size": 64}, ("awq", 4, 64)),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "group_size": 64}}}},
     ("compressed-tensors", 4, 64)),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, ("bitsandbytes", 8, None)),
])
def test_detect_quantization_reads_each_method(tmp_path, qc, expected):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
    info = detect_quantization(tmp_path)
    assert (info.method, info.bits, info.group_size) == expected


def test_detect_quantization_float_unknown_and_missing(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert detect_quantization(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "hqq"}}))
    with pytest.raises(ModelLoadError, match="'hqq' is not one qcheck loads"):
        detect_quantization(tmp_path)
    with pytest.raises(ModelLoadError, match="no config.json"):
        detect_quantization(tmp_path / "nowhere")


def test_missing_library_for_a_checkpoint_is_named(tmp_path, tiny):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "quantization_config": {"quant_method": "awq", "bits": 4}}))
    backend = make_backend("checkpoint", folder=str(tmp_path))
    reason = backend.unavailable_reason()
    if reason is None:
        pytest.skip("autoawq is installed here")
    assert "awq checkpoints need the package 'awq'" in reason


def test_manifest_marks_unchanged_layers(tiny):
    report = manifest_of(tiny, tiny, backend="none", plan={"name": "same"}, bits=4)
    assert report.applied == []
    assert {r.kept_reason for r in report.layers} == {"weights identical to the reference"}
    with pytest.raises(InvariantViolation, match="no layer of the variant is quantized"):
        assert_ptq_applied(tiny, type("V", (), {"report": report, "model": tiny, "name": "same"})())


def test_reference_untouched_check(tiny):
    fp = weight_fingerprint(tiny)
    assert assert_reference_untouched(tiny, fp, backend="x").evidence["before"] == fp
    with pytest.raises(InvariantViolation, match="backend 'x' changed the reference"):
        assert_reference_untouched(tiny, "0" * 64, backend="x")


def test_reference_mutated_error_names_backend():
    err = ReferenceMutatedError("llmcompressor", "a" * 64, "b" * 64)
    assert "backend 'llmcompressor' changed the reference model's weights" in str(err)


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer alone (its chat template included): much cheaper than the model."""
    from qcheck.inputs.models import load_tokenizer

    try:
        return load_tokenizer()
    except QCheckError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


def test_wikitext_calibration_chunks(tokenizer):
    try:
        calib = build_calibration(tokenizer, CalibrationSpec("wikitext", n_samples=4, seq_len=64, seed=1))
    except DataError as exc:
        pytest.skip(str(exc))
    assert [len(ids) for ids in calib.input_ids] == [64] * 4
    assert calib.describe()["tokens"] == 256 and calib.describe()["data_sha256"]
    again = build_calibration(tokenizer, source="wikitext", n_samples=4, seq_len=64, seed=1)
    assert again.input_ids == calib.input_ids
    ds = calib.to_dataset()
    assert ds.column_names == ["input_ids", "attention_mask"] and len(ds) == 4


def test_chat_calibration_uses_the_chat_template(tokenizer):
    try:
        calib = build_calibration(tokenizer, CalibrationSpec("chat-gsm8k", n_samples=3, seq_len=512))
    except DataError as exc:
        pytest.skip(str(exc))
    assert len(calib.texts) == 3
    for text, ids in zip(calib.texts, calib.input_ids):
        assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")
        assert CHAT_INSTRUCTION in text
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"][:512]


def test_calibration_spec_is_validated():
    with pytest.raises(ConfigError, match="calibration source 'c4'"):
        CalibrationSpec(source="c4")
    with pytest.raises(ConfigError, match="n_samples"):
        CalibrationSpec(n_samples=0)


def test_checkpoint_of_another_architecture_is_refused(nf4_variant, tmp_path):
    nf4_variant.model.save_pretrained(tmp_path)
    other = random_init_like(tiny_llama_config(hidden_size=32, intermediate_size=64), seed=0)
    with pytest.raises(QCheckError, match="is not a quantization of the reference: hidden_size 32"):
        produce_variant(make_backend("checkpoint", folder=str(tmp_path)), other, None)



def test_ptq_variant_names_the_float_dtype_it_computes_in(tiny, nf4_variant):
    """A PTQ variant has no plan: the latency slowdown bound compares it with the float model of its parameters'
    dtype (found on the H100: `variant.plan.dtype` raised AttributeError for every PTQ variant)."""
    from qcheck.variants import Variant, builtin_plan

    ptq = Variant("bnb-config-nf4", None, nf4_variant.model, nf4_variant.report, 0.0, backend=nf4_variant)
    assert nf4_variant.report.model_dtype == "torch.float32" and ptq.dtype_name == "fp32"
    nf4_variant.report.model_dtype, saved = "torch.bfloat16", nf4_variant.report.model_dtype
    try:
        assert ptq.dtype_name == "bf16"
    finally:
        nf4_variant.report.model_dtype = saved
    assert Variant("w4g64", builtin_plan("w4g64"), tiny, nf4_variant.report, 0.0).dtype_name == "fp32"
    assert Variant("fp16", builtin_plan("fp16"), tiny, nf4_variant.report, 0.0).dtype_name == "fp16"


def test_torchao_spec_takes_an_int4_group_size_and_refuses_others():
    """`torchao:int4-wo:64` sets the group (SmolLM2's 576-wide layers need 64; tinygemm takes 32-256)."""
    from qcheck.quant.backends import backend_from_spec, ptq_variant_name

    assert backend_from_spec("torchao:int4-wo:64").group_size == 64
    assert backend_from_spec("torchao:int4-wo").group_size == 128
    assert ptq_variant_name("torchao:int4-wo:64") == "torchao-int4-wo-64"
    with pytest.raises(ConfigError, match="only torchao:int4-wo takes a group size"):
        backend_from_spec("torchao:int8-wo:64")
    with pytest.raises(ConfigError, match="only torchao:int4-wo takes a group size"):
        backend_from_spec("torchao:int4-wo:sixty")
    with pytest.raises(ConfigError, match="int4 supports 32, 64, 128, 256"):
        backend_from_spec("torchao:int4-wo:48")


def test_ptq_checks_report_the_variant_by_the_name_the_run_knows_it_by(tiny):
    """Seen on an H200: `torchao:int4-wo:64` runs as torchao-int4-wo-64 but the backend called its variant
    torchao-int4-wo, so ptq_applied landed on a row of its own in the report. The variant set now renames it."""
    from qcheck.variants import VariantSet

    variants = VariantSet(tiny, {}, backends={"my-nf4": "bnb-config:nf4"})
    variant = variants.get("my-nf4")
    assert variant.backend.name == "my-nf4" and variant.backend.backend == "bnb-config"
    assert assert_ptq_applied(tiny, variant.backend).variant == "my-nf4"


def test_weight_through_kernel_reads_what_the_layer_computes_with():
    """The int4 tile-packed layout has no dequantize op; F.linear(I, W)^T recovers W through the layer's kernel."""
    from qcheck.quant.backends import weight_through_kernel

    layer = torch.nn.Linear(12, 5, bias=True)
    assert torch.equal(weight_through_kernel(layer), layer.weight.detach())


def test_stored_bytes_counts_a_tensor_subclass_by_its_inner_tensors():
    """torchao's weights report the logical bf16 numel and dtype; what they store is their inner tensors. A real
    wrapper subclass (torch's TwoTensor) stands in: two fp32 inner tensors, twice the logical size."""
    from torch.testing._internal.two_tensor import TwoTensor

    from qcheck.quant.tensor_stats import stored_bytes

    a, b = torch.randn(4, 8), torch.randn(4, 8)
    assert stored_bytes(a) == 128
    assert stored_bytes(torch.nn.Parameter(a)) == 128
    assert stored_bytes(TwoTensor(a, b)) == 256
    assert stored_bytes(torch.zeros(4, 8, dtype=torch.int8)) == 32


def test_model_stored_bytes_counts_a_tied_weight_once(tiny):
    """The latency module's `memory` metric and bench_ptq: parameters and buffers as stored, shared ones once."""
    from qcheck.inputs.models import random_init_like, tiny_llama_config
    from qcheck.quant.tensor_stats import model_stored_bytes

    tied = random_init_like(tiny_llama_config(tie_word_embeddings=True), seed=0)
    per_tensor = {id(t): t.numel() * t.element_size() for t in (*tied.parameters(), *tied.buffers())}
    assert model_stored_bytes(tied) == sum(per_tensor.values())
    assert model_stored_bytes(tied) < model_stored_bytes(tiny)  # untied: lm_head stored separately
