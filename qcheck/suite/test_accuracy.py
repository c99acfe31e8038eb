"""Multiple-choice accuracy (Z11, Z8): ARC-Easy by log-likelihood, each variant significantly above the task's
chance rate (binomial test against 1/k), its difference from the reference resolved or reported inconclusive with
the interval, and the recorded summary recomputable from its per-question records. Judges the run's choice records
(on CPU the slice and the variants scored are bounded: qcheck.measure.budget)."""
from __future__ import annotations

import pytest

from qcheck.invariants.quality import assert_difference_resolved, assert_not_collapsed, assert_summary_recomputable
from qcheck.measure.choice import mc_result_from_dict
from qcheck.variants import REFERENCE

needs = pytest.mark.qcheck_needs


@pytest.mark.qcheck_check("above_chance", variant=REFERENCE)
@needs("choice", variants=lambda params, names: [REFERENCE])
def test_reference_above_chance(qcheck_records, qcheck_record):
    qcheck_record(assert_not_collapsed(mc_result_from_dict(qcheck_records.data(REFERENCE, "choice")),
                                       variant=REFERENCE))


@needs("choice")
def test_above_chance(qcheck_variant, qcheck_records, qcheck_record):
    qcheck_record(assert_not_collapsed(mc_result_from_dict(qcheck_records.data(qcheck_variant, "choice")),
                                       variant=qcheck_variant))


@pytest.mark.qcheck_check("difference_resolved")
@needs("choice", variants=lambda params, names: [REFERENCE, params["qcheck_variant"]])
def test_difference_from_reference(qcheck_variant, qcheck_records, qcheck_record):
    variant = mc_result_from_dict(qcheck_records.data(qcheck_variant, "choice"))
    reference = mc_result_from_dict(qcheck_records.data(REFERENCE, "choice"))
    qcheck_record(assert_difference_resolved(reference, variant, variant=qcheck_variant, reference_name=REFERENCE))


@needs("choice")
def test_summary_recomputable(qcheck_variant, qcheck_records, qcheck_record):
    metric = qcheck_records.data(qcheck_variant, "choice")
    qcheck_record(assert_summary_recomputable(metric["value"], metric["records"], "correct", variant=qcheck_variant))
