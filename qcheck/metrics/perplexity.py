"""Token-weighted, strided sliding-window perplexity: exp(total NLL / total scored tokens).

Each window sees up to `context` tokens; only the tokens not scored by an earlier window are scored
(the rest is context), so every token after the first is scored exactly once. Windows are batched with
right padding, and padding is never scored. Per-window NLL sums and token counts are kept so that
intervals (bootstrap over windows) and recomputation are possible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from qcheck.errors import DataError


@dataclass
class PerplexityResult:
    """Perplexity with what it was computed on; `window_nll` / `window_tokens` allow recomputation."""

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

    def to_dict(self, with_windows: bool = False) -> dict[str, Any]:
        data = {"perplexity": self.perplexity, "nll_sum": self.nll_sum, "n_tokens": self.n_tokens,
                "context": self.context, "stride": self.stride, "n_windows": self.n_windows,
                "units": self.per_unit(), "n_words": self.n_words, "n_bytes": self.n_bytes,
                "seconds": self.seconds}
        if with_windows:
            data["window_nll"] = self.window_nll
            data["window_tokens"] = self.window_tokens
        return data


def windows(n_ids: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) for each window; the scored tokens are the last n_scored of [begin, end)."""
    if context < 2:
        raise DataError(f"context must be >= 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise DataError(f"stride must be in 1..context ({context}), got {stride}")
    out = []
    prev_end = 1  # the first token has no context and is never scored
    begin = 0
    while prev_end < n_ids:
        end = min(begin + context, n_ids)
        out.append((begin, end, end - prev_end))
        prev_end = end
        begin += stride
    return out


def model_context(model: nn.Module, default: int = 1024) -> int:
    """The model's maximum context (max_position_embeddings), or `default` when it does not say."""
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", default) or default)


@torch.no_grad()
def perplexity_of_ids(
    model: nn.Module,
    ids: Sequence[int] | torch.Tensor,
    *,
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 4,
    pad_id: int = 0,
) -> PerplexityResult:
    """Strided perplexity of one token sequence under `model` (NLL accumulated in float64)."""
    import time

    ids_t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids_t.numel() < 2:
        raise DataError(f"perplexity needs at least 2 tokens, got {ids_t.numel()}")
    stride = context if stride is None else stride
    spans = windows(ids_t.numel(), context, stride)
    device = next(model.parameters()).device
    window_nll: list[float] = []
    window_tokens: list[int] = []
    start = time.perf_counter()
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
        logits = model(input_ids=inp, attention_mask=attn).logits
        # logits at position t predict token t+1: score targets at positions 1.. where marked
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = inp[:, 1:]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        mask = score[:, 1:]
        for row in range(len(batch)):
            window_nll.append(float(nll[row][mask[row]].double().sum().item()))
            window_tokens.append(int(mask[row].sum().item()))
    nll_sum = float(sum(window_nll))
    n_tokens = int(sum(window_tokens))
    if not math.isfinite(nll_sum):
        raise DataError(f"perplexity is not finite (total NLL {nll_sum}): the model produced NaN/inf logits")
    return PerplexityResult(math.exp(nll_sum / n_tokens), nll_sum, n_tokens, context, stride, len(spans),
                            window_nll, window_tokens, seconds=time.perf_counter() - start)


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
