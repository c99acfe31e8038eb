"""Fused mixture-of-experts weights as plan layers (qcheck.quant.experts): the two layouts transformers 5 stores them
in, what plans may give them, and that each expert is quantized as the nn.Linear it stands for."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from qcheck.errors import ConfigError, VariantUnavailable
from qcheck.formats import integer
from qcheck.quant.apply import quantize
from qcheck.quant.experts import ExpertMatrix, layer_at
from qcheck.quant.plan import Plan, output_embeddings, target_layers, unaddressable_weights
from qcheck.variants import builtin_plan

COMMON = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
MOE = {
    # [experts, out, in]
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 128},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "head_dim": 16},
    # [experts, in, out] (is_transposed), with expert biases
    "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 16, "intermediate_size": 64,
                "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 128},
}


def _moe(model_type: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**COMMON, **MOE[model_type]})
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def _ids():
    return torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_type", list(MOE))
def test_each_expert_is_quantized_as_the_linear_layer_it_stands_for(model_type):
    """int8 per output channel of every expert's [out, in] matrix, whichever way round the parameter stores it:
    the same values as quantizing that expert's matrix alone."""
    model = _moe(model_type)
    quantized, report = quantize(model, builtin_plan("int8"))
    records = {r.name: r for r in report.layers if ".experts." in r.name}
    assert len(records) == 2 * COMMON["num_hidden_layers"] and all(r.applied for r in records.values())
    for name, rec in records.items():
        ref, out = layer_at(model, name), layer_at(quantized, name)
        assert isinstance(ref, ExpertMatrix) and rec.module_class == ref.label
        for e in range(ref.experts):
            stored_ref, stored_out = ref.param[e], out.param[e]
            if ref.transposed:
                stored_ref, stored_out = stored_ref.T, stored_out.T
            assert torch.equal(stored_out, integer(stored_ref, 8, None, True))
        assert rec.sqnr_db is not None and rec.sqnr_db > 20


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss"])
def test_a_per_tensor_scale_is_one_per_expert(model_type):
    """Per tensor means per expert's matrix, the tensor each expert's linear layer is (as quantized MoE checkpoints
    and fused kernels keep one scale per expert): each slice equals that matrix quantized alone, and the manifest's
    distinct-value count is one expert's."""
    model = _moe(model_type)
    plan = Plan.from_dict({"name": "int8t", "default": {"format": "int", "bits": 8, "per_tensor": True}})
    quantized, report = quantize(model, plan)
    records = {r.name: r for r in report.layers if ".experts." in r.name}
    assert len(records) == 4
    for name, rec in records.items():
        ref, out = layer_at(model, name), layer_at(quantized, name)
        scales = set()
        for e in range(ref.experts):
            stored_ref, stored_out = ref.param[e], out.param[e]
            if ref.transposed:
                stored_ref, stored_out = stored_ref.T, stored_out.T
            assert torch.equal(stored_out, integer(stored_ref, 8, per_tensor=True))
            scales.add(float(stored_ref.detach().abs().max()))
        assert len(scales) == ref.experts  # the experts' ranges differ: one scale over all would not give these
        assert rec.max_distinct_per_group <= 255


def test_the_2d_weight_stacks_experts_by_output_channel_and_writes_back_in_place():
    for model_type in ("mixtral", "gpt_oss"):
        model = _moe(model_type)
        layer = layer_at(model, "model.layers.0.mlp.experts.down_proj")
        stored = layer.param.detach().clone()
        w = layer.weight
        assert w.shape == (layer.out_features, layer.in_features) == (4 * COMMON["hidden_size"], layer.in_features)
        first_expert = stored[0].T if layer.transposed else stored[0]
        assert torch.equal(w[: COMMON["hidden_size"]], first_expert)
        layer.set_weight(w * 2)
        assert torch.equal(layer.param, stored * 2) and layer.param.shape == stored.shape


