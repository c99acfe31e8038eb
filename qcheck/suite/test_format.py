"""`\\boxed{}` format compliance (Z7): each variant's greedy answers to GSM8K questions (3-shot prompt, the
model's chat template) are compared with the reference's on the same prompts and settings (McNemar exact),
empty outputs are bounded, example failures are kept. Records the metric `boxed_rate` per variant.

On CPU the slice is small (generation is slow): at most CPU_PROMPTS prompts with the direct-answer prompt
(replies fit in CPU_NEW_TOKENS tokens), and of the built-in variants only CPU_VARIANTS (variants the user
added, plans or PTQ backends, always run); on a GPU, --qcheck-samples prompts with the
worked-equation prompt and GPU_NEW_TOKENS tokens, every variant of the run (--qcheck-prompts sets the number of
prompts apart from --qcheck-samples).
"""
from __future__ import annotations

from typing import Any

import pytest

from qcheck.errors import DataError
from qcheck.inputs.tasks import load_gsm8k
from qcheck.invariants.quality import assert_boxed_format
from qcheck.measure.boxed import answers_match, extract_boxed
from qcheck.measure.generation import GenerationRun, GenerationSettings, generate_answers
from qcheck.stats import wilson_interval
from qcheck.variants import DEFAULT_VARIANTS, REFERENCE

CPU_PROMPTS = 8
CPU_NEW_TOKENS = 24
CPU_PROMPT = "gsm8k_3shot_direct"
CPU_VARIANTS = ("w4g64",)
GPU_NEW_TOKENS = 256
GPU_PROMPT = "gsm8k_3shot"


def _boxed_metric(run: GenerationRun, golds: list[str]) -> dict[str, Any]:
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


@pytest.fixture(scope="module")
def gsm8k_slice(qcheck_options, qcheck_device, qcheck_report):
    wanted = qcheck_options.samples if qcheck_options.prompts is None else qcheck_options.prompts
    n = wanted if qcheck_device.type != "cpu" else min(wanted, CPU_PROMPTS)
    try:
        data = load_gsm8k(n)
    except DataError as exc:
        pytest.skip(f"GSM8K not available: {exc}")
    qcheck_report.meta.setdefault("data", {})["gsm8k"] = {k: v for k, v in data.describe().items() if k != "ids"}
    return data


@pytest.fixture(scope="module")
def format_settings(qcheck_device):
    if qcheck_device.type == "cpu":
        return GenerationSettings(max_new_tokens=CPU_NEW_TOKENS, batch_size=CPU_PROMPTS, prompt=CPU_PROMPT)
    return GenerationSettings(max_new_tokens=GPU_NEW_TOKENS, batch_size=16, prompt=GPU_PROMPT)


@pytest.fixture(scope="module")
def answers(qcheck_reference, qcheck_variants, gsm8k_slice, format_settings, qcheck_report):
    cache: dict[str, GenerationRun] = {}

    def get(name: str) -> GenerationRun:
        if name not in cache:
            model = qcheck_variants.model(name)
            run = generate_answers(model, qcheck_reference.tokenizer, [p.question for p in gsm8k_slice.items],
                                   format_settings, ids=[p.id for p in gsm8k_slice.items])
            cache[name] = run
            qcheck_report.add_metric(name, "boxed_rate", _boxed_metric(run, [p.gold for p in gsm8k_slice.items]))
        return cache[name]

    return get


def test_boxed_format(qcheck_variant, qcheck_device, answers, qcheck_record):
    if qcheck_device.type == "cpu" and qcheck_variant in DEFAULT_VARIANTS and qcheck_variant not in CPU_VARIANTS:
        pytest.skip(f"generation on CPU is slow: the format check runs only {', '.join(CPU_VARIANTS)} on CPU "
                    "(every variant on a GPU)")
    qcheck_record(assert_boxed_format(answers(REFERENCE), answers(qcheck_variant), variant=qcheck_variant,
                                      reference_name=REFERENCE))
