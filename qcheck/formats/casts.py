"""Real dtype casts (not simulated): the tensor comes back in the 16-bit dtype."""
from __future__ import annotations

import torch

CAST_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MANTISSA_BITS: dict[str, int] = {"fp32": 23, "fp16": 10, "bf16": 7}
"""Stored mantissa bits of each float dtype: which of two is the coarser (bf16 < fp16 < fp32)."""


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Cast to torch.float16 (values beyond 65504 become inf, as the hardware does)."""
    return x.to(torch.float16)


def bf16(x: torch.Tensor) -> torch.Tensor:
    """Cast to torch.bfloat16 (round to nearest even)."""
    return x.to(torch.bfloat16)
