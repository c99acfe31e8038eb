"""quantize(): reference untouched, manifest measured from the weights, pruning exact, bnb on CPU."""
import copy
import math

import pytest
import torch

from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.quant.apply import quantize
from qcheck.quant.tensor_stats import weight_fingerprint


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config(), seed=3)


def test_reference_untouched_and_manifest_names_rules(tiny):
    before = weight_fingerprint(tiny)
    plan = {"default": {"format": "int", "bits": 4, "group_size": 32},
            "override": [{"match": "*.self_attn.*", "format": "int", "bits": 8}]}
    q, report = quantize(tiny, plan)
    assert weight_fingerprint(tiny) == before and q is not tiny
    attn = report.layer("model.layers.0.self_attn.q_proj")
    mlp = report.layer("model.layers.1.mlp.down_proj")
    assert (attn.bits, attn.rule, attn.applied) == (8, "override[0] '*.self_attn.*'", True)
    assert (mlp.bits, mlp.rule, mlp.max_distinct_per_group <= 15) == (4, "default", True)
    assert 0 < mlp.rel_change < 0.5 and attn.sqnr_db > mlp.sqnr_db
    head = report.layer("lm_head")
    assert not head.applied and "include_lm_head" in head.kept_reason
    summary = report.summary()
    assert summary["applied"] == len(report.layers) - 1 and summary["bits"] == {"8": 8, "4": 6}


def test_inplace_modifies_the_given_model(tiny):
    model = copy.deepcopy(tiny)
    q, _ = quantize(model, {"default": {"format": "fixed", "width": 8, "frac_width": 6}}, inplace=True)
    assert q is model
    w = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w, torch.round(w * 64).clamp(-128, 127) / 64)


@pytest.mark.parametrize("method", ["l1", "random"])
def test_pruning_reaches_requested_sparsity_within_one_element(tiny, method):
    _, report = quantize(tiny, {"default": {"format": "prune", "sparsity": 0.3, "method": method}})
    for rec in report.applied:
        assert abs(rec.sparsity - rec.requested_sparsity) * rec.numel <= 1.0 + 1e-9


def test_l1_pruning_removes_the_smallest_weights(tiny):
    q, _ = quantize(tiny, {"default": {"format": "prune", "sparsity": 0.5}})
    ref = tiny.model.layers[0].mlp.up_proj.weight.detach().abs()
    new = q.model.layers[0].mlp.up_proj.weight.detach()
    assert ref[new == 0].max() <= ref[new != 0].min()


def test_cast_layers_run_inside_an_fp32_model(tiny):
    q, report = quantize(tiny, {"default": {"format": "bf16"}})
    assert q.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 512, (1, 12))
    out = q(input_ids=ids).logits
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert report.layer("model.layers.0.mlp.up_proj").dtype == "torch.bfloat16"


def test_activation_fake_quant_with_straight_through_gradient(tiny):
    q, report = quantize(tiny, {"default": {"format": "int", "bits": 8,
                                            "activations": {"format": "int", "bits": 4}}})
    assert report.layer("model.layers.0.mlp.up_proj").activations == {
        "format": "int", "bits": 4, "group_size": None, "symmetric": True, "per_tensor": False}
    emb = q.model.embed_tokens(torch.randint(0, 512, (1, 6))).detach().requires_grad_(True)
    q(inputs_embeds=emb).logits.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("fmt, bits", [("bnb-int8", 8), ("bnb-nf4", 4)])
def test_bitsandbytes_backend_on_cpu(tiny, fmt, bits):
    q, report = quantize(tiny, {"default": {"format": fmt}})
    rec = report.layer("model.layers.0.mlp.up_proj")
    assert rec.backend == "bitsandbytes" and rec.bits == bits
    assert rec.module_class in ("Linear8bitLt", "Linear4bit")
    assert 0 < rec.rel_change < 0.2
    out = q(input_ids=torch.randint(0, 512, (1, 8))).logits
    assert torch.isfinite(out).all()


