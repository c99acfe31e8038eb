"""Pinned reference points of the number formats (the property suite lives in test_fuzz_formats.py)."""
import pytest
import torch

from qcheck.errors import ConfigError
from qcheck.formats import FP8_E4M3, FP8_E5M2, fixed_point, fixed_point_range, integer, minifloat, minifloat_format


def test_fixed_point_rounds_half_to_even_and_saturates():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 1000.0, -1000.0, float("inf"), float("-inf")])
    assert fixed_point(x, 8, 0).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 127.0, -128.0, 127.0, -128.0]


def test_fixed_point_range_shifts_with_frac_width_and_is_never_clamped():
    g = fixed_point_range(8, 4)
    assert (g.min, g.max, g.step) == (-8.0, 7.9375, 0.0625)
    wide = fixed_point_range(4, 6)  # frac_width >= width: valid, range shifts (no silent "fix")
    assert (wide.min, wide.max) == (-0.125, 7 / 64)
    neg = fixed_point_range(4, -2)
    assert (neg.min, neg.max, neg.step) == (-32.0, 28.0, 4.0)
    assert torch.isnan(fixed_point(torch.tensor([float("nan")]), 8, 4)).all()


@pytest.mark.parametrize("kwargs, field", [({"width": 1, "frac_width": 0}, "width"),
                                           ({"width": 8.0, "frac_width": 4}, "width"),
                                           ({"width": 8, "frac_width": 2.5}, "frac_width")])
def test_fixed_point_rejects_bad_parameters_naming_them(kwargs, field):
    with pytest.raises(ConfigError) as err:
        fixed_point(torch.zeros(2), **kwargs)
    assert err.value.field == field and field in str(err.value)


def test_integer_rtn_groups_and_levels():
    torch.manual_seed(0)
    w = torch.randn(8, 576)
    q4 = integer(w, 4, group_size=64)
    per_group = q4.reshape(-1, 64)
    assert max(len(torch.unique(r)) for r in per_group) <= 15
    assert torch.equal(integer(q4, 4, group_size=64), q4) or (integer(q4, 4, group_size=64) - q4).abs().max() < 1e-6
    qa = integer(w, 3, symmetric=False)
    assert max(len(torch.unique(r)) for r in qa) <= 8
    assert integer(torch.zeros(2, 4), 8).abs().sum() == 0


def test_integer_group_size_must_divide_576_with_allowed_values_named():
    with pytest.raises(ConfigError) as err:
        integer(torch.randn(4, 576), 4, group_size=128)
    assert err.value.field == "group_size"
    assert "576" in str(err.value) and "64" in str(err.value)
    with pytest.raises(ConfigError, match="bits must be in 2..8"):
        integer(torch.randn(4, 8), 9)


def test_minifloat_presets_match_torch_float8_bit_for_bit():
    torch.manual_seed(1)
    for fmt, dtype in ((FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)):
        x = torch.randn(200_000) * torch.exp(torch.randn(200_000) * 3)
        x = x[x.abs() <= fmt.max]
        ours = minifloat(x, fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.special)
        assert torch.equal(ours, x.to(dtype).to(torch.float32))


