"""Config validation fuzzing (issue 3): any parameters, plan dict or TOML text either builds a valid spec / plan that
keeps exactly what was asked for, or raises ConfigError naming the field. Never another exception, never a silent
"fix" such as seed 003's `frac = width // 2 if frac >= width`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from qcheck.errors import ConfigError
from qcheck.formats import check_group_size, fixed_point, fixed_point_range, integer, minifloat_format
from qcheck.quant.plan import Plan
from qcheck.quant.spec import FixedSpec, IntSpec, MinifloatSpec, spec_from_dict, spec_to_dict
from qcheck.strategies import junk_plan_dicts, load_profile, plan_tables, plans, to_toml, toml_texts

load_profile("ci")

JUNK = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                 st.integers(-(2**70), 2**70), st.just(8.0), st.lists(st.integers(), max_size=2))
SMALL = st.integers(-300, 300)


def expect_valid_or_config_error(build: Callable[[], Any], fields_allowed: set[str] | None = None) -> Any:
    """Run `build`; return its result, or None when it raised a ConfigError whose message names its field."""
    try:
        return build()
    except ConfigError as exc:
        assert exc.field is not None, f"ConfigError without a field: {exc}"
        msg = str(exc).lower()
        assert exc.field.lower() in msg or repr(exc.field).lower() in msg, f"field {exc.field!r} not named in: {exc}"
        if fields_allowed is not None:
            assert exc.field in fields_allowed, f"unexpected field {exc.field!r}: {exc}"
        return None


def no_nan_fields(spec: Any) -> None:
    """A spec accepted as valid carries no NaN parameter."""
    for f in fields(spec):
        value = getattr(spec, f.name)
        assert not (isinstance(value, float) and math.isnan(value)), f"{spec} accepted NaN for {f.name}"


@given(width=SMALL | JUNK, frac_width=SMALL | JUNK, signed=st.booleans() | JUNK)
@example(width=8, frac_width=8, signed=True)
@example(width=8, frac_width=10, signed=True)
@example(width=16, frac_width=-3, signed=False)
def test_any_width_and_frac_width(width: Any, frac_width: Any, signed: Any) -> None:
    """FixedSpec keeps (width, frac_width) exactly, its range follows the formula, or ConfigError names the field."""
    spec = expect_valid_or_config_error(lambda: FixedSpec(width, frac_width, signed), {"width", "frac_width", "signed"})
    via_dict = expect_valid_or_config_error(
        lambda: spec_from_dict({"format": "fixed", "width": width, "frac_width": frac_width, "signed": signed}))
    assert (spec is None) == (via_dict is None)
    if spec is None:
        with pytest.raises(ConfigError):
            fixed_point(torch.zeros(2), width, frac_width, signed)
        return
    assert (spec.width, spec.frac_width, spec.signed) == (width, frac_width, signed) and spec == via_dict
    r = fixed_point_range(width, frac_width, signed)
    if signed and width <= 53:
        assert (r.min, r.max) == (-(2.0 ** (width - frac_width - 1)), 2.0 ** (width - frac_width - 1) - 2.0**-frac_width)


@given(bits=st.integers(-3, 12) | JUNK, group_size=st.none() | st.integers(-4, 300) | JUNK,
       symmetric=st.booleans() | JUNK, per_tensor=st.booleans() | JUNK, in_features=st.integers(1, 600))
@example(bits=4, group_size=128, symmetric=True, per_tensor=False, in_features=576)
def test_any_bits_and_group_size(bits: Any, group_size: Any, symmetric: Any, per_tensor: Any,
                                 in_features: int) -> None:
    """IntSpec and integer() accept the same configs; a group size must divide the input dimension, said so."""
    spec = expect_valid_or_config_error(lambda: IntSpec(bits, group_size, symmetric, per_tensor),
                                        {"bits", "group_size", "symmetric", "per_tensor"})
    if spec is None:
        return
    assert (spec.bits, spec.group_size, spec.symmetric, spec.per_tensor) == (bits, group_size, symmetric, per_tensor)
    x = torch.randn(2, in_features)
    fits = expect_valid_or_config_error(lambda: check_group_size(group_size, in_features) or True, {"group_size"})
    assert bool(fits) == (group_size is None or in_features % group_size == 0)
    if fits:
        out = integer(x, bits, group_size, symmetric, per_tensor=per_tensor)
        assert out.shape == x.shape
    else:
        with pytest.raises(ConfigError, match=str(in_features)):
            integer(x, bits, group_size, symmetric, per_tensor=per_tensor)


@given(exp_bits=st.integers(-1, 10) | JUNK, man_bits=st.integers(-1, 12) | JUNK,
       bias=st.none() | st.integers(-70, 130) | JUNK, special=st.sampled_from(["ieee", "fn", "none", "IEEE", ""]) | JUNK)
def test_any_minifloat_params(exp_bits: Any, man_bits: Any, bias: Any, special: Any) -> None:
    """MinifloatSpec keeps its parameters or ConfigError names the field; the maximum is finite and positive."""
    spec = expect_valid_or_config_error(lambda: MinifloatSpec(exp_bits, man_bits, bias, special),
                                        {"exp_bits", "man_bits", "bias", "special"})
    if spec is None:
        return
    assert (spec.exp_bits, spec.man_bits, spec.bias, spec.special) == (exp_bits, man_bits, bias, special)
    fmt = minifloat_format(exp_bits, man_bits, bias, special)
    assert 0 < fmt.max < math.inf and fmt.min_subnormal > 0


@given(table=st.one_of(plan_tables(64), junk_plan_dicts().map(lambda d: d.get("default") if isinstance(d, dict) else d)))
def test_any_plan_table_builds_the_spec_it_says(table: Any) -> None:
    """spec_from_dict: every key given ends up in the spec unchanged (no defaulting over, no clamping)."""
    spec = expect_valid_or_config_error(lambda: spec_from_dict(table))
    if spec is None:
        return
    no_nan_fields(spec)
    built = spec_to_dict(spec)
    if table["format"] in ("fp8-e4m3", "fp8-e5m2"):
        assert isinstance(spec, MinifloatSpec) and spec.bits == 8
        return
    for key, value in table.items():
        assert built[key] == value and type(built[key]) is type(value), f"{key}: asked {value!r}, got {built[key]!r}"


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    """A tiny random Llama (hidden 64, 2 layers): cheap layer names for plan strategies."""
    from qcheck.inputs.models import random_init_like, tiny_llama_config

    return random_init_like(tiny_llama_config())


@given(data=st.data())
def test_valid_plans_resolve_and_round_trip(tiny_model: torch.nn.Module, data: st.DataObject) -> None:
    """plans(model) dicts build, resolve on the model, keep every rule's spec, and round-trip via to_dict / TOML."""
    plan_dict = data.draw(plans(tiny_model))
    plan = Plan.from_dict(plan_dict)
    assignments = plan.resolve(tiny_model)
    assert len(assignments) == 15
    assert plan.default.spec == spec_from_dict(plan_dict["default"], allow_extra=("activations",))
    for rule, table in zip(plan.overrides, plan_dict.get("override", [])):
        assert rule.match == table["match"]
        assert rule.spec == spec_from_dict(table, allow_extra=("match", "activations"))
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_toml(to_toml(plan_dict)) == plan


