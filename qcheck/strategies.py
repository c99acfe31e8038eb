"""Hypothesis strategies for qcheck's number formats, specs and plans, and differential testing of quantizers.

Opt-in: importing this module imports hypothesis. Use the strategies in your own property tests, e.g.

    from hypothesis import given
    from qcheck.strategies import fixed_point_specs, tensors_for

or check your own quantizer against qcheck's reference formats with `assert_same_as_reference` (docs/fuzzing.md).
Profiles `ci` (deterministic, bounded) and `thorough` (10,000 examples) come from `register_profiles()`.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch import nn

from qcheck.formats import PRESETS, fixed_point_range, minifloat_format
from qcheck.formats.minifloat import SPECIALS, MinifloatFormat
from qcheck.quant.experts import ExpertMatrix
from qcheck.quant.plan import TOP_LEVEL_KEYS, target_layers
from qcheck.quant.spec import FORMATS, CastSpec, FixedSpec, IntSpec, MinifloatSpec

__all__ = [
    "CI_EXAMPLES", "DTYPES", "THOROUGH_EXAMPLES", "ReferenceSpec", "assert_same_as_reference", "check_same",
    "fixed_point_specs", "format_cases", "holds", "integer_specs", "junk_plan_dicts", "load_profile", "minifloat_specs",
    "plan_tables", "plans", "register_profiles", "spec_max", "tensors_for", "to_toml", "toml_texts",
]

ReferenceSpec = FixedSpec | IntSpec | MinifloatSpec | CastSpec
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CI_EXAMPLES = 60
THOROUGH_EXAMPLES = 10_000
EXTREME_FRAC_WIDTHS = (-256, -200, -130, -100, 100, 127, 130, 150, 200, 256)
_SLOW_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


# ---------------------------------------------------------------------------------------------- profiles


def register_profiles() -> None:
    """Register the hypothesis profiles `ci` (derandomized, 60 examples) and `thorough` (10,000 examples, or
    $QCHECK_THOROUGH_EXAMPLES for a shorter or longer nightly run)."""
    common: dict[str, Any] = {"deadline": None, "print_blob": True, "suppress_health_check": _SLOW_CHECKS}
    thorough = int(os.environ.get("QCHECK_THOROUGH_EXAMPLES", THOROUGH_EXAMPLES))
    settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, database=None, **common)
    settings.register_profile("thorough", max_examples=thorough, **common)


def load_profile(default: str = "ci") -> str:
    """Load $QCHECK_HYPOTHESIS_PROFILE, else `default` unless a profile was chosen already (--hypothesis-profile)."""
    register_profiles()
    name = os.environ.get("QCHECK_HYPOTHESIS_PROFILE")
    if name:
        settings.load_profile(name)
    elif settings.get_current_profile_name() == "default":
        settings.load_profile(default)
    return settings.get_current_profile_name()


# ---------------------------------------------------------------------------------------------- specs


def _fixed_k_max(width: int, signed: bool) -> int:
    return 2 ** (width - 1) - 1 if signed else 2**width - 1


def _min_frac_for(width: int, signed: bool, max_value: float) -> int:
    """The smallest frac_width whose range maximum k_max * 2^-frac_width is <= max_value."""
    k_max = _fixed_k_max(width, signed)
    frac = math.ceil(math.log2(k_max / max_value))
    while k_max * 2.0 ** (-(frac - 1)) <= max_value:
        frac -= 1
    while k_max * 2.0 ** (-frac) > max_value:
        frac += 1
    return frac


@functools.lru_cache(maxsize=65536)
def holds(dtype: str | torch.dtype, value: float) -> bool:
    """Whether `dtype` represents `value` exactly."""
    return torch.tensor(value, dtype=torch.float64).to(_dtype(dtype)).double().item() == value


def _precision(dtype: torch.dtype) -> int:
    """Significant bits of a float dtype, the implicit leading bit included (fp32 24, fp16 11, bf16 8)."""
    return round(-math.log2(float(torch.finfo(dtype).eps))) + 1


def fixed_point_specs(*, min_width: int = 2, max_width: int = 24, signed: bool | None = None,
                      frac_widths: SearchStrategy[int] | None = None,
                      dtype: str | torch.dtype | None = None) -> SearchStrategy[FixedSpec]:
    """Valid FixedSpec: width in [min_width, max_width], frac_width anywhere in [-8, width + 8] (frac >= width and
    negative frac included, as the format allows) plus extremes up to +-256. With `dtype`, only formats whose range
    ends `dtype` holds exactly (so every result fits the input's dtype)."""
    return _fixed_point_specs(min_width, max_width, signed, frac_widths, None if dtype is None else _dtype(dtype))


def _fixed_fits(width: int, frac: int, sgn: bool, dt: torch.dtype | None) -> bool:
    """Whether (width, frac, sgn) is valid and `dt` (when given) holds both ends of its range exactly."""
    if not -256 <= frac <= 256:
        return False
    r = fixed_point_range(width, frac, sgn)
    return dt is None or (holds(dt, r.max) and holds(dt, r.min))


@functools.lru_cache(maxsize=4096)
def _frac_candidates(width: int, sgn: bool, dt: torch.dtype | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(usual, extreme) frac_widths of a width whose range ends `dt` holds (all of them without a dtype)."""

    def fits(frac: int) -> bool:
        return _fixed_fits(width, frac, sgn, dt)

    low = -256 if dt is None else max(-256, _min_frac_for(width, sgn, float(torch.finfo(dt).max)))
    lo = max(low, -8)
    usual = tuple(f for f in range(lo, max(width + 8, lo + 8) + 1) if fits(f))
    return usual, tuple(f for f in EXTREME_FRAC_WIDTHS if f >= low and fits(f))


@functools.lru_cache(maxsize=256)
def _fixed_point_specs(min_width: int, max_width: int, signed: bool | None, frac_widths: SearchStrategy[int] | None,
                       dt: torch.dtype | None) -> SearchStrategy[FixedSpec]:
    top_width = max_width if dt is None else max(min_width, min(max_width, _precision(dt)))

    @st.composite
    def build(draw: st.DrawFn) -> FixedSpec:
        width = draw(st.integers(min_width, top_width), label="width")
        sgn = draw(st.booleans(), label="signed") if signed is None else signed
        usual, extremes = _frac_candidates(width, sgn, dt)
        if frac_widths is not None:
            frac = draw(frac_widths, label="frac_width")
            if not _fixed_fits(width, frac, sgn, dt):
                reject()
        elif extremes and draw(st.integers(0, 3), label="extreme frac_width") == 3:
            frac = extremes[draw(st.integers(0, len(extremes) - 1))]
        else:
            frac = usual[draw(st.integers(0, len(usual) - 1), label="frac_width index")]
        return FixedSpec(width, frac, sgn)

    return build()


@functools.lru_cache(maxsize=256)
def integer_specs(in_features: int | None = None, *, bits: SearchStrategy[int] | None = None) -> SearchStrategy[IntSpec]:
    """Valid IntSpec: bits 2..8, symmetric or not, per channel, per tensor or grouped (dividing `in_features`)."""
    if in_features is not None:
        sizes = [d for d in range(1, in_features + 1) if in_features % d == 0]
    else:
        sizes = [1, 2, 3, 4, 8, 16, 32, 64]

    @st.composite
    def build(draw: st.DrawFn) -> IntSpec:
        b = draw(bits if bits is not None else st.integers(2, 8), label="bits")
        symmetric = draw(st.booleans(), label="symmetric")
        granularity = draw(st.sampled_from(["channel", "group", "tensor"]), label="granularity")
        if granularity == "group":
            return IntSpec(b, draw(st.sampled_from(sizes), label="group_size"), symmetric)
        return IntSpec(b, None, symmetric, per_tensor=granularity == "tensor")

    return build()


def _special_allowed(exp_bits: int, man_bits: int, special: str) -> bool:
    return not ((special == "fn" and man_bits == 0) or (special == "ieee" and exp_bits == 1))


def minifloat_specs(*, max_exp_bits: int = 8, max_man_bits: int = 10, specials: Sequence[str] = SPECIALS,
                    dtype: str | torch.dtype | None = None) -> SearchStrategy[MinifloatSpec]:
    """Valid MinifloatSpec (default or shifted bias, every `special` encoding) and the fp8 presets. With `dtype`,
    only formats whose maximum `dtype` holds exactly (so every result fits the input's dtype)."""
    return _minifloat_specs(max_exp_bits, max_man_bits, tuple(specials), None if dtype is None else _dtype(dtype))


def _minifloat_fits(fmt: MinifloatFormat, dt: torch.dtype | None) -> bool:
    return dt is None or (fmt.max <= float(torch.finfo(dt).max) and holds(dt, fmt.max))


@functools.lru_cache(maxsize=4096)
def _fitting_biases(exp_bits: int, man_bits: int, special: str, dt: torch.dtype | None) -> tuple[int, ...]:
    """The biases (-64..127) whose maximum `dt` holds exactly (too small a maximum underflows, too large overflows)."""
    return tuple(b for b in range(-64, 128) if _minifloat_fits(MinifloatFormat(exp_bits, man_bits, b, special), dt))


@functools.lru_cache(maxsize=256)
def _minifloat_specs(max_exp_bits: int, max_man_bits: int, specials: tuple[str, ...],
                     dt: torch.dtype | None) -> SearchStrategy[MinifloatSpec]:
    if dt is not None:
        max_man_bits = min(max_man_bits, _precision(dt) - 1)

    def fits(fmt: MinifloatFormat) -> bool:
        return _minifloat_fits(fmt, dt)

    presets = [MinifloatSpec(f.exp_bits, f.man_bits, f.bias, f.special) for f in PRESETS.values()
               if f.special in specials and fits(f)]

    @st.composite
    def build(draw: st.DrawFn) -> MinifloatSpec:
        exp_bits = draw(st.integers(1, max_exp_bits), label="exp_bits")
        man_bits = draw(st.integers(0, max_man_bits), label="man_bits")
        allowed = [s for s in specials if _special_allowed(exp_bits, man_bits, s)]
        if not allowed:
            man_bits = max(man_bits, 1)
            exp_bits = max(exp_bits, 2)
            allowed = [s for s in specials if _special_allowed(exp_bits, man_bits, s)]
        special = draw(st.sampled_from(allowed), label="special")
        default = minifloat_format(exp_bits, man_bits, None, special)
        biases = _fitting_biases(exp_bits, man_bits, special, dt)
        if not biases:
            reject()
        near = [b for b in biases if abs(b - default.bias) <= 8] or list(biases)
        pool = near if draw(st.booleans(), label="near the default bias") else biases
        bias = pool[draw(st.integers(0, len(pool) - 1), label="bias index")]
        if fits(default) and draw(st.booleans(), label="default bias"):
            bias = None
        return MinifloatSpec(exp_bits, man_bits, bias, special)

    return st.one_of(build(), st.sampled_from(presets)) if presets else build()


def spec_max(spec: ReferenceSpec) -> float:
    """The largest finite value a fixed-point or minifloat spec can represent (inf for the others)."""
    if isinstance(spec, FixedSpec):
        return fixed_point_range(spec.width, spec.frac_width, spec.signed).max
    if isinstance(spec, MinifloatSpec):
        return minifloat_format(spec.exp_bits, spec.man_bits, spec.bias, spec.special).max
    return math.inf


# ---------------------------------------------------------------------------------------------- tensors


def _dtype(d: str | torch.dtype) -> torch.dtype:
    return DTYPES[d] if isinstance(d, str) else d


def _subnormals(dtype: torch.dtype) -> list[float]:
    info = torch.finfo(dtype)
    tiny = float(info.tiny)
    smallest = tiny * float(info.eps)
    return [smallest, 2 * smallest, 3 * smallest, tiny / 2, tiny - smallest, tiny]


def _scaled(k: int, offset: float, step: float) -> float:
    return (k + offset) * step


def _normal(e: int, j: int, h: float, m: int, negative: bool) -> float:
    v = (1 + (j + h) / 2**m) * 2.0**e
    return -v if negative else v


@functools.lru_cache(maxsize=4096)
def _fixed_values(spec: FixedSpec) -> SearchStrategy[float]:
    r = fixed_point_range(spec.width, spec.frac_width, spec.signed)
    step = r.step
    k = st.integers(r.k_min, r.k_max)
    offsets = st.sampled_from([0.0, 0.5, -0.5, 0.25, -0.25, 0.75])
    near = st.builds(_scaled, k, offsets, st.just(step))
    edges = st.sampled_from([r.max, r.min, r.max + step / 2, r.min - step / 2, r.max + step, r.min - step,
                             2 * r.max + 1, 2 * r.min - 1, step / 2, -step / 2, 1.5 * step, 2.5 * step])
    inside = st.floats(r.min - 2 * step, r.max + 2 * step, allow_nan=False, allow_infinity=False)
    return st.one_of(near, edges, inside)


@functools.lru_cache(maxsize=4096)
def _minifloat_values(spec: MinifloatSpec) -> SearchStrategy[float]:
    fmt = minifloat_format(spec.exp_bits, spec.man_bits, spec.bias, spec.special)
    m = fmt.man_bits
    exponent = st.integers(fmt.min_exponent, fmt.max_exponent)
    mantissa = st.integers(0, 2**m - 1)
    half_steps = st.sampled_from([0.0, 0.5, 0.25, 0.75])
    normal = st.builds(_normal, exponent, mantissa, half_steps, st.just(m), st.booleans())
    subnormal = st.builds(_scaled, st.integers(-(2**m), 2**m), half_steps, st.just(fmt.min_subnormal))
    signed = st.one_of(normal, subnormal)
    top_step = 2.0 ** (fmt.max_exponent - m)
    edges = st.sampled_from([fmt.max, -fmt.max, fmt.max + top_step / 2, -(fmt.max + top_step / 2), 2 * fmt.max,
                             fmt.min_subnormal, fmt.min_subnormal / 2, -fmt.min_subnormal / 2, 0.75 * fmt.min_subnormal])
    return st.one_of(signed, edges)


@functools.lru_cache(maxsize=16)
def _cast_values(dtype: torch.dtype) -> SearchStrategy[float]:
    info = torch.finfo(dtype)
    ties = st.builds(_scaled, st.just(1.0), st.floats(-float(info.max) / 2, float(info.max) / 2, allow_nan=False),
                     st.just(1 + float(info.eps) / 2))
    return st.one_of(st.floats(-float(info.max), float(info.max), allow_nan=False), ties)


@functools.lru_cache(maxsize=16)
def _generic_values(dtypes: tuple[torch.dtype, ...]) -> SearchStrategy[float]:
    subs = [v for d in dtypes for v in _subnormals(d)]
    return st.one_of(
        st.floats(-10, 10, allow_nan=False),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, 448.0, 464.0, 480.0, 57344.0, 61440.0, 1e30]
                        + subs + [-v for v in subs]),
    )


def _specials(allow_nan: bool, allow_infinity: bool) -> list[float]:
    return ([math.nan] if allow_nan else []) + ([math.inf, -math.inf] if allow_infinity else [])


def _to_tensor(values: list[float], shape: tuple[int, ...], dtype: torch.dtype, allow_infinity: bool,
               device: str | torch.device) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float64).reshape(shape)
    if not allow_infinity:
        big = float(torch.finfo(dtype).max)
        t = torch.where(torch.isinf(t), t, t.clamp(-big, big))
        t = torch.where(torch.isinf(t), t.sign() * big, t)
    return t.to(dtype).to(device)


