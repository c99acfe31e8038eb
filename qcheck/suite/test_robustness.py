"""Adversarial robustness on an ARC-Easy slice (Z3): clean and robust accuracy on the same questions, only
clean-correct questions attacked (FGSM, then PGD on the survivors), robust <= clean checked per sample,
randomized models refused. Records clean_accuracy, robust_accuracy and robustness_gap per variant."""
from __future__ import annotations

import pytest

from qcheck.errors import DataError, InvariantViolation
from qcheck.invariants.robustness import assert_robust_le_clean
from qcheck.measure.robustness import AttackConfig, arc_easy_items, evaluate_robustness
from qcheck.variants import DEFAULT_VARIANTS, REFERENCE

ROBUSTNESS_VARIANTS = (REFERENCE, "int8", "w4g64", "bf16")
"""Built-in variants attacked by default (plus fp16 on a GPU; it is slow on CPU); --qcheck-plan plans are added."""
GPU_ONLY_VARIANTS = ("fp16",)
CPU_QUESTIONS = 12
"""At most this many questions on CPU (the slice is min(--qcheck-samples, CPU_QUESTIONS)); all on GPU."""
MAX_TOKENS = 64
ATTACK = AttackConfig(epsilon=0.02, pgd_steps=2, attacks=("fgsm", "pgd"), seed=0)
"""FGSM, then 2-step PGD on the survivors, at 2% of each prompt token's embedding norm (SmolLM2 on 8 ARC-Easy
questions: epsilon 0.1 broke every clean-correct one, 0.02 half of them)."""


_EVALUATIONS: dict[str, object] = {}
"""This run's evaluations by variant (fp32 runs first), for paired comparisons with the reference."""


def paired_vs_reference(reference, evaluation) -> dict:
    """Robust flags of a variant vs fp32 on the same question ids: McNemar exact (two-sided) as evidence."""
    from qcheck.stats import mcnemar_exact

    ref = {r.id: r.robust for r in reference.records}
    ids = [r.id for r in evaluation.records if r.id in ref]
    mine = {r.id: r.robust for r in evaluation.records}
    test = mcnemar_exact([ref[i] for i in ids], [mine[i] for i in ids])
    return {"fp32_robust": sum(ref[i] for i in ids), "variant_robust": sum(mine[i] for i in ids), "n": len(ids),
            "only_fp32_robust": test.b, "only_variant_robust": test.c, "pvalue": test.pvalue,
            "test": "McNemar exact, two-sided, robust flags on the same questions"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "robustness_variant" in metafunc.fixturenames:
        import torch

        from qcheck.pytest_plugin import variant_names

        run = variant_names(metafunc.config)
        device = metafunc.config.getoption("--qcheck-device", "auto")
        gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        wanted = ROBUSTNESS_VARIANTS + (GPU_ONLY_VARIANTS if gpu else ())
        names = [REFERENCE] + [n for n in run if n in wanted or n not in DEFAULT_VARIANTS]
        metafunc.parametrize("robustness_variant", list(dict.fromkeys(names)))


@pytest.fixture(scope="module")
def arc_slice(qcheck_reference, qcheck_options, qcheck_device, qcheck_report):
    """The bounded ARC-Easy slice every variant is attacked on (recorded in the report's meta)."""
    n = qcheck_options.samples if qcheck_device.type == "cuda" else min(qcheck_options.samples, CPU_QUESTIONS)
    try:
        items, info = arc_easy_items(qcheck_reference.tokenizer, n, max_tokens=MAX_TOKENS)
    except DataError as exc:
        pytest.skip(f"ARC-Easy not available: {exc}")
    qcheck_report.meta.setdefault("data", {})["robustness_arc_easy"] = info
    qcheck_report.meta["robustness_attack"] = ATTACK.to_dict()
    return items, info


def test_robust_le_clean(robustness_variant, arc_slice, qcheck_variants, qcheck_reference, qcheck_device,
                         qcheck_report, qcheck_record):
    items, info = arc_slice
    if robustness_variant != REFERENCE and robustness_variant not in qcheck_variants.names:
        pytest.skip(f"variant {robustness_variant} not part of this run")
    model = qcheck_variants.model(robustness_variant)
    pad_id = qcheck_reference.tokenizer.pad_token_id or 0
    evaluation = evaluate_robustness(model, items, ATTACK, pad_id=pad_id, variant=robustness_variant, data=info,
                                     repeats=2)
    try:
        result = assert_robust_le_clean(evaluation)
        violation = None
    except InvariantViolation as exc:
        result, violation = exc.result, exc
    qcheck_report.add_metric(robustness_variant, "clean_accuracy", evaluation.metric("clean_accuracy"))
    qcheck_report.add_metric(robustness_variant, "robust_accuracy", evaluation.metric("robust_accuracy"))
    _EVALUATIONS[robustness_variant] = evaluation
    gap = {**evaluation.gap_metric(), "verdict": result.status.value}
    reference = _EVALUATIONS.get(REFERENCE)
    if robustness_variant != REFERENCE and reference is not None:
        gap["robust_vs_fp32"] = paired_vs_reference(reference, evaluation)
    qcheck_report.add_metric(robustness_variant, "robustness_gap", gap)
    qcheck_report.add_metric(robustness_variant, "robustness_seconds", round(evaluation.seconds, 2))
    if violation is not None:
        raise violation
    qcheck_record(result)
