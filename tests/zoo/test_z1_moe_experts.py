"""Z1 in qcheck's own variants: transformers 5 keeps a mixture-of-experts layer's experts in one 3-D parameter, not
in nn.Linear, so a plan's layer rules that address nn.Linear alone never reach them. An int8 "Mixtral" then
quantized attention alone, and `quantization_applied`, which judges the layers the plan claimed, passed it.

Now each fused experts weight is a layer of its own (`qcheck.quant.experts`): int8 reaches the experts, the checks
judge them, a manifest that claims experts the weights do not show FAILs, and a layout qcheck does not know is
refused before anything runs, as every model with weights outside its layers is."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from qcheck.errors import ConfigError, InvariantViolation
from qcheck.invariants import assert_plan_followed, assert_quantization_applied
from qcheck.quant import plan as plan_module
from qcheck.quant.apply import quantize
from qcheck.quant.experts import layer_at
from qcheck.variants import builtin_plan


def _tiny_moe(model_type="mixtral", vocab_size=512, **extra):
    moe = {"mixtral": {"num_local_experts": 4}, "gpt_oss": {"num_local_experts": 4, "head_dim": 16,
                                                           "layer_types": ["full_attention"] * 2}}[model_type]
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  num_experts_per_tok=2, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                                  **moe, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _ids():
    return torch.randint(3, 512, (1, 32), generator=torch.Generator().manual_seed(0))


def _experts(model):
    return [n for n, _ in model.named_parameters() if ".experts." in n and not n.endswith("_bias")]


def test_int8_of_fused_experts_left_them_untouched_and_now_reaches_them(monkeypatch):
    model = _tiny_moe()
    # the bug, rebuilt: plans that address nn.Linear alone (no fused experts, no refusal) quantize attention and
    # leave every expert as it was, and the check of the claimed layers passes it
    monkeypatch.setattr(plan_module, "expert_matrices", lambda name, module: iter(()))
    monkeypatch.setattr(plan_module, "is_expert_weight", lambda module, param: False)
    monkeypatch.setattr(plan_module, "MAX_UNADDRESSED_SHARE", 1.0)
    quantized, report = quantize(model, builtin_plan("int8"))
    assert all(torch.equal(quantized.get_parameter(n), model.get_parameter(n)) for n in _experts(model))
    assert assert_quantization_applied(model, quantized, report, input_ids=_ids()).status.value == "PASS"
    assert report.summary()["outside_linear_share"] > 0.8
    monkeypatch.undo()
    # now: every experts weight is quantized, judged, and the manifest says what its rules could not reach (the
    # router alone)
    quantized, report = quantize(model, builtin_plan("int8"))
    assert not any(torch.equal(quantized.get_parameter(n), model.get_parameter(n)) for n in _experts(model))
    result = assert_quantization_applied(model, quantized, report, input_ids=_ids())
    judged = result.evidence["layers"]
    assert result.status.value == "PASS" and "model.layers.1.mlp.experts.down_proj" in judged
    assert judged["model.layers.1.mlp.experts.down_proj"]["on_grid"]
    assert report.summary()["outside_linear_share"] < 0.01


def test_a_manifest_claiming_experts_the_weights_do_not_show_fails(monkeypatch):
    """The planted bug on the experts themselves: the manifest says int8, the experts hold the reference's
    values (a backend that wrote its result elsewhere)."""
    model = _tiny_moe()
    quantized, report = quantize(model, builtin_plan("int8"))
    with torch.no_grad():
        for name in _experts(model):
            quantized.get_parameter(name).copy_(model.get_parameter(name))
    with pytest.raises(InvariantViolation) as info:
        assert_quantization_applied(model, quantized, report, input_ids=_ids())
    result = info.value.result
    assert result.name == "quantization_applied" and result.status.value == "FAIL"
    assert "model.layers.0.mlp.experts.gate_up_proj" in result.message


def test_a_transposed_layout_read_the_wrong_way_round_is_off_the_plan():
    """gpt-oss stores its experts [experts, in, out]. Quantized as stored, int8's channels would run along the
    input features: `plan_followed` names the experts; read as the layer they stand for, the plan holds."""
    model = _tiny_moe("gpt_oss")
    quantized, _ = quantize(model, builtin_plan("int8"))
    assert assert_plan_followed(quantized, builtin_plan("int8"), reference=model).status.value == "PASS"
    from qcheck.formats import integer

    with torch.no_grad():
        for name in _experts(model):
            stored = model.get_parameter(name)
            quantized.get_parameter(name).copy_(torch.stack([integer(stored[e], 8) for e in range(stored.shape[0])]))
    with pytest.raises(InvariantViolation) as info:
        assert_plan_followed(quantized, builtin_plan("int8"), reference=model)
    result = info.value.result
    assert result.name == "plan_followed" and result.status.value == "FAIL" and "experts" in result.message
    assert layer_at(quantized, "model.layers.0.mlp.experts.gate_up_proj").transposed


def test_one_scale_over_all_experts_is_off_a_per_tensor_plan():
    """A per-tensor plan gives each expert's matrix its own scale (the tensor its linear layer is; vLLM's fused-MoE
    per-tensor scales are one per expert). qcheck's first MoE quantizer (session 26) took one scale over the whole
    fused parameter: coarser than any deployment, so it overstated the loss. Planted here: `plan_followed` names the
    experts; per expert, the plan holds."""
    from qcheck.formats import integer
    from qcheck.quant.plan import Plan

    plan = Plan.from_dict({"name": "int8t", "default": {"format": "int", "bits": 8, "per_tensor": True}})
    model = _tiny_moe()
    quantized, _ = quantize(model, plan)
    assert assert_plan_followed(quantized, plan, reference=model).status.value == "PASS"
    with torch.no_grad():
        for name in _experts(model):
            quantized.get_parameter(name).copy_(integer(model.get_parameter(name), 8, per_tensor=True))
    with pytest.raises(InvariantViolation) as info:
        assert_plan_followed(quantized, plan, reference=model)
    result = info.value.result
    assert result.name == "plan_followed" and result.status.value == "FAIL"
    assert "4 of 13 layers" in result.message and "model.layers.0.mlp.experts.gate_up_proj" in result.message
    assert "off the int8t grid" in result.evidence["mismatched"]["model.layers.1.mlp.experts.down_proj"]


def test_experts_of_a_layout_qcheck_does_not_know_are_refused():
    """A fused experts class without transformers' layout marks: qcheck does not guess which dimension holds the
    input features; a quantizing plan is refused, naming the parameter, and the casts still run."""
    model = _tiny_moe()
    for module in model.modules():
        if hasattr(module, "is_transposed"):
            del module.is_transposed
    with pytest.raises(ConfigError) as err:
        quantize(model, builtin_plan("int8"))
    assert "MixtralExperts.gate_up_proj" in str(err.value) and "outside nn.Linear" in str(err.value)
    assert quantize(model, builtin_plan("bf16"))[1].summary()["outside_linear_share"] > 0.8


def test_a_dense_model_quantizes_as_before(tiny_folder):
    model = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32).eval()
    _, report = quantize(model, builtin_plan("int8"))
    assert report.summary()["outside_linear_share"] == 0.0 and len(report.applied) > 0


def test_a_random_moe_reference_no_better_than_uniform_is_not_ordered_by_bits(smollm2_tokenizer, wikitext_slice):
    """Found running the default suite on a random-init Mixtral (SmolLM2's 49,152-token vocabulary): its reference
    scores 50,027, worse than a uniform guess, and fixed8.4, which zeroes most of its small random weights, scored
    0.5% below fixed16.8, beyond noise: `perplexity_order[fixed]` FAILed an honest run. Rebuilt here on another slice
    of WikiText-2; the check now says why the order cannot be judged (INCONCLUSIVE). A variant never quantized (the
    same perplexity as the reference) still FAILs on the same model."""
    from qcheck.invariants.quality import assert_perplexity_order
    from qcheck.measure.perplexity import perplexity_of_ids

    vocab = len(smollm2_tokenizer)
    model = _tiny_moe(vocab_size=vocab)
    ids = smollm2_tokenizer(wikitext_slice, add_special_tokens=False)["input_ids"][:2048]
    ppl = {"fp32": perplexity_of_ids(model, ids, context=1024, pad_id=2)}
    for name in ("fixed16.8", "fixed8.4"):
        ppl[name] = perplexity_of_ids(quantize(model, builtin_plan(name))[0], ids, context=1024, pad_id=2)
    assert ppl["fp32"].perplexity >= vocab
    with pytest.raises(InvariantViolation) as info:  # the false alarm, as the check judged it before
        assert_perplexity_order(ppl, family="fixed")
    assert "fixed8.4 (" in info.value.result.message and "lower perplexity than fixed16.8" in info.value.result.message
    check = assert_perplexity_order(ppl, family="fixed", vocab_size=vocab)
    assert check.status.value == "INCONCLUSIVE" and "no better than chance" in check.message
    with pytest.raises(InvariantViolation, match="identical perplexity"):
        assert_perplexity_order({"fp32": ppl["fp32"], "fixed16.8": ppl["fp32"]}, family="fixed", vocab_size=vocab)


def test_a_moe_checkpoint_quantized_outside_its_experts_is_named(tmp_path):
    """A user's quantized MoE checkpoint (`--ptq checkpoint=FOLDER`) whose quantizer reached the attention and not
    the fused experts: the backend's manifest compared `nn.Linear`-like layers alone, so `ptq_applied` passed it.
    The experts are compared too now: the unchanged ones are named (WARN); in a checkpoint with its experts quantized
    no expert is."""
    from qcheck.invariants.ptq import assert_ptq_applied
    from qcheck.quant.backends import make_backend, produce_variant

    model = _tiny_moe()
    attention_only = {"default": {"format": "int", "bits": 8},
                      "override": [{"match": "*.experts.*", "format": "keep"}]}
    for name, plan in (("attention-only", attention_only), ("everything", builtin_plan("int8"))):
        quantize(model, plan)[0].save_pretrained(tmp_path / name)
    partial = produce_variant(make_backend("checkpoint", folder=str(tmp_path / "attention-only")), model, None)
    experts = [r for r in partial.report.layers if ".experts." in r.name]
    assert len(experts) == 4 and all(r.kept_reason == "weights identical to the reference" for r in experts)
    check = assert_ptq_applied(model, partial)
    unchanged = check.evidence["problems"]["unchanged"]
    assert check.status.value == "WARN" and [n for n in unchanged if ".experts." in n] == [r.name for r in experts]
    assert "model.layers.0.mlp.experts.gate_up_proj" in check.message
    full = produce_variant(make_backend("checkpoint", folder=str(tmp_path / "everything")), model, None)
    assert sum(r.applied for r in full.report.layers if ".experts." in r.name) == 4
    # what int8 leaves as it was either way (the head it keeps, the routers no plan reaches) is named in both
    assert not any(".experts." in n for n in assert_ptq_applied(model, full).evidence["problems"].get("unchanged", []))
