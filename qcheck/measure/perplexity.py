"""Token-weighted, strided sliding-window perplexity: exp(total NLL / total scored tokens).

Each window sees up to `context` tokens; only the tokens not scored by an earlier window are scored
(the rest is context), so every token after the first is scored exactly once. Windows are batched with
right padding, and padding is never scored. Per-window NLL sums and token counts are kept so that
intervals (bootstrap over windows) and recomputation are possible.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qcheck.errors import DataError
from qcheck.measure.head import StatesCache, decoder_states, last_logits, scored_nll
from qcheck.quant.offload import input_device


class NonFiniteError(DataError):
    """The model's NLL is not finite (NaN/inf logits): the perplexity_finite check fails on it."""


BLOCK_TOKENS = 128
"""Resampling unit of perplexity intervals and paired comparisons: the scored tokens at absolute text positions
[k*128, (k+1)*128). Adjacent tokens' NLLs are correlated; blocks this long keep a bootstrap honest and give dozens
of units where a 4,096-token slice has only four 1,024-token windows."""


@dataclass
class PerplexityResult:
    """Perplexity with what it was computed on. Per-window and per-block NLL sums and token counts allow
    recomputation, intervals and paired comparisons; they round-trip through `to_dict` / `from_dict`."""

    perplexity: float
    nll_sum: float
    n_tokens: int
    context: int
    stride: int
    n_windows: int
    window_nll: list[float] = field(default_factory=list)
    window_tokens: list[int] = field(default_factory=list)
    n_chars: int | None = None
    n_bytes: int | None = None
    n_words: int | None = None
    seconds: float | None = None
    token_nll: Any = None
    """Per-token NLL (numpy float64) in text order, at the positions `scored_positions(n_ids, context, stride)`;
    kept in memory only (the blocks below are what is stored)."""
    n_ids: int | None = None
    block_size: int = BLOCK_TOKENS
    block_index: list[int] = field(default_factory=list)
    block_nll: list[float] = field(default_factory=list)
    block_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.block_index and self.token_nll is not None and self.n_ids is not None:
            import numpy as np

            positions = scored_positions(self.n_ids, self.context, self.stride)
            block = positions // self.block_size
            index, inverse = np.unique(block, return_inverse=True)
            self.block_index = [int(i) for i in index]
            self.block_nll = np.bincount(inverse, weights=np.asarray(self.token_nll, dtype=np.float64)).tolist()
            self.block_tokens = [int(c) for c in np.bincount(inverse)]

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_tokens

    def per_unit(self) -> dict[str, float | None]:
        """Perplexity per token, per word and per byte (units named; never compare across units)."""
        out: dict[str, float | None] = {"token": self.perplexity, "word": None, "byte": None}
        if self.n_words:
            out["word"] = math.exp(self.nll_sum / self.n_words)
        if self.n_bytes:
            out["byte"] = math.exp(self.nll_sum / self.n_bytes)
        return out

    def to_dict(self, with_windows: bool = True) -> dict[str, Any]:
        data = {"perplexity": self.perplexity, "nll_sum": self.nll_sum, "n_tokens": self.n_tokens,
                "context": self.context, "stride": self.stride, "n_windows": self.n_windows,
                "units": self.per_unit(), "n_chars": self.n_chars, "n_words": self.n_words, "n_bytes": self.n_bytes,
                "n_ids": self.n_ids, "seconds": self.seconds}
        if with_windows:
            data.update(window_nll=list(self.window_nll), window_tokens=list(self.window_tokens),
                        block_size=self.block_size, block_index=list(self.block_index),
                        block_nll=list(self.block_nll), block_tokens=list(self.block_tokens))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerplexityResult:
        """The result `to_dict()` wrote (per-token NLLs are not stored: blocks stand in for them)."""
        keys = ("perplexity", "nll_sum", "n_tokens", "context", "stride", "n_windows", "window_nll", "window_tokens",
                "n_chars", "n_bytes", "n_words", "seconds", "n_ids", "block_size", "block_index", "block_nll",
                "block_tokens")
        return cls(**{k: data[k] for k in keys if k in data})


def windows(n_ids: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) for each window; the scored tokens are the last n_scored of [begin, end).

    A window scores the tokens no earlier window scored, except its own first token, which has no context in
    it: with stride < context every token after the first is scored exactly once; with non-overlapping
    windows (stride == context) each window's first token goes unscored. Windows with nothing to score are
    dropped.
    """
    if context < 2:
        raise DataError(f"context must be >= 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise DataError(f"stride must be in 1..context ({context}), got {stride}")
    out = []
    prev_end = 1  # the first token has no context and is never scored
    begin = 0
    while prev_end < n_ids:
        end = min(begin + context, n_ids)
        n = end - max(prev_end, begin + 1)
        if n > 0:
            out.append((begin, end, n))
        prev_end = max(prev_end, end)
        begin += stride
    return out


def scored_positions(n_ids: int, context: int, stride: int) -> Any:
    """Absolute positions (numpy int64, text order) of the tokens that windows(n_ids, context, stride) scores."""
    import numpy as np

    parts = [np.arange(e - n, e) for _, e, n in windows(n_ids, context, stride)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def model_context(model: nn.Module, default: int = 1024) -> int:
    """The model's maximum context (`qcheck.inputs.models.trained_context`), or `default` when it does not say."""
    from qcheck.inputs.models import trained_context

    return trained_context(getattr(model, "config", None)) or default