def test_bnb_staging_falls_back_to_a_pageable_copy_without_pinned_memory():
    """HostStaging on a machine that cannot page-lock memory (this CPU build of torch refuses pin_memory): the weight
    still reaches the host in fp16, as a copy of its own, and the buffer stays unallocated."""
    import torch

    from qcheck.quant.bnb import HostStaging, host_staging

    if torch.cuda.is_available():
        pytest.skip("this machine has pinned memory; the staged path is test_bnb_staging_gpu's")
    weight = torch.randn(8, 16)
    with host_staging() as staging:
        assert isinstance(staging, HostStaging)
        held = staging.hold(weight)
        assert staging.buffer is None
    assert held.dtype == torch.float16 and held.device.type == "cpu"
    assert torch.equal(held, weight.to(torch.float16))
    assert held.data_ptr() != weight.data_ptr()


def _same_figures(a, b, path=""):
    """Equal, float for float within 1e-12 relative (float64 norms summed in another order), NaN equal to NaN."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same_figures(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_figures(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == b or (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=0), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("plan", [
    {"default": {"format": "int", "bits": 8}},
    {"default": {"format": "int", "bits": 4, "group_size": 32, "symmetric": False}},
    {"default": {"format": "int", "bits": 3, "per_tensor": True}},
    {"default": {"format": "fixed", "width": 8, "frac_width": 4}},
    {"default": {"format": "fixed", "width": 16, "frac_width": 8}},
    {"default": {"format": "fp8-e4m3"}},
    {"default": {"format": "bf16"}},
    {"default": {"format": "prune", "sparsity": 0.3}},
], ids=["int8c", "int4g32a", "int3t", "fixed8.4", "fixed16.8", "e4m3", "bf16", "prune"])
def test_quantize_and_its_evidence_are_the_same_a_piece_at_a_time(tiny, monkeypatch, plan):
    """In pieces of 100 elements (shorter than down_proj's rows of 128, one row of the other weights, three groups of
    32, never dividing a weight): the same quantized bits, the same manifest (counts, rates; norms within 1e-12) and
    the same evidence (grid membership, off-grid and changed fractions, already-in-format) as computed whole."""
    from qcheck.formats import _chunks
    from qcheck.measure.weights import already_in_format, plan_evidence, quantization_evidence, spec_of_record

    def run():
        q, report = quantize(tiny, plan)
        weights = {n: p.detach().clone() for n, p in q.named_parameters()}
        evidence = quantization_evidence(tiny, q, report)
        followed = plan_evidence(q, plan, tiny), plan_evidence(tiny, plan)  # the reference is off every grid
        in_format = {r.name: already_in_format(tiny.get_submodule(r.name).weight.detach(), spec_of_record(r))
                     for r in report.applied}
        return weights, report.to_dict(), evidence, followed, in_format

    whole = run()
    monkeypatch.setattr(_chunks, "CHUNK_ELEMENTS", 100)
    pieces = run()
    assert whole[0].keys() == pieces[0].keys()
    for name, w in whole[0].items():
        assert w.dtype == pieces[0][name].dtype and torch.equal(
            w.reshape(-1).view(torch.int16), pieces[0][name].reshape(-1).view(torch.int16)), name
    _same_figures(whole[1:], pieces[1:])


def test_an_fp16_cast_that_overflows_a_weight_is_reported_destroyed_not_a_crash():
    """A weight past fp16's 65,504 becomes inf in the fp16 variant: the build used to stop on log10(0) (SQNR of an
    infinite noise); it now records SQNR -inf, and quantization_applied FAILs naming the layer below its floor and
    the non-finite logits. The same model without that weight passes."""
    from qcheck.errors import InvariantViolation
    from qcheck.invariants.applied import judge_quantization_applied
    from qcheck.measure.weights import quantization_evidence
    from qcheck.results import Status
    from qcheck.variants import builtin_plan

    model = random_init_like(tiny_llama_config(num_hidden_layers=1), seed=0)
    fine, report = quantize(model, builtin_plan("fp16"))
    assert judge_quantization_applied(quantization_evidence(model, fine, report)).status == Status.PASS
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = 7.0e4
    broken, report = quantize(model, builtin_plan("fp16"))
    record = next(r for r in report.layers if r.name == "model.layers.0.mlp.down_proj")
    assert record.sqnr_db == -math.inf and record.rel_change == math.inf
    with pytest.raises(InvariantViolation) as caught:
        judge_quantization_applied(quantization_evidence(model, broken, report))
    verdict = caught.value.result
    assert verdict.status == Status.FAIL and verdict.name == "quantization_applied"
    assert "destroyed): model.layers.0.mlp.down_proj" in verdict.message and "NaN/inf" in verdict.message
