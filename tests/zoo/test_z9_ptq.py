"""PTQ backends (seed 002): the oneshot trap (a backend quantizes the reference itself, so the "reference"
scores what the variant scores), a user's quantized checkpoint folder as a variant, and the GPTQ-vs-RTN
differential that flags a broken calibration."""
import copy
import importlib.util
import math

import pytest
import torch

from qcheck.errors import InvariantViolation
from qcheck.inputs.calibration import CalibrationSpec
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.ptq import assert_ptq_applied, assert_ptq_not_worse_than_rtn
from qcheck.measure.perplexity import perplexity
from qcheck.measure.weights import output_divergence, probe_input_ids
from qcheck.quant.apply import quantize
from qcheck.quant.backends import BackendVariant, ReferenceMutatedError, make_backend, manifest_of, produce_variant
from qcheck.quant.tensor_stats import weight_fingerprint

W4G64 = {"default": {"format": "int", "bits": 4, "group_size": 64}}


class OneshotLikeBackend:
    """A backend in llm-compressor's shape; `inplace=True` plants the trap: it quantizes the model it is given."""

    def __init__(self, inplace: bool) -> None:
        self.inplace = inplace
        self.name = "oneshot-inplace" if inplace else "oneshot-on-copy"

    def unavailable_reason(self):
        return None

    def produce(self, reference, tokenizer):
        working = reference if self.inplace else copy.deepcopy(reference)
        quantized, _ = quantize(working, W4G64, inplace=True)
        report = manifest_of(reference if not self.inplace else copy.deepcopy(quantized), quantized,
                             backend=self.name, plan={"name": "w4g64", "format": "int"}, bits=4, group_size=64)
        return BackendVariant("w4g64", self.name, quantized, report, 0.0)


@pytest.fixture
def tiny():
    return random_init_like(tiny_llama_config(), seed=3)


def test_backend_that_mutates_the_reference_is_an_error_naming_it(tiny):
    fingerprint = weight_fingerprint(tiny)
    with pytest.raises(ReferenceMutatedError) as err:
        produce_variant(OneshotLikeBackend(inplace=True), tiny, None)
    assert err.value.backend == "oneshot-inplace"
    assert "backend 'oneshot-inplace' changed the reference model's weights" in str(err.value)
    assert err.value.before == fingerprint and err.value.after != fingerprint


def test_without_the_guard_the_reference_scores_exactly_what_the_variant_scores(tiny):
    variant = OneshotLikeBackend(inplace=True).produce(tiny, None)
    out = output_divergence(tiny, variant.model, probe_input_ids(512))
    assert out["identical"], "the seed's symptom: reference and variant agree to the last bit"


def test_backend_working_on_a_copy_passes(tiny):
    fingerprint = weight_fingerprint(tiny)
    variant = produce_variant(OneshotLikeBackend(inplace=False), tiny, None)
    assert weight_fingerprint(tiny) == fingerprint == variant.report.reference_fingerprint
    result = assert_ptq_applied(tiny, variant)
    assert result.evidence["applied"] == 14
    assert all(r.max_distinct_per_group <= 16 for r in variant.report.applied)


