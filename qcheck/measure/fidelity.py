"""Distribution fidelity against the reference: next-token KL(ref || variant), top-1 agreement, the change in
probability of the reference's top token, and answer flips between paired per-question correctness flags.

KL is computed in fp32 from both models' logits on the same tokens and windows as perplexity
(qcheck.measure.perplexity.windows). It is streamed: each window's final hidden states (T x hidden, small) are
computed once per model, and the output head is applied in chunks of `chunk` positions, so full-vocabulary
logits exist for at most `chunk` positions at a time (never for a whole window, never for the whole text). A
model whose logits are not `head(decoder(x))` (checked on a probe) falls back to full logits one window at a
time, and the result says so (`paths`). Only per-token scalars are kept, for quantiles and bootstrap intervals.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qcheck.errors import DataError
from qcheck.measure.head import StatesCache, ids_digest
from qcheck.measure.perplexity import windows
from qcheck.quant.offload import input_device
from qcheck.stats import Interval, bootstrap_interval, mcnemar_exact, wilson_interval

CHUNK_POSITIONS = 128
"""The fewest positions whose full-vocabulary logits are materialized at once (per model)."""
CHUNK_BYTES = 192 * 2**20
"""The most one fp32 full-vocabulary tensor of a chunk may take: about five such tensors are alive at once (the
reference's logits and probabilities, the difference, its expm1, a reduction's temporary), so a chunk holds about
1 GiB, as scoring's head chunk does (`head.HEAD_CHUNK_BYTES`): 1,024 positions of SmolLM2's 49,152 tokens, 392 of
Llama 3's 128,256. Chunks of 128 positions cost ~35 kernel launches and six host waits per 128 tokens: on an H100 the
fidelity of 299k tokens took 9.47 s in fp32 with them and 8.61 s with byte-sized chunks (benchmarks/RESULTS.md,
session 18); on the CPU (one window per batch: 255 positions) the peak rose from 0.72 to 1.28 of one forward's."""
BLOCK_TOKENS = 128
"""Resampling unit of the bootstrap: runs of up to this many consecutive scored tokens, never across windows."""
HEAD_PATH = "head-chunked"
FULL_PATH = "full-logits"


