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
    offset_chars: int = 0
    """Characters of the file before the slice's first token (where the slice starts in the text)."""

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
        offset_chars = len(self.tokenizer.decode(ids[:start], clean_up_tokenization_spaces=False)) if start else 0
        return EvalText(list(chosen), text, str(path), sha256_of(path), start, len(text),
                        len(text.encode("utf-8")), len(text.split()), offset_chars)

    def lm_eval_documents(self, budget: int) -> tuple[list[Any], dict[str, Any]]:
        """The documents lm-eval's perplexity scores in this run, with how they were chosen (for the record):
        WikiText-2 pages by `qcheck.inputs.documents.PAGE_RULE` within `budget` lm-eval tokens (none when no page
        fits), or with --text the run's slice, cut to `budget` tokens, as one document."""
        key = f"lm_eval:{budget}"
        if key not in self._cache:
            self._cache[key] = self._text_document(budget) if self.options.text else self._wikitext_pages(budget)
        return self._cache[key]

    def _lm_eval_tokens(self, text: str) -> int:
        """A document's tokens as lm-eval encodes it (the tokenizer's special-token default)."""
        from qcheck.measure.lm_eval_compat import encode_document, resolve_prefix_token_id

        return len(encode_document(self.tokenizer, text, None, resolve_prefix_token_id(self.tokenizer)))

    def _wikitext_pages(self, budget: int) -> tuple[list[Any], dict[str, Any]]:
        from bisect import bisect_right

        from qcheck.inputs.data import read_text
        from qcheck.inputs.documents import PAGE_RULE, page_document, page_offsets, read_wikitext_pages, select_pages

        text = self.eval_text()
        pages, file = read_wikitext_pages()
        first = max(0, bisect_right(page_offsets(read_text(file), pages), text.offset_chars) - 1)
        tokens: dict[int, int] = {}

        def tokens_of(i: int) -> int:
            if i not in tokens:
                tokens[i] = self._lm_eval_tokens(page_document(i, pages[i]).text)
            return tokens[i]

        chosen = select_pages(len(pages), first, budget, tokens_of)
        docs = [page_document(i, pages[i]) for i in chosen]
        return docs, {"documents": "WikiText-2 test pages (lm-eval's wikitext documents)", "rule": PAGE_RULE,
                      "path": str(file), "sha256": sha256_of(file), "budget_tokens": budget,
                      "slice_offset_tokens": text.offset_tokens, "slice_offset_chars": text.offset_chars,
                      "start_page": first, "pages": chosen, "n_documents": len(docs),
                      "tokens": sum(tokens[i] for i in chosen), "words": sum(d.n_words for d in docs),
                      "bytes": sum(d.n_bytes for d in docs)}

    def _text_document(self, budget: int) -> tuple[list[Any], dict[str, Any]]:
        from qcheck.inputs.documents import Document

        text = self.eval_text()
        doc = Document.plain(f"text-slice-{self.options.data_slice}", self.tokenizer.decode(text.ids[:budget]))
        return [doc], {"documents": "the run's --text slice as one document (not WikiText-2)",
                       "rule": "the first tokens of the run's --text slice, up to the budget, decoded and scored "
                               "as one document", "path": text.source, "sha256": text.sha256,
                       "budget_tokens": budget, "slice_offset_tokens": text.offset_tokens,
                       "n_documents": 1, "tokens": self._lm_eval_tokens(doc.text), "words": doc.n_words,
                       "bytes": doc.n_bytes}

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
