"""Property tests of the number formats over hypothesis-generated configs and tensors (issue 3).

Profile: `ci` unless --hypothesis-profile or $QCHECK_HYPOTHESIS_PROFILE picks another (e.g. `thorough`).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from qcheck.formats import (
    FP8_E4M3,
    FP8_E5M2,
    bf16,
    fixed_point,
    fixed_point_range,
    fp8_e4m3,
    fp8_e5m2,
    fp16,
    integer,
    integer_params,
    minifloat,
    minifloat_format,
)
from qcheck.quant.spec import CastSpec, FixedSpec, IntSpec, MinifloatSpec
from qcheck.strategies import (
    fixed_point_specs,
    format_cases,
    integer_specs,
    load_profile,
    minifloat_specs,
    spec_max,
    tensors_for,
)

load_profile("ci")

DTYPE_NAMES = ("fp32", "fp16", "bf16")
KINDS = ("fixed", "minifloat", "int")


def q(spec, x: torch.Tensor) -> torch.Tensor:
    """qcheck's reference quantization of `x` under `spec`."""
    return spec.quantize(x)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly equal values, NaN where the other is NaN, same dtype and shape."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def in_dtype(value: float, dtype: torch.dtype) -> float:
    """`value` as `dtype` stores it."""
    return torch.tensor(value, dtype=torch.float64).to(dtype).double().item()


def fmt_of(spec: MinifloatSpec):
    """The validated MinifloatFormat of a spec."""
    return minifloat_format(spec.exp_bits, spec.man_bits, spec.bias, spec.special)


def minifloat_quantum(fmt, v: torch.Tensor) -> torch.Tensor:
    """The format's spacing at |v| (float64): 2^(max(exponent(v), min_exponent) - man_bits)."""
    _, e = torch.frexp(v.abs().double())
    exponent = torch.clamp(e.double() - 1, min=fmt.min_exponent)
    return torch.pow(2.0, exponent - fmt.man_bits)


def groups(spec: IntSpec, t: torch.Tensor) -> torch.Tensor:
    """`t` as [groups, elements] the way integer() groups it."""
    if spec.per_tensor:
        return t.reshape(1, -1)
    return t.reshape(-1, spec.group_size or t.shape[-1])


def near_dtype_max(spec: IntSpec, x: torch.Tensor) -> torch.Tensor:
    """Per group [groups, 1]: RTN of a group reaching past half the dtype's max, where a grid end can lie past the
    dtype's max (asymmetric: the nudged zero point; symmetric: qmax * scale rounding up at the float32 max) and
    saturates there instead, off the grid (pinned by test_integer_grid_end_past_dtype_max_saturates)."""
    g = torch.nan_to_num(groups(spec, x).double(), nan=0.0, posinf=0.0, neginf=0.0)
    return g.abs().amax(dim=1, keepdim=True) > float(torch.finfo(x.dtype).max) / 2


# ------------------------------------------------------------------------------------------------ all formats


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_idempotent(kind: str, data: st.DataObject) -> None:
    """q(q(x)) == q(x) bit for bit (asymmetric RTN: up to the float rounding of its re-derived scale)."""
    spec, x = data.draw(format_cases(kind, allow_nan=True, allow_infinity=True))
    once = q(spec, x)
    twice = q(spec, once)
    if isinstance(spec, IntSpec) and not spec.symmetric:
        if x.numel() == 0:
            return
        g1, g2 = groups(spec, once).double(), groups(spec, twice).double()
        amax = torch.nan_to_num(g1, nan=0.0, posinf=0.0, neginf=0.0).abs().amax(dim=1, keepdim=True)
        ulp = amax * float(torch.finfo(x.dtype).eps)
        ok = ((g1 - g2).abs() <= 4 * ulp) | (g1 == g2) | (g1.isnan() & g2.isnan()) | near_dtype_max(spec, x)
        assert bool(ok.all()), f"{spec}: {once.tolist()} -> {twice.tolist()}"
    elif isinstance(spec, IntSpec) and x.numel():
        keep = ~near_dtype_max(spec, x).squeeze(1)
        assert same(groups(spec, once)[keep], groups(spec, twice)[keep]), f"{spec}: x={x.tolist()} q={once.tolist()}"
    else:
        assert same(once, twice), f"{spec}: x={x.tolist()} q={once.tolist()} q(q)={twice.tolist()}"


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_dtype_shape_device_preserved_and_nan_stays_nan(kind: str, data: st.DataObject) -> None:
    """Output has x's dtype, shape and device; NaN stays NaN and nothing else becomes NaN."""
    spec, x = data.draw(format_cases(kind, allow_nan=True, allow_infinity=True))
    out = q(spec, x)
    assert (out.dtype, out.shape, out.device) == (x.dtype, x.shape, x.device)
    assert torch.equal(out.isnan(), x.isnan()), f"{spec}: x={x.tolist()} -> {out.tolist()}"
    if isinstance(spec, IntSpec) and x.numel():
        finite = torch.isfinite(groups(spec, x)) & ~near_dtype_max(spec, x)
    else:
        finite = torch.isfinite(x)
    assert bool(groups(spec, out)[finite].isfinite().all() if isinstance(spec, IntSpec) and x.numel()
                else out[finite].isfinite().all()), f"{spec}: x={x.tolist()} -> {out.tolist()}"


