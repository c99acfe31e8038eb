"""lm-evaluation-harness's document perplexity (`loglikelihood_rolling`), computed by qcheck: the figures its
`wikitext` task prints (`word_perplexity`, `byte_perplexity`, `bits_per_byte`), so they sit next to a paper's.

What lm-eval's HF model (`HFLM`, 0.4.x) does by default, and this module with `RollingSettings()`:
- each document is encoded alone with the tokenizer's own special-token default (`add_bos_token=None`), except
  that a text already starting with the prefix token's string gets none;
- a prefix token (the tokenizer's BOS, else its EOS) is put before the document, so its first token is scored;
- disjoint windows of `max_length` tokens (the config's `n_positions`/`max_position_embeddings`/`n_ctx`, else the
  tokenizer's `model_max_length`, else 2048) score every token once; a window after the first sees the
  `max_length` tokens before its last one, so the last (short) window keeps earlier tokens as context;
- log-softmax in the logits' dtype (`softmax_dtype=None`), each window's sum taken in that dtype
  (`round_window_sums=True`: a bf16 model's window sums are rounded to bf16), window sums added per document;
- word_perplexity = exp(-sum LL / sum words), byte_perplexity = exp(-sum LL / sum bytes), bits_per_byte =
  -sum LL / sum bytes / ln 2, words and bytes counted on the page before detokenization.

qcheck's own `perplexity` differs on purpose (see `QCHECK_DIFFERENCES`): it scores one text in windows of
`--qcheck-context` tokens with a stride, per token, without a prefix token. Both are reported, each named.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, DataError
from qcheck.inputs.documents import Document
from qcheck.measure.head import decoder_states, last_logits
from qcheck.measure.perplexity import NonFiniteError
from qcheck.quant.offload import input_device

TOKENIZER_INFINITY = 1000000000000000019884624838656
"""transformers' `model_max_length` when a tokenizer sets none (lm-eval ignores it then)."""
DEFAULT_MAX_LENGTH = 2048
CONFIG_LENGTH_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")
LM_EVAL_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
QCHECK_DIFFERENCES = (
    ("qcheck perplexity scores the text as one token stream (documents not separated), lm-eval scores each "
     "document alone"),
    ("qcheck windows are --qcheck-context tokens with a stride (default 1024, non-overlapping) and a window's first "
     "token is unscored; lm-eval's windows are the model's max_length and score every token"),
    ("qcheck puts no BOS/prefix token first (the text's first token is never scored); lm-eval conditions the first "
     "token on the prefix token (BOS, else EOS)"),
    ("qcheck reports per token (words and bytes of the scored text on request); lm-eval reports per word and per "
     "byte of the page before detokenization"),
)


@dataclass(frozen=True)
class RollingSettings:
    """How documents are scored; every None means "what lm-eval's HFLM does by default for this model"."""

    max_length: int | None = None
    prefix_token_id: int | None = None
    add_special_tokens: bool | None = None
    softmax_dtype: str | None = None
    round_window_sums: bool = True
    """Sum each window's log-probs in the softmax dtype, as lm-eval does: for a bf16/fp16 model its per-window sum
    keeps 8/11 significant bits. False sums in float64 (with softmax_dtype="float32": the precise figure)."""
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {self.max_length}", field="max_length")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}", field="batch_size")
        if self.softmax_dtype not in (None, "float32", "float64", "bfloat16", "float16"):
            raise ConfigError(f"softmax_dtype must be None (the logits' dtype) or a float dtype name, got "
                              f"{self.softmax_dtype!r}", field="softmax_dtype")


def resolve_max_length(model: nn.Module, tokenizer: Any) -> int:
    """lm-eval's max_length: the config's length attribute (text_config first), the tokenizer's, else 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in CONFIG_LENGTH_ATTRS:
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    length = getattr(tokenizer, "model_max_length", None)
    if length is not None and length != TOKENIZER_INFINITY:
        return int(length)
    return DEFAULT_MAX_LENGTH


def resolve_prefix_token_id(tokenizer: Any) -> int:
    """lm-eval's prefix token: the tokenizer's BOS, else its EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise DataError("the tokenizer has neither a BOS nor an EOS token: give RollingSettings(prefix_token_id=...)")
    return int(token)