def test_minifloat_maxima_and_saturation():
    assert FP8_E4M3.max == 448.0 and FP8_E5M2.max == 57344.0
    assert minifloat_format(4, 3, special="none").max == 480.0
    x = torch.tensor([1e6, -1e6, float("inf")])
    assert minifloat(x, 4, 3, special="fn").tolist() == [448.0, -448.0, 448.0]
    assert minifloat(x, 4, 3, special="none").tolist() == [480.0, -480.0, 480.0]
    sub = minifloat(torch.tensor([2.0**-9, 2.0**-11]), 4, 3, special="fn")
    assert sub.tolist() == [2.0**-9, 0.0]  # smallest subnormal kept; below half of it rounds to zero


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize(("group_size", "per_tensor"), [(None, False), (16, False), (None, True)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_integer_scales_from_finite_values_are_those_of_the_where_form(monkeypatch, bits, group_size, per_tensor,
                                                                      symmetric):
    """The non-finite values are zeroed for the scales by one nan_to_num pass: the same scales, zero points and
    outputs, bit for bit, as torch.where(torch.isfinite(g), g, 0) gave (NaN, +-inf, -0.0, all-non-finite groups)."""
    from qcheck.formats.integer import integer_params

    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(bits))
    x[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x[1, :16] = float("inf")
    x[2, :16] = float("nan")
    x[3, ::3] = -0.0
    x[4] = torch.tensor([3.0e38, -3.0e38] * 32)
    new_out, new_p = integer(x, bits, group_size, symmetric, per_tensor=per_tensor), \
        integer_params(x, bits, group_size, symmetric, per_tensor)
    monkeypatch.setattr(torch, "nan_to_num",
                        lambda g, nan, posinf, neginf: torch.where(torch.isfinite(g), g, torch.zeros_like(g)))
    old_out, old_p = integer(x, bits, group_size, symmetric, per_tensor=per_tensor), \
        integer_params(x, bits, group_size, symmetric, per_tensor)
    assert torch.equal(new_out.view(torch.int32), old_out.view(torch.int32))
    for field in ("scale", "zero_point", "lo", "hi"):
        a, b = getattr(new_p, field), getattr(old_p, field)
        assert (a is None and b is None) or torch.equal(a.view(torch.int32), b.view(torch.int32)), field



def _awkward(shape, seed):
    """Weights with the values that make rounding and range ends hard: NaN, +-inf, +-0.0, the float32 maximum, a
    subnormal, fixed-point ties."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    flat = x.view(-1)
    if flat.numel() >= 40:
        flat[:12] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 3.0e38, -3.0e38, 1e-40,
                                  0.03125, 7.96875, 0.5, -0.0])
    return x


PIECE_CASES = {"odd-rows": lambda: _awkward((13, 96), 1), "non-contiguous": lambda: _awkward((96, 13), 2).t(),
               "one-d": lambda: _awkward((250,), 3), "three-d": lambda: _awkward((3, 5, 32), 4),
               "scalar": lambda: torch.tensor(0.3)}
PIECE_CHUNKS = (7, 200)
"""Pieces shorter than a row or group, and pieces of several rows or groups that do not divide the tensor."""
INTEGER_SETTINGS = {"int8c": (8, None, True, False), "int4g32": (4, 32, True, False), "int3g16a": (3, 16, False, False),
                    "int5ca": (5, None, False, False), "int2t": (2, None, True, True), "int6ta": (6, None, False, True)}
"""bits, group_size, symmetric, per_tensor."""
ELEMENTWISE_FORMATS = {
    "fixed8.4": lambda x: fixed_point(x, 8, 4), "fixed16.8": lambda x: fixed_point(x, 16, 8),
    "fixed30.20": lambda x: fixed_point(x, 30, 20), "fixed6.-2u": lambda x: fixed_point(x, 6, -2, signed=False),
    "e4m3": lambda x: minifloat(x, 4, 3, special="fn"), "e5m2": lambda x: minifloat(x, 5, 2),
}


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.int32),
                                                                     b.reshape(-1).view(torch.int32))


@pytest.mark.parametrize("name", sorted(INTEGER_SETTINGS))
@pytest.mark.parametrize("case", sorted(PIECE_CASES))
def test_integer_gives_the_same_bits_a_piece_at_a_time(monkeypatch, name, case):
    """RTN computed a piece at a time (scales reduced over pieces, values rounded per piece) is bit for bit RTN of
    the whole weight, scales and zero points included."""
    from qcheck.formats import _chunks
    from qcheck.formats.integer import integer_params

    bits, group_size, symmetric, per_tensor = INTEGER_SETTINGS[name]
    x = PIECE_CASES[case]()
    if group_size is not None and (x.dim() == 0 or x.shape[-1] % group_size):
        pytest.skip("the group size does not divide the last dimension")
    assert x.numel() <= _chunks.CHUNK_ELEMENTS  # one piece: the unchunked computation
    whole = integer(x, bits, group_size, symmetric, per_tensor=per_tensor)
    whole_params = integer_params(x, bits, group_size, symmetric, per_tensor)
    for chunk in PIECE_CHUNKS:
        monkeypatch.setattr(_chunks, "CHUNK_ELEMENTS", chunk)
        assert _same_bits(integer(x, bits, group_size, symmetric, per_tensor=per_tensor), whole), chunk
        params = integer_params(x, bits, group_size, symmetric, per_tensor)
        for field in ("scale", "zero_point", "lo", "hi"):
            a, b = getattr(params, field), getattr(whole_params, field)
            assert (a is None and b is None) or _same_bits(a, b), (chunk, field)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE_FORMATS))
@pytest.mark.parametrize("case", sorted(PIECE_CASES))
def test_fixed_point_and_minifloat_give_the_same_bits_a_piece_at_a_time(monkeypatch, name, case):
    """Elementwise formats computed a flat piece at a time (their float64 work tensors a piece's size) are bit for
    bit the whole weight's."""
    from qcheck.formats import _chunks

    x = PIECE_CASES[case]()
    whole = ELEMENTWISE_FORMATS[name](x)
    for chunk in PIECE_CHUNKS:
        monkeypatch.setattr(_chunks, "CHUNK_ELEMENTS", chunk)
        assert _same_bits(ELEMENTWISE_FORMATS[name](x), whole), chunk
