"""Plans: TOML/dict schema, ordered overrides (first match wins), errors that name the field or glob."""
import pytest

from qcheck.errors import ConfigError
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.quant.plan import Plan
from qcheck.quant.spec import FixedSpec, IntSpec, KeepSpec


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config())


MIXED = """
name = "mixed"
[default]
format = "int"
bits = 4
group_size = 32

[[override]]
match = "model.layers.0.self_attn.*"
format = "fixed"
width = 8
frac_width = 4

[[override]]
match = "model.layers.*.self_attn.*"
format = "int"
bits = 8
"""


def test_first_matching_override_wins_and_is_named(tiny):
    plan = Plan.from_toml(MIXED)
    by_layer = {a.layer: a.rule for a in plan.resolve(tiny)}
    assert isinstance(by_layer["model.layers.0.self_attn.q_proj"].spec, FixedSpec)
    assert by_layer["model.layers.0.self_attn.q_proj"].label == "override[0] 'model.layers.0.self_attn.*'"
    assert by_layer["model.layers.1.self_attn.q_proj"].spec == IntSpec(8)
    assert by_layer["model.layers.1.mlp.up_proj"].spec == IntSpec(4, 32)
    assert isinstance(by_layer["lm_head"].spec, KeepSpec)


def test_glob_matching_nothing_is_an_error_naming_glob_and_nearest_layers(tiny):
    plan = Plan.from_dict({"default": {"format": "int", "bits": 4},
                           "override": [{"match": "model.layer.*.self_attn.*", "format": "int", "bits": 8}]})
    with pytest.raises(ConfigError) as err:
        plan.resolve(tiny)
    message = str(err.value)
    assert "model.layer.*.self_attn.*" in message and "matches no layer" in message
    assert "model.layers.0.self_attn" in message


def test_group_size_not_dividing_in_features_names_layer(tiny):
    plan = Plan.from_dict({"default": {"format": "int", "bits": 4, "group_size": 48}})
    with pytest.raises(ConfigError) as err:
        plan.resolve(tiny)
    assert "group_size 48" in str(err.value) and "model.layers.0" in str(err.value)


@pytest.mark.parametrize("data, field", [
    ({"default": {"format": "int", "bits": 4, "bogus": 1}}, "bogus"),
    ({"default": {"format": "int"}}, "bits"),
    ({"default": {"format": "int4"}}, "format"),
    ({"default": {"format": "int", "bits": 16}}, "bits"),
    ({"defualt": {"format": "int", "bits": 4}}, "defualt"),
    ({"override": []}, "default"),
    ({"default": {"format": "fixed", "width": 8, "frac_width": 4}, "override": [{"format": "keep"}]}, "match"),
    ({"default": {"format": "prune", "sparsity": 1.5}}, "sparsity"),
    ({"default": {"format": "keep"}, "dtype": "fp8"}, "dtype"),
])
def test_invalid_plans_raise_config_error_naming_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        Plan.from_dict(data)
    assert err.value.field == field, str(err.value)


def test_frac_width_at_or_above_width_is_kept_not_clamped():
    plan = Plan.from_dict({"default": {"format": "fixed", "width": 8, "frac_width": 10}})
    assert plan.default.spec == FixedSpec(8, 10)


def test_toml_round_trip_and_bad_toml(tmp_path):
    plan = Plan.from_toml(MIXED)
    again = Plan.from_dict(plan.to_dict())
    assert again.rules == plan.rules
    path = tmp_path / "bad.toml"
    path.write_text("[default\nformat = 'int'")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Plan.load(path)
    with pytest.raises(ConfigError, match="plan file not found"):
        Plan.load(tmp_path / "missing.toml")


