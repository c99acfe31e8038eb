"""Integer round-to-nearest (RTN) quantization with per-tensor, per-output-channel or per-group scales.

Symmetric uses the restricted range [-(2^(b-1)-1), 2^(b-1)-1] so that zero and sign symmetry are exact;
asymmetric uses [0, 2^b - 1] with a zero point, the range always containing 0. The last dimension is the
input dimension (nn.Linear weights are [out, in]); groups run along it.

Asymmetric RTN follows PyTorch's fake-quant arithmetic, q = clamp(round(x / s + z)), with one deliberate
difference: a zero point that lands on a tie rounds up (not to even), and the group's range ends are pinned to
the grid's ends (where exact arithmetic puts them and float rounding of x / s sometimes did not), so
re-quantizing keeps the range (half-to-even shrank it by a step at such ties). Re-deriving
the scale from an output's range reproduces it up to float rounding (a few ulps), so asymmetric idempotence is
exact with the parameters held and holds to a few ulps when they are re-derived. A grid end beyond the input
dtype's finite range (weights within half a step of its maximum) saturates at that maximum instead of +-inf.

A group whose range is subnormal (a scale below float32's smallest normal, ranges under ~1e-37) has its scale
rounded to the subnormal grid, as in any float32 RTN: the levels k * s drift from exact arithmetic by up to
|k - z| half-units of 1.4e-45, so the top level can fall short of the range end by more than half a step
([5.38e-43] at 5 bits asymmetric: scale 12 units instead of 12.39, top level 372 units for 384). Range ends are
pinned only for normal scales.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qcheck.errors import ConfigError
from qcheck.formats._chunks import pieces
from qcheck.formats._validate import require_int

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class IntegerParams:
    """The scales and zero points RTN used, shaped to broadcast over the grouped tensor."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    lo: torch.Tensor | None = None
    """Asymmetric only: each group's range ends (min clamped to <= 0, max to >= 0) the scale was derived from."""
    hi: torch.Tensor | None = None


def check_group_size(group_size: int | None, in_features: int, where: str = "") -> int | None:
    """Validate a group size against the input dimension it must divide."""
    if group_size is None:
        return None
    group_size = require_int("group_size", group_size, 1, None, where)
    if in_features % group_size != 0:
        divisors = [d for d in (16, 32, 64, 128, 256) if in_features % d == 0]
        suffix = f" ({where})" if where else ""
        raise ConfigError(
            f"group_size {group_size} does not divide the input dimension {in_features}{suffix}; "
            f"group sizes that divide it: {divisors or 'none of 16/32/64/128/256'}",
            field="group_size",
        )
    return group_size


def _grouped(x: torch.Tensor, group_size: int | None, per_tensor: bool) -> torch.Tensor:
    if per_tensor:
        return x.reshape(1, -1)
    if x.dim() == 0:
        return x.reshape(1, 1)
    if group_size is None:
        return x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)
    return x.reshape(-1, group_size)


def integer_params(
    x: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True, per_tensor: bool = False
) -> IntegerParams:
    """Compute RTN scales / zero points for `x` (float32, grouped as `integer` groups it)."""
    g = _grouped(x.detach(), group_size, per_tensor)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = _group_extreme(g, torch.amax, absolute=True)
        scale = amax / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return IntegerParams(scale, torch.zeros_like(scale), -qmax, qmax)
    qmax = 2**bits - 1
    lo = torch.clamp(_group_extreme(g, torch.amin), max=0.0)
    hi = torch.clamp(_group_extreme(g, torch.amax), min=0.0)
    scale = hi / qmax - lo / qmax  # (hi - lo) overflows to inf for |values| near the float32 max: NaN everywhere
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    a = -lo / scale
    frac = a - torch.floor(a)  # exact; floor(a + 0.5) would round a = k + 0.5 - ulp up to k + 1 in float
    zero = torch.clamp(torch.floor(a) + (frac >= 0.5).to(a.dtype), 0, qmax)  # ties round up (see module doc)
    return IntegerParams(scale, zero, 0, qmax, lo, hi)


def _group_extreme(g: torch.Tensor, reduce: Callable[..., torch.Tensor], absolute: bool = False) -> torch.Tensor:
    """Each group's (row's) torch.amax or torch.amin of its finite float32 values, as a (groups, 1) float32 tensor,
    reduced a piece at a time (a maximum or minimum is exact, so the pieces give the whole row's value)."""
    out = torch.empty(g.shape[0], 1, dtype=torch.float32, device=g.device)
    combine = torch.maximum if reduce is torch.amax else torch.minimum
    for rows, cols in pieces(*g.shape):
        # scales come from the finite values only: NaN and +-inf count as 0 (one pass; the same values as
        # torch.where(torch.isfinite(g), g, 0), which took three)
        part = torch.nan_to_num(g[rows, cols].to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
        part = reduce(part.abs() if absolute else part, dim=1, keepdim=True)
        out[rows] = part if cols.start == 0 else combine(out[rows], part)
    return out


def integer(
    x: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True, *, per_tensor: bool = False
) -> torch.Tensor:
    """RTN-quantize `x` to `bits` (2..8); group_size None = per output channel (row). Same dtype as `x`.

    Scales come from each group's finite values; NaN stays NaN and +-inf saturates to the group's range end.
    """
    bits = require_int("bits", bits, MIN_BITS, MAX_BITS)
    if not isinstance(symmetric, bool):
        raise ConfigError(f"symmetric must be true or false, got {symmetric!r}", field="symmetric")
    if group_size is not None and not per_tensor:
        check_group_size(group_size, x.shape[-1] if x.dim() else 1)
    if x.numel() == 0:
        return x.clone()
    p = integer_params(x, bits, group_size, symmetric, per_tensor)
    g = _grouped(x, group_size, per_tensor)
    out = torch.empty(g.shape, dtype=x.dtype, device=x.device)
    for rows, cols in pieces(*g.shape):  # elementwise given the group's scale: a piece at a time, same values
        out[rows, cols] = _rtn(g[rows, cols].to(torch.float32), p, rows, symmetric, x.dtype)
    return out.reshape(x.shape)


def _rtn(g: torch.Tensor, p: IntegerParams, rows: slice, symmetric: bool, dtype: torch.dtype) -> torch.Tensor:
    """The RTN values of a piece `g` (float32) of the grouped tensor, whose groups are rows `rows` of `p`."""
    scale, zero = p.scale[rows], p.zero_point[rows]
    q = torch.clamp(torch.round(g / scale + zero), p.qmin, p.qmax)
    if not symmetric:
        # The range ends land on the grid ends in exact arithmetic; pin them there against float rounding of g / s.
        lo, hi = p.lo[rows], p.hi[rows]
        # Only as a correction of float noise (within a step, normal scale): a subnormal scale has lost the
        # precision that puts the ends on the grid ends ([2.8e-45] at 2 bits: scale 1.4e-45, not 9.3e-46), and a
        # scale that fell back to 1 (range underflowed to zero) leaves them where rounding put them.
        normal = scale >= torch.finfo(torch.float32).tiny
        at_lo = (g == lo) & (lo < 0) & normal & ((lo / scale + zero).abs() <= 1)
        at_hi = (g == hi) & (hi > 0) & normal & ((hi / scale + zero - p.qmax).abs() <= 1)
        q = torch.where(at_lo, torch.zeros_like(q), q)
        q = torch.where(at_hi, torch.full_like(q, p.qmax), q)
    out = (q - zero) * scale
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        out = out.clamp(info.min, info.max)  # a grid end past the dtype's max saturates there, never +-inf
    return out.to(dtype)