@pytest.mark.parametrize("make", [fixed_point_specs, minifloat_specs], ids=["fixed", "minifloat"])
@given(data=st.data())
def test_any_valid_spec_on_any_dtype_never_makes_nan(make, data: st.DataObject) -> None:
    """Even formats wider than the input dtype (frac_width +-256, bias -64): no NaN from a non-NaN input."""
    spec = data.draw(make(max_width=64) if make is fixed_point_specs else make())
    x = data.draw(tensors_for(spec, allow_infinity=True))
    out = q(spec, x)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert not bool((out.isnan() & ~x.isnan()).any()), f"{spec}: x={x.tolist()} -> {out.tolist()}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", [(0,), (0, 8), (3, 0)])
def test_empty_tensors(kind: str, dtype: str, shape: tuple[int, ...]) -> None:
    """Empty inputs come back empty, same shape and dtype."""
    spec = {"fixed": FixedSpec(8, 4), "minifloat": MinifloatSpec(4, 3, special="fn"), "int": IntSpec(4)}[kind]
    x = torch.empty(shape, dtype={"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
    out = q(spec, x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.numel() == 0


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_zero_maps_to_zero(kind: str, data: st.DataObject) -> None:
    """Every 0 in the input is 0 in the output, whatever else the tensor holds."""
    spec, x = data.draw(format_cases(kind, allow_infinity=True))
    out = q(spec, x)
    assert bool((out[x == 0] == 0).all()), f"{spec}: x={x.tolist()} -> {out.tolist()}"


@pytest.mark.parametrize("kind", ["fixed", "minifloat"])
@given(data=st.data())
def test_monotonic(kind: str, data: st.DataObject) -> None:
    """x <= y implies q(x) <= q(y) (infinities included)."""
    spec, x = data.draw(format_cases(kind, allow_infinity=True))
    xs = x.flatten().sort().values
    out = q(spec, xs).double()
    assert bool((out[1:] >= out[:-1]).all()), f"{spec}: sorted x={xs.tolist()} -> {out.tolist()}"


# ------------------------------------------------------------------------------------------------ fixed point


@given(format_cases("fixed", allow_infinity=True))
def test_fixed_point_outputs_on_grid_inside_range(case) -> None:
    """Every output is k * 2^-frac_width with k in [k_min, k_max]; at most 2^width distinct outputs."""
    spec, x = case
    r = fixed_point_range(spec.width, spec.frac_width, spec.signed)
    out = q(spec, x).double()
    k = out * 2.0**spec.frac_width
    assert bool((k == k.round()).all() and (k >= r.k_min).all() and (k <= r.k_max).all()), \
        f"{spec}: x={x.tolist()} -> k={k.tolist()}"
    assert out.unique().numel() <= 2**spec.width


@given(format_cases("fixed"))
def test_fixed_point_error_at_most_half_a_step_inside_range(case) -> None:
    """|q(x) - x| <= 2^-frac_width / 2 for every x in [min, max]."""
    spec, x = case
    r = fixed_point_range(spec.width, spec.frac_width, spec.signed)
    xd, out = x.double(), q(spec, x).double()
    inside = (xd >= r.min) & (xd <= r.max)
    err = (out - xd).abs()[inside]
    assert bool((err <= r.step / 2).all()), f"{spec}: x={xd[inside].tolist()} -> {out[inside].tolist()}"


@given(format_cases("fixed", allow_infinity=True))
def test_fixed_point_saturates_never_wraps(case) -> None:
    """x > max -> max, x < min -> min (+-inf too): never wraps around, never NaN."""
    spec, x = case
    r = fixed_point_range(spec.width, spec.frac_width, spec.signed)
    xd, out = x.double(), q(spec, x).double()
    assert bool((out[xd > r.max] == r.max).all()), f"{spec}: {xd[xd > r.max].tolist()} -> {out[xd > r.max].tolist()}"
    assert bool((out[xd < r.min] == r.min).all()), f"{spec}: {xd[xd < r.min].tolist()} -> {out[xd < r.min].tolist()}"


@given(format_cases("fixed", allow_infinity=True))
def test_fixed_point_sign_symmetric(case) -> None:
    """Signed: q(-x) == -q(x) for |x| <= max (round half to even is symmetric; only -2^(w-1) has no mirror)."""
    spec, x = case
    if not spec.signed:
        return
    r = fixed_point_range(spec.width, spec.frac_width, spec.signed)
    xs = x[x.double().abs() <= r.max]
    assert torch.equal(q(spec, -xs), -q(spec, xs)), f"{spec}: x={xs.tolist()}"


@given(spec=fixed_point_specs(dtype="fp32"), k=st.integers(-(2**23), 2**23), side=st.sampled_from([0.5, -0.5]))
def test_fixed_point_ties_round_to_even(spec: FixedSpec, k: int, side: float) -> None:
    """x exactly halfway between two grid points goes to the one with an even k."""
    r = fixed_point_range(spec.width, spec.frac_width, spec.signed)
    k = max(r.k_min, min(r.k_max - 1, k)) if side > 0 else max(r.k_min + 1, min(r.k_max, k))
    tie = (k + side) * r.step
    x = torch.tensor([tie], dtype=torch.float64)
    if in_dtype(tie, torch.float32) != tie:
        return
    expected = (k if k % 2 == 0 else k + (1 if side > 0 else -1)) * r.step
    assert q(spec, x.float()).item() == expected, f"{spec}: {tie} -> {q(spec, x.float()).item()}, want {expected}"


@given(w=st.integers(2, 64), f=st.integers(-256, 256))
@example(w=8, f=4)
@example(w=4, f=6)
def test_signed_fixed_point_range_formula(w: int, f: int) -> None:
    """Signed (w, f) covers [-2^(w-f-1), 2^(w-f-1) - 2^-f], whatever f is relative to w (nothing clamped)."""
    r = fixed_point_range(w, f, True)
    assert (r.width, r.frac_width) == (w, f)
    assert r.min == -(2.0 ** (w - f - 1))
    assert r.max == 2.0 ** (w - f - 1) - 2.0**-f or w > 53  # beyond 53 bits the float sum rounds; k_max stays exact
    assert r.k_max - r.k_min + 1 == 2**w


# ------------------------------------------------------------------------------------------------ minifloat


@given(format_cases("minifloat", allow_infinity=True))
def test_minifloat_outputs_representable(case) -> None:
    """Every output is 0 or a multiple of the format's spacing at its exponent, with |q| <= max; count bounded."""
    spec, x = case
    fmt = fmt_of(spec)
    out = q(spec, x).double()
    nz = out[out != 0]
    assert bool((nz.abs() <= fmt.max).all()), f"{spec}: {x.tolist()} -> {out.tolist()}"
    ratio = nz / minifloat_quantum(fmt, nz)
    assert bool((ratio == ratio.round()).all()), f"{spec}: off-grid {nz.tolist()}"
    assert out.unique().numel() <= 2 ** (1 + spec.exp_bits + spec.man_bits)


@given(format_cases("minifloat"))
def test_minifloat_error_at_most_half_spacing_inside_range(case) -> None:
    """|q(x) - x| <= half the spacing at x for |x| <= max (subnormals included)."""
    spec, x = case
    fmt = fmt_of(spec)
    xd = x.double()
    xd = xd[xd.abs() <= fmt.max]
    out = q(spec, xd.to(x.dtype)).double()
    assert bool(((out - xd).abs() <= minifloat_quantum(fmt, xd) / 2).all()), f"{spec}: {xd.tolist()} -> {out.tolist()}"


@given(format_cases("minifloat", allow_infinity=True))
def test_minifloat_saturates_and_is_sign_symmetric(case) -> None:
    """|x| > max (and +-inf) -> +-max, never inf or NaN; q(-x) == -q(x)."""
    spec, x = case
    fmt = fmt_of(spec)
    xd, out = x.double(), q(spec, x).double()
    big = xd.abs() > fmt.max
    assert bool((out[big] == fmt.max * xd[big].sign()).all()), f"{spec}: {xd[big].tolist()} -> {out[big].tolist()}"
    assert torch.equal(q(spec, -x), -q(spec, x))


@given(spec=minifloat_specs(dtype="fp32"), data=st.data())
def test_minifloat_ties_round_to_even(spec: MinifloatSpec, data: st.DataObject) -> None:
    """A value halfway between two neighbours goes to the one with the even mantissa (man_bits = 0: the larger)."""
    fmt = fmt_of(spec)
    e = data.draw(st.integers(fmt.min_exponent, fmt.max_exponent))
    j = data.draw(st.integers(0, 2**fmt.man_bits - 1))
    lo = (1 + j / 2**fmt.man_bits) * 2.0**e
    hi = lo + 2.0 ** (e - fmt.man_bits)
    if hi > fmt.max or in_dtype((lo + hi) / 2, torch.float32) != (lo + hi) / 2:
        return
    expected = lo if j % 2 == 0 and fmt.man_bits > 0 else hi
    assert q(spec, torch.tensor([(lo + hi) / 2])).item() == expected


@pytest.mark.parametrize("fmt, dtype", [(FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)],
                         ids=["e4m3fn", "e5m2"])
@given(data=st.data())
def test_fp8_presets_bit_equal_torch_float8(fmt, dtype, data: st.DataObject) -> None:
    """fp8_e4m3 / fp8_e5m2 equal torch's float8 casts on finite in-range inputs, bit for bit."""
    spec = MinifloatSpec(fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.special)
    x = data.draw(tensors_for(spec, dtypes=DTYPE_NAMES))
    x = x[x.double().abs() <= fmt.max]
    ours = fp8_e4m3(x) if fmt is FP8_E4M3 else fp8_e5m2(x)
    theirs = x.float().to(dtype).float().to(x.dtype)
    assert torch.equal(ours, theirs), f"x={x.tolist()} ours={ours.tolist()} torch={theirs.tolist()}"
    assert torch.equal(ours.float().to(dtype).view(torch.uint8), theirs.float().to(dtype).view(torch.uint8))


@pytest.mark.parametrize("exp_bits, man_bits, dtype", [(5, 10, torch.float16), (8, 7, torch.bfloat16)],
                         ids=["fp16", "bf16"])
@given(data=st.data())
def test_minifloat_emulation_equals_16_bit_casts(exp_bits: int, man_bits: int, dtype, data: st.DataObject) -> None:
    """minifloat(e5m10) == fp16 cast and minifloat(e8m7) == bf16 cast on finite in-range fp32 inputs."""
    spec = MinifloatSpec(exp_bits, man_bits, special="ieee")
    x = data.draw(tensors_for(spec, dtypes=("fp32",)))
    x = x[x.double().abs() <= spec_max(spec)]
    assert torch.equal(minifloat(x, exp_bits, man_bits, special="ieee"), x.to(dtype).float())


@given(data=st.data(), fmt=st.sampled_from(["fp16", "bf16"]))
def test_cast_specs_equal_to_dtype(data: st.DataObject, fmt: str) -> None:
    """fp16 / bf16 (and their CastSpec) are exactly .to(dtype): same values, inf beyond fp16's range as torch."""
    spec = CastSpec(fmt)
    x = data.draw(tensors_for(spec, dtypes=("fp32",), allow_nan=True, allow_infinity=True))
    expected = x.to(spec.dtype)
    got = (fp16 if fmt == "fp16" else bf16)(x)
    assert same(got, expected) and same(spec.quantize(x), expected)


# ------------------------------------------------------------------------------------------------ integer RTN


@given(format_cases("int", allow_infinity=True))
def test_integer_outputs_on_group_grid(case) -> None:
    """Each group's outputs are (k - zero) * scale with k in [qmin, qmax]; at most qmax - qmin + 1 distinct values."""
    spec, x = case
    if x.numel() == 0:
        return
    p = integer_params(x, spec.bits, spec.group_size, spec.symmetric, spec.per_tensor)
    raw = groups(spec, q(spec, x)).double()
    out = torch.where(raw.abs() == float(torch.finfo(x.dtype).max), torch.nan, raw)  # saturated at the dtype max
    k = torch.nan_to_num(out / p.scale.double() + p.zero_point.double(), nan=0.0)
    # Off the grid by float noise (1e-3 of a step) plus the rounding of the grid value into x's dtype: half its
    # spacing at the output (absolute in the subnormal range, where a step can be finer than the dtype resolves).
    info = torch.finfo(x.dtype)
    half_ulp = 0.5 * torch.maximum(torch.nan_to_num(out, nan=0.0).abs() * info.eps,
                                   torch.tensor(info.smallest_normal * info.eps, dtype=torch.float64))
    off = (k - k.round()).abs() * p.scale.double()
    assert bool((off <= 1e-3 * p.scale.double() + half_ulp * (1 + 1e-6)).all()), f"{spec}: {x.tolist()}"
    # Within the grid's ends, by the same margin: fp16 [5.96e-8, -5.96e-8] at 5 bits has top level 5.77e-8, which
    # fp16 stores as 5.96e-8 (k = 31.5 of 31).
    margin = 1e-3 * p.scale.double() + half_ulp * (1 + 1e-6)
    top, bottom = ((p.qmax - p.zero_point) * p.scale).double(), ((p.qmin - p.zero_point) * p.scale).double()
    inside = (out.isnan() | ((out <= top + margin) & (out >= bottom - margin))).all()
    assert bool(inside), f"{spec}: {x.tolist()}"
    assert max(len(row.unique()) for row in raw) <= p.qmax - p.qmin + 1


@given(format_cases("int"))
def test_integer_error_at_most_half_a_scale_step(case) -> None:
    """|q(x) - x| <= scale / 2 per group (plus the rounding of the output into x's dtype, and for a subnormal
    scale its own rounding to the subnormal grid, times the level count: see qcheck.formats.integer)."""
    spec, x = case
    if x.numel() == 0:
        return
    p = integer_params(x, spec.bits, spec.group_size, spec.symmetric, spec.per_tensor)
    xd, out = groups(spec, x).double(), groups(spec, q(spec, x)).double()
    eps = float(torch.finfo(x.dtype).eps)
    f32 = torch.finfo(torch.float32)
    drift = torch.where(p.scale < f32.tiny, (p.qmax - p.qmin) * 0.5 * f32.tiny * f32.eps, 0.0).double()
    bound = p.scale.double() / 2 * (1 + 1e-5) + xd.abs() * eps + out.abs() * eps + drift
    assert bool(((out - xd).abs() <= bound).all()), f"{spec}: x={xd.tolist()} -> {out.tolist()}"


@given(format_cases("int", allow_infinity=True, allow_nan=True))
def test_integer_infinities_saturate_to_group_range(case) -> None:
    """+inf -> the group's largest level, -inf -> its smallest (saturated at the dtype's max when the level lies
    past it); finite values never become inf or NaN."""
    spec, x = case
    if x.numel() == 0:
        return
    p = integer_params(x, spec.bits, spec.group_size, spec.symmetric, spec.per_tensor)
    g, out = groups(spec, x), groups(spec, q(spec, x))
    big = float(torch.finfo(x.dtype).max)
    top = ((p.qmax - p.zero_point) * p.scale).double().clamp(-big, big).expand_as(g).to(x.dtype)
    bottom = ((p.qmin - p.zero_point) * p.scale).double().clamp(-big, big).expand_as(g).to(x.dtype)
    assert torch.equal(out[g == math.inf], top[g == math.inf])
    assert torch.equal(out[g == -math.inf], bottom[g == -math.inf])
    assert bool(out[torch.isfinite(g)].isfinite().all()), f"{spec}: {x.tolist()} -> {out.tolist()}"


@given(format_cases("int", allow_infinity=True))
def test_integer_monotonic_within_a_group(case) -> None:
    """Sorting a group does not change its scale; its outputs are then non-decreasing."""
    spec, x = case
    if x.numel() == 0:
        return
    g = groups(spec, x).sort(dim=1).values
    out = groups(spec, q(spec, g.reshape(x.shape))).double()
    assert bool((out[:, 1:] >= out[:, :-1]).all()), f"{spec}: {g.tolist()} -> {out.tolist()}"


@given(format_cases("int", allow_infinity=True))
def test_integer_symmetric_is_sign_symmetric(case) -> None:
    """Symmetric RTN: q(-x) == -q(x) exactly (same scales, restricted range)."""
    spec, x = case
    if not spec.symmetric:
        return
    assert torch.equal(q(spec, -x), -q(spec, x)), f"{spec}: {x.tolist()}"


@given(spec=integer_specs(12), rows=st.integers(1, 4))
def test_integer_zero_tensor_is_zero(spec: IntSpec, rows: int) -> None:
    """An all-zero weight stays all zero (no scale of 0 dividing into NaN)."""
    out = q(spec, torch.zeros(rows, 12))
    assert torch.equal(out, torch.zeros(rows, 12))


# ------------------------------------------------------------------------------------------------ pinned points


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_ties_to_even_reference_points_on_each_device(device: str) -> None:
    """0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (and mirrored) on CPU and CUDA alike, for fixed point and minifloat."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA half of the tie check needs one")
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5], device=device)
    assert fixed_point(x, 8, 0).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0]
    assert minifloat(torch.tensor([9.0, 11.0, 13.0], device=device), 4, 2).tolist() == [8.0, 12.0, 12.0]


def test_fp8_maxima_pinned() -> None:
    """OCP e4m3 max 448, e5m2 max 57344, IEEE-style e4m3 without special codes (MASE MinifloatIEEE) 480."""
    assert (FP8_E4M3.max, FP8_E5M2.max, minifloat_format(4, 3, special="none").max) == (448.0, 57344.0, 480.0)
    big = torch.tensor([1e9, -1e9, math.inf, -math.inf, 464.0, 61440.0])
    assert fp8_e4m3(big).tolist() == [448.0, -448.0, 448.0, -448.0, 448.0, 448.0]
    assert fp8_e5m2(big).tolist() == [57344.0, -57344.0, 57344.0, -57344.0, 448.0, 57344.0]
    assert minifloat(big, 4, 3, special="none").tolist() == [480.0, -480.0, 480.0, -480.0, 448.0, 480.0]
    assert torch.tensor([448.0]).to(torch.float8_e4m3fn).float().item() == 448.0
    assert torch.tensor([57344.0]).to(torch.float8_e5m2).float().item() == 57344.0


@pytest.mark.parametrize("x, bits, symmetric", [
    (torch.tensor([[43680.0, -65504.0]], dtype=torch.float16), 2, False),
    (torch.tensor([[3.4e38, -3.4e38, 1.0]]), 2, False),
    (torch.tensor([[3.4028234663852886e38, 1.0]]), 8, True),
], ids=["fp16-asymmetric", "fp32-asymmetric", "fp32-symmetric-at-max"])
def test_integer_grid_end_past_dtype_max_saturates(x: torch.Tensor, bits: int, symmetric: bool) -> None:
    """Found by the thorough profile: a grid end past the dtype's max (asymmetric nudged zero point, or
    qmax * fl(amax / qmax) rounding up) became +-inf; it now saturates at the dtype's largest finite value."""
    out = integer(x, bits, symmetric=symmetric)
    assert bool(out.isfinite().all()), out.tolist()
    assert float(out.abs().max()) == torch.finfo(x.dtype).max


@pytest.mark.parametrize("x, expected", [
    ([[0.4285714626312256, -0.4285714626312256]], [[3 * 6 / 49, -4 * 6 / 49]]),
    ([[-2.5, 4.5]], [[-3.0, 4.0]]),
    ([[-3.5, 3.5]], [[-4.0, 3.0]]),
], ids=["3/7-found-by-thorough", "tie-at-even-k", "tie-at-odd-k"])
def test_integer_asymmetric_zero_point_tie_keeps_the_range(x: list, expected: list) -> None:
    """Found by the thorough profile: when -lo / scale is a tie, rounding the zero point to even shifted the grid
    so one range end rounded inward ([-2.5, 4.5] -> [-2, 4], then -> [-1.71, 4.29]). Ties now round up: both
    ends land on the grid's ends, 2^bits - 1 steps apart, and re-quantizing is stable (to float rounding of the
    re-derived scale)."""
    once = integer(torch.tensor(x), 3, symmetric=False)
    twice = integer(once, 3, symmetric=False)
    assert torch.allclose(once, torch.tensor(expected), rtol=2e-7, atol=0), once.tolist()
    assert torch.allclose(twice, once, rtol=5e-7, atol=0), (once.tolist(), twice.tolist())


@pytest.mark.parametrize("bits, symmetric", [(2, False), (3, True)])
def test_integer_subnormal_group_whose_scale_underflows(bits: int, symmetric: bool) -> None:
    """Found by the thorough profile at 10,000 examples: [1.4e-45] (the smallest subnormal) has range / qmax = 0,
    so the scale falls back to 1; the range-end pinning must not then put it at qmax (it gave 3.0)."""
    x = torch.tensor([[1.401298464324817e-45], [0.0]])
    assert integer(x, bits, symmetric=symmetric).tolist() == [[0.0], [0.0]]


def test_integer_subnormal_scale_leaves_range_end_where_rounding_put_it() -> None:
    """Found by the thorough profile at 10,000 examples (session 3): [2.8e-45] at 2 bits asymmetric has the
    subnormal scale fl(2.8e-45 / 3) = 1.4e-45, so the range end sits at k = 2, exactly; pinning it to qmax gave
    4.2e-45, a whole step off. Pinning now needs a normal scale."""
    x = torch.tensor([[2.802596928649634e-45]])
    assert integer(x, 2, symmetric=False).tolist() == x.tolist()


def test_integer_subnormal_scale_is_rounded_like_any_float32_rtn() -> None:
    """Found by the thorough profile locally (hypothesis 6.170): [5.38e-43] at 5 bits asymmetric has the scale
    fl(384 / 31 units) = 12 units, so the top level is 31 * 12 = 372 units, 12 short of the input. qcheck keeps
    float32 scale arithmetic (the Z11 differential compares users' float32 RTN with it); the error bound allows the
    scale's own rounding for subnormal scales, and this pins the documented result."""
    unit = 1.401298464324817e-45
    x = torch.tensor([[384 * unit]])
    p = integer_params(x, 5, symmetric=False)
    assert float(p.scale) == 12 * unit and integer(x, 5, symmetric=False).tolist() == [[372 * unit]]


def test_integer_grid_below_the_dtype_resolution_rounds_into_the_dtype() -> None:
    """Found by the thorough profile: fp16 [1.19e-7, 5.96e-8] at 2 bits has the fp32 scale 3.97e-8, finer than
    fp16's subnormal spacing 5.96e-8; outputs are the grid values rounded to fp16 (what any fp16 fake-quant
    returns), so the grid property allows half the output dtype's spacing, also at the grid's ends."""
    x = torch.tensor([[1.1920928955078125e-07, 5.960464477539063e-08]], dtype=torch.float16)
    out = integer(x, 2, symmetric=False)
    grid = (torch.tensor([[3.0, 2.0]]) * (1.1920928955078125e-07 / 3)).to(torch.float16)
    assert out.dtype == torch.float16 and torch.equal(out, grid), out.tolist()
    ends = torch.tensor([[5.960464477539063e-08, -5.960464477539063e-08]], dtype=torch.float16)
    top = 15 * float(integer_params(ends, 5, symmetric=False).scale)  # levels k - 16 for k in 0..31
    assert top < 5.960464477539063e-08 and integer(ends, 5, symmetric=False).tolist() == ends.tolist()


def test_integer_reference_levels() -> None:
    """int4 symmetric per channel: levels k * amax / 7; ties at (k + 0.5) * scale go to even k."""
    w = torch.tensor([[7.0, 0.5, 1.5, 2.5, -3.5, 0.0]])
    assert integer(w, 4).tolist() == [[7.0, 0.0, 2.0, 2.0, -4.0, 0.0]]


def test_strategies_reach_the_edges() -> None:
    """The generated configs include frac_width >= width, negative frac_width and the fp8 presets."""
    from hypothesis import find

    assert find(fixed_point_specs(), lambda s: s.frac_width >= s.width).frac_width >= 2
    assert find(fixed_point_specs(), lambda s: s.frac_width < 0).frac_width < 0
    assert find(minifloat_specs(), lambda s: (s.exp_bits, s.man_bits, s.special) == (4, 3, "fn")).bias in (None, 7)
