"""Greedy generation with a fixed budget: few-shot prompts from files, the model's chat template when its
tokenizer has one, batched with left padding. Every output records its prompt, how many new tokens were
generated and why generation stopped, so "empty output" can be told from "cut at 0 tokens" (seed 002).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, DataError
from qcheck.measure.attention import varying_shape_attention
from qcheck.quant.offload import input_device

GSM8K_PROMPT = "gsm8k_3shot"
"""The packaged GSM8K 3-shot prompt (qcheck/prompts/gsm8k_3shot.json)."""

PLAIN_STOP = ("Question:",)
"""Where a continuation of a plain (no chat template) few-shot prompt ends: a base model that has answered goes on
with the next "Question: ..." of the pattern, and the last \\boxed{} of that made-up question would be read as its
answer. lm-evaluation-harness's gsm8k task stops at the same string (`until: ["Question:", ...]` in gsm8k.yaml),
on the same "Question: ...\\nAnswer:" format."""


@dataclass(frozen=True)
class FewShotPrompt:
    """A system line, an instruction prefix and worked (question, answer) shots, rendered per question."""

    name: str
    shots: tuple[tuple[str, str], ...]
    system: str = ""
    instruction: str = ""
    source: str = ""
    stop: tuple[str, ...] = ()
    """Strings that end a continuation, whatever the rendering (the file's "stop" list); a plain rendering also
    stops at PLAIN_STOP."""

    def __post_init__(self) -> None:
        for i, shot in enumerate(self.shots):
            if len(shot) != 2 or not all(isinstance(s, str) and s.strip() for s in shot):
                raise ConfigError(f"prompt {self.name!r}: shot {i} must be a non-empty (question, answer) pair",
                                  field="shots")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"prompt {self.name!r}: stop must be a list of non-empty strings, got {self.stop!r}",
                              field="stop")
        object.__setattr__(self, "stop", tuple(self.stop))

    def stop_strings(self, chat: bool) -> tuple[str, ...]:
        """Where a continuation ends besides the model's end-of-sequence token: the file's stop strings, and for
        a plain rendering the next question of the pattern (PLAIN_STOP)."""
        return self.stop if chat else tuple(dict.fromkeys(self.stop + PLAIN_STOP))

    @classmethod
    def load(cls, name_or_path: str | Path) -> FewShotPrompt:
        """A packaged prompt by name (e.g. 'gsm8k_3shot') or a JSON file {name, system, instruction, shots}."""
        path = Path(name_or_path)
        if path.suffix == ".json" and path.is_file():
            text, source = path.read_text(encoding="utf-8"), str(path)
        else:
            res = resources.files("qcheck.inputs.prompts").joinpath(f"{name_or_path}.json")
            if not res.is_file():
                raise ConfigError(f"no prompt file {name_or_path!r}: give a .json path or a packaged prompt name "
                                  f"({', '.join(packaged_prompts())})", field="prompt")
            text, source = res.read_text(encoding="utf-8"), f"qcheck/inputs/prompts/{name_or_path}.json"
        try:
            data = json.loads(text)
            shots = tuple((s["question"], s["answer"]) for s in data["shots"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"prompt file {source} is malformed: {exc}", field="prompt") from None
        return cls(data.get("name", path.stem), shots, data.get("system", ""), data.get("instruction", ""), source,
                   data.get("stop", ()))

    def messages(self, question: str) -> list[dict[str, str]]:
        """Chat messages: system (if any), then user/assistant turns per shot, then the question."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for q, a in self.shots:
            out += [{"role": "user", "content": self.instruction + q}, {"role": "assistant", "content": a}]
        return out + [{"role": "user", "content": self.instruction + question}]

    def plain(self, question: str) -> str:
        """The prompt as plain text for tokenizers without a chat template."""
        parts = [self.system] if self.system else []
        parts += [f"Question: {self.instruction}{q}\nAnswer: {a}" for q, a in self.shots]
        parts.append(f"Question: {self.instruction}{question}\nAnswer:")
        return "\n\n".join(parts)

    def render(self, tokenizer: Any, question: str, chat: bool | None = None) -> str:
        """The prompt text for `question`: the tokenizer's chat template when it has one (chat=None), else plain."""
        use_chat = has_chat_template(tokenizer) if chat is None else chat
        if use_chat:
            if not has_chat_template(tokenizer):
                raise ConfigError("chat=True, but the tokenizer has no chat template", field="chat_template")
            return tokenizer.apply_chat_template(self.messages(question), tokenize=False, add_generation_prompt=True)
        return self.plain(question)


def packaged_prompts() -> list[str]:
    """Names of the prompt files shipped in qcheck/prompts."""
    return sorted(p.name[:-5] for p in resources.files("qcheck.inputs.prompts").iterdir() if p.name.endswith(".json"))


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


CACHES = ("dynamic", "static", "graph")


def decoding_cache(decoding: str, *, gpu: bool) -> str:
    """The cache a `--decoding` choice runs: graph for "graph", and for "auto" on a CUDA device (where replaying one
    graph per step saves the eager forward's launches); generate's dynamic cache otherwise."""
    return "graph" if decoding == "graph" or (decoding == "auto" and gpu) else "dynamic"


@dataclass(frozen=True)
class GenerationSettings:
    """Greedy decoding with a fixed budget of new tokens; recorded with every run so runs can be compared."""

    max_new_tokens: int = 64
    batch_size: int = 4
    """Prompts per generate call; 0 sizes the batch by the device's free memory (all prompts at once where they
    fit: decoding is host-bound, so a small fixed batch wastes a GPU)."""
    chat_template: bool | None = None
    prompt: str = GSM8K_PROMPT
    cache: str = "dynamic"
    """The KV cache: "dynamic" or "static" (transformers' generate; a static cache compiles the decoding step on CUDA),
    or "graph" (`qcheck.measure.decode`: a static cache and one CUDA graph replayed per step, generate's dynamic
    cache where a model cannot take that path)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens} (a budget of 0 new tokens "
                              "can only produce empty outputs)", field="max_new_tokens")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 1 (or 0: sized by free memory), got {self.batch_size}",
                              field="batch_size")
        if self.cache not in CACHES:
            raise ConfigError(f"cache must be one of {', '.join(CACHES)}, got {self.cache!r}", field="cache")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decoding": "greedy"}


@dataclass(frozen=True)
class Generation:
    """One output: the decoded new text, how many new tokens were generated, and why generation stopped."""

    id: str
    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    stop: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationRun:
    """The outputs of one model on a list of prompts, with the settings and timing."""

    outputs: list[Generation]
    settings: GenerationSettings
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [g.text for g in self.outputs]

    @property
    def new_tokens(self) -> int:
        return sum(g.n_new_tokens for g in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": [g.to_dict() for g in self.outputs], "settings": asdict(self.settings),
                "seconds": self.seconds, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRun:
        return cls([Generation(**g) for g in data["outputs"]], GenerationSettings(**data["settings"]),
                   float(data["seconds"]), dict(data.get("extra") or {}))


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for i in (source if isinstance(source, (list, tuple)) else [source]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _check_positions(model: nn.Module, longest_prompt: int, new_tokens: int) -> None:
    """ConfigError where the longest prompt and the new tokens pass the positions the model takes: a learned position
    table has no row there (an IndexError inside torch), rotary positions extrapolate."""
    from qcheck.inputs.models import trained_context

    limit = trained_context(getattr(model, "config", None))
    if limit is None or longest_prompt + new_tokens <= limit:
        return
    fix = (f"pass --new-tokens {limit - longest_prompt} or less, or a shorter --prompt" if longest_prompt < limit
           else "pass a shorter --prompt")
    raise ConfigError(f"the longest prompt takes {longest_prompt} tokens and generation {new_tokens} more, past the "
                      f"{limit} positions the model takes; {fix}", field="--new-tokens")


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings | None = None,
             *, ids: Sequence[str] | None = None, stop_strings: Sequence[str] = ()) -> GenerationRun:
    """Greedy continuations of `prompts` (already rendered text), batched with left padding. A continuation ends at
    an end-of-sequence token or, cut before it, at the first of `stop_strings`."""
    from transformers import GenerationConfig

    settings = settings or GenerationSettings()
    if not prompts:
        raise DataError("generate needs at least one prompt")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(prompts))]
    if len(ids) != len(prompts):
        raise DataError(f"{len(ids)} ids for {len(prompts)} prompts")
    stop_strings = tuple(stop_strings)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    _check_positions(model, max(len(e) for e in encoded), settings.max_new_tokens)
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    device = input_device(model)
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad, eos_token_id=eos or None,
                              **({"cache_implementation": "static"} if settings.cache == "static" else {}))
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: dict[int, Generation] = {}
    lengths = [len(e) for e in encoded]
    static = settings.cache == "graph" and _static_path(model, lengths, settings)
    size = settings.batch_size or memory_batch_size(model, lengths, settings.max_new_tokens, static=static,
                                                    shared=shared_prefix(encoded) if static else 0)
    fallback_size = settings.batch_size or memory_batch_size(model, lengths, settings.max_new_tokens)
    methods: list[str] = []
    start = time.perf_counter()
    for b in range(0, len(order), size):
        batch = order[b: b + size]
        with varying_shape_attention():
            new, method = _decode(model, [encoded[i] for i in batch], device, config, settings, eos, pad,
                                  fallback_size, tokenizer, stop_strings)
        methods.append(method)
        for row, i in enumerate(batch):
            tokens = new[row].tolist()
            cut = next((k for k, t in enumerate(tokens) if t in eos), None)
            kept = tokens if cut is None else tokens[:cut]
            text, n_kept, hit = cut_at_stop(tokenizer, kept, stop_strings)
            reason = "stop_string" if hit else "budget" if cut is None else "eos"
            results[i] = Generation(ids[i], text, len(encoded[i]), n_kept, reason)
    seconds = time.perf_counter() - start
    return GenerationRun([results[i] for i in range(len(prompts))], settings, seconds,
                         {"batch_size": size, "decoding": sorted(set(methods)), "stop_strings": list(stop_strings)})


def cut_at_stop(tokenizer: Any, tokens: Sequence[int], stop_strings: Sequence[str]) -> tuple[str, int, bool]:
    """The decoded text of `tokens` cut before the first stop string, the new tokens up to the one that completed
    it (all of them where none occurs), and whether one occurred. The same whichever path decoded the row: the graph
    decoder notices a stop string only at its periodic checks, generate at once, and both cut here."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    found = [text.find(s) for s in stop_strings if s in text]
    if not found:
        return text, len(tokens), False
    low, high = 1, len(tokens)  # a string once in a decoded prefix stays in the longer ones: bisect for the first
    while low < high:
        mid = (low + high) // 2
        if any(s in tokenizer.decode(tokens[:mid], skip_special_tokens=True) for s in stop_strings):
            high = mid
        else:
            low = mid + 1
    return text[:min(found)], low, True


def new_text_stop(tokenizer: Any, stop_strings: Sequence[str], width: int) -> Any:
    """generate's stopping criterion for stop strings in the new text only. transformers' own (`stop_strings`) also
    matches a string that begins in the prompt: a row whose prompt ends "how many" stopped at its first new token
    " many" for the stop string " many many". Each step decodes the last tokens of every row, enough to hold the
    longest string (as lm-evaluation-harness's criterion does)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    tail = max(map(len, stop_strings)) + 8  # a token decodes to >= 1 character, bar the odd partial byte

    class NewTextStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return rows_holding(tokenizer, input_ids[:, width:][:, -tail:], stop_strings).to(input_ids.device)

    return StoppingCriteriaList([NewTextStop()])


def rows_holding(tokenizer: Any, tokens: torch.Tensor, stop_strings: Sequence[str]) -> torch.Tensor:
    """Which rows of new tokens [rows, n] hold a stop string once decoded (a bool per row, on the CPU)."""
    texts = tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    return torch.tensor([any(s in t for s in stop_strings) for t in texts], dtype=torch.bool)


def _static_path(model: nn.Module, lengths: Sequence[int], settings: GenerationSettings) -> bool:
    """Whether the static-cache decoder will take the model (its refusals known up front), so the batch is sized
    for its chunked prefill."""
    from qcheck.measure.decode import refusal

    return refusal(model, max(lengths) + settings.max_new_tokens) is None


SHARED_PREFIX_MIN = 32
"""Tokens the prompts of a batch must share from their start before the static decoder prefills them once for all
rows (the few-shot examples: about 350 tokens of SmolLM2's 3-shot GSM8K prompt, ~80% of each prompt)."""


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares (0 below SHARED_PREFIX_MIN), leaving each row one token of its own."""
    if len(rows) < 2:
        return 0
    n = 0
    for column in zip(*rows):
        if any(t != column[0] for t in column[1:]):
            break
        n += 1
    n = min(n, min(map(len, rows)) - 1)
    return n if n >= SHARED_PREFIX_MIN else 0


def batch_layout(rows: Sequence[Sequence[int]], pad: int, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of a batch: left padding, or with `prefix` > 0 the shared prefix first and each
    row's padding between it and the row's own tokens (the prefix then sits at the same positions in every row)."""
    width = max(map(len, rows))
    inp = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        n = len(tokens)
        inp[row, :prefix] = torch.tensor(tokens[:prefix], dtype=torch.long)
        attn[row, :prefix] = 1
        inp[row, width - (n - prefix):] = torch.tensor(tokens[prefix:], dtype=torch.long)
        attn[row, width - (n - prefix):] = 1
    return inp, attn


def _decode(model: nn.Module, rows: list[list[int]], device: torch.device, config: Any,
            settings: GenerationSettings, eos: list[int], pad: int, fallback_size: int, tokenizer: Any = None,
            stop_strings: Sequence[str] = ()) -> tuple[torch.Tensor, str]:
    """New tokens [rows, steps] on the CPU and how they were decoded: the static cache where asked and possible (one
    CUDA graph per step, or eager steps for a model whose forward waits for the GPU, bitsandbytes' LLM.int8; the
    prompts' shared prefix prefilled once, and kept once where `decode.keeps_prefix_once` says), else transformers'
    generate on left-padded rows, in slices of `fallback_size` rows (its prefill is one pass over the whole batch, so
    a batch sized for the chunked static prefill may not fit it). Rows that reach a stop string stop early on either
    path (the caller cuts the text)."""
    fallback = f"generate, {settings.cache} cache"
    if settings.cache == "graph":
        from qcheck.measure.decode import Unsupported, decode_greedy

        prefix = shared_prefix(rows)
        inp, attn = batch_layout(rows, pad, prefix)
        try:
            decoded = decode_greedy(model, inp.to(device), attn.to(device), settings.max_new_tokens, eos, pad,
                                    prefix=prefix,
                                    stopped=(lambda new: rows_holding(tokenizer, new, stop_strings))
                                    if stop_strings else None)
            return decoded.tokens.cpu(), decoded.method
        except Unsupported as exc:
            fallback = f"generate, dynamic cache (the static path refused: {exc})"
    inp, attn = batch_layout(rows, pad)
    inp, attn = inp.to(device), attn.to(device)
    parts = []
    for start in range(0, inp.shape[0], max(1, fallback_size)):
        part = slice(start, start + max(1, fallback_size))
        out = model.generate(input_ids=inp[part], attention_mask=attn[part], generation_config=config,
                             **({"stopping_criteria": new_text_stop(tokenizer, stop_strings, inp.shape[1])}
                                if stop_strings else {}))
        new = out[:, inp.shape[1]:].cpu()
        parts.append(torch.nn.functional.pad(new, (0, settings.max_new_tokens - new.shape[1]), value=pad))
    return torch.cat(parts), fallback


GENERATION_MEMORY_SHARE = 0.5
"""Share of the device's free memory a generation batch may plan for (the rest absorbs the allocator's slack and
the estimate's error)."""


STATIC_MEMORY_SHARE = 0.75
"""Share of the free device memory the static decoder's batch may plan for. Its key/value cache is allocated
exactly as estimated (a static cache of the batch's length) and its prefill is chunked to PREFILL_BYTES, which is
counted apart, so the estimate's error that GENERATION_MEMORY_SHARE absorbs for generate's one-pass prefill is
gone; the quarter left covers the step's own activations, the graph's pool and the allocator's slack."""


def memory_batch_size(model: nn.Module, prompt_lengths: Sequence[int], max_new_tokens: int, *,
                      static: bool = False, shared: int = 0) -> int:
    """Prompts per batch that fit the free device memory: per sequence its KV cache (2 x layers x KV heads x head dim
    x tokens, in the model's dtype) and, for generate, the prefill activations (GENERATION_MEMORY_SHARE); for the
    static decoder (static=True) the cache alone beside one chunked prefill (STATIC_MEMORY_SHARE), without the
    `shared` leading tokens every prompt has where the cache keeps them once (`keeps_prefix_once`; for a batch of two
    rows or more); 8 on a CPU. A model spread over GPUs is sized on each device by the layers that run there
    (`layers_by_device`), the tightest device deciding."""
    from qcheck.inputs.fit import available_bytes, rows_on_every_device
    from qcheck.inputs.placement import layers_by_device

    layers = layers_by_device(model)
    if not any(d.type == "cuda" for d in layers):
        return max(1, min(8, len(prompt_lengths)))
    param = next(model.parameters())
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    width = 2 if not param.dtype.is_floating_point else param.element_size()
    tokens = max(prompt_lengths) + max_new_tokens
    kv_layer = 2 * kv_heads * head_dim * tokens * width

    def free(device: torch.device) -> float:
        return float(available_bytes(device) or 0)

    if static:
        from qcheck.measure.decode import PREFILL_BYTES, host_waits, keeps_prefix_once

        once = keeps_prefix_once(param.dtype, host_bound=host_waits(model) is not None)
        shared = shared if once else 0  # else every row's cache holds the prefix

        def room(device: torch.device) -> float:
            return free(device) * STATIC_MEMORY_SHARE - PREFILL_BYTES

        fit = rows_on_every_device(layers, lambda n: n * kv_layer * (tokens - shared) // tokens, room)
        if fit < 2:  # a batch of one row has no shared prefix: its cache holds every position
            fit = rows_on_every_device(layers, lambda n: n * kv_layer, room)
    else:
        prefill = max(prompt_lengths) * (int(cfg.hidden_size) * 4 + int(getattr(cfg, "intermediate_size", 0)) * 3) * 4
        fit = rows_on_every_device(layers, lambda n: n * kv_layer + prefill,
                                   lambda d: free(d) * GENERATION_MEMORY_SHARE)
    return max(1, min(len(prompt_lengths), fit))


def generate_answers(model: nn.Module, tokenizer: Any, questions: Sequence[str],
                     settings: GenerationSettings | None = None, *, ids: Sequence[str] | None = None,
                     prompt: FewShotPrompt | None = None) -> GenerationRun:
    """Render each question with the few-shot prompt (chat template when the model has one) and generate, each
    continuation ending where the prompt's stop strings say (a plain rendering: at the next "Question:")."""
    settings = settings or GenerationSettings()
    prompt = prompt or FewShotPrompt.load(settings.prompt)
    chat = has_chat_template(tokenizer) if settings.chat_template is None else settings.chat_template
    texts = [prompt.render(tokenizer, q, chat=chat) for q in questions]
    run = generate(model, tokenizer, texts, settings, ids=ids, stop_strings=prompt.stop_strings(chat))
    run.extra.update({"prompt": prompt.name, "prompt_source": prompt.source, "chat_template": chat})
    return run


def boxed_records(run: GenerationRun, golds: Sequence[str]) -> dict[str, Any]:
    """Per prompt: whether the answer is in \\boxed{}, the extracted answer, the gold, correctness, the output (400
    characters), with the boxed rate and its Wilson interval (the report's `boxed_rate` metric)."""
    from qcheck.measure.boxed import answers_match, extract_boxed
    from qcheck.stats import wilson_interval

    records = []
    for g, gold in zip(run.outputs, golds):
        box = extract_boxed(g.text)
        records.append({"id": g.id, "boxed": box.ok, "status": box.status.value, "answer": box.answer,
                        "gold": gold, "correct": answers_match(box.answer, gold), "new_tokens": g.n_new_tokens,
                        "stop": g.stop, "output": g.text[:400]})
    boxed = sum(r["boxed"] for r in records)
    ci = wilson_interval(boxed, len(records))
    return {"value": boxed / len(records), "interval": {"low": ci.low, "high": ci.high, "level": ci.level,
                                                       "method": ci.method},
            "n": len(records), "boxed": boxed, "correct": sum(r["correct"] for r in records),
            "settings": run.settings.to_dict(), "seconds": run.seconds, "higher_is_better": True,
            **run.extra, "records": records}
