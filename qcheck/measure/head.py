"""A causal LM's output head apart from its decoder. Where the model's logits are head(decoder(ids)), checked on a
probe, scoring runs the head on a chunk of positions at a time instead of holding a window's logits over the whole
vocabulary. A model that scales or caps its logits after the head (Gemma's soft-capping, Cohere's logit scale)
differs on the probe and is scored from its own logits."""
from __future__ import annotations

import torch
from torch import nn

from qcheck.errors import DataError
from qcheck.quant.offload import input_device

PROBE_TOKENS = 16
"""Tokens of the scored text fed both ways to check that head(decoder(ids)) is the model's own logits."""
STATES_CACHE_BYTES = 256 * 2**20
"""The most decoder states one subject keeps between measurements: a 4,096-token perplexity slice of a 70B model
(hidden 8,192) in fp32 is 128 MiB."""


def ids_digest(*tensors: torch.Tensor) -> str:
    """A short content hash of token tensors (the key of kept decoder states)."""
    import hashlib

    return hashlib.sha256(b"".join(t.cpu().numpy().tobytes() for t in tensors)).hexdigest()[:16]


class StatesCache:
    """One subject's decoder states per input batch, so measurements that run the same windows (perplexity, then
    fidelity's first windows: the same tokens, context and batching) run its decoder once. Keyed by the decoder
    and the batch's ids and mask; batches past `max_bytes` are computed and not kept. Lives as long as the subject."""

    def __init__(self, max_bytes: int = STATES_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.kept: dict[tuple, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0

    def states(self, decoder: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`decoder_states(decoder, ids, attention_mask)`, computed once per distinct batch (read-only)."""
        key = (id(decoder), tuple(ids.shape), ids_digest(ids, attention_mask))
        if key in self.kept:
            self.hits += 1
            return self.kept[key]
        out = decoder_states(decoder, ids, attention_mask)
        size = out.numel() * out.element_size()
        if self.bytes + size <= self.max_bytes:
            self.kept[key] = out
            self.bytes += size
        return out


HEAD_CHUNK_BYTES = 1 << 30
"""fp32 logits held at once: rows per chunk = this / (vocabulary x 4 bytes), 5,461 rows for SmolLM2's 49,152 tokens,
2,092 for Llama 3's 128,256. A 64-window GPU batch would otherwise hold 13 GB of logits."""


def scored_nll(rows: torch.Tensor, targets: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
    """Per-row NLL (float64) of `targets`: `rows` are logits, or hidden states that `head` turns into logits; the
    float32 log-softmax (and the head) run on HEAD_CHUNK_BYTES of logits at a time. Row-wise, so chunking changes
    no value."""
    vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0]) if head is not None else rows.shape[-1]
    step = max(1, HEAD_CHUNK_BYTES // (4 * vocab))
    parts = []
    for i in range(0, rows.shape[0], step):
        logits = (head(rows[i: i + step]) if head is not None else rows[i: i + step]).float()
        # a model spread over devices returns its logits on its last one
        parts.append(torch.nn.functional.cross_entropy(logits, targets[i: i + step].to(logits.device),
                                                       reduction="none").double())
    return torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float64)


def last_logits(model: nn.Module, inp: torch.Tensor, attn: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions, no KV cache (the output head runs only there where the model takes
    `logits_to_keep`; a model that ignores it returns all positions, which are cut here)."""
    width = inp.shape[1]
    if keep >= width:
        return model(input_ids=inp, attention_mask=attn, use_cache=False).logits
    try:
        logits = model(input_ids=inp, attention_mask=attn, logits_to_keep=keep, use_cache=False).logits
    except TypeError:
        logits = model(input_ids=inp, attention_mask=attn).logits
    if logits.shape[1] not in (keep, width):
        raise DataError(f"model returned logits for {logits.shape[1]} positions, expected {keep} or {width}")
    return logits[:, -keep:]


def decoder_states(decoder: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The decoder's last hidden states ([batch, width, hidden])."""
    out = decoder(input_ids=ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@torch.no_grad()
def split_head(model: nn.Module, probe: torch.Tensor, *, tol: float, same_dtype: bool = False
               ) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, output head) when the model's logits equal head(decoder(probe)) within `tol` (relative and
    absolute; with same_dtype also in dtype), else None. `probe`: token ids [1, n]."""
    decoder = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or decoder is model or head is None:
        return None
    try:
        probe = probe.to(input_device(model))
        full = model(input_ids=probe, use_cache=False).logits
        split = head(decoder_states(decoder, probe))
    except Exception:  # noqa: BLE001 - a model the split path does not fit is scored from its own logits
        return None
    if full.shape != split.shape or (same_dtype and full.dtype != split.dtype):
        return None
    # a model spread over devices may return its logits where its head runs and the split's where the decoder ends
    same = torch.allclose(full.float(), split.float().to(full.device), rtol=tol, atol=tol)
    return (decoder, head) if same else None
