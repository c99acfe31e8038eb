"""Full-size LM-quality figures for benchmarks/RESULTS.md: GSM8K `\\boxed{}` rate per variant and ARC-Easy accuracy
with answer flips, each variant against the fp32 reference on the same prompts / questions, with qcheck's verdicts.

    python benchmarks/full_quality.py gsm --variants int8,w4g64 --prompts 12 --tokens 256 --out gsm.json
    python benchmarks/full_quality.py arc --variants w4g64 --out arc.json          # all 2,376 questions
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from torch import nn

from qcheck.inputs.models import load_model
from qcheck.inputs.tasks import load_arc_easy, load_gsm8k
from qcheck.invariants.quality import assert_boxed_format, assert_difference_resolved, assert_not_collapsed
from qcheck.measure.boxed import extract_boxed
from qcheck.measure.choice import score_multiple_choice
from qcheck.measure.fidelity import answer_flips
from qcheck.measure.generation import GenerationSettings, generate_answers
from qcheck.quant.apply import quantize
from qcheck.variants import REFERENCE, builtin_plan


def gsm(models: dict[str, nn.Module], tokenizer: Any, prompts: int, tokens: int, prompt: str) -> dict[str, Any]:
    """Boxed rate per variant on the first `prompts` GSM8K test questions, McNemar verdict against fp32."""
    data = load_gsm8k(prompts)
    settings = GenerationSettings(max_new_tokens=tokens, batch_size=prompts, prompt=prompt)
    runs, out = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        runs[name] = generate_answers(model, tokenizer, [p.question for p in data.items], settings,
                                      ids=[p.id for p in data.items])
        row: dict[str, Any] = {"boxed": sum(extract_boxed(g.text).ok for g in runs[name].outputs), "n": prompts,
                               "seconds": round(time.perf_counter() - start, 1)}
        if name != REFERENCE:
            check = assert_boxed_format(runs[REFERENCE], runs[name], variant=name, reference_name=REFERENCE)
            row.update(verdict=check.status.value, message=check.message)
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def arc(models: dict[str, nn.Module], tokenizer: Any, questions: int | None) -> dict[str, Any]:
    """ARC-Easy accuracy (Wilson interval) per variant, the paired difference and answer flips against fp32."""
    data = load_arc_easy(questions)
    results, out = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        results[name] = score_multiple_choice(model, tokenizer, data.items)
        metric = results[name].to_metric()
        row: dict[str, Any] = {k: metric.get(k) for k in ("correct", "n", "value", "interval")}
        row["seconds"] = round(time.perf_counter() - start, 1)
        if name == REFERENCE:
            row["chance"] = assert_not_collapsed(results[name], variant=name).message
        else:
            diff = assert_difference_resolved(results[REFERENCE], results[name], variant=name,
                                              reference_name=REFERENCE)
            flips = answer_flips([r.correct for r in results[REFERENCE].records],
                                 [r.correct for r in results[name].records])
            row.update(verdict=diff.status.value, message=diff.message, flips=flips.to_dict())
        out[name] = row
        print(name, json.dumps(row, default=str), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("gsm", "arc"))
    parser.add_argument("--variants", default="int8,w4g64", help="built-in variants besides fp32")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--prompt", default="gsm8k_3shot")
    parser.add_argument("--questions", type=int, default=None, help="ARC-Easy questions (default: all)")
    parser.add_argument("--model", default=None, help="model source (default: the embedded SmolLM2)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    loaded = load_model(args.model)
    models = {REFERENCE: loaded.model}
    for name in filter(None, (v.strip() for v in args.variants.split(","))):
        models[name] = quantize(loaded.model, builtin_plan(name))[0]
    result = (gsm(models, loaded.tokenizer, args.prompts, args.tokens, args.prompt) if args.task == "gsm"
              else arc(models, loaded.tokenizer, args.questions))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
