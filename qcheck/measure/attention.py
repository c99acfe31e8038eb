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
from contextvars import ContextVar
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
    """transformers' sdpa attention, except that the queries of a grouped-query layer (one token, or several under a
    mask shared by the heads: prefill chunks, the choice rows of per-question scoring and attacks) attend to the
    cache's key/value heads as they are: the query heads sharing a key/value head become that head's query rows.

    transformers before 5.2x copies the cache to every query head (`repeat_kv`) whenever a mask is passed on CUDA: at
    every decoding step, in every layer, over the whole static cache (SmolLM2-135M: 3 key/value heads to 9, 50 rows x
    ~1,300 positions x 30 layers, about 9 GB written per fp32 step). The dot products, softmax and weighted sums are
    the same; only the copy goes. A multi-token query without a mask (transformers' causal shortcut) is left to
    transformers, whose sdpa call shares the heads itself there."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    mask_shared = attention_mask is None or attention_mask.shape[1] == 1
    plain = not (dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
                 or kwargs.get("output_attentions"))
    prefixes = _SHARED_PREFIX.get()
    if prefixes:
        layer = getattr(module, "layer_idx", None)
        if layer not in prefixes or not plain or not mask_shared or attention_mask is None:
            raise RuntimeError(f"the shared prefix's keys and values cannot be attended to here (layer index "
                               f"{layer!r}, mask {None if attention_mask is None else tuple(attention_mask.shape)})")
        return attend_with_prefix(query, key, value, attention_mask, *prefixes[layer], scaling), None
    length = query.shape[2]
    if groups == 1 or not mask_shared or not plain or (length > 1 and attention_mask is None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups * length, dim)
    mask = per_group(attention_mask, groups) if length > 1 else attention_mask
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling,
                                                           is_causal=False)
    return out.reshape(out.shape[0], heads, length, value.shape[-1]).transpose(1, 2).contiguous(), None


def per_group(mask: Any, groups: int) -> Any:
    """A mask [rows, 1, q, keys] for queries packed per key/value head ([rows, kv heads, groups * q, dim], row g * q + t
    being group g's position t): each position's mask row, once per group."""
    rows, _, length, keys = mask.shape
    return mask[:, :, None].expand(rows, 1, groups, length, keys).reshape(rows, 1, groups * length, keys)


_SHARED_PREFIX: ContextVar[dict[int, tuple[Any, Any]] | None] = ContextVar("qcheck_shared_prefix", default=None)
"""Per layer index, the keys and values [1, key/value heads, prefix, head dim] of the prompt prefix every row of the
batch shares, while `gqa_decoding`'s block decodes with one (None, or empty, otherwise)."""


def attend_with_prefix(query: Any, key: Any, value: Any, mask: Any, prefix_key: Any, prefix_value: Any,
                       scaling: float | None) -> Any:
    """Attention of every row's queries [rows, heads, q, dim] over the shared prefix (one copy, visible to every
    query) followed by the row's own cache `key`/`value` [rows, kv heads, own, dim] under `mask` [rows, 1, q, own]
    (boolean, or additive). The result [rows, q, heads, dim] is softmax attention over the prefix and the row's keys
    together, as if the prefix were copied into every row's cache (which costs, at the 1.2B shape with 50 rows and
    SmolLM2's 374-token 3-shot prefix, 1.2 GB of cache). The query heads of a key/value head are packed into its
    query rows, so no head is copied either.

    One-token fp32 queries (the decoding steps) take the prefix's scores with one matrix product against its single
    copy and the rows' scores with another, and one softmax over both. Other queries (prefill chunks; 16-bit
    decoding, whose 16-bit score products would round where sdpa's kernels keep fp32, and which the decoder therefore
    runs on copies instead: `qcheck.measure.decode.keeps_prefix_once`) run sdpa over the prefix concatenated to the
    rows' keys, one layer at a time (a transient copy of one layer's prefix per row)."""
    import torch

    rows, heads, length, dim = query.shape
    kv_heads, own, shared = key.shape[1], key.shape[2], prefix_key.shape[2]
    groups = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    if mask.dtype != torch.bool:
        mask = mask == 0
    if length == 1 and query.dtype == torch.float32:
        packed = query.reshape(rows, kv_heads, groups, dim) * scale
        on_prefix = torch.matmul(packed.transpose(0, 1).reshape(kv_heads, rows * groups, dim),
                                 prefix_key[0].transpose(1, 2))
        on_own = torch.matmul(packed, key.transpose(2, 3)).masked_fill_(~mask, float("-inf"))
        scores = torch.cat([on_prefix.view(kv_heads, rows, groups, shared).transpose(0, 1), on_own], -1)
        probs = torch.softmax(scores, -1)
        out = torch.matmul(probs[..., shared:], value)
        out += torch.matmul(probs[..., :shared].transpose(0, 1).reshape(kv_heads, rows * groups, shared),
                            prefix_value[0]).view(kv_heads, rows, groups, -1).transpose(0, 1)
    else:
        keys = torch.cat([prefix_key.expand(rows, -1, -1, -1), key], 2)
        values = torch.cat([prefix_value.expand(rows, -1, -1, -1), value], 2)
        full = torch.cat([mask.new_ones(rows, 1, mask.shape[2], shared), mask.expand(rows, 1, -1, own)], -1)
        full = per_group(full, groups)
        out = torch.nn.functional.scaled_dot_product_attention(
            query.reshape(rows, kv_heads, groups * length, dim), keys, values, attn_mask=full, scale=scale)
    return out.reshape(rows, heads, length, out.shape[-1]).transpose(1, 2).contiguous()


@contextlib.contextmanager
def packed_gqa_attention(model: Any) -> Any:
    """Run `model`'s sdpa attention through `sdpa_gqa_decoding` inside the block (registered with transformers'
    AttentionInterface, with sdpa's mask builder beside it in AttentionMaskInterface; the model's implementation
    restored on the way out, also on error). Yields whether it did: False, changing nothing, for a model whose
    attention is not sdpa (or has no config)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before != "sdpa":
        yield False
        return
    AttentionInterface.register(GQA_DECODING, sdpa_gqa_decoding)
    AttentionMaskInterface.register(GQA_DECODING, sdpa_mask)  # without it transformers builds no mask at all
    config._attn_implementation = GQA_DECODING
    try:
        yield True
    finally:
        config._attn_implementation = before


@contextlib.contextmanager
def gqa_decoding(model: Any) -> Any:
    """`packed_gqa_attention` for the decoder. Yields a dict the decoder fills with a shared prefix's keys and values
    per layer index once it has them; from then on every attention call of the model attends to them first
    (`attend_with_prefix`). Yields None, and changes nothing, for a model whose attention is not sdpa."""
    with packed_gqa_attention(model) as packed:
        if not packed:
            yield None
            return
        prefixes: dict[int, tuple[Any, Any]] = {}
        token = _SHARED_PREFIX.set(prefixes)
        try:
            yield prefixes
        finally:
            _SHARED_PREFIX.reset(token)