def tensors_for(spec: ReferenceSpec, *, dtypes: Sequence[str | torch.dtype] = ("fp32", "fp16", "bf16"),
                allow_nan: bool = False, allow_infinity: bool = False, max_elements: int = 48,
                device: str | torch.device = "cpu") -> SearchStrategy[torch.Tensor]:
    """Tensors to quantize with `spec`: grid points, ties, values beyond the range, subnormals, zeros, huge values
    (and NaN / +-inf when allowed), in one of `dtypes`, 1-D or 2-D, empty included; int specs get whole groups."""
    return _tensors_for(spec, tuple(_dtype(d) for d in dtypes), allow_nan, allow_infinity, max_elements, str(device))


@functools.lru_cache(maxsize=4096)
def _tensors_for(spec: ReferenceSpec, dts: tuple[torch.dtype, ...], allow_nan: bool, allow_infinity: bool,
                 max_elements: int, device: str) -> SearchStrategy[torch.Tensor]:
    extra = _specials(allow_nan, allow_infinity)

    @st.composite
    def build(draw: st.DrawFn) -> torch.Tensor:
        dtype = draw(st.sampled_from(dts), label="dtype")
        generic = _generic_values((dtype,))
        if isinstance(spec, IntSpec):
            return _int_tensor(draw, spec, dtype, extra, allow_infinity, max_elements, device)
        if isinstance(spec, FixedSpec):
            own = _fixed_values(spec)
        elif isinstance(spec, MinifloatSpec):
            own = _minifloat_values(spec)
        else:
            own = _cast_values(torch.float16 if spec.format == "fp16" else torch.bfloat16)
        element = st.one_of(own, own, generic, st.sampled_from(extra)) if extra else st.one_of(own, own, generic)
        if draw(st.booleans(), label="2-D"):
            rows, cols = draw(st.integers(0, 6), label="rows"), draw(st.integers(0, 8), label="cols")
            shape: tuple[int, ...] = (rows, cols)
        else:
            shape = (draw(st.integers(0, max_elements), label="n"),)
        values = draw(st.lists(element, min_size=math.prod(shape), max_size=math.prod(shape)), label="values")
        return _to_tensor(values, shape, dtype, allow_infinity, device)

    return build()


