"""Adversarial robustness of multiple-choice scoring: FGSM and PGD on input embeddings, AutoAttack's rule.

A question is scored by the mean log-likelihood of each choice's tokens after the prompt (ARC-Easy format,
"Question: ...\\nAnswer:" + " choice"). Attacks perturb the prompt's input embeddings inside a per-token L2
ball whose radius is `epsilon` times that token's own embedding norm (epsilon in embedding-norm units).

Robust accuracy is computed on the same samples as clean accuracy; only clean-correct samples are attacked,
and a sample is robust only if it was clean-correct and stays correct under every attack (AutoAttack's
rule), so robust <= clean holds by construction on the per-sample records kept in the result.
Gradients come from an fp32 model: the variant itself when its weights are float32 (fake-quantized weights
stay float; activation fake-quant is straight-through), else the variant's weights upcast to fp32 in place for the
gradient passes and restored exactly after (`float32_weights`). Every
sample's gradient is checked: missing, zero or non-finite gradients are recorded, never skipped.
The clean pass is repeated to detect randomized models (dropout on, precision re-drawn per forward);
they are refused, or evaluated with expectation over draws when asked, and the result says so.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, DataError
from qcheck.measure.attention import packed_gqa_attention
from qcheck.measure.kv_cache import cache_argument, cache_of
from qcheck.quant.offload import input_device

ATTACKS = ("fgsm", "pgd")
RANDOMIZED_POLICIES = ("refuse", "expectation")
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
REPEAT_TOLERANCE = 1e-4
"""Largest |score difference| between two identical clean passes still counted as deterministic."""


@dataclass(frozen=True)
class AttackConfig:
    """FGSM/PGD settings. epsilon and step_size are in units of each prompt token's embedding L2 norm."""

    epsilon: float = 0.1
    pgd_steps: int = 3
    step_size: float | None = None
    attacks: tuple[str, ...] = ATTACKS
    random_start: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"epsilon must be a finite number > 0 (embedding-norm units), got {self.epsilon!r}",
                              field="epsilon")
        if not isinstance(self.pgd_steps, int) or self.pgd_steps < 1:
            raise ConfigError(f"pgd_steps must be an integer >= 1, got {self.pgd_steps!r}", field="pgd_steps")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ConfigError(f"step_size must be > 0, got {self.step_size!r}", field="step_size")
        attacks = tuple(self.attacks)
        unknown = [a for a in attacks if a not in ATTACKS]
        if not attacks or unknown:
            raise ConfigError(f"attacks must be a non-empty subset of {ATTACKS}, got {self.attacks!r}",
                              field="attacks")
        object.__setattr__(self, "attacks", attacks)

    @property
    def pgd_step_size(self) -> float:
        """PGD step in embedding-norm units (default 2.5 * epsilon / steps, Madry et al.)."""
        return float(self.step_size) if self.step_size is not None else 2.5 * self.epsilon / self.pgd_steps

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "norm": "L2 per prompt token, radius = epsilon * ||token embedding||_2",
                "attacks": list(self.attacks), "pgd_steps": self.pgd_steps, "pgd_step_size": self.pgd_step_size,
                "random_start": self.random_start, "seed": self.seed,
                "loss": "cross-entropy of the choice scores against the true answer (never the model's prediction)",
                "perturbed": "prompt token embeddings only (choices unperturbed, shared by all choices of a question)"}


ROBUSTNESS_ATTACK = AttackConfig(epsilon=0.02, pgd_steps=2, attacks=("fgsm", "pgd"), seed=0)
"""The suite's attack: FGSM, then 2-step PGD on the survivors, at 2% of each prompt token's embedding norm (SmolLM2 on
8 ARC-Easy questions: epsilon 0.1 broke every clean-correct one, 0.02 half of them)."""


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question, tokenized: prompt ids, each choice's ids, and the answer index."""

    id: str
    prompt_ids: tuple[int, ...]
    choice_ids: tuple[tuple[int, ...], ...]
    label: int

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise DataError(f"question {self.id}: empty prompt")
        if len(self.choice_ids) < 2 or any(len(c) == 0 for c in self.choice_ids):
            raise DataError(f"question {self.id}: needs >= 2 non-empty choices")
        if not 0 <= self.label < len(self.choice_ids):
            raise DataError(f"question {self.id}: answer index {self.label} outside its {len(self.choice_ids)} choices")

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + max(len(c) for c in self.choice_ids)


@dataclass(frozen=True)
class SampleRecord:
    """Per-sample flags: clean prediction, whether attacked, each attack's prediction, the robust flag."""

    id: str
    label: int
    clean_pred: int
    clean_correct: bool
    attacked: bool
    attack_preds: dict[str, int]
    robust: bool
    gradient: str


