"""Fixed-point (MASE / QPyTorch "LinearInteger") quantization: round half to even, saturate.

A signed (width, frac_width) value is k * 2^-frac_width with k in [-2^(width-1), 2^(width-1) - 1].
frac_width may be >= width or negative: the representable range shifts; nothing is clamped or "fixed".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qcheck.formats._chunks import map_elementwise
from qcheck.formats._validate import require_int


@dataclass(frozen=True)
class FixedPointRange:
    """The grid of a fixed-point format: values k * step for k in [k_min, k_max]."""

    width: int
    frac_width: int
    signed: bool

    @property
    def step(self) -> float:
        return 2.0 ** (-self.frac_width)

    @property
    def k_min(self) -> int:
        return -(2 ** (self.width - 1)) if self.signed else 0

    @property
    def k_max(self) -> int:
        return 2 ** (self.width - 1) - 1 if self.signed else 2**self.width - 1

    @property
    def min(self) -> float:
        return self.k_min * self.step

    @property
    def max(self) -> float:
        return self.k_max * self.step


def fixed_point_range(width: int, frac_width: int, signed: bool = True) -> FixedPointRange:
    """Validate (width, frac_width, signed) and describe the representable grid."""
    width = require_int("width", width, 2, 64)
    frac_width = require_int("frac_width", frac_width, -256, 256)
    if not isinstance(signed, bool):
        from qcheck.errors import ConfigError

        raise ConfigError(f"signed must be true or false, got {signed!r}", field="signed")
    return FixedPointRange(width, frac_width, signed)


def fixed_point(x: torch.Tensor, width: int, frac_width: int, signed: bool = True) -> torch.Tensor:
    """Quantize `x` to fixed point; same dtype and device as `x`. NaN stays NaN, +-inf saturates.

    Arithmetic runs in float64 on CPU-exact powers of two (float32 on devices without float64 speed is
    still exact for widths <= 24), so CPU and CUDA give identical answers: torch.round is half-to-even on both.
    """
    grid = fixed_point_range(width, frac_width, signed)
    # float32 is exact only while 2^+-frac_width and k * 2^-frac_width stay finite normals: outside |frac| <= 100
    # 2^frac overflows to inf / underflows (0 -> NaN, in-range values -> 0); float64 inputs would round twice.
    fast = width <= 24 and abs(grid.frac_width) <= 100 and x.dtype != torch.float64
    work = torch.float32 if fast else torch.float64
    scale = 2.0**grid.frac_width

    def rounded(piece: torch.Tensor) -> torch.Tensor:
        k = torch.round(piece.to(work) * scale)
        k = torch.clamp(k, grid.k_min, grid.k_max)
        return (k / scale).to(x.dtype)

    return map_elementwise(x, rounded)  # elementwise: a piece at a time bounds the float64 work tensors