def test_users_quantized_checkpoint_folder_is_a_variant(tiny, tmp_path):
    user = produce_variant(make_backend("bnb-config", mode="nf4"), tiny, None)
    user.model.save_pretrained(tmp_path / "user-nf4")
    variant = produce_variant(make_backend("checkpoint", folder=str(tmp_path / "user-nf4")), tiny, None)
    assert variant.name == "user-nf4"
    assert variant.details["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert {r.module_class for r in variant.report.applied} == {"Linear4bit"}
    assert_ptq_applied(tiny, variant)


def rtn_copy(model, bits, group_size):
    """A copy with every decoder-layer Linear rounded to int`bits` in groups (qcheck's RTN, no manifest: cheap)."""
    from qcheck.formats import integer

    q = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in q.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
                module.weight.copy_(integer(module.weight, bits, group_size=group_size))
    return q


@pytest.fixture(scope="module")
def ppl_setup(smollm2, wikitext_slice):
    ids = smollm2.tokenizer(wikitext_slice, add_special_tokens=False)["input_ids"][:2560]
    text = smollm2.tokenizer.decode(ids)

    def score(model):
        return perplexity(model, smollm2.tokenizer, text, context=256, batch_size=4)

    return score, score(rtn_copy(smollm2.model, 4, 64))


def test_ptq_worse_than_rtn_flags_the_calibration(smollm2, ppl_setup):
    """Planted: a '4-bit GPTQ' whose broken calibration left it at 3-bit quality."""
    score, rtn = ppl_setup
    broken = rtn_copy(smollm2.model, 3, 64)
    calibration = {"source": "chat-gsm8k", "samples": 2, "seq_len": 16, "tokens": 32}
    with pytest.raises(InvariantViolation) as err:
        assert_ptq_not_worse_than_rtn(rtn, score(broken), variant="gptq-w4g64", rtn_name="w4g64",
                                      calibration=calibration)
    result = err.value.result
    assert result.name == "ptq_not_worse_than_rtn"
    assert "check the calibration set (source=chat-gsm8k, samples=2, seq_len=16, tokens=32)" in result.message
    # 2,560 tokens in windows of 256 are paired in blocks of 128 scored positions: 20 units
    assert result.n == len(rtn.block_nll) == 20 and result.evidence["unit"] == "blocks of 128 tokens"
    assert result.evidence["nll_difference"]["low"] > 0


def test_ptq_at_least_as_good_as_rtn_passes(smollm2, ppl_setup):
    score, rtn = ppl_setup
    better = rtn_copy(smollm2.model, 4, 32)
    result = assert_ptq_not_worse_than_rtn(rtn, score(better), variant="w4g32", rtn_name="w4g64")
    assert result.status.value == "PASS"
    assert result.evidence["nll_difference"]["low"] <= math.log1p(0.01)


def test_too_few_windows_is_inconclusive(ppl_setup):
    _, rtn = ppl_setup
    short = copy.copy(rtn)
    short.block_index, short.block_nll, short.block_tokens = rtn.block_index[:3], rtn.block_nll[:3], rtn.block_tokens[:3]
    result = assert_ptq_not_worse_than_rtn(short, short, variant="x")
    assert result.status.value == "INCONCLUSIVE" and "only 3 blocks of 128 tokens" in result.message


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llmcompressor") is None,
                    reason="llm-compressor not installed (it pins transformers<=5.17; see docs/ptq.md)")
def test_llmcompressor_gptq_variant_is_applied_and_not_worse_than_rtn(smollm2, ppl_setup, tmp_path):
    score, rtn = ppl_setup
    before = weight_fingerprint(smollm2.model)
    backend = make_backend("llmcompressor", algorithm="gptq", bits=4, group_size=64,
                           calibration=CalibrationSpec("wikitext", n_samples=8, seq_len=128),
                           output_dir=str(tmp_path / "gptq"))
    variant = produce_variant(backend, smollm2.model, smollm2.tokenizer)
    assert weight_fingerprint(smollm2.model) == before
    assert_ptq_applied(smollm2.model, variant)
    ptq = score(variant.model)
    assert math.isfinite(ptq.perplexity)
    assert_ptq_not_worse_than_rtn(rtn, ptq, variant=variant.name, rtn_name="w4g64",
                                  calibration=variant.details["calibration"])


FIXTURES = __import__("pathlib").Path(__file__).parent / "ptq_fixtures"


@pytest.mark.skipif(importlib.util.find_spec("compressed_tensors") is None,
                    reason="compressed-tensors not installed: needed to load llm-compressor checkpoints "
                           "(pip install 'compressed-tensors>=0.19')")