_INT_OFFSETS = st.sampled_from([0.0, 0.5, 0.25])


def _int_tensor(draw: st.DrawFn, spec: IntSpec, dtype: torch.dtype, extra: list[float], allow_infinity: bool,
                max_elements: int, device: str | torch.device) -> torch.Tensor:
    """A 2-D tensor whose groups each have a scale: values at (k + tie) * scale, the group maximum, zeros."""
    group = spec.group_size or draw(st.integers(1, 12), label="cols")
    cols = group * draw(st.integers(1, max(1, max_elements // (4 * group))), label="groups per row")
    rows = draw(st.integers(0, 4), label="rows")
    qmax = 2 ** (spec.bits - 1) - 1 if spec.symmetric else 2**spec.bits - 1
    generic = _generic_values((dtype,))
    values: list[float] = []
    extreme_scales = [float(torch.finfo(dtype).max) / qmax, float(torch.finfo(dtype).tiny) * 4]
    for _ in range(rows * cols // group):
        scale = draw(st.floats(1.0, 2.0) | st.just(1.0), label="scale") * 2.0 ** draw(st.integers(-20, 20))
        scale = draw(st.just(scale) | st.sampled_from(extreme_scales), label="scale")
        on_grid = st.builds(_scaled, st.integers(-qmax, qmax), _INT_OFFSETS, st.just(scale))
        element = st.one_of(on_grid, on_grid, generic, st.just(0.0), *([st.sampled_from(extra)] if extra else []))
        values += draw(st.lists(element, min_size=group, max_size=group), label="group")
    return _to_tensor(values, (rows, cols), dtype, allow_infinity, device)


@st.composite
def format_cases(draw: st.DrawFn, kind: str, *, dtypes: Sequence[str] = ("fp32", "fp16", "bf16"),
                 allow_nan: bool = False, allow_infinity: bool = False,
                 max_elements: int = 16) -> tuple[ReferenceSpec, torch.Tensor]:
    """(spec, tensor) for kind 'fixed' | 'int' | 'minifloat'; the tensor's dtype holds every value of the spec."""
    name = draw(st.sampled_from(list(dtypes)), label="dtype")
    if kind == "fixed":
        spec: ReferenceSpec = draw(fixed_point_specs(dtype=name), label="spec")
    elif kind == "minifloat":
        spec = draw(minifloat_specs(dtype=name), label="spec")
    elif kind == "int":
        spec = draw(integer_specs(), label="spec")
    else:
        raise ValueError(f"kind must be 'fixed', 'int' or 'minifloat', got {kind!r}")
    x = draw(tensors_for(spec, dtypes=(name,), allow_nan=allow_nan, allow_infinity=allow_infinity,
                         max_elements=max_elements), label="x")
    return spec, x


# ---------------------------------------------------------------------------------------------- plans


def _table(spec: Any) -> dict[str, Any]:
    """The plan table of a spec, without None values (TOML has no null)."""
    from qcheck.quant.spec import spec_to_dict

    return {k: v for k, v in spec_to_dict(spec).items() if v is not None}


def plan_tables(in_features: int | None = None) -> SearchStrategy[dict[str, Any]]:
    """Valid plan tables (the keys of one [default] / [[override]] entry) for every plan format."""
    return st.one_of(
        integer_specs(in_features).map(_table),
        fixed_point_specs(max_width=32).map(_table),
        minifloat_specs().map(_table),
        st.sampled_from([{"format": "fp16"}, {"format": "bf16"}, {"format": "keep"}, {"format": "fp8-e4m3"},
                         {"format": "fp8-e5m2"}]),
        st.builds(lambda s, m, seed: {"format": "prune", "sparsity": s, "method": m, "seed": seed},
                  st.floats(0.0, 0.99), st.sampled_from(["l1", "random"]), st.integers(0, 2**31)),
    )


def _globs_for(name: str) -> list[str]:
    parts = name.split(".")
    out = [name, "*", "*" + parts[-1]]
    if len(parts) > 1:
        out += ["*." + parts[-1], name.rsplit(".", 1)[0] + ".*"]
    out += [".".join(p if i != j else "*" for j, p in enumerate(parts)) for i in range(len(parts))]
    out += [re.sub(r"\.\d+\.", ".*.", name)]
    return out


def plans(model: nn.Module, *, max_overrides: int = 3) -> SearchStrategy[dict[str, Any]]:
    """Valid plan dicts for `model`: a [default] and overrides whose globs match its layer names."""
    layers = target_layers(model)
    if not layers:
        raise ValueError("plans(model): the model has no nn.Linear layer a plan could address")
    names = [n for n, _ in layers]
    in_features = math.gcd(*[int(getattr(m, "in_features", 1)) for _, m in layers])
    tables = plan_tables(in_features)
    # fused mixture-of-experts weights take no activation quantization and no cast of their own (Plan.resolve refuses
    # both), and any glob may claim them
    experts = any(isinstance(m, ExpertMatrix) for _, m in layers)
    if experts:
        tables = tables.filter(lambda t: t["format"] not in ("fp16", "bf16"))
    activations = st.sampled_from([{"format": "int", "bits": 8, "per_tensor": True}, {"format": "fp8-e4m3"},
                                   {"format": "fixed", "width": 8, "frac_width": 4}])

    @st.composite
    def rule(draw: st.DrawFn, glob: str | None) -> dict[str, Any]:
        table = dict(draw(tables))
        if glob is not None:
            table["match"] = glob
        if not experts and table["format"] in ("int", "fixed", "minifloat") and draw(st.booleans()):
            table["activations"] = draw(activations)
        return table

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        plan: dict[str, Any] = {"default": draw(rule(None), label="default")}
        n = draw(st.integers(0, max_overrides), label="overrides")
        globs = [draw(st.sampled_from(_globs_for(draw(st.sampled_from(names)))), label="glob") for _ in range(n)]
        if globs:
            plan["override"] = [draw(rule(g), label="override") for g in globs]
        if draw(st.booleans()):
            plan["name"] = draw(st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True), label="name")
        if draw(st.booleans()):
            plan["dtype"] = draw(st.sampled_from(["fp32", "fp16", "bf16"]), label="dtype")
        if draw(st.booleans()):
            plan["include_lm_head"] = draw(st.booleans(), label="include_lm_head")
        return plan

    return build()


_SPEC_KEYS = ["format", "bits", "group_size", "symmetric", "per_tensor", "width", "frac_width", "signed", "exp_bits",
              "man_bits", "bias", "special", "sparsity", "method", "seed", "reason", "threshold", "double_quant",
              "blocksize", "compute_dtype", "match", "activations"]


def _junk_scalars() -> SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 70),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
        st.sampled_from(list(FORMATS) + ["fp8-e4m3", "fp8-e5m2", "INT", " int", "", "*", "model.layers.*", "l1",
                                         "ieee", "fn", "none", "fp32", "true", "4"]),
    )


def _junk_values() -> SearchStrategy[Any]:
    return st.recursive(_junk_scalars(), lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.sampled_from(_SPEC_KEYS) | st.text(max_size=5), inner, max_size=3),
                        max_leaves=6)