@dataclass
class FidelityResult:
    """Per-token KL(ref || variant), top-1 agreement and |Δp| of the reference's top token on the scored tokens."""

    variant: str
    token_kl: np.ndarray
    token_top1: np.ndarray
    token_dp: np.ndarray
    token_window: np.ndarray
    context: int
    stride: int
    n_windows: int
    identical_tokens: int
    max_abs_logit_diff: float
    negative_kl_clamped: int
    paths: dict[str, str]
    same_object: bool = False
    block_tokens: int = BLOCK_TOKENS
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    token_ref_p_top: np.ndarray | None = None
    """The reference's probability of its own top-1 token, per scored token (None in records written before it was
    kept): how decided the reference's choice is, which top-1 agreement presumes."""

    def __post_init__(self) -> None:
        n = len(self.token_kl)
        if self.token_ref_p_top is not None and len(self.token_ref_p_top) != n:
            raise ValueError(f"token_ref_p_top has {len(self.token_ref_p_top)} entries for {n} tokens")
        if not (len(self.token_top1) == len(self.token_dp) == len(self.token_window) == n):
            raise ValueError("per-token arrays of a FidelityResult must have equal lengths")
        if n == 0:
            raise DataError("fidelity needs at least one scored token")
        if self.block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {self.block_tokens}")

    @property
    def n_tokens(self) -> int:
        return len(self.token_kl)

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.token_kl)))

    @property
    def nonfinite_tokens(self) -> int:
        return int((~np.isfinite(self.token_kl)).sum())

    @property
    def kl_mean(self) -> float:
        return float(np.mean(self.token_kl, dtype=np.float64))

    @property
    def kl_median(self) -> float:
        return float(np.median(self.token_kl))

    @property
    def kl_p99(self) -> float:
        return float(np.quantile(self.token_kl, 0.99)) if self.finite else float("nan")

    @property
    def kl_max(self) -> float:
        return float(np.max(self.token_kl))

    @property
    def top1_agreement(self) -> float:
        return float(np.mean(self.token_top1))

    @property
    def ref_top1_p_median(self) -> float | None:
        """Median over the scored tokens of the reference's probability of its own top-1 token (None: not kept)."""
        return None if self.token_ref_p_top is None else float(np.median(self.token_ref_p_top))

    @property
    def top_dp_mean(self) -> float:
        return float(np.mean(self.token_dp, dtype=np.float64))

    @property
    def identical(self) -> bool:
        """Every scored position's logits are bit-identical to the reference's: the variant is the reference."""
        return self.identical_tokens == self.n_tokens

    @property
    def zero_kl(self) -> bool:
        """KL is exactly 0 at every scored token (before clamping rounding negatives)."""
        return bool(np.all(self.token_kl == 0.0)) and self.negative_kl_clamped == 0

    def block_ids(self) -> np.ndarray:
        """Bootstrap block of each token: consecutive runs of `block_tokens` scored tokens within a window."""
        _, first, counts = np.unique(self.token_window, return_index=True, return_counts=True)
        ids = np.empty(self.n_tokens, dtype=np.int64)
        next_id = 0
        for start, count in zip(first, counts):
            offsets = np.arange(count) // self.block_tokens
            ids[start:start + count] = next_id + offsets
            next_id += int(offsets[-1]) + 1
        return ids

    def block_sums(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sum of `values`, token count) per bootstrap block."""
        ids = self.block_ids()
        counts = np.bincount(ids).astype(np.float64)
        return np.bincount(ids, weights=np.asarray(values, dtype=np.float64)), counts

    @property
    def n_blocks(self) -> int:
        return int(self.block_ids()[-1]) + 1

    def interval(self, metric: str = "kl_mean", level: float = 0.95, seed: int = 0) -> Interval:
        """Token-weighted bootstrap interval over blocks for 'kl_mean', 'top1_agreement' or 'top_dp_mean'."""
        values = {"kl_mean": self.token_kl, "top1_agreement": self.token_top1, "top_dp_mean": self.token_dp}
        if metric not in values:
            raise ValueError(f"no interval for {metric!r}; choose one of {sorted(values)}")
        sums, counts = self.block_sums(values[metric])
        return bootstrap_interval(sums / counts, level=level, seed=seed, weights=counts)

    def metric(self, key: str, level: float = 0.95) -> dict[str, Any]:
        """A report metric: value, bootstrap interval, n tokens/blocks (NaN-honest: no interval when not finite)."""
        value = {"kl_mean": self.kl_mean, "top1_agreement": self.top1_agreement,
                 "top_dp_mean": self.top_dp_mean}[key]
        out: dict[str, Any] = {"value": value, "n_tokens": self.n_tokens, "n_blocks": self.n_blocks,
                               "context": self.context, "stride": self.stride}
        if self.finite:
            iv = self.interval(key, level)
            out["interval"] = {"low": iv.low, "high": iv.high, "level": level,
                               "method": f"{iv.method} over blocks of <= {self.block_tokens} tokens"}
        else:
            out["nonfinite_tokens"] = self.nonfinite_tokens
        return out

    def to_dict(self) -> dict[str, Any]:
        """Summary (no per-token arrays): KL mean/median/p99/max, top-1 agreement, |Δp|, identity evidence."""
        return {"variant": self.variant, "n_tokens": self.n_tokens, "n_windows": self.n_windows,
                "n_blocks": self.n_blocks, "block_tokens": self.block_tokens, "context": self.context,
                "stride": self.stride, "kl_mean": self.kl_mean, "kl_median": self.kl_median, "kl_p99": self.kl_p99,
                "kl_max": self.kl_max, "top1_agreement": self.top1_agreement, "top_dp_mean": self.top_dp_mean,
                "ref_top1_p_median": self.ref_top1_p_median,
                "identical_tokens": self.identical_tokens, "max_abs_logit_diff": self.max_abs_logit_diff,
                "negative_kl_clamped": self.negative_kl_clamped, "nonfinite_tokens": self.nonfinite_tokens,
                "same_object": self.same_object, "paths": dict(self.paths), "seconds": self.seconds,
                **self.extra}


def fidelity_to_record(result: FidelityResult) -> dict[str, Any]:
    """The result as record data: the summary plus the per-token series (packed), so a stored run is judged again
    with the same intervals and paired comparisons."""
    from qcheck.records import pack_array

    return {**result.to_dict(), "token_kl": pack_array(result.token_kl, "float64"),
            "token_top1": pack_array(result.token_top1, "bool"), "token_dp": pack_array(result.token_dp, "float32"),
            "token_window": pack_array(result.token_window, "int32"), "extra": dict(result.extra),
            **({"token_ref_p_top": pack_array(result.token_ref_p_top, "float32")}
               if result.token_ref_p_top is not None else {})}


def fidelity_from_record(data: dict[str, Any]) -> FidelityResult:
    """The FidelityResult `fidelity_to_record` wrote."""
    from qcheck.records import unpack_array

    return FidelityResult(
        variant=data["variant"], token_kl=unpack_array(data["token_kl"]), token_top1=unpack_array(data["token_top1"]),
        token_dp=unpack_array(data["token_dp"]).astype(np.float64), token_window=unpack_array(data["token_window"]),
        context=data["context"], stride=data["stride"], n_windows=data["n_windows"],
        identical_tokens=data["identical_tokens"], max_abs_logit_diff=data["max_abs_logit_diff"],
        negative_kl_clamped=data["negative_kl_clamped"], paths=dict(data["paths"]), same_object=data["same_object"],
        block_tokens=data["block_tokens"], seconds=data.get("seconds"), extra=dict(data.get("extra") or {}),
        token_ref_p_top=(unpack_array(data["token_ref_p_top"]).astype(np.float64) if "token_ref_p_top" in data
                         else None))


class _Stream:
    """One model's way to logits: decoder hidden states per window, then the output head per chunk."""

    def __init__(self, model: nn.Module, probe: torch.Tensor) -> None:
        from qcheck.measure.head import split_head

        self.model = model
        self.device = input_device(model)
        self.path = FULL_PATH
        self.note = ""
        split = split_head(model, probe, tol=1e-5)
        if split is not None:
            self.path, (self.base, self.head) = HEAD_PATH, split
        elif getattr(model, "base_model", model) is not model and getattr(model, "get_output_embeddings",
                                                                          lambda: None)() is not None:
            self.note = "logits are not head(decoder(x)) on a probe (e.g. logit scaling): full logits per window"

    def states(self, inp: torch.Tensor, attn: torch.Tensor, cache: StatesCache | None = None) -> torch.Tensor:
        """Per-position states: final hidden states (head path; from `cache` where a measurement of the same
        windows computed them) or full logits (fallback)."""
        from qcheck.measure.head import decoder_states

        inp, attn = inp.to(self.device), attn.to(self.device)
        if self.path == HEAD_PATH:
            return cache.states(self.base, inp, attn) if cache is not None else decoder_states(self.base, inp, attn)
        return self.model(input_ids=inp, attention_mask=attn, use_cache=False).logits

    def logits(self, rows: torch.Tensor, out_device: torch.device) -> torch.Tensor:
        """fp32 logits for selected state rows, on `out_device`."""
        out = self.head(rows) if self.path == HEAD_PATH else rows
        return out.float().to(out_device)