@pytest.fixture(scope="module")
def tiny_moe() -> torch.nn.Module:
    """A tiny random Mixtral: its fused experts weights are plan layers too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mixtral", vocab_size=512, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  num_local_experts=4, num_experts_per_tok=2)
    return AutoModelForCausalLM.from_config(config)


@given(data=st.data())
def test_valid_plans_of_a_moe_model_resolve(tiny_moe: torch.nn.Module, data: st.DataObject) -> None:
    """plans(model) on a MoE model draws no rule its experts weights refuse (activations, a cast of their own)."""
    plan = Plan.from_dict(data.draw(plans(tiny_moe)))
    assignments = plan.resolve(tiny_moe)
    assert sum(a.kind == "experts" for a in assignments) == 4


@given(data=st.data())
def test_junk_plan_dicts_are_valid_or_config_error(tiny_model: torch.nn.Module, data: st.DataObject) -> None:
    """Any dict (or non-dict) given as a plan: a Plan that resolves or a ConfigError naming the field."""
    junk = data.draw(junk_plan_dicts(), label="plan")
    plan = expect_valid_or_config_error(lambda: Plan.from_dict(junk))
    if plan is not None:
        expect_valid_or_config_error(lambda: plan.resolve(tiny_model))
        for rule in plan.rules:
            no_nan_fields(rule.spec)


@given(data=st.data())
def test_toml_texts_are_valid_or_config_error(tiny_model: torch.nn.Module, data: st.DataObject) -> None:
    """Any TOML text (valid plans, damaged plans, junk): a Plan or a ConfigError naming the field (toml, key...)."""
    text = data.draw(toml_texts(tiny_model), label="toml")
    plan = expect_valid_or_config_error(lambda: Plan.from_toml(text))
    if plan is not None:
        expect_valid_or_config_error(lambda: plan.resolve(tiny_model))


@pytest.mark.parametrize("width", [2, 4, 8, 12, 16])
def test_seed003_clamp_is_not_applied(width: int) -> None:
    """frac_width >= width is a valid, narrow-range format: qcheck keeps it (seed 003 clamped it to width // 2)."""
    for frac in (width, width + 1, 2 * width):
        plan = Plan.from_dict({"default": {"format": "fixed", "width": width, "frac_width": frac}})
        assert plan.default.spec.frac_width == frac != width // 2
        r = fixed_point_range(width, frac)
        assert r.max < 1.0 and r.step == 2.0**-frac


@pytest.mark.parametrize("plan, field", [
    ({"default": {"format": "int", "bits": 4}, "dtype": ["fp16"]}, "dtype"),
    ({"default": {"format": ["int"], "bits": 4}}, "format"),
    ({"default": {"format": "int", "bits": 4}, "override": [{"match": "nothing.*", "format": "keep"}]}, None),
])
def test_unhashable_or_unmatched_values_raise_config_error(tiny_model: torch.nn.Module, plan: dict, field: Any) -> None:
    """Lists where a string belongs are ConfigErrors naming the key, not TypeErrors; a dead glob names `match`."""
    with pytest.raises(ConfigError) as err:
        Plan.from_dict(plan).resolve(tiny_model)
    assert err.value.field == (field or "match") and (field or "match") in str(err.value)