def encode_document(tokenizer: Any, text: str, add_special_tokens: bool | None, prefix_token_id: int) -> list[int]:
    """Token ids of one document as lm-eval's `tok_encode` makes them (no special tokens when the text starts with
    the prefix token's string; else the given flag, or the tokenizer's default when None)."""
    kwargs: dict[str, bool] = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    if add_special_tokens is None and text.startswith(tokenizer.decode(prefix_token_id)):
        kwargs = {"add_special_tokens": False}
    return list(tokenizer.encode(text, **kwargs))


def rolling_windows(tokens: Sequence[int], prefix_token_id: int, max_length: int) -> list[tuple[list[int], int]]:
    """(input ids, n_scored) per window: the last n_scored positions of the input predict the next n_scored
    document tokens; together the windows score every token once (lm-eval's disjoint rolling windows)."""
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}", field="max_length")
    n = len(tokens)
    if n == 0:
        return []
    first = min(max_length, n)
    out = [([prefix_token_id, *tokens[: first - 1]], first)]
    done = first
    while done < n:
        scored = min(n - done, max_length)
        end = done + scored
        out.append((list(tokens[end - max_length - 1: end - 1]), scored))
        done = end
    return out


def _torch_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


HEAD_CHUNK = 1024
"""Scored positions whose logits exist at once: the output head and the log-softmax run on at most this many
positions of a window. A whole 8,192-token window's logits are 1.6 GB in fp32 with SmolLM2's 49k vocabulary and
8.4 GB with a 256k one (twice that with the log-softmax's copy); 1,024 positions of a 256k vocabulary are 1 GB."""
def split_head(model: nn.Module, probe: Sequence[int]) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, output head) when the model's logits are head(decoder(ids)) in value and dtype on the first
    PROBE_TOKENS of `probe` (`qcheck.measure.head.split_head`); else None, and windows are scored from the model's
    own logits (a model that upcasts its logits after the head would change lm-eval's softmax dtype)."""
    from qcheck.measure.head import PROBE_TOKENS
    from qcheck.measure.head import split_head as split

    device = input_device(model)
    ids = torch.tensor([list(probe)[:PROBE_TOKENS]], dtype=torch.long, device=device)
    return split(model, ids, tol=1e-4, same_dtype=True)


def _picked_logprobs(rows: torch.Tensor, head: nn.Module | None, targets: torch.Tensor,
                     softmax_dtype: torch.dtype | None) -> torch.Tensor:
    """log p(target) at each scored position: `rows` are the positions' hidden states (turned into logits by
    `head`, HEAD_CHUNK positions at a time) or, with head None, their logits. Row-wise, so the values are those of
    one log-softmax over the whole window."""
    parts = []
    for lo in range(0, targets.numel(), HEAD_CHUNK):
        chunk = rows[lo: lo + HEAD_CHUNK]
        logprobs = torch.log_softmax(head(chunk) if head is not None else chunk, dim=-1, dtype=softmax_dtype)
        parts.append(logprobs.gather(1, targets[lo: lo + HEAD_CHUNK].unsqueeze(1)).squeeze(1))
        del logprobs
    return torch.cat(parts)


@torch.no_grad()
def _window_loglikelihoods(model: nn.Module, windows: Sequence[tuple[list[int], list[int]]], batch_size: int,
                           softmax_dtype: torch.dtype | None, pad_id: int, round_sums: bool) -> list[float]:
    """Summed log p(targets) per (input ids, target ids) window, right-padded batches, padding never scored. Only
    HEAD_CHUNK positions' logits are held at once where the model's logits are head(decoder(ids)) (`split_head`);
    otherwise the model's logits of the scored positions, with the log-softmax still chunked."""
    device = input_device(model)
    split = split_head(model, windows[0][0]) if windows else None
    out: list[float] = []
    for b in range(0, len(windows), batch_size):
        batch = windows[b: b + batch_size]
        width = max(len(inp) for inp, _ in batch)
        keep = width - min(len(inp) - len(t) for inp, t in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (inp, _) in enumerate(batch):
            ids[row, : len(inp)] = torch.tensor(inp)
            attn[row, : len(inp)] = 1
        ids, attn = ids.to(device), attn.to(device)
        if split is not None:
            states, first = decoder_states(split[0], ids, attn), 0
        else:
            states = last_logits(model, ids, attn, keep)
            first = width - states.shape[1]
        for row, (inp, targets) in enumerate(batch):
            lo = len(inp) - len(targets) - first
            picked = _picked_logprobs(states[row, lo: lo + len(targets)], split[1] if split is not None else None,
                                      torch.tensor(targets, device=device), softmax_dtype)
            out.append(float(picked.sum() if round_sums else picked.double().sum()))
        del states
    return out


def _as_documents(documents: Sequence[Document | str]) -> list[Document]:
    docs = [d if isinstance(d, Document) else Document.plain(f"doc-{i}", d) for i, d in enumerate(documents)]
    if not docs:
        raise DataError("no documents to score")
    return docs


def lm_eval_perplexity(model: nn.Module, tokenizer: Any, documents: Sequence[Document | str],
                       settings: RollingSettings | None = None) -> dict[str, Any]:
    """Rolling log-likelihood of each document and lm-eval's `word_perplexity`, `byte_perplexity`,
    `bits_per_byte` (plus `token_perplexity`), with per-document figures and the resolved settings (JSON-able)."""
    settings = settings or RollingSettings()
    docs = _as_documents(documents)
    max_length = settings.max_length or resolve_max_length(model, tokenizer)
    prefix = settings.prefix_token_id if settings.prefix_token_id is not None else resolve_prefix_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    start = time.perf_counter()
    windows: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    n_tokens: list[int] = []
    for i, doc in enumerate(docs):
        tokens = encode_document(tokenizer, doc.text, settings.add_special_tokens, prefix)
        if not tokens:
            raise DataError(f"document {doc.id} has no tokens")
        n_tokens.append(len(tokens))
        done = 0
        for inp, scored in rolling_windows(tokens, prefix, max_length):
            windows.append((inp, tokens[done: done + scored]))
            owner.append(i)
            done += scored
    window_ll = _window_loglikelihoods(model, windows, settings.batch_size, _torch_dtype(settings.softmax_dtype),
                                       pad_id, settings.round_window_sums)
    doc_ll = [0.0] * len(docs)
    doc_windows = [0] * len(docs)
    for i, ll in zip(owner, window_ll):
        doc_ll[i] += ll
        doc_windows[i] += 1
    bad = [d.id for d, ll in zip(docs, doc_ll) if not math.isfinite(ll)]
    if bad:
        raise NonFiniteError(f"non-finite log-likelihood for documents {bad} (NaN/inf logits)")
    total = sum(doc_ll)
    words = sum(d.n_words for d in docs)
    n_bytes = sum(d.n_bytes for d in docs)
    tokens_total = sum(n_tokens)
    dtype = next(model.parameters()).dtype
    return {
        "word_perplexity": math.exp(-total / words),
        "byte_perplexity": math.exp(-total / n_bytes),
        "bits_per_byte": -total / n_bytes / math.log(2),
        "token_perplexity": math.exp(-total / tokens_total),
        "loglikelihood": total, "n_documents": len(docs), "n_words": words, "n_bytes": n_bytes,
        "n_tokens": tokens_total, "n_windows": len(windows),
        "documents": [{"id": d.id, "loglikelihood": ll, "words": d.n_words, "bytes": d.n_bytes, "tokens": t,
                       "windows": w} for d, ll, t, w in zip(docs, doc_ll, n_tokens, doc_windows)],
        "settings": {**asdict(settings), "max_length": max_length, "prefix_token_id": prefix,
                     "prefix_token": tokenizer.decode(prefix), "model_dtype": str(dtype).replace("torch.", ""),
                     "softmax_dtype": settings.softmax_dtype or str(dtype).replace("torch.", "")},
        "definition": "lm-evaluation-harness loglikelihood_rolling (wikitext task metrics)",
        "differs_from_qcheck_perplexity": list(QCHECK_DIFFERENCES),
        "seconds": time.perf_counter() - start,
    }