@torch.no_grad()
def fidelity_many(
    reference: nn.Module,
    variants: Mapping[str, nn.Module],
    ids: Sequence[int] | torch.Tensor,
    *,
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 1,
    chunk: int | None = None,
    block_tokens: int = BLOCK_TOKENS,
    pad_id: int = 0,
    reference_cache: dict[Any, torch.Tensor] | None = None,
    states_cache: StatesCache | None = None,
) -> dict[str, FidelityResult]:
    """KL(ref || variant), top-1 agreement and top-token |Δp| for every variant, in one pass over the windows.

    The reference's states are computed once per window batch and shared by all variants. With `reference_cache`
    (a dict the caller keeps), they are also kept for later calls on the same ids and windows: a variant-major run
    measures one variant per call, and the reference's decoder pass is then paid once per run, not per variant.
    Only the final hidden states are kept (tokens x hidden size: 4.7 MB for 2,048 tokens of a 576-wide model).
    `states_cache` holds the variants' decoder states of batches another measurement already ran (perplexity over
    the same windows), so their decoder runs once per subject. `chunk` (positions whose logits exist at once)
    defaults to `chunk_positions` of the batch; chunking does not change the values (row-wise arithmetic).
    """
    if not variants:
        raise ValueError("fidelity_many needs at least one variant")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    ids_t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids_t.numel() < 2:
        raise DataError(f"fidelity needs at least 2 tokens, got {ids_t.numel()}")
    stride = context if stride is None else stride
    spans = windows(ids_t.numel(), context, stride)
    probe = ids_t[: min(16, ids_t.numel())].unsqueeze(0)
    ref_stream = _Stream(reference, probe)
    streams = {name: (ref_stream if model is reference else _Stream(model, probe)) for name, model in variants.items()}
    acc: dict[str, dict[str, Any]] = {
        name: {"kl": [], "top1": [], "dp": [], "win": [], "identical": [], "maxdiff": [], "neg": [], "secs": 0.0}
        for name in variants}
    ref_p_tops: list[torch.Tensor] = []
    device = ref_stream.device
    cache_key = (ids_digest(ids_t), context, stride, batch_size, pad_id, ref_stream.path)
    for i in range(0, len(spans), batch_size):
        batch = spans[i: i + batch_size]
        inp, attn, rows = _batch(ids_t, batch, pad_id)
        key = (*cache_key, i)
        if reference_cache is not None and key in reference_cache:
            ref_states = reference_cache[key]
        else:
            ref_states = _select(ref_stream.states(inp, attn), rows)
            if reference_cache is not None and ref_stream.path == HEAD_PATH:
                reference_cache[key] = ref_states
        var_states = {}
        for name, stream in streams.items():
            start = time.perf_counter()
            var_states[name] = ref_states if stream is ref_stream else _select(stream.states(inp, attn, states_cache),
                                                                                rows)
            acc[name]["secs"] += time.perf_counter() - start
        win = torch.cat([torch.full((last - first,), i + row, dtype=torch.int32) for row, first, last in rows])
        width = ref_states.shape[-1] if ref_stream.path == FULL_PATH else getattr(ref_stream.head, "out_features", 0)
        step = chunk or chunk_positions(ref_states.shape[0], int(width or 0))  # width: the logits' (vocabulary)
        for c in range(0, ref_states.shape[0], step):
            ref_logits = ref_stream.logits(ref_states[c: c + step], device)
            ref_lse = ref_logits.logsumexp(-1)
            ref_p = (ref_logits - ref_lse.unsqueeze(-1)).exp_()
            ref_top = ref_logits.argmax(-1)
            ref_p_top = (ref_logits.gather(-1, ref_top.unsqueeze(-1)).squeeze(-1) - ref_lse).exp()
            ref_p_tops.append(ref_p_top.float())
            for name, stream in streams.items():
                start = time.perf_counter()
                a = acc[name]
                var_logits = stream.logits(var_states[name][c: c + step], device)
                var_top = var_logits.argmax(-1)
                var_p_top = (var_logits.gather(-1, ref_top.unsqueeze(-1)).squeeze(-1)
                             - var_logits.logsumexp(-1)).exp()
                diff = torch.sub(ref_logits, var_logits, out=var_logits)  # ref - variant logits, in place
                row_min, row_max = torch.aminmax(diff, dim=-1)
                # device-side tallies: one host wait per run, not several per chunk
                a["identical"].append(((row_min == 0) & (row_max == 0)).sum())
                a["maxdiff"].append(torch.maximum(row_max.max(), row_min.min().neg()))
                kl = _kl_from_logit_difference(ref_logits, ref_lse, ref_p, diff, row_min)
                a["neg"].append((kl < 0).sum())
                a["kl"].append(kl.clamp_min(0.0))
                a["top1"].append(var_top == ref_top)
                a["dp"].append((ref_p_top - var_p_top).abs())
                a["secs"] += time.perf_counter() - start
                del var_logits, diff
        for name in acc:
            acc[name]["win"].append(win)
    out = {}
    for name, a in acc.items():
        stream = streams[name]
        paths = {"reference": ref_stream.path, "variant": stream.path}
        notes = [s.note for s in (ref_stream, stream) if s.note]
        out[name] = FidelityResult(
            variant=name, token_kl=_host(a["kl"]).double().numpy(), token_top1=_host(a["top1"]).numpy(),
            token_dp=_host(a["dp"]).double().numpy(), token_window=torch.cat(a["win"]).numpy(),
            context=context, stride=stride, n_windows=len(spans), identical_tokens=int(_host(a["identical"]).sum()),
            max_abs_logit_diff=float(_host(a["maxdiff"]).max()), negative_kl_clamped=int(_host(a["neg"]).sum()),
            paths=paths, same_object=variants[name] is reference, block_tokens=block_tokens, seconds=a["secs"],
            extra={"notes": notes} if notes else {}, token_ref_p_top=_host(ref_p_tops).double().numpy())
    return out