@st.composite
def _mutated(draw: st.DrawFn, valid: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = dict(valid)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "junk", "add"]))
        if action == "drop" and out:
            out.pop(draw(st.sampled_from(sorted(out, key=str))))
        elif action == "junk" and out:
            out[draw(st.sampled_from(sorted(out, key=str)))] = draw(_junk_values())
        else:
            out[draw(st.sampled_from(list(keys)) | st.text(max_size=6))] = draw(_junk_values())
    return out


def junk_plan_dicts(names: Sequence[str] = ("model.layers.0.mlp.up_proj", "lm_head")) -> SearchStrategy[Any]:
    """Plan dicts from valid to junk: mutated tables and plans, wrong types, unknown keys, random nesting."""
    tables = plan_tables(64)
    junk_table = tables.flatmap(lambda t: _mutated(t, _SPEC_KEYS))
    any_table = st.one_of(tables, junk_table, _junk_values())
    glob = st.sampled_from([g for n in names for g in _globs_for(n)]) | _junk_scalars()
    override = st.builds(lambda t, g: {**t, "match": g} if isinstance(t, dict) else t, any_table, glob)
    plan = st.fixed_dictionaries({"default": any_table}, optional={
        "override": st.lists(override, max_size=3) | override | _junk_scalars(),
        "name": st.text(max_size=6) | _junk_scalars(), "dtype": _junk_scalars(),
        "include_lm_head": _junk_scalars(), "include_embeddings": _junk_scalars(), "description": _junk_scalars()})
    mutated_plan = plan.flatmap(lambda p: _mutated(p, TOP_LEVEL_KEYS))
    return st.one_of(plan, mutated_plan, _junk_values())


