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


GQA_DECODING = "qcheck_sdpa_gqa_decoding"
"""The attention implementation qcheck's static-cache decoder registers with transformers' AttentionInterface."""


def sdpa_gqa_decoding(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' sdpa attention, except that a one-token query of a grouped-query layer attends to the cache's
    key/value heads as they are: the query heads sharing a key/value head become that head's query rows.

    transformers before 5.2x copies the cache to every query head (`repeat_kv`) whenever a mask is passed on CUDA: at
    every decoding step, in every layer, over the whole static cache (SmolLM2-135M: 3 key/value heads to 9, 50 rows x
    ~1,300 positions x 30 layers, about 9 GB written per fp32 step). The dot products, softmax and weighted sums are
    the same; only the copy goes."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    mask_shared = attention_mask is None or attention_mask.shape[1] == 1
    if (groups == 1 or query.shape[2] != 1 or not mask_shared or dropout or kwargs.get("softcap") is not None
            or kwargs.get("position_bias") is not None or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask,
                                                           scale=scaling, is_causal=False)
    return out.reshape(out.shape[0], heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def gqa_decoding(model: Any) -> Any:
    """Run `model`'s sdpa attention through `sdpa_gqa_decoding` inside the block (registered with transformers'
    AttentionInterface, the model's implementation restored on the way out, also on error)."""
    from transformers import AttentionInterface

    config = model.config
    before = config._attn_implementation
    if before != "sdpa":
        yield
        return
    AttentionInterface.register(GQA_DECODING, sdpa_gqa_decoding)
    config._attn_implementation = GQA_DECODING
    try:
        yield
    finally:
        config._attn_implementation = before
