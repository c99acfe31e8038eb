"""Adversarial robustness on an ARC-Easy slice (Z3): clean and robust accuracy on the same questions, only
clean-correct questions attacked (FGSM, then PGD on the survivors), robust <= clean checked per sample, randomized
models refused. Judges the run's robustness records; a variant's robust flags are compared with the reference's on
the same questions (McNemar exact) as evidence."""
from __future__ import annotations

import pytest

from qcheck.errors import InvariantViolation
from qcheck.invariants.robustness import assert_robust_le_clean, paired_vs_reference
from qcheck.measure.robustness import RobustnessEvaluation
from qcheck.variants import REFERENCE

needs = pytest.mark.qcheck_needs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "robustness_variant" in metafunc.fixturenames:
        from qcheck.measure.budget import robustness_variants
        from qcheck.pytest_plugin import run_on_gpu, variant_names

        config = metafunc.config
        metafunc.parametrize("robustness_variant", robustness_variants(variant_names(config), run_on_gpu(config)))


@pytest.mark.qcheck_check("robust_le_clean", param="robustness_variant")
@needs("robustness", variants=lambda params, names: list(dict.fromkeys([REFERENCE, params["robustness_variant"]])))
def test_robust_le_clean(robustness_variant, qcheck_records, qcheck_record):
    evaluation = RobustnessEvaluation.from_dict(qcheck_records.data(robustness_variant, "robustness"))
    try:
        result = assert_robust_le_clean(evaluation, variant=robustness_variant)
    except InvariantViolation as exc:
        result = exc.result
    if robustness_variant != REFERENCE and qcheck_records.has(REFERENCE, "robustness"):
        reference = RobustnessEvaluation.from_dict(qcheck_records.data(REFERENCE, "robustness"))
        result.evidence["robust_vs_fp32"] = paired_vs_reference(reference, evaluation)
    if result.status.value in ("FAIL", "ERROR"):
        raise InvariantViolation(result)
    qcheck_record(result)