# ---------------------------------------------------------------------------------------------- TOML


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        body = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + body + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    return json.dumps(str(value))


def to_toml(plan: Mapping[str, Any]) -> str:
    """Render a plan dict as TOML text (None values dropped; tables and arrays of tables as sections)."""
    lines: list[str] = []
    for key, value in plan.items():
        if value is not None and not isinstance(value, Mapping) and not (
                isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value)):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in plan.items():
        if isinstance(value, Mapping):
            lines += ["", f"[{_toml_key(key)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for entry in value:
                lines += ["", f"[[{_toml_key(key)}]]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items() if v is not None]
    return "\n".join(lines) + "\n"


@st.composite
def _damaged(draw: st.DrawFn, text: str) -> str:
    action = draw(st.sampled_from(["truncate", "insert", "duplicate", "drop-line"]))
    lines = text.splitlines()
    if action == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if action == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(["=", "[", "]", '"', "\n", "#", "[[override]]\n", "\x00", " = 1"])
                                | st.text(max_size=3)) + text[at:]
    if not lines:
        return text
    i = draw(st.integers(0, len(lines) - 1))
    if action == "duplicate":
        return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    return "\n".join(lines[:i] + lines[i + 1:])


def toml_texts(model: nn.Module | None = None) -> SearchStrategy[str]:
    """TOML texts from valid plans (for `model` when given) to junk: rendered junk dicts, damaged text, random text."""
    valid = plans(model) if model is not None else st.fixed_dictionaries({"default": plan_tables(64)})
    rendered = st.one_of(valid, junk_plan_dicts().filter(lambda d: isinstance(d, Mapping))).map(to_toml)
    return st.one_of(rendered, rendered.flatmap(_damaged), st.text(max_size=80))


# ---------------------------------------------------------------------------------------------- differential


def _show(t: torch.Tensor) -> str:
    return f"{t.tolist()} ({str(t.dtype).replace('torch.', '')}, shape {tuple(t.shape)})"


def check_same(my_quantize: Callable[[torch.Tensor, Any], torch.Tensor], spec: ReferenceSpec, x: torch.Tensor,
               label: str = "your quantizer") -> None:
    """Compare `my_quantize(x, spec)` with qcheck's `spec.quantize(x)` once: same shape, dtype and values (NaN
    where qcheck has NaN); raise AssertionError naming the config, the input, ours and theirs."""
    ours = spec.quantize(x.clone())
    try:
        theirs = my_quantize(x.clone(), spec)
    except Exception as exc:
        raise AssertionError(f"{label} raised {type(exc).__name__}: {exc}\n  config: {spec!r}\n  input:  {_show(x)}\n"
                             f"  ours (qcheck reference): {_show(ours)}") from exc
    if not isinstance(theirs, torch.Tensor):  # a test's failure, as hypothesis expects: not a TypeError
        raise AssertionError(  # noqa: TRY004
            f"{label} returned {type(theirs).__name__}, not a tensor\n  config: {spec!r}\n  input:  {_show(x)}")
    head = f"{label} differs from qcheck's reference\n  config: {spec!r}\n  input:  {_show(x)}\n" \
           f"  ours (qcheck reference): {_show(ours)}\n  theirs ({label}): {_show(theirs)}"
    if theirs.shape != ours.shape or theirs.dtype != ours.dtype:
        raise AssertionError(f"{head}\n  shape/dtype differ: ours {tuple(ours.shape)} {ours.dtype}, "
                             f"theirs {tuple(theirs.shape)} {theirs.dtype}")
    a, b = ours.detach().cpu().double(), theirs.detach().cpu().double()
    bad = ~((a == b) | (torch.isnan(a) & torch.isnan(b)))
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{head}\n  first mismatch at index {list(idx)}: x = {x[idx].item()!r}, "
                             f"ours = {a[idx].item()!r}, theirs = {b[idx].item()!r} ({int(bad.sum())} of "
                             f"{bad.numel()} elements differ)")


