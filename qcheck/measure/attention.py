"""Which scaled-dot-product-attention kernels qcheck's untimed measurements run on a GPU.

cuDNN's attention (torch's first choice for fp16/bf16 on Hopper) builds an execution plan for every new
(batch, query length, key length) shape, about 25 ms each on an H100 (benchmarks/bench_generation.py). Greedy
decoding meets a new key length at every step, so a fresh 16-bit model's first generate call paid one plan per
step: 2.56 s against 1.32 s for the same 64 steps called again, and against 1.31 s without cuDNN's attention
(RESULTS.md, session 9). qcheck builds every variant afresh and generates once per variant, so every 16-bit
variant paid it. Flash and memory-efficient attention need no per-shape set-up; they compute the same softmax
attention (results differ only by summation order). Timings keep torch's own choice: they measure what the user's
model runs, after a warm-up.
"""
from __future__ import annotations

import contextlib
from typing import Any

PER_SHAPE_FREE_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
"""torch.nn.attention.SDPBackend members with no per-shape plan (everything but CUDNN_ATTENTION)."""

STATEMENT = ("attention in untimed measurements ran torch's flash, memory-efficient or math kernels, not cuDNN's "
             "(which builds a plan per new sequence length: one per decoding step); timings keep torch's choice")
"""What the report's Run section says about it on a GPU."""


def varying_shape_attention() -> contextlib.AbstractContextManager[Any]:
    """SDPA without cuDNN's attention, for work whose shapes change call to call (decoding, per-question scoring);
    a no-op where torch has no such switch."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([getattr(SDPBackend, name) for name in PER_SHAPE_FREE_BACKENDS])
