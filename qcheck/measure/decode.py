"""Greedy decoding on a static key/value cache, replayed as one CUDA graph per step on a GPU.

An eager transformers forward is host-bound at these batch sizes (one kernel launch at a time: ~20 ms a step for
SmolLM2-135M on an H100, whatever the batch). Here the prompt is prefilled once; then one decoding step (forward,
argmax, bookkeeping) is captured as a CUDA graph and replayed, so a step costs the GPU's time only. The step is the
same arithmetic as `model.generate`'s greedy search (left padding masked out, positions continuing each prompt),
on a fixed-size cache: attention runs over the cache's full length with the unused slots masked out, and a
grouped-query layer attends to the cached key/value heads without copying them per query head
(`qcheck.measure.attention.sdpa_gqa_decoding`). A prompt prefix every row shares (the few-shot examples) is
prefilled once; in an fp32 cache whose steps are replayed (or run on a CPU) it is also kept once (each row's cache
holds only the positions after it, and attention reads the prefix's single copy:
`qcheck.measure.attention.attend_with_prefix`), otherwise copied into every row (`keeps_prefix_once` says why).

A model whose forward waits for the GPU from the host cannot be captured: bitsandbytes' LLM.int8 with an outlier
threshold asks `if outliers.any()` in every int8 matmul. It decodes on the same static cache in eager steps (the
prompt prefilled in chunks, the shared prefix copied into every row: kept once, it cost more host time than it saved),
where it went through `generate` before: on two H100 machines, 64 steps of 50 prompts in 79 and 79 ms a step against
generate's 89 and 79 at the 135M shape, 58 and 52 against 67 and 63 at 1.2B, with 1.7 GB at peak against 2.1 and 3.9
against 6.6 (RESULTS.md, session 22; sessions 20 and 21 give the kept-once layout's figures).

Where a model cannot take this path at all (its own generation config adds logits processors, attention other than
sdpa, a sliding window shorter than the run, accelerate's dispatch, any other failure), `decode_greedy` raises
Unsupported with the reason, and the caller runs `model.generate` instead.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qcheck.measure.attention import gqa_decoding
from qcheck.measure.kv_cache import cache_argument, cache_of
from qcheck.quant.bnb import llm_int8_threshold
from qcheck.quant.experts import is_fused_experts
from qcheck.quant.offload import is_dispatched

EOS_CHECK_EVERY = 16
"""Steps between checks whether every row has stopped (each check waits for the GPU)."""

PREFILL_BYTES = 2**30
"""Working memory a prefill chunk may plan for (activations of `chunk` positions of every row, estimated by
`token_bytes`). The prompt is prefilled in chunks of positions, so the batch is bounded by its key/value cache,
not by the prefill: at the 8B shape all 50 GSM8K prompts at once (session 13: sized for a one-pass prefill, ~7 GiB
by the estimate, the batch held 30 rows, two batches of 256 steps each). With 50 rows and a ~750-position cache a
chunk is ~64 positions at 8B, ~94 at 1.2B and ~390 at 135M: 3,200 or more rows in each GEMM, which keeps it at
full speed."""


def token_bytes(config: Any, length: int) -> int:
    """Estimated prefill working memory per position of one row, in bytes: fp32 activations of the residual stream
    (x4) and the MLP (x3), and one row of attention scores per head over `length` keys (the math kernel's worst
    case)."""
    heads = int(config.num_attention_heads)
    return (int(config.hidden_size) * 4 + int(getattr(config, "intermediate_size", 0) or 0) * 3
            + heads * length) * 4


@dataclass
class Decoded:
    """New tokens [rows, steps] (rows that stopped are padded after their end) and how they were decoded."""

    tokens: torch.Tensor
    method: str
    prefill_chunk: int | None = None


class Unsupported(Exception):
    """The model cannot decode on this path; the message says why."""


def _static_cache(model: nn.Module, length: int) -> Any:
    """transformers' static cache for `length` positions (its tensors are made at the prefill, on the model's device
    and in its dtype)."""
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def keeps_prefix_once(dtype: torch.dtype, *, host_bound: bool = False) -> bool:
    """Whether a cache of `dtype` keeps the shared prefix once, outside the rows' cache, or copies it into every row.
    fp32 with steps replayed as CUDA graphs, or eager on a CPU: once. The decoding steps then read the prefix's single
    copy by matrix products (on an H100, 50 rows of SmolLM2's 374-token 3-shot prefix: 1.94 s against 2.56 s for 256
    steps at the 135M shape and 2.43 s against 4.05 s at 1.2B, with 1.1 and 1.4 GiB less memory; RESULTS.md, session
    19; on this project's 2-core CPU, 8 rows, 200 against 210 ms a step, session 22). fp32 in eager steps on a GPU
    (`host_bound`: a model whose forward waits for the GPU, bitsandbytes' LLM.int8): copied. Each such step's time is
    the host's, and attending to a prefix kept apart dispatches about 40 more operators per layer (at the 135M shape
    3,890 against 2,750 a step): kept once against copied, 95 and 93 against 79 and 79 ms a step at 135M, 60 and 52
    against 58 and 52 at 1.2B, 64 steps of 50 prompts on two H100 machines (session 22). 16-bit: copied. Its score
    products would round to 16 bits where sdpa's kernels keep fp32, and sdpa over the prefix concatenated at every
    step was slower than over the copies (2.03 s against 1.51 s at 135M, 1.86 s against 1.31 s at 1.2B); a 16-bit
    cache is half the size besides."""
    return dtype == torch.float32 and not host_bound


class _Decoder:
    """The static buffers of one batch and the step that advances them in place (capturable as a CUDA graph)."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                 eos: list[int], pad: int, prefix: int = 0, prefixes: dict[int, Any] | None = None,
                 host_bound: bool = False) -> None:
        self.model = model
        rows, width = input_ids.shape
        device = input_ids.device
        self.width, self.length = width, width + new_tokens
        shared = self._prefill_shared(input_ids[:1, :prefix]) if prefix else []
        self.kept_once = (bool(shared) and prefixes is not None
                          and keeps_prefix_once(shared[0][0].dtype, host_bound=host_bound))
        base = prefix if self.kept_once else 0                     # the positions the rows' cache leaves out
        self.first = width - base                                  # the first new token's cache slot
        self.cache = _static_cache(model, self.length - base)
        self.cache_kw = cache_argument(model, self.cache)
        if self.kept_once and prefixes is not None:
            prefixes.update(enumerate(shared))
        elif shared:
            position = torch.arange(prefix, device=device)
            for i, (keys, values) in enumerate(shared):
                self.cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), i,
                                  {"cache_position": position})
        real = attention_mask.bool()
        self.keys = torch.zeros(rows, 1, 1, self.length - base, dtype=torch.bool, device=device)
        self.keys[:, 0, 0, :self.first] = real[:, base:]
        self.slots = torch.arange(self.length - base, device=device)
        self.position = real.long().sum(1, keepdim=True)           # the next token's position, per row
        self.slot = torch.tensor([self.first], device=device)      # the next token's cache slot
        self.eos = torch.tensor(eos or [-1], device=device)
        self.pad = pad
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.out = torch.full((rows, new_tokens), pad, dtype=torch.long, device=device)
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self._prefill(input_ids, real, prefix, base)

    def _prefill(self, input_ids: torch.Tensor, real: torch.Tensor, prefix: int, base: int) -> None:
        """Fill the cache with the prompts after the shared `prefix` (already in: kept once, or copied into every
        row), in chunks of positions (every row at once) that keep the working memory within PREFILL_BYTES. The
        rows' cache starts at position `base`. Each chunk attends to the prefix and the cache written so far, as one
        pass would."""
        rows, width = input_ids.shape
        device = input_ids.device
        held = width - base
        causal = torch.ones(held, held, dtype=torch.bool, device=device).tril()
        mask = torch.zeros(rows, 1, held, self.length - base, dtype=torch.bool, device=device)
        mask[:, 0, :, :held] = causal[None] & real[:, None, base:]
        mask[:, 0, :, :held] |= torch.eye(held, dtype=torch.bool, device=device)[None]
        positions = (real.long().cumsum(1) - 1).clamp_min(0)[:, base:]
        self.chunk = max(1, min(width - prefix,
                                PREFILL_BYTES // max(1, rows * token_bytes(self.model.config, self.length))))
        for start in range(prefix - base, held, self.chunk):
            end = min(held, start + self.chunk)
            logits = self.model(input_ids=input_ids[:, base + start:base + end],
                                attention_mask=mask[:, :, start:end], position_ids=positions[:, start:end],
                                cache_position=torch.arange(start, end, device=device), **self.cache_kw,
                                use_cache=True, logits_to_keep=1).logits
        self._advance(logits)

    def _prefill_shared(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One row's pass over the shared prefix (positions 0..n-1, causal): its keys and values [1, key/value heads,
        n, head dim], per layer."""
        return _layer_states(cache_of(self.model(input_ids=tokens, use_cache=True, logits_to_keep=1)))

    def _advance(self, logits: torch.Tensor) -> None:
        """Greedy pick from the last position's logits; rows that stopped get the pad token, as generate does."""
        nxt = logits[:, -1, :].to(torch.float32).argmax(-1)
        nxt = torch.where(self.done, torch.full_like(nxt, self.pad), nxt)
        self.out.index_copy_(1, self.slot - self.first, nxt[:, None])
        self.done |= torch.isin(nxt, self.eos)
        self.token.copy_(nxt[:, None])

    def step(self) -> None:
        """One decoding step: the last picked token in, the next one out; every buffer is updated in place."""
        self.keys[:, 0, 0, :] |= (self.slots == self.slot)[None, :]
        logits = self.model(input_ids=self.token, attention_mask=self.keys, position_ids=self.position,
                            cache_position=self.slot, **self.cache_kw, use_cache=True,
                            logits_to_keep=1).logits
        self.slot += 1
        self.position += 1
        self._advance(logits)

    def finished(self, stopped: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:
        """Whether every row has stopped (a host sync). `stopped` marks, from the new tokens so far (on the CPU),
        the rows that reached a stop string; they are done from the next step on."""
        if stopped is not None:
            n = int(self.slot.item()) - self.first + 1
            self.done |= stopped(self.out[:, :n].cpu()).to(self.done.device)
        return bool(self.done.all())


def _layer_states(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a filled transformers cache (its `layers` in 4.56+, else key_cache/value_cache)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


NEUTRAL_GENERATION = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                      "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None,
                      "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                      "forced_decoder_ids": None, "min_length": 0, "min_new_tokens": None, "sequence_bias": None,
                      "exponential_decay_length_penalty": None, "guidance_scale": 1.0, "watermarking_config": None}
"""Generation-config fields whose non-neutral values add a logits processor to greedy search. transformers' generate
fills the fields qcheck leaves unset from the model's own generation config (a checkpoint may ship
repetition_penalty=1.05, say), so such a model's greedy tokens are generate's business: the static path refuses it."""


def _processors(model: nn.Module) -> list[str]:
    config = getattr(model, "generation_config", None)
    found = []
    for name, neutral in NEUTRAL_GENERATION.items():
        value = getattr(config, name, None)
        if value is not None and value != neutral and not (neutral is None and value in (0, [], ())):
            found.append(f"{name}={value!r}")
    return found


def refusal(model: nn.Module, length: int) -> str | None:
    """Why the static path (replayed graphs, or eager steps for a host-bound model) will not take `model` for `length`
    positions (known before any work), or None."""
    try:
        _check(model, length)
    except Unsupported as exc:
        return str(exc)
    return None


def host_waits(model: nn.Module) -> str | None:
    """Why `model`'s forward waits for the GPU from the host (so no CUDA graph can capture it), or None."""
    threshold = llm_int8_threshold(model)
    if threshold:
        return (f"bitsandbytes LLM.int8 with outlier threshold {threshold} (its outlier split asks the GPU "
                "`if outliers.any()` from the host, which a CUDA graph cannot capture)")
    return _experts_waits(model)


def _experts_waits(model: nn.Module) -> str | None:
    """Why `model`'s fused experts cannot be captured in a CUDA graph, or None. Measured on an H100 (session 26):
    transformers' eager experts forward loops on the host over the experts its tokens reached; its grouped_mm forward
    (the default) captures in bf16, but torch's grouped_mm on fp32 weights copies from the host in every call
    ("Cannot copy between CPU and CUDA tensors during CUDA graph capture"), and so does any dtype but bf16 here;
    batched_mm captures in fp32 and bf16."""
    implementation = getattr(getattr(model, "config", None), "_experts_implementation", None)
    dtypes = {p.dtype for m in model.modules() if is_fused_experts(m) for p in m.parameters(recurse=False)
              if p.dim() == 3}
    if not dtypes or implementation == "batched_mm":
        return None
    if implementation == "eager":
        return ("mixture-of-experts layers in transformers' eager experts forward (it loops on the host over the "
                "experts its tokens reached, read from the GPU, which a CUDA graph cannot capture)")
    if implementation == "grouped_mm" and dtypes != {torch.bfloat16}:
        shown = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return (f"mixture-of-experts weights in {shown} through torch's grouped_mm, which copies from the host in "
                "every call outside bf16 (which a CUDA graph cannot capture)")
    return None


def _check(model: nn.Module, length: int) -> None:
    config = getattr(model, "config", None)
    processors = _processors(model)
    if processors:
        raise Unsupported(f"the model's generation config sets {', '.join(processors)} (logits processors that "
                          "greedy search applies and the static path does not)")
    impl = getattr(config, "_attn_implementation", None)
    if impl != "sdpa":
        raise Unsupported(f"attention implementation {impl!r} (the static path builds sdpa's boolean masks)")
    if getattr(config, "is_encoder_decoder", False):
        raise Unsupported("an encoder-decoder model")
    window = getattr(config, "sliding_window", None)
    if window and length > int(window):
        raise Unsupported(f"{length} positions exceed the model's sliding window ({window}): one causal mask serves "
                          "every layer here")
    if is_dispatched(model):
        raise Unsupported("a model spread or offloaded by a device map (its hooks move tensors between devices)")


@torch.no_grad()
def decode_greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                  eos: list[int], pad: int, *, graph: bool | None = None, prefix: int = 0,
                  stopped: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Decoded:
    """Greedy continuation of left-padded `input_ids` on a static cache: one CUDA graph replayed per step on a GPU
    (`graph=None`: on CUDA devices, for a model whose forward does not wait for the GPU), eager steps otherwise. With
    `prefix` > 0 every row starts with the same `prefix` tokens, its padding after them (`generation.batch_layout`),
    and they are prefilled once. `stopped` (new tokens [rows, n] on the CPU -> rows that reached a stop string) is
    asked at every EOS check. Raises Unsupported where the model cannot take the path."""
    if prefix and not (bool(attention_mask[:, :prefix].all()) and bool((input_ids[:, :prefix] == input_ids[:1, :prefix])
                                                                       .all()) and prefix < input_ids.shape[1]):
        raise ValueError(f"prefix={prefix}: every row must start with the same {prefix} real tokens, and have more")
    cuda = input_ids.device.type == "cuda"
    waits = host_waits(model)
    use_graph = (cuda and not waits) if graph is None else graph
    _check(model, input_ids.shape[1] + new_tokens)
    if use_graph and waits:
        raise Unsupported(waits)
    try:
        with gqa_decoding(model) as prefixes:
            dec = _Decoder(model, input_ids, attention_mask, new_tokens, eos, pad, prefix, prefixes,
                           host_bound=cuda and not use_graph)
            steps = new_tokens - 1
            shared = (f", the {prefix}-token shared prefix prefilled once"
                      + (" and kept once" if dec.kept_once else " and copied into every row") if prefix else "")
            if not use_graph:
                for k in range(steps):
                    if k % EOS_CHECK_EVERY == 0 and dec.finished(stopped):
                        break
                    dec.step()
                note = f" (not a CUDA graph: {waits})" if cuda and waits else ""
                return Decoded(dec.out, f"static cache, eager steps{shared}{note}", dec.chunk)
            return Decoded(_replay(dec, steps, stopped), f"static cache, one CUDA graph per step{shared}", dec.chunk)
    except Unsupported:
        raise
    except Exception as exc:  # any failure of the fast path sends the caller back to generate
        raise Unsupported(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _replay(dec: _Decoder, steps: int, stopped: Callable[[torch.Tensor], torch.Tensor] | None = None
            ) -> torch.Tensor:
    """Two eager steps on the side stream (warm-up, as CUDA graph capture requires; one stream for the process,
    `qcheck.measure.side_stream` says why), then capture and replay."""
    from qcheck.measure.side_stream import side_stream

    warm = min(2, steps)
    side = side_stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warm):
            dec.step()
    torch.cuda.current_stream().wait_stream(side)
    if steps <= warm:
        return dec.out
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.step()
    for k in range(steps - warm):
        if k % EOS_CHECK_EVERY == 0 and dec.finished(stopped):
            break
        graph.replay()
    return dec.out