def test_expert_weights_are_targets_in_module_order_and_addressed():
    model = _moe("mixtral")
    names = [n for n, _ in target_layers(model)]
    first = names.index("model.layers.0.mlp.experts.gate_up_proj")
    assert names[first + 1] == "model.layers.0.mlp.experts.down_proj"
    assert names.index("model.layers.0.self_attn.o_proj") < first < names.index("model.layers.1.self_attn.q_proj")
    total, outside = unaddressable_weights(model, output_embeddings(model))
    assert set(outside) == {"transformers.models.mixtral.modeling_mixtral.MixtralTopKRouter.weight"}
    assert sum(outside.values()) / total < 0.01
    with pytest.raises(AttributeError):
        layer_at(model, "model.layers.0.mlp.experts.no_such_weight")


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss"])
def test_in_a_bf16_model_the_experts_compute_in_fp32_and_hand_back_bf16(model_type):
    """Grid values held in bf16 would round off their grid: the experts module keeps every tensor in fp32 and casts
    its hidden states in and out, as a fake-quantized nn.Linear does."""
    model = _moe(model_type, torch.bfloat16)
    quantized, report = quantize(model, builtin_plan("w4g64"))
    experts = quantized.get_submodule("model.layers.0.mlp.experts")
    assert all(p.dtype == torch.float32 for p in experts.parameters())
    assert quantized.get_submodule("model.layers.0.self_attn.q_proj").weight.dtype == torch.float32
    assert report.model_dtype == "bf16"
    logits = quantized(input_ids=_ids()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    # the same grid values computed in an fp32 model give close logits (bf16 elsewhere is the only difference)
    fp32_logits = quantize(_moe(model_type), builtin_plan("w4g64"))[0](input_ids=_ids()).logits
    assert torch.nn.functional.cosine_similarity(logits.float().flatten(), fp32_logits.flatten(), dim=0) > 0.99


def test_bitsandbytes_plans_are_unavailable_for_experts_before_any_copy():
    model = _moe("mixtral")
    for name in ("bnb-int8", "bnb-nf4"):
        with pytest.raises(VariantUnavailable, match="bitsandbytes stores nn.Linear layers only") as err:
            quantize(model, builtin_plan(name))
        assert "model.layers.0.mlp.experts.gate_up_proj" in str(err.value)
    attention_only = Plan.from_dict({"default": {"format": "int", "bits": 8},
                                     "override": [{"match": "*.self_attn.*", "format": "bnb-nf4"}]})
    assert Plan.load(attention_only).resolve(model)


def test_what_an_experts_weight_cannot_take_is_a_config_error_naming_the_fix():
    model = _moe("mixtral")
    with pytest.raises(ConfigError, match="activation quantization cannot reach the experts") as err:
        Plan.from_dict({"default": {"format": "int", "bits": 8,
                                    "activations": {"format": "int", "bits": 8, "per_tensor": True}}}).resolve(model)
    assert err.value.layer == "model.layers.0.mlp.experts.gate_up_proj"
    with_override = Plan.from_dict({"default": {"format": "int", "bits": 8,
                                                "activations": {"format": "int", "bits": 8, "per_tensor": True}},
                                    "override": [{"match": "*.experts.*", "format": "int", "bits": 8}]})
    assert with_override.resolve(model)
    with pytest.raises(ConfigError, match="two dtypes"):
        Plan.from_dict({"default": {"format": "fp16"}}).resolve(model)
    for cast in ("fp16", "bf16"):  # the whole model cast: every layer's cast is the model's dtype
        assert Plan.load(builtin_plan(cast)).resolve(model)


def test_the_memory_precheck_counts_fake_quantized_experts_in_fp32():
    from qcheck.inputs.fit import stored_bytes

    model = _moe("mixtral", torch.bfloat16)
    plan = Plan.load(builtin_plan("int8"))
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    linears = sum(m.weight.numel() for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n != "lm_head")
    total = sum(p.numel() for p in model.parameters())
    assert stored_bytes(model, plan, "bf16") == total * 2 + (experts + linears) * 2


def test_a_layout_qcheck_does_not_know_is_still_refused():
    """Experts of a class without transformers' layout marks are not guessed at: the plan is refused as before."""
    model = _moe("mixtral")
    for module in model.modules():
        if hasattr(module, "is_transposed"):
            del module.is_transposed
    with pytest.raises(ConfigError, match="outside nn.Linear") as err:
        Plan.load(builtin_plan("int8")).resolve(model)
    assert "MixtralExperts.gate_up_proj" in str(err.value) and "does not know the layout" in str(err.value)


def test_experts_offloaded_to_disk_are_quantized_where_they_live(tmp_path):
    """The --device-map path: a disk-offloaded Mixtral quantized in place gives the logits of the one-device
    variant, its experts read in from accelerate's weights map and stored back there."""
    from qcheck.quant.placed import quantize_placed

    model = _moe("mixtral")
    model.save_pretrained(tmp_path / "moe")
    expected, _ = quantize(model, builtin_plan("w4g64"))
    placed = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32, device_map="auto",
                                                  max_memory={"cpu": "1MB"}, offload_folder=str(tmp_path / "off"))
    assert "disk" in set(map(str, placed.hf_device_map.values()))
    quantized, report = quantize_placed(placed.eval(), builtin_plan("w4g64"))
    assert sum(r.applied for r in report.layers if ".experts." in r.name) == 4
    with torch.no_grad():
        assert torch.equal(quantized(input_ids=_ids()).logits, expected(input_ids=_ids()).logits)


