"""quantize(): reference untouched, manifest measured from the weights, pruning exact, bnb on CPU."""
import copy

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
