"""Multiple-choice accuracy by log-likelihood (ARC-Easy format): each choice is scored as the summed log
probability of its tokens after "Question: ...\\nAnswer:", the highest score is the prediction.

Per-question records (scores, prediction, gold, correct) are kept so every summary can be recomputed and
variants compared question by question (paired). Chance is taken from the task: the mean of 1/k.
"""
from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, DataError
from qcheck.inputs.tasks import MCQuestion
from qcheck.measure.generation import batch_layout
from qcheck.measure.kv_cache import cache_argument, cache_of
from qcheck.quant.offload import input_device, is_dispatched
from qcheck.stats import Interval, wilson_interval

NORMALIZATIONS = ("sum", "per_char")
"""'sum': total log-likelihood of the choice (lm-eval's acc); 'per_char': divided by its length in characters."""


@dataclass(frozen=True)
class MCRecord:
    """One scored question: log-likelihood per choice, the prediction, the gold index, correctness."""

    id: str
    gold: int
    pred: int
    correct: bool
    scores: tuple[float, ...]
    n_choices: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "gold": self.gold, "pred": self.pred, "correct": self.correct,
                "scores": list(self.scores), "n_choices": self.n_choices}


@dataclass
class MCResult:
    """Accuracy over per-question records, with the task's chance rate and a Wilson interval."""

    task: str
    records: list[MCRecord]
    normalization: str = "sum"
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.records:
            raise DataError("a multiple-choice result needs at least one record")

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def correct(self) -> int:
        return sum(r.correct for r in self.records)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def chance(self) -> float:
        """Expected accuracy of uniform guessing on these questions: mean of 1/k."""
        return sum(1 / r.n_choices for r in self.records) / self.n

    @property
    def flags(self) -> list[bool]:
        return [r.correct for r in self.records]

    def interval(self, level: float = 0.95) -> Interval:
        return wilson_interval(self.correct, self.n, level)

    def to_metric(self) -> dict[str, Any]:
        """The report metric: value, interval, n, chance, and the per-question records it is computed from."""
        ci = self.interval()
        return {"value": self.accuracy, "interval": {"low": ci.low, "high": ci.high, "level": ci.level,
                                                     "method": ci.method},
                "n": self.n, "correct": self.correct, "chance": self.chance, "task": self.task,
                "normalization": self.normalization, "higher_is_better": True, "seconds": self.seconds,
                "records": [r.to_dict() for r in self.records], **self.extra}


def mc_result_from_dict(data: dict[str, Any]) -> MCResult:
    """The result `MCResult.to_metric()` wrote (per-question records included)."""
    records = [MCRecord(str(r["id"]), int(r["gold"]), int(r["pred"]), bool(r["correct"]), tuple(r["scores"]),
                        int(r["n_choices"])) for r in data["records"]]
    known = {"value", "interval", "n", "correct", "chance", "task", "normalization", "higher_is_better", "seconds",
             "records"}
    return MCResult(data["task"], records, data.get("normalization", "sum"), data.get("seconds"),
                    {k: v for k, v in data.items() if k not in known})


def mc_context(question: MCQuestion) -> str:
    """The scoring context of a question (lm-eval's ARC format)."""
    return f"Question: {question.prompt}\nAnswer:"


@torch.no_grad()
def choice_loglikelihoods(model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]],
                          batch_size: int = 16) -> list[float]:
    """Summed log p(continuation | context) for each (context, continuation), in float64; padding never scored.

    Only the continuations' positions go through the output head: where the model's logits are head(decoder(ids))
    (checked on a probe) the head runs on their hidden states in chunks (`scored_nll`), else the model's own logits
    of the batch's last positions are read (`logits_to_keep`). A batch's full-vocabulary logits at every position
    (64 rows of 215 tokens at Llama 3's 128,256: 3.5 GB in bf16) never exist."""
    from qcheck.measure.head import PROBE_TOKENS, decoder_states, last_logits, scored_nll, split_head

    device = input_device(model)
    encoded = []
    for ctx, cont in pairs:
        c = tokenizer(ctx, add_special_tokens=False)["input_ids"]
        t = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not c or not t:
            raise DataError(f"empty context or continuation after tokenization: {ctx[:40]!r} / {cont[:40]!r}")
        encoded.append((c, t))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = [0.0] * len(pairs)
    if not pairs:
        return out
    probe = torch.tensor([(encoded[0][0] + encoded[0][1])[:PROBE_TOKENS]])
    split = split_head(model, probe, tol=1e-5)
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    for b in range(0, len(order), batch_size):
        batch = order[b: b + batch_size]
        width = max(len(encoded[i][0]) + len(encoded[i][1]) for i in batch)
        inp = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros_like(inp)
        score = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, i in enumerate(batch):
            c, t = encoded[i]
            inp[row, : len(c) + len(t)] = torch.tensor(c + t)
            attn[row, : len(c) + len(t)] = 1
            score[row, len(c): len(c) + len(t)] = True
        inp, attn, score = inp.to(device), attn.to(device), score.to(device)
        mask = score[:, 1:]  # the state (logits) at position p predicts token p + 1
        if split is not None:
            states = decoder_states(split[0], inp, attn)
            # the decoder's last layer may run on another device than the inputs (a model spread over devices)
            lp = -scored_nll(states[:, :-1][mask.to(states.device)], inp[:, 1:][mask], split[1])
        else:
            keep = width - min(len(encoded[i][0]) for i in batch) + 1  # from the last context token on
            logits = last_logits(model, inp, attn, min(keep, width))
            first = width - logits.shape[1]
            kept = mask[:, first:]
            lp = -scored_nll(logits[:, :-1][kept.to(logits.device)], inp[:, 1:][:, first:][kept])
        lp = lp.to(device)
        rows = torch.arange(len(batch), device=device).unsqueeze(1).expand_as(mask)[mask]
        sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, lp).cpu().tolist()
        for row, i in enumerate(batch):
            out[i] = sums[row]
    return out


