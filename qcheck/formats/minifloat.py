"""Minifloat quantization (exp_bits, man_bits, bias) with subnormals, round half to even and saturation.

Three encodings of the top exponent code, named explicitly because they change the maximum:
- "ieee": the top code is inf/NaN (fp8 e5m2: max 57344, fp16-like);
- "fn":   OCP "finite, NaN only": only S.1111.111 is NaN (fp8 e4m3fn: max 448);
- "none": no special codes at all, as MASE's MinifloatIEEE (e4m3: max 480).
Values beyond the maximum saturate (also +-inf); NaN stays NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qcheck.errors import ConfigError
from qcheck.formats._chunks import map_elementwise
from qcheck.formats._validate import require_int

SPECIALS = ("ieee", "fn", "none")


@dataclass(frozen=True)
class MinifloatFormat:
    """A validated minifloat layout and its derived range."""

    exp_bits: int
    man_bits: int
    bias: int
    special: str

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal number (subnormals share it)."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        top = 2**self.exp_bits - 1
        return (top - 1 if self.special == "ieee" else top) - self.bias

    @property
    def max(self) -> float:
        mantissa_codes = 2**self.man_bits - 1
        if self.special == "fn":
            mantissa_codes -= 1  # all-ones mantissa at the top exponent is NaN
        return 2.0**self.max_exponent * (1 + mantissa_codes / 2**self.man_bits)

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.man_bits)


def minifloat_format(exp_bits: int, man_bits: int, bias: int | None = None, special: str = "ieee") -> MinifloatFormat:
    """Validate a minifloat layout; bias defaults to 2^(exp_bits-1) - 1."""
    exp_bits = require_int("exp_bits", exp_bits, 1, 8)
    man_bits = require_int("man_bits", man_bits, 0, 10)
    if special not in SPECIALS:
        raise ConfigError(f"special must be one of {SPECIALS}, got {special!r}", field="special")
    if special == "fn" and man_bits == 0:
        raise ConfigError("special='fn' needs man_bits >= 1 (the all-ones mantissa is NaN)", field="man_bits")
    if special == "ieee" and exp_bits == 1:
        raise ConfigError("special='ieee' needs exp_bits >= 2 (the top exponent code is inf/NaN)", field="exp_bits")
    bias = 2 ** (exp_bits - 1) - 1 if bias is None else require_int("bias", bias, -64, 127)
    return MinifloatFormat(exp_bits, man_bits, bias, special)


FP8_E4M3 = MinifloatFormat(4, 3, 7, "fn")
FP8_E5M2 = MinifloatFormat(5, 2, 15, "ieee")
E4M3_NO_SPECIALS = MinifloatFormat(4, 3, 7, "none")
PRESETS: dict[str, MinifloatFormat] = {"fp8_e4m3": FP8_E4M3, "fp8_e5m2": FP8_E5M2, "e4m3_ieee_nospecial": E4M3_NO_SPECIALS}


def quantize_minifloat(x: torch.Tensor, fmt: MinifloatFormat) -> torch.Tensor:
    """Round `x` to the nearest value of `fmt` (half to even), saturating; same dtype as `x`. Elementwise, so it runs
    a piece at a time: the float64 work tensors of a CPU tensor are those of one piece, not of the whole weight."""
    work_dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    limit = fmt.max

    def rounded(piece: torch.Tensor) -> torch.Tensor:
        clipped = torch.clamp(piece.to(work_dtype), -limit, limit)
        _, exp = torch.frexp(clipped)
        exponent = torch.clamp(exp.to(work_dtype) - 1, min=fmt.min_exponent)
        step = torch.pow(torch.tensor(2.0, dtype=work_dtype, device=piece.device), exponent - fmt.man_bits)
        q = torch.round(clipped / step) * step
        q = torch.clamp(q, -limit, limit)
        return q.to(x.dtype)

    return map_elementwise(x, rounded)


def minifloat(x: torch.Tensor, exp_bits: int, man_bits: int, bias: int | None = None, special: str = "ieee") -> torch.Tensor:
    """Quantize `x` to the minifloat (exp_bits, man_bits, bias); see the module docstring for `special`."""
    return quantize_minifloat(x, minifloat_format(exp_bits, man_bits, bias, special))


def fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """OCP fp8 e4m3 (torch.float8_e4m3fn semantics on finite in-range inputs; saturating at 448)."""
    return quantize_minifloat(x, FP8_E4M3)


def fp8_e5m2(x: torch.Tensor) -> torch.Tensor:
    """OCP fp8 e5m2 (torch.float8_e5m2 semantics on finite in-range inputs; saturating at 57344)."""
    return quantize_minifloat(x, FP8_E5M2)