def _head_path(model: nn.Module, ids: torch.Tensor, compile_decoder: bool) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, head) where the model's logits are head(decoder(ids)) on a probe of the text, else None."""
    from qcheck.measure.head import PROBE_TOKENS, split_head

    split = split_head(model, ids[:PROBE_TOKENS].unsqueeze(0), tol=1e-5)
    if split is None or not compile_decoder:
        return split
    return torch.compile(split[0]), split[1]


@torch.no_grad()
def perplexity_of_ids(
    model: nn.Module,
    ids: Sequence[int] | torch.Tensor,
    *,
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 4,
    pad_id: int = 0,
    compile_decoder: bool = False,
    states_cache: StatesCache | None = None,
) -> PerplexityResult:
    """Strided perplexity of one token sequence under `model` (NLL accumulated in float64).

    Batched with right padding; only the scored positions go through the output head and the log-softmax, so
    padding and context tokens cost no head FLOPs. Where the logits are head(decoder(x)) (checked on a probe of the
    text), the head runs on the scored positions' hidden states in chunks and a batch's full logits never exist;
    otherwise the model's own logits are used (`logits_to_keep` where it takes it). `compile_decoder` runs the
    decoder through torch.compile (worth it for long texts on a GPU, where eager small models are host-bound).
    `states_cache` keeps the decoder states for a later measurement of the same windows (fidelity).
    Per-token NLLs (text order, at `scored_positions(...)`) are kept in `token_nll`.
    """
    import time

    ids_t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids_t.numel() < 2:
        raise DataError(f"perplexity needs at least 2 tokens, got {ids_t.numel()}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    stride = context if stride is None else stride
    spans = windows(ids_t.numel(), context, stride)
    device = input_device(model)
    token_parts: list[torch.Tensor] = []
    window_parts: list[torch.Tensor] = []
    count_parts: list[torch.Tensor] = []
    start = time.perf_counter()
    split = _head_path(model, ids_t, compile_decoder)
    for i in range(0, len(spans), batch_size):
        batch = spans[i: i + batch_size]
        width = max(e - b for b, e, _ in batch)
        inp = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        score = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (b, e, n) in enumerate(batch):
            inp[row, : e - b] = ids_t[b:e]
            attn[row, : e - b] = 1
            score[row, e - b - n: e - b] = True
        inp, attn, score = inp.to(device), attn.to(device), score.to(device)
        if split is not None:
            # the state at position t predicts token t+1
            mask = score[:, 1:]
            states = (states_cache.states(split[0], inp, attn) if states_cache is not None and not compile_decoder
                      else decoder_states(split[0], inp, attn))
            # the decoder's last layer may run on another device than the inputs (a model spread over devices)
            nll = scored_nll(states[:, :-1][mask.to(states.device)], inp[:, 1:][mask], split[1])
        else:
            # logits at position t predict token t+1: the first predicting position is one before the first scored
            keep = width - min(e - b - n for b, e, n in batch) + 1
            logits = last_logits(model, inp, attn, min(keep, width))
            first = width - logits.shape[1]  # the position of logits[:, 0]
            mask = score[:, 1:][:, first:]
            nll = scored_nll(logits[:, :-1][mask.to(logits.device)], inp[:, 1:][:, first:][mask])
        nll = nll.to(device)
        rows = torch.arange(len(batch), device=device).unsqueeze(1).expand_as(mask)[mask]
        token_parts.append(nll)
        window_parts.append(torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, nll))
        count_parts.append(mask.sum(dim=1))
    token_nll = torch.cat(token_parts).cpu().numpy()
    window_nll = torch.cat(window_parts).cpu().tolist()
    window_tokens = [int(c) for c in torch.cat(count_parts).cpu().tolist()]
    nll_sum = float(sum(window_nll))
    n_tokens = int(sum(window_tokens))
    if not math.isfinite(nll_sum):
        raise NonFiniteError(f"perplexity is not finite (total NLL {nll_sum}): the model produced NaN/inf logits")
    return PerplexityResult(math.exp(nll_sum / n_tokens), nll_sum, n_tokens, context, stride, len(spans),
                            window_nll, window_tokens, seconds=time.perf_counter() - start, token_nll=token_nll,
                            n_ids=int(ids_t.numel()))


def perplexity(
    model: nn.Module, tokenizer: Any, text: str, *, context: int = 1024, stride: int | None = None,
    batch_size: int = 4, max_tokens: int | None = None,
) -> PerplexityResult:
    """Perplexity of `text` (tokenized once, no special tokens) with word and byte counts for other units."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
        text = tokenizer.decode(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = perplexity_of_ids(model, ids, context=context, stride=stride, batch_size=batch_size, pad_id=pad)
    result.n_chars = len(text)
    result.n_bytes = len(text.encode("utf-8"))
    result.n_words = len(text.split())
    return result