@dataclass(frozen=True)
class RandomizationCheck:
    """Repeated clean pass and training-mode audit: is the model randomized, and what was done about it."""

    training_modules: tuple[str, ...]
    dropout_modules: tuple[str, ...]
    repeat_max_abs_diff: float
    repeat_prediction_flips: int
    policy: str
    draws: int
    repeats: int = 2

    @property
    def randomized(self) -> bool:
        return self.repeat_max_abs_diff > REPEAT_TOLERANCE or self.repeat_prediction_flips > 0

    @property
    def train_mode(self) -> bool:
        return bool(self.training_modules)

    @property
    def refused(self) -> bool:
        return (self.randomized or self.train_mode) and self.policy == "refuse"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["training_modules"] = list(self.training_modules[:20]) + (
            [f"(+{len(self.training_modules) - 20} more)"] if len(self.training_modules) > 20 else [])
        d.update(randomized=self.randomized, train_mode=self.train_mode, refused=self.refused,
                 tolerance=REPEAT_TOLERANCE)
        return d


@dataclass
class RobustnessEvaluation:
    """Clean and robust accuracy on the same questions with every per-sample record and how they were made."""

    records: list[SampleRecord]
    config: AttackConfig
    randomization: RandomizationCheck
    gradient_source: str
    seconds: float
    variant: str | None = None
    scoring: str = "mean log-likelihood per choice token; prediction = argmax over choices"
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def clean_correct(self) -> int:
        return sum(r.clean_correct for r in self.records)

    @property
    def robust_correct(self) -> int:
        return sum(r.robust for r in self.records)

    @property
    def attacked(self) -> int:
        return sum(r.attacked for r in self.records)

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.n if self.n else float("nan")

    @property
    def robust_accuracy(self) -> float:
        return self.robust_correct / self.n if self.n else float("nan")

    @property
    def gap(self) -> float:
        """clean - robust accuracy (>= 0 by construction)."""
        return self.clean_accuracy - self.robust_accuracy

    def gradient_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            if r.attacked:
                counts[r.gradient] = counts.get(r.gradient, 0) + 1
        return counts

    def accuracy_after(self) -> dict[str, float]:
        """Robust accuracy after each attack of the cascade (cumulative: correct under it and every earlier one)."""
        out = {}
        for k, name in enumerate(self.config.attacks):
            upto = self.config.attacks[:k + 1]
            ok = sum(1 for r in self.records if r.clean_correct and all(r.attack_preds.get(a) == r.label for a in upto))
            out[name] = ok / self.n if self.n else float("nan")
        return out

    def metric(self, which: str, level: float = 0.95) -> dict[str, Any]:
        """`clean_accuracy` or `robust_accuracy` as a report metric: value, Wilson interval, n."""
        from qcheck.stats import wilson_interval

        k = self.clean_correct if which == "clean_accuracy" else self.robust_correct
        iv = wilson_interval(k, self.n, level)
        return {"value": k / self.n if self.n else float("nan"), "interval": {"low": iv.low, "high": iv.high},
                "level": level, "method": "wilson", "correct": k, "n": self.n}

    def gap_metric(self, level: float = 0.95) -> dict[str, Any]:
        """clean - robust as a report metric: the share of questions an attack broke, with its Wilson interval."""
        from qcheck.stats import wilson_interval

        broken = self.clean_correct - self.robust_correct
        iv = wilson_interval(broken, self.n, level)
        return {"value": broken / self.n if self.n else float("nan"), "interval": {"low": iv.low, "high": iv.high},
                "level": level, "method": "wilson (gap = questions broken by the attack / n)", "broken": broken,
                "n": self.n}

    def to_dict(self, with_records: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "variant": self.variant, "n": self.n, "clean_correct": self.clean_correct,
            "robust_correct": self.robust_correct, "attacked": self.attacked,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy, "gap": self.gap,
            "accuracy_after_attack": self.accuracy_after(), "attack": self.config.to_dict(),
            "gradient_source": self.gradient_source, "gradients": self.gradient_counts(),
            "randomization": self.randomization.to_dict(), "scoring": self.scoring, "data": self.data,
            "seconds": round(self.seconds, 3),
            "rule": "only clean-correct samples attacked; robust = clean-correct AND correct under every attack",
            "cascade": "each attack runs on the questions still correct after the previous ones (AutoAttack)"}
        if with_records:
            d["records"] = [asdict(r) for r in self.records]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustnessEvaluation:
        """The evaluation `to_dict()` wrote (records included)."""
        att = data["attack"]
        config = AttackConfig(epsilon=att["epsilon"], pgd_steps=att["pgd_steps"], step_size=att.get("pgd_step_size"),
                              attacks=tuple(att["attacks"]), random_start=att["random_start"], seed=att["seed"])
        rnd = data["randomization"]
        randomization = RandomizationCheck(tuple(rnd["training_modules"]), tuple(rnd["dropout_modules"]),
                                           rnd["repeat_max_abs_diff"], rnd["repeat_prediction_flips"], rnd["policy"],
                                           rnd["draws"], rnd.get("repeats", 2))
        records = [SampleRecord(**r) for r in data["records"]]
        return cls(records, config, randomization, data["gradient_source"], float(data["seconds"]),
                   data.get("variant"), data.get("scoring", cls.scoring), dict(data.get("data") or {}))