def _tiny(model_type: str, **extra):
    """A random-init tiny model of another architecture (layer names are what matter here, not weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    common = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**common, **extra}))


def test_a_list_of_globs_claims_a_layer_when_any_glob_matches(tiny):
    plan = Plan.from_dict({"default": {"format": "int", "bits": 4, "group_size": 32},
                           "override": [{"match": ["*.nothing_here.*", "*.self_attn.o_proj"], "format": "int",
                                         "bits": 8}]})
    by_layer = {a.layer: a.rule for a in plan.resolve(tiny)}
    assert by_layer["model.layers.1.self_attn.o_proj"].spec == IntSpec(8)
    assert by_layer["model.layers.1.self_attn.q_proj"].spec == IntSpec(4, 32)
    assert by_layer["model.layers.1.self_attn.o_proj"].label == \
        "override[0] ['*.nothing_here.*', '*.self_attn.o_proj']"
    assert Plan.from_dict(plan.to_dict()).resolve(tiny) == plan.resolve(tiny)
    assert plan.to_dict()["override"][0]["match"] == ["*.nothing_here.*", "*.self_attn.o_proj"]


@pytest.mark.parametrize("match", [[], [""], ["*.mlp.*", 3], 7])
def test_a_bad_match_names_the_field(match):
    with pytest.raises(ConfigError) as err:
        Plan.from_dict({"default": {"format": "int", "bits": 4}, "override": [{"match": match, "format": "keep"}]})
    assert err.value.field == "match" and "list of globs" in str(err.value)


def test_a_list_matching_no_layer_is_an_error_naming_it(tiny):
    plan = Plan.from_dict({"default": {"format": "int", "bits": 4},
                           "override": [{"match": ["*.atn.*", "*.atention.*"], "format": "int", "bits": 8}]})
    with pytest.raises(ConfigError, match=r"\['\*\.atn\.\*', '\*\.atention\.\*'\] matches no layer"):
        plan.resolve(tiny)


def test_builtin_mixed_plan_claims_the_same_llama_layers_as_its_old_glob(tiny):
    from qcheck.variants import builtin_plan

    old = Plan.from_dict({"default": {"format": "int", "bits": 4, "group_size": 64},
                          "override": [{"match": "model.layers.*.self_attn.*", "format": "int", "bits": 8}]})
    new = Plan.load(builtin_plan("mixed"))
    assert [(a.layer, a.rule.spec) for a in new.resolve(tiny)] == [(a.layer, a.rule.spec) for a in old.resolve(tiny)]


@pytest.mark.parametrize(("model_type", "extra", "attention"), [
    ("opt", {"ffn_dim": 128, "word_embed_proj_dim": 64}, "model.decoder.layers.0.self_attn.q_proj"),
    ("gpt_neox", {"intermediate_size": 128}, "gpt_neox.layers.0.attention.query_key_value"),
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}, "transformer.h.0.self_attention.dense"),
    ("phi3", {"intermediate_size": 128, "num_key_value_heads": 2}, "model.layers.0.self_attn.qkv_proj"),
    ("gptj", {"n_embd": 64, "n_layer": 2, "n_head": 4, "rotary_dim": 8}, "transformer.h.0.attn.q_proj"),
])
def test_builtin_mixed_plan_finds_attention_in_other_architectures(model_type, extra, attention):
    """Found on random-init folders of other architectures: the built-in plan's Llama-only glob made `qcheck run`
    exit 2 on OPT, GPT-NeoX, Falcon and GPT-J before anything ran."""
    from qcheck.variants import builtin_plan

    by_layer = {a.layer: a.rule.spec for a in Plan.load(builtin_plan("mixed")).resolve(_tiny(model_type, **extra))}
    assert by_layer[attention] == IntSpec(8)
    mlp = [layer for layer, spec in by_layer.items() if "mlp" in layer or "dense_4h" in layer or "fc" in layer]
    assert mlp and all(by_layer[layer] == IntSpec(4, 64) for layer in mlp)


def test_a_model_without_linear_layers_is_refused_naming_where_its_weights_are():
    """GPT-2 computes its projections in transformers' Conv1D: no plan can address them, and a run would report
    every variant as never applied; the error says so before anything runs."""
    from qcheck.variants import builtin_plan

    model = _tiny("gpt2", n_embd=64, n_layer=2, n_head=4)
    with pytest.raises(ConfigError) as err:
        Plan.load(builtin_plan("int8")).resolve(model)
    message = str(err.value)
    assert "100.0% of the model's weight elements" in message and "outside nn.Linear" in message
    assert "transformers.pytorch_utils.Conv1D.weight" in message and "convert those layers to nn.Linear" in message
    assert "lm_head" not in message and err.value.field == "model"


def _without_layout_marks(model):
    """The model with its experts classes stripped of transformers' layout marks: experts qcheck cannot address."""
    for module in model.modules():
        if hasattr(module, "is_transposed"):
            del module.is_transposed
    return model


