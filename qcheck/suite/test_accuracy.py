"""Multiple-choice accuracy (Z11, Z8): ARC-Easy by log-likelihood, each variant significantly above the task's
chance rate (binomial test against 1/k), its difference from the reference resolved or reported inconclusive
with the interval, and the recorded summary recomputable from its per-question records. Records the metric
`arc_accuracy` (Wilson interval, per-question records) per variant.

On CPU the slice is at most CPU_QUESTIONS questions, and of the built-in variants only CPU_VARIANTS are scored
besides the reference (variants the user added, plans or PTQ backends, always are).
"""
from __future__ import annotations

import pytest

from qcheck.errors import DataError
from qcheck.inputs.tasks import load_arc_easy
from qcheck.invariants.quality import assert_difference_resolved, assert_not_collapsed, assert_summary_recomputable
from qcheck.measure.choice import MCResult, score_multiple_choice
from qcheck.variants import DEFAULT_VARIANTS, REFERENCE

CPU_QUESTIONS = 30
CPU_VARIANTS = ("w4g64",)


@pytest.fixture(scope="module")
def arc_slice(qcheck_options, qcheck_device, qcheck_report):
    n = qcheck_options.samples if qcheck_device.type != "cpu" else min(qcheck_options.samples, CPU_QUESTIONS)
    try:
        data = load_arc_easy(n)
    except DataError as exc:
        pytest.skip(f"ARC-Easy not available: {exc}")
    qcheck_report.meta.setdefault("data", {})["arc_easy"] = {k: v for k, v in data.describe().items() if k != "ids"}
    return data


@pytest.fixture(scope="module")
def arc(qcheck_reference, qcheck_variants, arc_slice, qcheck_device, qcheck_report):
    cache: dict[str, MCResult] = {}

    def get(name: str) -> MCResult:
        if name not in cache:
            result = score_multiple_choice(qcheck_variants.model(name), qcheck_reference.tokenizer, arc_slice.items,
                                           batch_size=16 if qcheck_device.type == "cpu" else 64)
            cache[name] = result
            qcheck_report.add_metric(name, "arc_accuracy", result.to_metric())
        return cache[name]

    return get


def _skip_on_cpu(name: str, device) -> None:
    if device.type == "cpu" and name in DEFAULT_VARIANTS and name not in CPU_VARIANTS:
        pytest.skip(f"ARC-Easy scoring on CPU runs only {', '.join(CPU_VARIANTS)} besides {REFERENCE} "
                    "(every variant on a GPU)")


def test_reference_above_chance(arc, qcheck_record):
    qcheck_record(assert_not_collapsed(arc(REFERENCE), variant=REFERENCE))


def test_above_chance(qcheck_variant, qcheck_device, arc, qcheck_record):
    _skip_on_cpu(qcheck_variant, qcheck_device)
    qcheck_record(assert_not_collapsed(arc(qcheck_variant), variant=qcheck_variant))


def test_difference_from_reference(qcheck_variant, qcheck_device, arc, qcheck_record):
    _skip_on_cpu(qcheck_variant, qcheck_device)
    qcheck_record(assert_difference_resolved(arc(REFERENCE), arc(qcheck_variant), variant=qcheck_variant,
                                             reference_name=REFERENCE))


def test_summary_recomputable(qcheck_variant, qcheck_device, arc, qcheck_report, qcheck_record):
    _skip_on_cpu(qcheck_variant, qcheck_device)
    arc(qcheck_variant)
    metric = qcheck_report.variant(qcheck_variant).metrics["arc_accuracy"]
    qcheck_record(assert_summary_recomputable(metric["value"], metric["records"], "correct", variant=qcheck_variant))
