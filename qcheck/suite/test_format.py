"""`\\boxed{}` format compliance (Z7): each variant's greedy answers to GSM8K questions (few-shot prompt, the model's
chat template) are compared with the reference's on the same prompts and settings (McNemar exact), empty outputs
are bounded, example failures are kept. Judges the run's generation records (on CPU the prompts, budget and
variants are bounded: qcheck.measure.budget)."""
from __future__ import annotations

import pytest

from qcheck.invariants.quality import assert_boxed_format
from qcheck.measure.generation import GenerationRun
from qcheck.variants import REFERENCE

needs = pytest.mark.qcheck_needs


@needs("generation", variants=lambda params, names: [REFERENCE, params["qcheck_variant"]])
def test_boxed_format(qcheck_variant, qcheck_records, qcheck_record):
    variant = GenerationRun.from_dict(qcheck_records.data(qcheck_variant, "generation")["run"])
    reference = GenerationRun.from_dict(qcheck_records.data(REFERENCE, "generation")["run"])
    qcheck_record(assert_boxed_format(reference, variant, variant=qcheck_variant, reference_name=REFERENCE))
