"""Fuzz your own quantizer against qcheck's reference formats (docs/fuzzing.md).

Run it like any test file:  pytest examples/fuzz_my_quantizer.py  (add --hypothesis-profile=thorough for 10,000
examples per test). A difference fails with the minimal counterexample: the config, the input, ours vs theirs.
"""
from __future__ import annotations

import torch

from qcheck.quant.spec import FixedSpec, MinifloatSpec
from qcheck.strategies import assert_same_as_reference, fixed_point_specs, load_profile

load_profile("ci")


def my_fixed_point(x: torch.Tensor, width: int, frac_width: int, is_signed: bool = True) -> torch.Tensor:
    """A MASE-style "LinearInteger" quantizer: scale by 2^frac_width, round half to even, saturate, scale back."""
    scale = 2.0**frac_width
    lo, hi = (-(2 ** (width - 1)), 2 ** (width - 1) - 1) if is_signed else (0, 2**width - 1)
    return (torch.round(x.double() * scale).clamp(lo, hi) / scale).to(x.dtype)


def test_my_fixed_point_matches_qcheck_on_any_config() -> None:
    """Hypothesis draws (width, frac_width, signed), frac_width >= width and negative frac_width included."""
    assert_same_as_reference(lambda x, spec: my_fixed_point(x, spec.width, spec.frac_width, spec.signed),
                             fixed_point_specs(max_width=16))


def test_my_fixed_point_on_my_sweep_configs() -> None:
    """The configs of my own sweep, on 32- and 16-bit inputs, NaN and +-inf included."""
    for width, frac_width in [(4, 2), (8, 2), (8, 4), (12, 2), (16, 8)]:
        assert_same_as_reference(lambda x, spec: my_fixed_point(x, spec.width, spec.frac_width, spec.signed),
                                 FixedSpec(width, frac_width), dtypes=("fp32", "fp16", "bf16"), allow_nan=True)


def test_saturating_float8_cast_matches_qcheck_e4m3() -> None:
    """torch's float8_e4m3fn cast turns values beyond 448 into NaN; clamping first matches qcheck's saturation."""

    def my_fp8(x: torch.Tensor, spec: MinifloatSpec) -> torch.Tensor:
        return x.float().clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float().to(x.dtype)

    assert_same_as_reference(my_fp8, MinifloatSpec(4, 3, 7, "fn"), dtypes=("fp32", "fp16", "bf16"))
