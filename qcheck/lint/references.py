"""Published reference figures the plausibility rules compare against: perplexities and model sizes."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class PerplexityReference:
    """A known perplexity of a model family on a data set at a context length, with its source."""

    model: str
    dataset: str
    ppl: float
    context_length: int
    source: str


PPL_REFERENCES: tuple[PerplexityReference, ...] = (
    PerplexityReference("gpt2", "wikitext-2", 29.41, 1024, "Radford et al. 2019, GPT-2 paper, Table 3 (117M)"),
    PerplexityReference("gpt2-medium", "wikitext-2", 22.76, 1024, "Radford et al. 2019, Table 3 (345M)"),
    PerplexityReference("gpt2-large", "wikitext-2", 19.93, 1024, "Radford et al. 2019, Table 3 (762M)"),
    PerplexityReference("gpt2-xl", "wikitext-2", 18.34, 1024, "Radford et al. 2019, Table 3 (1542M)"),
    PerplexityReference("smollm2-135m", "wikitext-2", 22.55, 1024,
                        "qcheck ../shared/data/README.md (fp32, first 16,384 test tokens)"),
)

KNOWN_PARAMS: dict[str, float] = {
    "gpt2-xl": 1.558e9, "gpt2-large": 7.74e8, "gpt2-medium": 3.55e8, "gpt2": 1.24e8,
    "bert-tiny": 4.4e6, "bert-base": 1.1e8, "bert-large": 3.4e8, "distilgpt2": 8.2e7,
}
_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


@lru_cache(maxsize=4096)
def find_ppl_reference(model: str, dataset: str) -> PerplexityReference | None:
    """The reference whose model family is named in `model` (longest name wins) on `dataset`."""
    name, data = _norm(model), _norm(dataset).replace("wikitext2", "wikitext-2")
    if "wikitext-2" not in data and "wikitext" not in data:
        return None
    matches = [r for r in PPL_REFERENCES if re.search(rf"(^|-){re.escape(r.model)}($|-)", name)]
    return max(matches, key=lambda r: len(r.model)) if matches else None


@lru_cache(maxsize=4096)
def params_from_name(model: str) -> float:
    """Parameter count named in a model label ('Qwen3-0.6B' -> 6e8, 'SmolLM2-135M' -> 1.35e8); NaN if none."""
    name = _norm(model)
    match = _SIZE.search(name.replace("-", " "))
    if match:
        return float(match.group(1)) * (1e9 if match.group(2) == "b" else 1e6)
    for known in sorted(KNOWN_PARAMS, key=len, reverse=True):
        if re.search(rf"(^|-){re.escape(known)}($|-)", name):
            return KNOWN_PARAMS[known]
    return math.nan