def test_llmcompressor_packed_checkpoint_is_unpacked_for_the_evidence_check():
    """A real GPTQ W4 g32 pack-quantized checkpoint (made by llm-compressor 0.14.0.1): int4 packed in int32."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-float", local_files_only=True).eval()
    variant = produce_variant(make_backend("checkpoint", folder=str(FIXTURES / "tiny-gptq-w4g32")), reference, None)
    assert variant.report.backend == "checkpoint:compressed-tensors"
    layer = variant.report.layer("model.layers.0.mlp.down_proj")
    assert layer.module_class == "Linear[pack-quantized, compressed]" and layer.dtype == "torch.int32"
    assert all(r.bits == 4 and r.max_distinct_per_group <= 16 for r in variant.report.applied)
    assert len(variant.report.applied) == 14
    result = assert_ptq_applied(reference, variant)
    assert result.evidence["module_classes"]["Linear[pack-quantized, compressed]"] == 14


SQ_RECIPE = """default_stage:
  default_modifiers:
    SmoothQuantModifier:
      smoothing_strength: 0.8
      mappings:
      - !!python/tuple
        - ['re:.*q_proj', 're:.*k_proj', 're:.*v_proj']
        - re:.*input_layernorm
    GPTQModifier:
      targets: [Linear]
      ignore: [lm_head]
      scheme: W8A8