def test_without_a_manifest_unchanged_experts_are_named():
    """assert_quantization_applied without a manifest compares every layer with the reference: experts a quantizer
    never reached are named (WARN), beside the attention it changed."""
    from qcheck.invariants import assert_quantization_applied

    model = _moe("mixtral")
    partial, _ = quantize(model, {"default": {"format": "int", "bits": 8},
                                  "override": [{"match": "*.experts.*", "format": "keep"}]})
    del partial.qcheck_report  # a model from elsewhere: no manifest says what was meant
    check = assert_quantization_applied(model, partial, None, input_ids=_ids())
    assert check.status.value == "WARN" and "model.layers.0.mlp.experts.gate_up_proj" in check.message
    assert "model.layers.0.mlp.experts.down_proj" in check.evidence["problems"]["unchanged"]


@pytest.mark.gpu
@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_quantized_experts_run_on_a_gpu_as_on_the_cpu(model_type, dtype):
    """On CUDA transformers runs experts through grouped matrix multiplies (`grouped_mm`), where a CPU runs them
    otherwise: a w4g64 variant, fp32 experts inside an fp32 or bf16 model, gives the CPU's logits there."""
    model = _moe(model_type, dtype)
    quantized, _ = quantize(model, builtin_plan("w4g64"))
    with torch.no_grad():
        cpu = quantized(input_ids=_ids()).logits.float()
        gpu = quantized.to("cuda")(input_ids=_ids().to("cuda")).logits.float().cpu()
    assert torch.isfinite(gpu).all()
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2  # TF32-free fp32 matmuls vs bf16's 8 significant bits
    assert (gpu - cpu).abs().max().item() <= tolerance * max(1.0, cpu.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize(("implementation", "dtype", "graph"), [
    ("grouped_mm", torch.bfloat16, True), ("grouped_mm", torch.float32, False), ("batched_mm", torch.float32, True)])
def test_a_moe_model_decodes_on_a_gpu_with_generates_tokens(implementation, dtype, graph):
    """On a GPU the static cache replays one CUDA graph per step where the experts forward can be captured (grouped_mm
    in bf16, batched_mm) and takes eager steps where it cannot (grouped_mm outside bf16 copies from the host; a
    w4g64 variant's experts are fp32): generate's greedy tokens either way."""
    from transformers import GenerationConfig

    from qcheck.measure.decode import decode_greedy

    torch.manual_seed(0)
    config = AutoConfig.for_model("mixtral", **{**COMMON, **MOE["mixtral"]})
    model = AutoModelForCausalLM.from_config(config, experts_implementation=implementation).to(dtype).eval().cuda()
    ids = _ids().to("cuda")
    generation = GenerationConfig(max_new_tokens=8, do_sample=False, num_beams=1, pad_token_id=2, eos_token_id=[2])
    variant = quantize(model, builtin_plan("w4g64"))[0]
    for subject, captured in ((model, graph), (variant, implementation == "batched_mm")):
        got = decode_greedy(subject, ids, torch.ones_like(ids), 8, [2], 2)
        assert got.method.startswith("static cache, one CUDA graph per step" if captured else
                                     "static cache, eager steps (not a CUDA graph: mixture-of-experts"), got.method
        expected = subject.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=generation)
        assert got.tokens.tolist() == expected[:, ids.shape[1]:].tolist()
