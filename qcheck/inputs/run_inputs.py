"""The data one run measures on: the perplexity token slice, the ARC-Easy and GSM8K slices, the robustness items and
the probe tokens, each loaded once, described (path, SHA-256, offset, size) and validated before anything runs.

`--slice K` shifts every slice to the K-th block of its data set (text tokens [K*tokens, (K+1)*tokens), questions
[K*n, (K+1)*n)), so a check can be tried on data nobody tuned it to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcheck.errors import DataError
from qcheck.inputs.data import find_data_file, sha256_of

MIN_TEXT_TOKENS = 256
"""The fewest evaluation tokens a run accepts: two blocks of 128, the unit of every perplexity interval."""
PROBE_SHAPE = (2, 32)
"""Probe rows x tokens fed to the reference and each variant to compare logits (quantization evidence)."""
MIN_PROBE_DISTINCT = 8
"""A probe of fewer distinct token ids than this cannot exercise the embedding and output rows the weights hold."""


@dataclass
class EvalText:
    """The perplexity / fidelity token slice with where it came from."""

    ids: list[int]
    text: str
    source: str
    sha256: str
    offset_tokens: int
    n_chars: int
    n_bytes: int
    n_words: int

    def describe(self) -> dict[str, Any]:
        return {"path": self.source, "sha256": self.sha256, "offset_tokens": self.offset_tokens,
                "tokens": len(self.ids), "chars": self.n_chars}


@dataclass
class RunInputs:
    """Every data slice of a run, loaded on first use from the run options and the reference's tokenizer."""

    options: Any
    tokenizer: Any
    vocab_size: int
    _cache: dict[str, Any] = field(default_factory=dict)

    def eval_text(self) -> EvalText:
        """--tokens tokens of --text (default WikiText-2 test) from token K*tokens on (K = --slice)."""
        if "text" not in self._cache:
            self._cache["text"] = self._load_text()
        return self._cache["text"]

    def _load_text(self) -> EvalText:
        from qcheck.inputs.data import WIKITEXT_TEST, read_text

        opts = self.options
        path = Path(opts.text) if opts.text else find_data_file(WIKITEXT_TEST)
        raw = read_text(path)
        if "\x00" in raw:
            raise DataError(f"{path} holds NUL bytes: not a text file (give a UTF-8 text file with --text)")
        ids = self.tokenizer(raw, add_special_tokens=False)["input_ids"]
        start = opts.data_slice * opts.tokens
        chosen = ids[start:start + opts.tokens]
        if len(chosen) < MIN_TEXT_TOKENS:
            where = f"from token {start} on" if start else "in all"
            raise DataError(f"{path} gives {len(chosen)} tokens {where} (of {len(ids)}); a run needs at least "
                            f"{MIN_TEXT_TOKENS} (two blocks of 128 for any interval): give a longer --text, more "
                            "--tokens, or a lower --slice")
        text = self.tokenizer.decode(chosen)
        return EvalText(list(chosen), text, str(path), sha256_of(path), start, len(text),
                        len(text.encode("utf-8")), len(text.split()))

    def arc(self, n: int) -> Any:
        """ARC-Easy questions [K*n, (K+1)*n) for multiple-choice scoring."""
        key = f"arc:{n}"
        if key not in self._cache:
            from qcheck.inputs.tasks import load_arc_easy

            self._cache[key] = load_arc_easy(n, offset=self.options.data_slice * n)
        return self._cache[key]

    def gsm8k(self, n: int) -> Any:
        """GSM8K problems [K*n, (K+1)*n) for generation."""
        key = f"gsm8k:{n}"
        if key not in self._cache:
            from qcheck.inputs.tasks import load_gsm8k

            self._cache[key] = load_gsm8k(n, offset=self.options.data_slice * n)
        return self._cache[key]

    def robustness_items(self, n: int, max_tokens: int) -> tuple[list[Any], dict[str, Any]]:
        """ARC-Easy items that fit `max_tokens`, from question K*n on, for the attack."""
        key = f"robust:{n}:{max_tokens}"
        if key not in self._cache:
            from qcheck.measure.robustness import arc_easy_items

            self._cache[key] = arc_easy_items(self.tokenizer, n, max_tokens=max_tokens,
                                              offset=self.options.data_slice * n)
        return self._cache[key]

    def probe_ids(self) -> Any:
        """Two rows of 32 real tokens from the evaluation text, for logit comparisons."""
        import torch

        ids = self.eval_text().ids[: PROBE_SHAPE[0] * PROBE_SHAPE[1]]
        return torch.tensor(ids, dtype=torch.long).reshape(*PROBE_SHAPE)

    def probe_blind_reason(self) -> str | None:
        """Why the probe cannot show a weight change, or None: a tokenizer that maps the text to a handful of ids
        (e.g. all to 0) feeds the model the same rows over and over."""
        ids = self.eval_text().ids[: PROBE_SHAPE[0] * PROBE_SHAPE[1]]
        distinct = sorted(set(ids))
        if len(distinct) < MIN_PROBE_DISTINCT:
            return (f"the probe's {len(ids)} tokens hold only {len(distinct)} distinct ids {distinct[:8]}: the "
                    "tokenizer maps the evaluation text to almost nothing (a broken or mismatched tokenizer), so "
                    "the logits cannot show whether the weights changed")
        return None