"""


def _smoothed_int8(tiny):
    """SmoothQuant's move: scale q/k/v input channels by s, fold 1/s into input_layernorm, then int8 RTN."""
    import copy

    from qcheck.formats import integer

    model = copy.deepcopy(tiny)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            s = torch.rand(layer.input_layernorm.weight.shape, generator=g) * 4.8 + 0.2
            layer.input_layernorm.weight /= s
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.copy_(integer(proj.weight * s, 8))
            for proj in (layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                proj.weight.copy_(integer(proj.weight, 8))
    return model


def test_smoothquant_rescaled_layers_are_checked_by_grid_and_logits_not_weight_sqnr(tiny):
    """Seen on SmolLM2 with llm-compressor's SmoothQuant W8A8: the 150 smoothed q/k/v/gate/up layers had low
    weight SQNR against the reference (the smoothing, not the rounding) and were called destroyed. With the
    checkpoint's recipe the manifest marks them and ptq_applied passes; without it they are still flagged."""
    from qcheck.quant.backends import linear_like_modules, smoothed_layers

    model = _smoothed_int8(tiny)
    names = list(linear_like_modules(model))
    marked = smoothed_layers(SQ_RECIPE, names)
    assert sorted({n.rsplit(".", 1)[1] for n in marked}) == ["k_proj", "q_proj", "v_proj"]
    plan = {"format": "int8"}
    blind = manifest_of(tiny, model, backend="test", plan=plan, bits=8, skip=("lm_head",))
    with pytest.raises(InvariantViolation, match="layers destroyed: model.layers.0.self_attn.q_proj"):
        assert_ptq_applied(tiny, BackendVariant("sq", "test", model, blind, 0.0))
    told = manifest_of(tiny, model, backend="test", plan=plan, bits=8, skip=("lm_head",), transformed=marked)
    result = assert_ptq_applied(tiny, BackendVariant("sq", "test", model, told, 0.0))
    assert result.status.value == "PASS" and "6 layers rescaled by SmoothQuantModifier" in result.message
    assert result.evidence["smoothed"]["SmoothQuantModifier"]["layers"] == 6


needs_quanto = pytest.mark.skipif(importlib.util.find_spec("optimum") is None
                                  or importlib.util.find_spec("optimum.quanto") is None,
                                  reason="optimum-quanto not installed (pip install \"qcheck[quanto]\")")


def _quanto_variant(reference, model, name, bits):
    """What a quanto backend hands out: the model and the manifest read back from it (never from the plan)."""
    from qcheck.quant.backends.quanto import quanto_manifest

    report = quanto_manifest(reference, model, plan={"name": name, "format": name}, bits=bits)
    return BackendVariant(name, "quanto", model, report, 0.0)


@needs_quanto
def test_quanto_quantized_but_never_frozen_is_not_counted_as_quantized(tiny):
    """Planted: `quantize(model, weights=qint4)` without `freeze(model)`. The model stores float weights and
    re-quantizes them on every forward, so its logits differ from the reference (a logits-only check passes) while
    no packed tensor exists: no memory saved, a dynamic quantization per call, nothing to read the grid from."""
    from optimum.quanto import qint4, quantize

    model = copy.deepcopy(tiny)
    quantize(model, weights=qint4, exclude=["lm_head"])
    variant = _quanto_variant(tiny, model, "quanto-int4", 4)
    assert not output_divergence(tiny, model, probe_input_ids(512))["identical"]
    reasons = variant.report.summary()["kept_reasons"]
    assert reasons[next(r for r in reasons if "never freeze()d" in r)] == 14
    with pytest.raises(InvariantViolation) as err:
        assert_ptq_applied(tiny, variant)
    result = err.value.result
    assert result.name == "ptq_applied" and result.status.value == "FAIL"
    assert result.message.startswith("no layer of the variant is quantized; 14 layers not unpacked: model.layers.0.")
    assert any("never freeze()d" in r for r in result.evidence["summary"]["kept_reasons"])


@needs_quanto
def test_quanto_layer_silently_left_float_is_named(tiny):
    """Planted: the backend's quantize() call also excluded the MLP down projections (a too-wide pattern) while its
    plan says only lm_head is excluded. The read-back names the float layers; a plan-built manifest would not."""
    from optimum.quanto import freeze, qint4, quantize

    model = copy.deepcopy(tiny)
    quantize(model, weights=qint4, exclude=["lm_head", "*down_proj"])
    freeze(model)
    variant = _quanto_variant(tiny, model, "quanto-int4", 4)
    down = [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    assert [variant.report.layer(n).module_class for n in down] == ["Linear", "Linear"]
    result = assert_ptq_applied(tiny, variant)
    assert result.status.value == "WARN"
    assert result.message == f"2 layers unchanged: {', '.join(down)}"
    assert result.evidence["applied"] == 12


@needs_quanto
def test_quanto_int2_that_is_really_int4_is_off_its_grid(tiny):
    """Planted (seed 004's "4-bit and 2-bit identical"): a spec table that maps int2 to quanto's qint4. The packed
    tensors say qint4; the per-group count of dequantized values (16 > 2^2) fails the claimed 2 bits."""
    from optimum.quanto import freeze, qint4, quantize

    model = copy.deepcopy(tiny)
    quantize(model, weights=qint4, exclude=["lm_head"])
    freeze(model)
    variant = _quanto_variant(tiny, model, "quanto-int2", 2)
    assert {r.spec["weights"] for r in variant.report.applied} == {"qint4"}
    with pytest.raises(InvariantViolation, match="14 layers too many values: model.layers.0.self_attn.q_proj"):
        assert_ptq_applied(tiny, variant)


@needs_quanto
def test_quanto_on_the_reference_itself_is_caught_and_the_copy_passes(tiny):
    """quanto's quantize() replaces modules in place; a backend that hands it the reference is the oneshot trap."""
    from qcheck.quant.backends.quanto import QuantoBackend, quantize_copy

    class InPlace(QuantoBackend):
        def produce(self, reference, tokenizer):
            from optimum.quanto import freeze, qint4, quantize

            kept = copy.deepcopy(reference)
            quantize(reference, weights=qint4, exclude=["lm_head"])
            freeze(reference)
            return _quanto_variant(kept, reference, "quanto-int4", 4)

    fingerprint = weight_fingerprint(tiny)
    good = produce_variant(make_backend("quanto", weights="int4"), tiny, None)
    assert weight_fingerprint(tiny) == fingerprint
    assert assert_ptq_applied(tiny, good).status.value == "PASS"
    assert quantize_copy(tiny, "int4") is not tiny
    with pytest.raises(ReferenceMutatedError, match="backend 'quanto' changed the reference"):
        produce_variant(InPlace(weights="int4"), tiny, None)