def assert_same_as_reference(my_quantize: Callable[[torch.Tensor, Any], torch.Tensor],
                             spec: ReferenceSpec | SearchStrategy[ReferenceSpec], *,
                             dtypes: Sequence[str | torch.dtype] = ("fp32",), allow_nan: bool = False,
                             allow_infinity: bool = True, max_examples: int | None = None,
                             label: str | None = None) -> None:
    """Fuzz `my_quantize(x, spec)` against qcheck's reference format on hypothesis-generated inputs (and specs,
    when `spec` is a strategy such as fixed_point_specs()); on a difference raise AssertionError with the minimal
    counterexample: config, input, ours vs theirs. Call it from a plain test, not inside another @given."""
    specs = spec if isinstance(spec, SearchStrategy) else st.just(spec)
    name = label or getattr(my_quantize, "__name__", None) or repr(my_quantize)
    base = settings.default
    run = settings(base, max_examples=max_examples or base.max_examples, deadline=None, database=None,
                   report_multiple_bugs=False, suppress_health_check=_SLOW_CHECKS)

    @run
    @given(data=st.data())
    def differential(data: st.DataObject) -> None:
        s = data.draw(specs, label="config")
        x = data.draw(tensors_for(s, dtypes=dtypes, allow_nan=allow_nan, allow_infinity=allow_infinity), label="x")
        check_same(my_quantize, s, x, name)

    differential()