@torch.no_grad()
def shared_context_loglikelihoods(model: nn.Module, tokenizer: Any, context: str,
                                  continuations: Sequence[str]) -> list[float] | None:
    """Summed log p(continuation | context) for each continuation, running the shared context once and the
    continuations as one batch on its KV cache; None when the model returns no usable cache."""
    device = input_device(model)
    c = tokenizer(context, add_special_tokens=False)["input_ids"]
    conts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in continuations]
    if not c or not all(conts):
        raise DataError(f"empty context or continuation after tokenization: {context[:40]!r}")
    out = model(input_ids=torch.tensor([c], device=device), use_cache=True)
    cache = cache_of(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    k = len(conts)
    cache.batch_repeat_interleave(k)
    width = max(len(t) for t in conts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inp = torch.full((k, width), pad, dtype=torch.long)
    attn = torch.zeros((k, len(c) + width), dtype=torch.long)
    attn[:, : len(c)] = 1
    for row, t in enumerate(conts):
        inp[row, : len(t)] = torch.tensor(t)
        attn[row, len(c): len(c) + len(t)] = 1
    inp, attn = inp.to(device), attn.to(device)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1).double()
    rest = model(input_ids=inp, attention_mask=attn, **cache_argument(model, cache)).logits
    return _continuation_sums(first.expand(k, -1), rest, inp, conts)


def _continuation_sums(first: torch.Tensor, rest: torch.Tensor, inp: torch.Tensor,
                       conts: Sequence[Sequence[int]]) -> list[float]:
    """Each continuation's summed log-likelihood: its first token from `first` (the context's last log-probabilities,
    one row per continuation), the rest from the logits of its own forward on the cache (`rest`, input ids `inp`)."""
    sums = []
    for row, t in enumerate(conts):
        total = float(first[row, t[0]])
        if len(t) > 1:
            lp = -torch.nn.functional.cross_entropy(rest[row, : len(t) - 1].float(), inp[row, 1: len(t)],
                                                    reduction="none").double()
            total += float(lp.sum())
        sums.append(total)
    return sums


@torch.no_grad()
def batched_context_loglikelihoods(model: nn.Module, tokenizer: Any, contexts: Sequence[str],
                                   continuations: Sequence[Sequence[str]]) -> list[list[float]] | None:
    """Summed log p(continuation | context) for every continuation of every context, the contexts run once in one
    left-padded batch (positions counted from each row's first real token, as generate does) and all their
    continuations in a second batch on the repeated KV cache. Every context needs the same number of
    continuations; None when the model returns no usable cache."""
    k = len(continuations[0]) if continuations else 0
    if not contexts or len(contexts) != len(continuations) or any(len(c) != k for c in continuations) or not k:
        raise ValueError("batched_context_loglikelihoods needs one list of the same number (>= 1) of continuations "
                         "per context")
    device = input_device(model)
    ctx_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    cont_ids = [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in conts] for conts in continuations]
    if not all(ctx_ids) or not all(all(t) for conts in cont_ids for t in conts):
        raise DataError(f"empty context or continuation after tokenization among {contexts[0][:40]!r}...")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inp, attn = batch_layout(ctx_ids, pad)  # left-padded, as generation lays out its prompts
    width = inp.shape[1]
    positions = (attn.cumsum(-1) - 1).clamp_min(0)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(type(model).forward).parameters else {}
    out = model(input_ids=inp.to(device), attention_mask=attn.to(device), position_ids=positions.to(device),
                use_cache=True, **keep)  # only the last position's logits are read (50 x 100 x 128k fp32 is 2.6 GB)
    cache = cache_of(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).double().repeat_interleave(k, dim=0)
    cache.batch_repeat_interleave(k)
    flat = [t for conts in cont_ids for t in conts]
    span = max(map(len, flat))
    cinp = torch.full((len(flat), span), pad, dtype=torch.long)
    cattn = torch.zeros((len(flat), width + span), dtype=torch.long)
    cattn[:, :width] = attn.repeat_interleave(k, dim=0)
    cpos = torch.zeros((len(flat), span), dtype=torch.long)
    for row, t in enumerate(flat):
        cinp[row, :len(t)] = torch.tensor(t)
        cattn[row, width:width + len(t)] = 1
        cpos[row] = len(ctx_ids[row // k]) + torch.arange(span)
    cinp = cinp.to(device)
    rest = model(input_ids=cinp, attention_mask=cattn.to(device), position_ids=cpos.to(device),
                 **cache_argument(model, cache)).logits
    sums = _continuation_sums(first, rest, cinp, flat)
    return [sums[i * k:(i + 1) * k] for i in range(len(ctx_ids))]


def _batched_shared(model: nn.Module, tokenizer: Any, questions: Sequence[MCQuestion],
                    batch_size: int) -> list[float] | None:
    """Every question's choice log-likelihoods through batched_context_loglikelihoods, questions grouped by their
    number of choices, `batch_size` contexts a batch; None when the model gives no usable cache."""
    by_k: dict[int, list[int]] = {}
    for i, q in enumerate(questions):
        by_k.setdefault(len(q.choices), []).append(i)
    per_question: dict[int, list[float]] = {}
    for members in by_k.values():
        for b in range(0, len(members), batch_size):
            chunk = members[b:b + batch_size]
            try:
                got = batched_context_loglikelihoods(model, tokenizer, [mc_context(questions[i]) for i in chunk],
                                                     [[" " + c for c in questions[i].choices] for i in chunk])
            except TypeError:  # a forward without position_ids: the pairs path needs none
                return None
            if got is None:
                return None
            per_question.update(zip(chunk, got))
    return [s for i in range(len(questions)) for s in per_question[i]]


def score_multiple_choice(model: nn.Module, tokenizer: Any, questions: Sequence[MCQuestion], *,
                          normalization: str = "sum", batch_size: int = 16, task: str = "arc-easy",
                          shared_context: bool | None = None, context_batch: int | None = None) -> MCResult:
    """Score every choice of every question by log-likelihood; refuses non-finite scores naming the question.

    With shared_context (the default) each question's context runs once and its choices reuse its KV cache (fewest
    FLOPs): one question at a time (`context_batch` 1, the default on a CPU: no padding), or `context_batch`
    questions' contexts in one left-padded batch and all their choices in a second (the default on a GPU, at
    `batch_size`: one question at a time is launch-bound there, and pairs recompute each context once per choice,
    3x the FLOPs of ARC's 4 choices). Without it (the default for a model spread by a device map on GPUs),
    (context, choice) pairs run in padded batches of `batch_size`.
    The path taken ("shared-context", "shared-context-batched" or "batched") is recorded in the result."""
    if shared_context is None:  # a model accelerate spread over devices keeps the cache-free pairs, as before
        shared_context = input_device(model).type == "cpu" or not is_dispatched(model)
    if context_batch is None:
        context_batch = 1 if input_device(model).type == "cpu" else batch_size
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}",
                          field="normalization")
    if not questions:
        raise DataError("no questions to score")
    start = time.perf_counter()
    ll: list[float] = []
    path = "shared-context"
    if shared_context and context_batch > 1:
        batched = _batched_shared(model, tokenizer, questions, context_batch)
        path, ll = ("shared-context-batched", batched) if batched is not None else ("batched", [])
    for q in questions if shared_context and path == "shared-context" else ():
        scores = shared_context_loglikelihoods(model, tokenizer, mc_context(q), [" " + c for c in q.choices])
        if scores is None:
            path, ll = "batched", []
            break
        ll += scores
    if not shared_context or path == "batched":
        path = "batched"
        pairs = [(mc_context(q), " " + choice) for q in questions for choice in q.choices]
        ll = choice_loglikelihoods(model, tokenizer, pairs, batch_size=batch_size)
    records = []
    k = 0
    for q in questions:
        scores = ll[k: k + len(q.choices)]
        k += len(q.choices)
        if not all(math.isfinite(s) for s in scores):
            raise DataError(f"question {q.id}: non-finite choice log-likelihoods {scores} (NaN/inf logits)")
        ranked = scores if normalization == "sum" else [s / max(1, len(c)) for s, c in zip(scores, q.choices)]
        pred = max(range(len(ranked)), key=lambda j: ranked[j])
        records.append(MCRecord(q.id, q.answer_idx, pred, pred == q.answer_idx, tuple(scores), len(q.choices)))
    return MCResult(task, records, normalization, time.perf_counter() - start, {"path": path})
