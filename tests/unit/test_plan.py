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