def test_fused_moe_experts_of_an_unknown_layout_are_refused_for_quantizing_plans_not_for_casts():
    """Experts held in 3-D parameters of a class whose layout qcheck does not know: int8 of such a Mixtral would
    have quantized its attention alone (~3% of Mixtral-8x7B) and reported the result as int8. Experts of the classes
    transformers marks are layers of their own (tests/unit/test_experts.py)."""
    from qcheck.quant.plan import MAX_UNADDRESSED_SHARE, output_embeddings, unaddressable_weights
    from qcheck.variants import builtin_plan

    marked = _tiny("mixtral", num_local_experts=4, num_experts_per_tok=2, intermediate_size=128,
                   num_key_value_heads=2)
    for name in ("int8", "w4g64", "mixed", "bnb-nf4"):
        assert any(a.kind == "experts" for a in Plan.load(builtin_plan(name)).resolve(marked))
    model = _without_layout_marks(marked)
    total, outside = unaddressable_weights(model, output_embeddings(model))
    share = sum(outside.values()) / total
    assert share > MAX_UNADDRESSED_SHARE
    assert any(k.endswith("MixtralExperts.gate_up_proj") for k in outside)
    for name in ("int8", "w4g64", "mixed", "bnb-nf4"):
        with pytest.raises(ConfigError) as err:
            Plan.load(builtin_plan(name)).resolve(model)
        assert f"{share:.1%} of the model's weight elements" in str(err.value)
        assert "fused mixture-of-experts tensors" in str(err.value) and "--variants fp16,bf16" in str(err.value)
    for cast in ("fp16", "bf16"):
        assert Plan.load(builtin_plan(cast)).resolve(model)


def test_a_dense_model_has_no_weight_outside_linear_layers(tiny):
    from qcheck.quant.plan import output_embeddings, unaddressable_weights

    total, outside = unaddressable_weights(tiny, output_embeddings(tiny))
    assert total > 0 and outside == {}


@pytest.mark.parametrize("name", ["bnb-int8", "bnb-nf4"])
def test_a_bitsandbytes_variant_resolves_its_own_plan(tiny, name):
    """plan_followed resolves the plan on the quantized variant: bitsandbytes' packed integer weights inside its
    nn.Linear subclasses are addressed storage, not weights outside nn.Linear (the first version of the refusal
    ERRORed both bitsandbytes variants' plan checks in the default run)."""
    pytest.importorskip("bitsandbytes")
    from qcheck.quant.apply import quantize
    from qcheck.quant.plan import output_embeddings, unaddressable_weights
    from qcheck.variants import builtin_plan

    quantized, _ = quantize(tiny, builtin_plan(name))
    total, outside = unaddressable_weights(quantized, output_embeddings(quantized))
    assert total > 0 and outside == {}
    assert len(Plan.load(builtin_plan(name)).resolve(quantized)) == len(Plan.load(builtin_plan(name)).resolve(tiny))


def test_the_manifest_states_the_weights_its_rules_could_not_reach(tiny):
    """A cast of a MoE model runs (the cast changes the experts too); its manifest states the share of weight
    elements that sit outside the layers a rule can reach: a MoE model's router, all of the experts where their
    layout is unknown. A dense model's is 0."""
    from qcheck.quant.apply import quantize
    from qcheck.variants import builtin_plan

    moe = _tiny("mixtral", num_local_experts=4, num_experts_per_tok=2, intermediate_size=128, num_key_value_heads=2)
    _, addressed = quantize(moe, builtin_plan("fp16"))
    assert 0.0 < addressed.summary()["outside_linear_share"] < 0.01  # the router alone
    _, report = quantize(_without_layout_marks(moe), builtin_plan("fp16"))
    share = report.summary()["outside_linear_share"]
    assert 0.8 < share < 1.0
    assert any(k.endswith("MixtralExperts.down_proj") for k in report.to_dict()["outside_linear"])
    _, dense = quantize(tiny, builtin_plan("int8"))
    assert dense.summary()["outside_linear_share"] == 0.0 and dense.to_dict()["outside_linear"] == {}