def arc_easy_items(tokenizer: Any, n: int, *, path: str | Path | None = None, max_tokens: int = 96,
                   offset: int = 0) -> tuple[list[ChoiceItem], dict[str, Any]]:
    """The first `n` ARC-Easy questions (from `offset`) whose prompt + longest choice fit `max_tokens`."""
    from qcheck.inputs.data import ARC_EASY_TEST, find_data_file, sha256_of

    if n < 1:
        raise ConfigError(f"need at least one question, got n={n}", field="samples")
    source = Path(path) if path is not None else find_data_file(ARC_EASY_TEST)
    if not source.is_file():
        raise DataError(f"ARC-Easy file not found: {source}")
    items: list[ChoiceItem] = []
    skipped: list[str] = []
    with source.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh):
            if line_no < offset or not line.strip():
                continue
            row = json.loads(line)
            try:
                prompt = PROMPT_TEMPLATE.format(question=row["prompt"].strip())
                prompt_ids = tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                choices = tuple(tuple(tokenizer(" " + str(c).strip(), add_special_tokens=False)["input_ids"])
                                for c in row["choices"])
                item = ChoiceItem(str(row.get("id", line_no)), prompt_ids, choices, int(row["answer_idx"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{source}:{line_no + 1}: not an ARC-Easy row ({type(exc).__name__}: {exc})") from None
            if item.n_tokens > max_tokens:
                skipped.append(item.id)
                continue
            items.append(item)
            if len(items) == n:
                break
    if not items:
        raise DataError(f"no ARC-Easy question in {source} fits {max_tokens} tokens")
    info = {"path": str(source), "sha256": sha256_of(source), "offset": offset, "questions": len(items),
            "requested": n, "max_tokens": max_tokens, "skipped_too_long": len(skipped),
            "prompt_template": PROMPT_TEMPLATE, "choice_template": " {choice}"}
    return items, info


# ----------------------------------------------------------------------------- batching and scoring

@dataclass
class _Batch:
    items: list[ChoiceItem]
    prompt_ids: torch.Tensor      # [questions, longest prompt], right-padded
    prompt_mask: torch.Tensor     # [questions, longest prompt] True on prompt positions
    choices: torch.Tensor         # [all choices of all questions, longest choice], right-padded (never scored)
    choice_lengths: torch.Tensor  # [all choices] tokens in each choice
    question_of: torch.Tensor     # [all choices] the question (row of prompt_ids) each choice belongs to
    counts: list[int]             # choices per question, in order


def _make_batch(items: Sequence[ChoiceItem], pad_id: int, device: torch.device) -> _Batch:
    longest = max(len(it.prompt_ids) for it in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.bool)
    rows = [c for it in items for c in it.choice_ids]
    choices = torch.full((len(rows), max(len(c) for c in rows)), pad_id, dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, :len(it.prompt_ids)] = torch.tensor(it.prompt_ids)
        mask[i, :len(it.prompt_ids)] = True
    for r, c in enumerate(rows):
        choices[r, :len(c)] = torch.tensor(c)
    counts = [len(it.choice_ids) for it in items]
    question_of = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts))
    return _Batch(list(items), ids.to(device), mask.to(device), choices.to(device),
                  torch.tensor([len(c) for c in rows], device=device), question_of.to(device), counts)


def _device_of(model: nn.Module) -> torch.device:
    return input_device(model)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _base_embeddings(model: nn.Module, batch: _Batch) -> torch.Tensor:
    """[questions, longest prompt, hidden] fp32 prompt embeddings, zero past each prompt."""
    with torch.no_grad():
        emb = model.get_input_embeddings()(batch.prompt_ids).detach().to(torch.float32)
    return emb * batch.prompt_mask.unsqueeze(-1)


def _inputs(base: torch.Tensor, delta: torch.Tensor | None, batch: _Batch) -> torch.Tensor:
    """Prompt embeddings plus each question's perturbation (shared by all of its choices)."""
    return base if delta is None else base + delta * batch.prompt_mask.unsqueeze(-1)


def _choice_scores(model: nn.Module, embeds: torch.Tensor, batch: _Batch) -> list[torch.Tensor]:
    """Per question, a [k] tensor of mean choice-token log-likelihoods (fp32), differentiable w.r.t. embeds.

    Two forwards for the whole batch, whatever its size: every prompt at once (right-padded, so causal attention
    keeps each prompt's padding out of it), then every choice of every question as one right-padded row that reads
    its own question's cached prompt (the padding after the prompt masked out) at the positions that continue it.
    A grouped-query layer attends to the cached key/value heads as they are (`packed_gqa_attention`): transformers'
    sdpa copies them to every query head under a mask, and an attack's backward pass keeps those copies (at the
    135M shape, 16 questions: 430 of the 2,400 MiB the pass kept)."""
    dtype = _float_dtype(model)
    lengths = batch.prompt_mask.sum(1)
    ends = torch.unique(lengths - 1)
    with packed_gqa_attention(model):
        first = model(inputs_embeds=embeds.to(dtype), use_cache=True, logits_to_keep=ends)
        rows = batch.question_of
        last = first.logits[rows, torch.searchsorted(ends, lengths[rows] - 1)]
        cache = cache_of(first)
        cache.batch_select_indices(rows.cpu())      # a CPU index serves cache layers on any device (device maps)
        ids = batch.choices
        span = torch.arange(ids.shape[1], device=ids.device)
        mask = torch.cat([batch.prompt_mask[rows], torch.ones_like(ids, dtype=torch.bool)], dim=1).long()
        rest = model(input_ids=ids, **cache_argument(model, cache), attention_mask=mask,
                     position_ids=lengths[rows, None] + span[None, :], use_cache=True).logits
    logits = torch.cat([last[:, None, :], rest[:, :-1, :]], dim=1).to(torch.float32)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    n = batch.choice_lengths
    scored = (span[None, :] < n[:, None]).to(logp.dtype)
    return list(torch.split((logp * scored).sum(-1) / n.to(logp.dtype), batch.counts))


def _expected_scores(model: nn.Module, embeds: torch.Tensor, batch: _Batch, draws: int) -> list[torch.Tensor]:
    runs = [_choice_scores(model, embeds, batch) for _ in range(draws)]
    return [torch.stack([r[i] for r in runs]).mean(0) for i in range(len(batch.items))]


def score_choices(model: nn.Module, items: Sequence[ChoiceItem], delta: torch.Tensor | None = None, *,
                  pad_id: int = 0) -> list[torch.Tensor]:
    """Per question, its choices' mean token log-likelihoods (fp32); `delta` [questions, longest prompt, hidden]
    is added to the prompt embeddings (differentiable: build attacks of your own on it)."""
    batch = _make_batch(items, pad_id, _device_of(model))
    return _choice_scores(model, _inputs(_base_embeddings(model, batch), delta, batch), batch)


def prompt_radius(model: nn.Module, items: Sequence[ChoiceItem], epsilon: float, *, pad_id: int = 0
                  ) -> torch.Tensor:
    """[questions, longest prompt]: epsilon * each prompt token's embedding norm, 0 past a question's prompt."""
    batch = _make_batch(items, pad_id, _device_of(model))
    return _radius(_base_embeddings(model, batch), batch, epsilon)


ATTACK_BATCH = 4
"""Questions attacked together by default, and on a CPU (compute-bound there: a larger batch buys nothing)."""
ATTACK_MEMORY_SHARE = 0.25
"""Share of the device's free memory, less what the gradient passes add to the resident weights
(`attack_weight_bytes`), an attack batch may plan for: the backward pass keeps every layer's activations. Measured on
the 70B slice's bf16 reference (session 27): its attack's activations took 1.24 x the planned 68 bytes per token,
layer and hidden unit, inside this 4 x margin."""
ATTACK_BATCH_LIMIT = 16
"""Questions per attack batch at most: at 16 a batch is two forwards of ~1,000 prompt tokens and ~64 choice rows,
past which a GPU forward of a small model stops being launch-bound."""


def attack_batch_size(model: nn.Module, max_tokens: int) -> int:
    """Questions attacked together: ATTACK_BATCH on a CPU; on a GPU as many as fit
    ATTACK_MEMORY_SHARE of the free memory, at ~68 bytes per token, layer and hidden unit of fp32 activations kept for
    the backward pass (2x the usual 34 for 16-bit training activations), up to ATTACK_BATCH_LIMIT. A model spread over
    GPUs is sized on each device by the layers that run there and the weights its gradient passes add there, the
    tightest deciding."""
    from qcheck.inputs.fit import available_bytes, rows_on_every_device
    from qcheck.inputs.placement import layers_by_device

    layers = layers_by_device(model)
    if not any(d.type == "cuda" for d in layers):
        return ATTACK_BATCH
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    if not int(getattr(cfg, "num_hidden_layers", 0) or 0) or not hidden:
        return ATTACK_BATCH
    copies = attack_weight_bytes_by_device(model)

    def room(device: torch.device) -> float:
        return max(0, (available_bytes(device) or 0) - copies.get(device, 0)) * ATTACK_MEMORY_SHARE

    fit = rows_on_every_device(layers, lambda n: 2 * max_tokens * n * hidden * 68, room)
    return max(1, min(ATTACK_BATCH_LIMIT, fit))


def with_smaller_batches(attack: Callable[[int], Any], batch: int,
                         note: Callable[[int, list[int]], None] | None = None) -> tuple[Any, list[int]]:
    """`attack(batch)`, run again at half the batch while it runs out of memory (down to one question), and the
    batch sizes that ran out. `attack_batch_size` plans from the free memory, but what a dispatched model brings onto
    its GPU for a backward pass is not all counted (session 26: the int8 variant of a bf16 70B slice with
    --max-memory 0=12GiB ran out at 77 GiB allocated). Each question's attack is its own (its loss, its
    perturbation), so the batch changes how they are grouped and padded, not what is attacked. accelerate's
    out-of-memory test decides what counts; the memory is freed after the failed call's frames are gone (inside the
    except block its traceback still holds their tensors). `note(batch, ran_out)` is told each attempt's batch."""
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    ran_out: list[int] = []
    while True:
        if note is not None:
            note(batch, list(ran_out))
        try:
            return attack(batch), ran_out
        except Exception as exc:  # anything but running out of memory is raised again
            if batch <= 1 or not should_reduce_batch_size(exc):
                raise
        ran_out.append(batch)
        batch //= 2
        clear_device_cache(garbage_collection=True)


def _low_precision_tensors(model: nn.Module, *, with_fp32: bool = False) -> list[torch.Tensor]:
    """The model's float parameters and buffers held in a dtype other than fp32 (all of them with `with_fp32`), each
    once (tied weights once)."""
    seen: dict[int, torch.Tensor] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and (with_fp32 or t.dtype != torch.float32):
            seen.setdefault(id(t), t)
    return list(seen.values())


def attack_weight_bytes(model: nn.Module) -> int:
    """Bytes the attacks' gradient passes add to `model`'s resident tensors (`attack_weight_bytes_by_device`, all
    devices): counted before the attack batch is sized, so they do not eat the batch's share (at the 8B shape the
    fp16 and bf16 variants' attacks set the run's peak, 1.36 x reference + largest variant, in session 13)."""
    return sum(attack_weight_bytes_by_device(model).values())


def attack_weight_bytes_by_device(model: nn.Module) -> dict[torch.device, int]:
    """Per device, what a gradient pass holds beyond the tensors resident there: for a 16-bit model upcast in place
    (`float32_weights`), fp32 less the held size of each resident 16-bit tensor (fp32 whole for a tied weight
    accelerate keeps by address, whose 16-bit storage stays); for a model with offloaded layers,
    every offloaded tensor on the device its hook runs it on, in the dtype it computes in (fp32 when upcast),
    since autograd keeps each layer's weight until the backward pass reaches it. Session 26's plan left both out of
    the 70B slice's attacks: the deep copy a dispatched model then took was counted for 16-bit tensors alone, and
    the offloaded layers and head (11 GB in fp32) not at all; int8's attack ran out of GPU memory."""
    from qcheck.quant.offload import offloaded_by_execution_device, tied_pointers

    upcast = needs_fp32_upcast(model)
    need: dict[torch.device, int] = {}
    if upcast:
        pinned = tied_pointers(model)
        for t in _low_precision_tensors(model):
            if t.device.type != "meta":
                kept = t.data_ptr() in pinned  # its 16-bit storage stays beside the fp32 one (`float32_weights`)
                need[t.device] = need.get(t.device, 0) + t.numel() * (4 if kept else 4 - t.element_size())
    for device, tensors in offloaded_by_execution_device(model).items():
        need[device] = need.get(device, 0) + sum(t.numel() * (4 if upcast else t.element_size()) for t in tensors)
    return need


def attack_memory_refusal(model: nn.Module, available: Callable[[torch.device], int | None] | None = None
                          ) -> str | None:
    """Why `model`'s attacks cannot run (None where they can): a model accelerate dispatched holds more during a
    gradient pass than its placement (`attack_weight_bytes_by_device`: its 16-bit tensors upcast to fp32, its
    offloaded layers kept until the backward pass), and a device without that much free would end the step out of
    memory after the clean pass. `available` gives a device's free bytes (`qcheck.inputs.fit.available_bytes` by
    default)."""
    if not _has_accelerate_hooks(model):
        return None
    if available is None:
        from qcheck.inputs.fit import available_bytes as available
    short = []
    for device, size in attack_weight_bytes_by_device(model).items():
        free = available(device)
        if free is not None and size > free:
            short.append(f"{size / 2**30:.1f} GiB on {device}, where {free / 2**30:.1f} GiB is free")
    if not short:
        return None
    return ("the attacks' gradient passes hold more than this dispatched model's placement (16-bit tensors upcast "
            "to fp32, offloaded layers kept on the device that runs them until the backward pass): "
            f"{'; '.join(short)}. Not attacked rather than run out of memory; to attack it, lower --max-memory for "
            "that device or run the reference in fp32")


def needs_fp32_upcast(model: nn.Module) -> bool:
    """Whether attacks take gradients in fp32 weights the model lacks: float weights other than fp32, not
    bitsandbytes layers."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes <= {torch.float32}:
        return False
    return not any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


# ----------------------------------------------------------------------------- gradients and attacks

@contextlib.contextmanager
def float32_weights(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its 16-bit float parameters and buffers upcast to fp32 in place for the block, each restored
    to its own dtype after: exact both ways (every fp16 and bf16 value is an fp32 value), and no second model. The
    deep copy this replaces held the 8B variant twice (14 GB plus 28 GB) and set the run's peak (1.309 x, session
    14). Tied weights stay tied; their storage is new afterwards.

    Tensors are found again by the module and name that hold them, not as objects: accelerate's offload hooks put
    a new parameter in place at each forward, in the dtype of the one they replace (`set_module_tensor_to_device`),
    so an offloaded layer's upcast meta parameter makes the hook load its weights in fp32, and restoring by name
    gives it back its dtype. Restoring the objects first seen left a dispatched variant's offloaded layers in fp32
    after its attack (session 15's dtype mismatch), which is why dispatched models were deep-copied until session 27;
    that copy doubled their resident fp32 layers on the GPU. A tied weight accelerate knows by its storage address
    (`tied_pointers`) keeps its storage for the block and gets it back after: freed, its address was taken by an
    offloaded layer loaded next, which the hook then swapped for the cached tied weight (a tiny tied Llama's
    down_proj given the 512 x 64 embeddings, in session 27's tests)."""
    from qcheck.quant.offload import tied_pointers

    pinned = tied_pointers(model)
    slots = [(table, name, t.dtype) for module in model.modules()
             for table in (module._parameters, module._buffers) for name, t in table.items()
             if t is not None and t.is_floating_point() and t.dtype != torch.float32]
    kept: dict[int, torch.Tensor] = {}
    try:
        for table, name, _ in slots:
            t = table[name]
            if t is not None and t.dtype != torch.float32:  # a tied tensor met again is upcast already
                if t.data_ptr() in pinned:
                    kept[id(t)] = t.data
                t.data = t.data.to(torch.float32)
        yield model
    finally:
        for table, name, dtype in slots:
            t = table[name]
            if t is not None and t.dtype != dtype:
                t.data = kept[id(t)] if id(t) in kept else t.data.to(dtype)


def gradient_weights(model: nn.Module) -> tuple[Callable[[], contextlib.AbstractContextManager[nn.Module]], str]:
    """Where attacks take gradients from `model`, as a scope that yields the model to differentiate, and its
    description: its own weights if they are fp32 (or bitsandbytes layers, used as they are); else fp32 weights for
    the gradient passes only (same values, fp32 arithmetic, straight-through for the dtype cast), upcast in place by
    `float32_weights`, a model accelerate dispatched included (its offloaded layers are then loaded in fp32). Attacks
    still score in the variant's own weights."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes <= {torch.float32}:
        return (lambda: contextlib.nullcontext(model)), ("the variant itself (float32 weights; activation "
                                                         "fake-quant straight-through)")
    if not needs_fp32_upcast(model):
        return (lambda: contextlib.nullcontext(model)), (f"the variant itself ({sorted(str(d) for d in dtypes)} "
                                                         "bitsandbytes layers; not upcast)")
    where = (" (offloaded layers loaded in fp32 at each forward)" if _has_accelerate_hooks(model) else "")
    return (lambda: float32_weights(model)), (
        f"float32 weights holding the variant's {sorted(str(d) for d in dtypes)} values (fp32 arithmetic: "
        f"straight-through for the cast); upcast in place for the gradient passes{where}, restored exactly after")


def _has_accelerate_hooks(model: nn.Module) -> bool:
    return any(getattr(m, "_hf_hook", None) is not None for m in model.modules())


def _grad_status(grad: torch.Tensor | None, mask: torch.Tensor) -> list[str]:
    if grad is None:
        return ["missing"] * mask.shape[0]
    out = []
    for i in range(mask.shape[0]):
        g = grad[i][mask[i]]
        if not torch.isfinite(g).all():
            out.append("nonfinite")
        elif float(g.abs().max()) == 0.0:
            out.append("zero")
        else:
            out.append("ok")
    return out


def _loss_grad(model: nn.Module, base: torch.Tensor, delta: torch.Tensor, batch: _Batch, draws: int
               ) -> tuple[torch.Tensor | None, list[str]]:
    """Gradient of the summed cross-entropy (true labels) w.r.t. delta, and each item's gradient status.

    Only delta's gradient is computed (`torch.autograd.grad`): `loss.backward()` would also fill a `.grad` for every
    weight of the model (one more copy of the weights: 540 MB at 135M in fp32, 32 GB at 8B) and leave them behind
    in the user's model. The weights are frozen for the pass (`frozen_parameters`), so the forward keeps only what
    delta's gradient needs, not every linear layer's input for weight gradients nobody asks for (at the 135M shape,
    16 questions: 1,760 MiB kept instead of 2,400)."""
    d = delta.detach().clone().requires_grad_(True)
    grad = None
    with torch.enable_grad(), frozen_parameters(model):
        scores = _expected_scores(model, _inputs(base, d, batch), batch, draws)
        labels = [it.label for it in batch.items]
        loss = sum(torch.nn.functional.cross_entropy(s.unsqueeze(0), torch.tensor([y], device=s.device))
                   for s, y in zip(scores, labels))
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, d, allow_unused=True)
    status = _grad_status(grad, batch.prompt_mask)
    if grad is not None:
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    return grad, status


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with every parameter's requires_grad off inside the block, restored by name after (also on error, and
    also where accelerate's hooks put new parameter objects in place meanwhile). Gradients with respect to the inputs
    are unchanged; autograd then saves no layer input for a weight gradient."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for _, p in model.named_parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        wanted = set(names)
        for n, p in model.named_parameters():
            if n in wanted:
                p.requires_grad_(True)


def _unit(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    norm = grad.norm(dim=-1, keepdim=True)
    unit = torch.where(norm > 0, grad / norm.clamp_min(1e-30), torch.zeros_like(grad))
    return unit * mask.unsqueeze(-1)


def _project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    norm = delta.norm(dim=-1, keepdim=True)
    scale = torch.clamp(radius.unsqueeze(-1) / norm.clamp_min(1e-30), max=1.0)
    return delta * scale


def _radius(base: torch.Tensor, batch: _Batch, epsilon: float) -> torch.Tensor:
    """Per question and prompt position: epsilon * ||embedding||_2 (0 past the prompt)."""
    return epsilon * base.norm(dim=-1) * batch.prompt_mask


def fgsm_delta(grad: torch.Tensor, radius: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One L2 fast-gradient step per token to the edge of its ball: radius * g / ||g|| (zero where g = 0)."""
    return radius.unsqueeze(-1) * _unit(grad, mask)


def pgd_step(delta: torch.Tensor, grad: torch.Tensor, radius: torch.Tensor, mask: torch.Tensor,
             step_size: float, epsilon: float) -> torch.Tensor:
    """delta + (step_size/epsilon) * radius * g/||g||, projected back onto each token's L2 ball."""
    step = (step_size / epsilon) * radius.unsqueeze(-1) * _unit(grad, mask)
    return _project(delta + step, radius) * mask.unsqueeze(-1)


# ----------------------------------------------------------------------------- the evaluation

def _training_modules(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    training = tuple(name or "<root>" for name, m in model.named_modules() if m.training)
    dropout = tuple(name or "<root>" for name, m in model.named_modules()
                    if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
    if model.training:
        cfg = getattr(model, "config", None)
        for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop"):
            if cfg is not None and float(getattr(cfg, key, 0.0) or 0.0) > 0:
                dropout += (f"config.{key}={getattr(cfg, key)}",)
    return training, dropout


def evaluate_robustness(
    model: nn.Module,
    items: Sequence[ChoiceItem],
    config: AttackConfig | None = None,
    *,
    randomized: str = "refuse",
    draws: int = 4,
    repeats: int = 2,
    batch_size: int = ATTACK_BATCH,
    pad_id: int = 0,
    variant: str | None = None,
    gradient_model: nn.Module | None = None,
    data: dict[str, Any] | None = None,
) -> RobustnessEvaluation:
    """Clean accuracy, then FGSM/PGD on the clean-correct questions only; robust = clean-correct and correct
    under every attack. The clean pass runs twice (the first batch `repeats` times in all); a randomized model
    (the passes differ, or modules in training mode) is refused (`randomized="refuse"`: nothing attacked,
    nothing robust) or scored with expectation over `draws` forwards. `batch_size` questions are attacked
    together: two forwards score a batch (all prompts, then all choices on their prompts' key/value cache)."""
    config = config or AttackConfig()
    if randomized not in RANDOMIZED_POLICIES:
        raise ConfigError(f"randomized must be one of {RANDOMIZED_POLICIES}, got {randomized!r}", field="randomized")
    if draws < 2:
        raise ConfigError(f"draws must be >= 2, got {draws}", field="draws")
    if repeats < 2:
        raise ConfigError(f"repeats must be >= 2 (the clean pass is repeated to detect randomness), got {repeats}",
                          field="repeats")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}", field="batch_size")
    if not items:
        raise DataError("no questions to evaluate")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise DataError("question ids must be unique (per-sample records are matched by id)")
    device = _device_of(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _evaluate(model, items, config, randomized, draws, repeats, batch_size, pad_id, variant,
                         gradient_model, data, device)


def _evaluate(model: nn.Module, items: Sequence[ChoiceItem], config: AttackConfig, randomized: str, draws: int,
              repeats: int, batch_size: int, pad_id: int, variant: str | None, gradient_model: nn.Module | None,
              data: dict[str, Any] | None, device: torch.device) -> RobustnessEvaluation:
    start = time.perf_counter()
    training, dropout = _training_modules(model)
    batches = [_make_batch(items[i:i + batch_size], pad_id, device) for i in range(0, len(items), batch_size)]
    bases = [_base_embeddings(model, b) for b in batches]
    first: list[torch.Tensor] = []
    again: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for b, base in zip(batches, bases):
            first += [s.detach() for s in _choice_scores(model, base, b)]
        for r in range(repeats - 1):              # the whole clean pass once more, the first batch every time
            scored: list[torch.Tensor] = []
            for b, base in (zip(batches, bases) if r == 0 else zip(batches[:1], bases[:1])):
                scored += [s.detach() for s in _choice_scores(model, base, b)]
            again.append(scored)
    diff = max((float((a - c).abs().max()) for run in again for a, c in zip(first, run)), default=0.0)
    flips = sum(int(a.argmax()) != int(c.argmax()) for run in again for a, c in zip(first, run))
    check = RandomizationCheck(training, dropout, diff, flips, randomized, draws, repeats)
    expect = check.randomized or check.train_mode
    n_draws = draws if expect else 1
    if expect and not check.refused:
        with torch.no_grad():
            clean = []
            for b, base in zip(batches, bases):
                clean += [s.detach() for s in _expected_scores(model, base, b, n_draws)]
    else:
        clean = first
    preds = [int(s.argmax()) for s in clean]
    records: list[SampleRecord] = []
    if check.refused:
        for it, p in zip(items, preds):
            records.append(SampleRecord(it.id, it.label, p, p == it.label, False, {}, False, "not attacked (refused)"))
        return RobustnessEvaluation(records, config, check, "none (randomized model refused)",
                                    time.perf_counter() - start, variant, data=dict(data or {}))
    if gradient_model is not None:
        grad_scope, grad_source = (lambda: contextlib.nullcontext(gradient_model)), "given gradient model"
    else:
        grad_scope, grad_source = gradient_weights(model)
    for b in batches:
        k = len(b.items)
        bpreds = preds[len(records):len(records) + k]
        correct = [p == it.label for p, it in zip(bpreds, b.items)]
        targets = [i for i in range(k) if correct[i]]
        attack_preds, grads = _attack([b.items[i] for i in targets], model, grad_scope, config, pad_id, device,
                                      n_draws)
        for i, it in enumerate(b.items):
            if i in targets:
                j = targets.index(i)
                got = attack_preds[j]
                robust = len(got) == len(config.attacks) and all(p == it.label for p in got.values())
                records.append(SampleRecord(it.id, it.label, bpreds[i], True, True, got, robust, grads[j]))
            else:
                records.append(SampleRecord(it.id, it.label, bpreds[i], False, False, {}, False,
                                            "not attacked (clean-wrong)"))
    return RobustnessEvaluation(records, config, check, grad_source, time.perf_counter() - start, variant,
                                data=dict(data or {}))


def _attack(items: list[ChoiceItem], model: nn.Module,
            grad_scope: Callable[[], contextlib.AbstractContextManager[nn.Module]], config: AttackConfig, pad_id: int,
            device: torch.device, draws: int) -> tuple[list[dict[str, int]], list[str]]:
    """Run the attacks in order, each on the questions still answered correctly (AutoAttack's cascade).
    Returns each question's prediction under every attack it met, and its worst gradient status. Gradients are
    taken from the model `grad_scope` yields (fp32 weights for a 16-bit variant), the attacked questions scored
    outside it, in the variant's own weights."""
    preds: list[dict[str, int]] = [{} for _ in items]
    status = ["ok"] * len(items)
    grad0: dict[int, torch.Tensor | None] = {}
    alive = list(range(len(items)))
    for name in config.attacks:
        if not alive:
            break
        batch = _make_batch([items[i] for i in alive], pad_id, device)
        base = _base_embeddings(model, batch)
        radius = _radius(base, batch, config.epsilon)
        mask = batch.prompt_mask
        with grad_scope() as grad_model:
            if any(i not in grad0 for i in alive):  # the gradient at delta = 0: FGSM's and PGD's first step
                zero = torch.zeros(mask.shape + (base.shape[-1],), device=device)
                g, st = _loss_grad(grad_model, base, zero, batch, draws)
                for j, i in enumerate(alive):
                    grad0[i] = None if g is None else g[j, :len(items[i].prompt_ids)]
                    _worst(status, i, st[j])
            first = _stack([grad0[i] for i in alive], mask, base.shape[-1])
            if name == "fgsm":
                delta = fgsm_delta(first, radius, mask) if first is not None else torch.zeros(
                    mask.shape + (base.shape[-1],), device=device)
            else:
                delta = _pgd(grad_model, base, batch, radius, mask, config, first, draws, status, alive)
        with torch.no_grad():
            scores = _expected_scores(model, _inputs(base, delta, batch), batch, draws)
        still = []
        for j, i in enumerate(alive):
            preds[i][name] = int(scores[j].argmax())
            if preds[i][name] == items[i].label:
                still.append(i)
        alive = still
    return preds, status


def _stack(grads: list[torch.Tensor | None], mask: torch.Tensor, hidden: int) -> torch.Tensor | None:
    if any(g is None for g in grads):
        return None
    out = torch.zeros(mask.shape + (hidden,), device=mask.device)
    for j, g in enumerate(grads):
        out[j, :g.shape[0]] = g
    return out


def _pgd(model: nn.Module, base: torch.Tensor, batch: _Batch, radius: torch.Tensor, mask: torch.Tensor,
         config: AttackConfig, grad0: torch.Tensor | None, draws: int, status: list[str],
         alive: list[int]) -> torch.Tensor:
    """PGD from zero (its first gradient is FGSM's, reused) or a seeded random start inside the ball."""
    delta = torch.zeros(radius.shape + (base.shape[-1],), device=base.device)
    grad = grad0
    if config.random_start:
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        noise = torch.randn(delta.shape, generator=gen).to(base.device)
        delta = _project(noise, radius * torch.rand(radius.shape, generator=gen).to(base.device)) * mask.unsqueeze(-1)
        grad, st = _loss_grad(model, base, delta, batch, draws)
        for j, i in enumerate(alive):
            _worst(status, i, st[j])
    for step in range(config.pgd_steps):
        if grad is None:
            break
        delta = pgd_step(delta, grad, radius, mask, config.pgd_step_size, config.epsilon)
        if step + 1 < config.pgd_steps:
            grad, st = _loss_grad(model, base, delta, batch, draws)
            for j, i in enumerate(alive):
                _worst(status, i, st[j])
    return delta


def _worst(status: list[str], i: int, new: str) -> None:
    """Keep the worst gradient status seen for a question (missing > nonfinite > zero > ok)."""
    order = {"ok": 0, "zero": 1, "nonfinite": 2, "missing": 3}
    if order.get(new, 0) > order.get(status[i], 0):
        status[i] = new


def items_from_rows(rows: Iterable[tuple[str, Sequence[int], Sequence[Sequence[int]], int]]) -> list[ChoiceItem]:
    """ChoiceItems from (id, prompt_ids, [choice_ids...], label) tuples (pre-tokenized data)."""
    return [ChoiceItem(str(i), tuple(p), tuple(tuple(c) for c in cs), int(y)) for i, p, cs, y in rows]