def chunk_positions(rows: int, vocab: int) -> int:
    """Positions per head chunk: CHUNK_BYTES of fp32 logits, at most a quarter of the batch's `rows` (so a chunk's
    five tensors stay near one forward's logits of the same batch, issue 11's bound), at least CHUNK_POSITIONS
    (and just that where the vocabulary size is unknown, 0)."""
    if vocab < 1:
        return CHUNK_POSITIONS
    return max(CHUNK_POSITIONS, min(CHUNK_BYTES // (4 * vocab), rows // 4))


def _host(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-chunk device tensors as one CPU tensor (0-d tallies become a vector)."""
    return torch.cat([p.reshape(-1) for p in parts]).cpu()


def _kl_from_logit_difference(ref_logits: torch.Tensor, ref_lse: torch.Tensor, ref_p: torch.Tensor,
                              diff: torch.Tensor, diff_min: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) per row from p's logits, their log-normalizer and probabilities, and diff = ref - variant logits
    (overwritten; `diff_min` its row minimum where the caller has it), without cancellation.

    With e = diff - E_p[diff], KL = log E_p[exp(-e)] = log1p(E_p[expm1(-e)]): the log-normalizers never enter,
    so fp32 keeps KL values of 1e-7 accurate (the textbook sum p (log p - log q) carries an error of about
    eps * |log-normalizer| ~ 1e-6 from rounding the two normalizers). Rows where -e reaches 30 (max(-e) =
    E_p[diff] - min(diff)) use logsumexp(log p - e) instead, which cannot overflow. Equal logits give exactly 0.
    Each full-vocabulary pass costs ~60 GB of memory traffic per 300k tokens of a 49k vocabulary, so the
    arithmetic is in place and the row extremes are shared.
    """
    total = ref_p.sum(-1)  # 1 up to rounding of the normalizer (~1e-6), which would otherwise leak in
    mean = torch.linalg.vecdot(ref_p, diff) / total
    if diff_min is None:
        diff_min = diff.amin(-1)
    neg_e = torch.sub(mean.unsqueeze(-1), diff, out=diff)
    kl = torch.log1p(torch.linalg.vecdot(ref_p, torch.expm1(neg_e)) / total)
    large = (mean - diff_min) >= 30.0
    if bool(large.any()):
        ref_logp = ref_logits[large] - ref_lse[large].unsqueeze(-1)
        kl[large] = torch.logsumexp(ref_logp + neg_e[large], dim=-1)
    return kl


def _batch(ids: torch.Tensor, batch: list[tuple[int, int, int]], pad_id: int
           ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    """Right-padded inputs, attention mask, and per row (row, first, last) logit positions that are scored."""
    width = max(e - b for b, e, _ in batch)
    inp = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    rows = []
    for row, (b, e, n) in enumerate(batch):
        inp[row, : e - b] = ids[b:e]
        attn[row, : e - b] = 1
        # the logit at position j predicts token j + 1; the scored tokens are the last n of the window, less
        # the window's first token (no context inside the window), exactly as perplexity scores them
        rows.append((row, max(e - b - n - 1, 0), e - b - 1))
    return inp, attn, rows


def _select(states: torch.Tensor, rows: list[tuple[int, int, int]]) -> torch.Tensor:
    """The scored positions' states of every row, concatenated: (n_scored, dim)."""
    return torch.cat([states[row, first:last] for row, first, last in rows])


def fidelity_of_ids(reference: nn.Module, variant: nn.Module, ids: Sequence[int] | torch.Tensor, *,
                    name: str = "variant", **kwargs: Any) -> FidelityResult:
    """KL(ref || variant) and top-token agreement of one variant on one token sequence."""
    return fidelity_many(reference, {name: variant}, ids, **kwargs)[name]


def fidelity(reference: nn.Module, variants: Mapping[str, nn.Module], tokenizer: Any, text: str, *,
             max_tokens: int | None = None, **kwargs: Any) -> dict[str, FidelityResult]:
    """Fidelity of each variant on `text`, tokenized once as perplexity does (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return fidelity_many(reference, variants, ids, pad_id=pad, **kwargs)


@dataclass(frozen=True)
class FlipResult:
    """Paired per-question correctness of reference and variant: flips both ways and the accuracy difference."""

    n: int
    reference_correct: int
    variant_correct: int
    correct_to_wrong: int
    wrong_to_correct: int

    def __post_init__(self) -> None:
        if self.n < 0 or min(self.reference_correct, self.variant_correct, self.correct_to_wrong,
                             self.wrong_to_correct) < 0:
            raise ValueError("flip counts must be non-negative")
        if self.correct_to_wrong > self.reference_correct or self.wrong_to_correct > self.n - self.reference_correct:
            raise ValueError("flip counts exceed the reference's correct / wrong counts")
        if self.variant_correct != self.reference_correct - self.correct_to_wrong + self.wrong_to_correct:
            raise ValueError("variant_correct must equal reference_correct - correct_to_wrong + wrong_to_correct")

    @property
    def flips(self) -> int:
        return self.correct_to_wrong + self.wrong_to_correct

    @property
    def flip_rate(self) -> float:
        return self.flips / self.n if self.n else float("nan")

    @property
    def reference_accuracy(self) -> float:
        return self.reference_correct / self.n if self.n else float("nan")

    @property
    def variant_accuracy(self) -> float:
        return self.variant_correct / self.n if self.n else float("nan")

    @property
    def accuracy_difference(self) -> float:
        """variant accuracy - reference accuracy (= (wrong→correct - correct→wrong) / n)."""
        return (self.wrong_to_correct - self.correct_to_wrong) / self.n if self.n else float("nan")

    def flip_rate_interval(self, level: float = 0.95) -> Interval:
        return wilson_interval(self.flips, self.n, level)

    @property
    def mcnemar_pvalue(self) -> float:
        """Exact two-sided McNemar p-value of reference vs variant accuracy."""
        flags_a = [True] * self.correct_to_wrong + [False] * self.wrong_to_correct
        return mcnemar_exact(flags_a, [not f for f in flags_a]).pvalue

    def to_dict(self) -> dict[str, Any]:
        iv = self.flip_rate_interval()
        return {"n": self.n, "reference_correct": self.reference_correct, "variant_correct": self.variant_correct,
                "correct_to_wrong": self.correct_to_wrong, "wrong_to_correct": self.wrong_to_correct,
                "flips": self.flips, "value": self.flip_rate,
                "interval": {"low": iv.low, "high": iv.high, "level": iv.level, "method": iv.method},
                "reference_accuracy": self.reference_accuracy, "variant_accuracy": self.variant_accuracy,
                "accuracy_difference": self.accuracy_difference, "mcnemar_pvalue": self.mcnemar_pvalue}


def answer_flips(reference_correct: Sequence[Any], variant_correct: Sequence[Any]) -> FlipResult:
    """Count answer flips between paired per-question correctness flags (same questions, same order)."""
    ref = [_flag(x, "reference", i) for i, x in enumerate(reference_correct)]
    var = [_flag(x, "variant", i) for i, x in enumerate(variant_correct)]
    if len(ref) != len(var):
        raise DataError(f"answer flips need paired flags: {len(ref)} reference vs {len(var)} variant answers")
    c2w = sum(1 for r, v in zip(ref, var) if r and not v)
    w2c = sum(1 for r, v in zip(ref, var) if v and not r)
    return FlipResult(len(ref), sum(ref), sum(var), c2w, w2c)


def _flag(value: Any, side: str, index: int) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    shown = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
    raise DataError(f"{side} correctness flag #{index} is {shown}: flags must be booleans (or 0/1)")
