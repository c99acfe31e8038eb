"""Calibration sets for post-training quantization: WikiText chunks or chat-formatted instruction prompts.

Seed 002 calibrated an instruction model on plain text and suspected that for its empty answers; qcheck lets
the calibration source be chosen and recorded: `wikitext` (contiguous token chunks from the END of the test split,
away from the head that perplexity is measured on) or
`chat-gsm8k` (GSM8K questions wrapped in the tokenizer's chat template, with a `\\boxed{}` instruction).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from qcheck.errors import ConfigError, DataError
from qcheck.inputs.data import GSM8K_TEST, find_data_file, read_text, sha256_of, wikitext_test

SOURCES = ("wikitext", "chat-gsm8k")
CHAT_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."


@dataclass(frozen=True)
class CalibrationSpec:
    """Which calibration set: source, how many samples, tokens per sample, seed."""

    source: str = "wikitext"
    n_samples: int = 32
    seq_len: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"calibration source {self.source!r}: use one of {', '.join(SOURCES)}", field="source")
        if self.n_samples < 1:
            raise ConfigError(f"calibration n_samples must be >= 1, got {self.n_samples}", field="n_samples")
        if self.seq_len < 8:
            raise ConfigError(f"calibration seq_len must be >= 8, got {self.seq_len}", field="seq_len")


@dataclass
class CalibrationSet:
    """Tokenized calibration samples (lists of ids, unpadded) with their provenance."""

    spec: CalibrationSpec
    input_ids: list[list[int]]
    texts: list[str] = field(default_factory=list)
    data_file: str = ""
    data_sha256: str = ""

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: spec, sample count, tokens, data file and hash."""
        return {**asdict(self.spec), "samples": len(self.input_ids), "tokens": self.n_tokens,
                "data_file": self.data_file, "data_sha256": self.data_sha256}

    def to_dataset(self) -> Any:
        """A `datasets.Dataset` with input_ids / attention_mask columns (what llm-compressor's oneshot takes)."""
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids,
                                  "attention_mask": [[1] * len(ids) for ids in self.input_ids]})


def build_calibration(tokenizer: Any, spec: CalibrationSpec | None = None, **overrides: Any) -> CalibrationSet:
    """Build the calibration set `spec` describes (keyword overrides build a spec) from local data."""
    spec = spec or CalibrationSpec(**overrides)
    if spec.source == "wikitext":
        return _wikitext(tokenizer, spec)
    return _chat_gsm8k(tokenizer, spec)


def _wikitext(tokenizer: Any, spec: CalibrationSpec) -> CalibrationSet:
    need_chars = spec.n_samples * spec.seq_len * 6 + 10_000
    full, path = wikitext_test()
    text = full[-need_chars:]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i:i + spec.seq_len] for i in range(0, len(ids) - spec.seq_len + 1, spec.seq_len)]
    if len(chunks) < spec.n_samples:
        raise DataError(f"WikiText gives only {len(chunks)} chunks of {spec.seq_len} tokens; "
                        f"{spec.n_samples} requested")
    order = list(range(len(chunks)))
    random.Random(spec.seed).shuffle(order)
    picked = [chunks[i] for i in sorted(order[:spec.n_samples])]
    return CalibrationSet(spec, picked, [], str(path), sha256_of(path))


def chat_prompt(tokenizer: Any, question: str) -> str:
    """A GSM8K question as the model's chat template formats a user turn (generation prompt appended)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("the tokenizer has no chat template: use calibration source 'wikitext'", field="source")
    messages = [{"role": "user", "content": f"{question}\n{CHAT_INSTRUCTION}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _chat_gsm8k(tokenizer: Any, spec: CalibrationSpec) -> CalibrationSet:
    path = find_data_file(GSM8K_TEST)
    rows = [json.loads(line) for line in read_text(path).splitlines() if line.strip()]
    if len(rows) < spec.n_samples:
        raise DataError(f"{path} has {len(rows)} questions; {spec.n_samples} requested")
    order = list(range(len(rows)))
    random.Random(spec.seed).shuffle(order)
    texts, ids = [], []
    for i in order[:spec.n_samples]:
        prompt = chat_prompt(tokenizer, rows[i]["question"])
        texts.append(prompt)
        ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"][:spec.seq_len])
    return CalibrationSet(spec, ids, texts, str(path), sha256_of(path))
