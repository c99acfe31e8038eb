"""Quantization took effect (Z1), 16-bit/8-bit differ from fp32 yet stay close, mixed plans lie between
their uniform bounds and follow their plan (Z2). Every variant's perplexity is recorded. PTQ backend variants
are checked against their backend's manifest (unpacked weights on their grid, module classes named) instead of a
plan."""
from __future__ import annotations

import math

import pytest

from qcheck.invariants import assert_mixed_between, assert_plan_followed, assert_quantization_applied
from qcheck.invariants.quality import assert_close_to_reference
from qcheck.results import CheckResult, Status
from qcheck.variants import MIXED_BOUNDS, REFERENCE

CLOSE_TO_FP32 = {
    "fp16": (0.01, "TBD"),
    "bf16": (0.01, "TBD"),
    "int8": (0.02, "TBD"),
    "bnb-int8": (0.05, "TBD"),
}
"""Relative perplexity bound per near-lossless variant and where its value comes from (docs/thresholds.md)."""


def test_quantization_applied(qcheck_variant, qcheck_variants, qcheck_reference, qcheck_probe_ids, qcheck_record):
    variant = qcheck_variants.get(qcheck_variant)
    if variant.is_ptq:
        from qcheck.invariants.ptq import assert_ptq_applied

        qcheck_record(assert_ptq_applied(qcheck_reference.model, variant.backend, input_ids=qcheck_probe_ids))
        return
    qcheck_record(assert_quantization_applied(qcheck_reference.model, variant.model, variant.report,
                                              input_ids=qcheck_probe_ids, variant=qcheck_variant))


def test_plan_followed(qcheck_variant, qcheck_variants, qcheck_reference, qcheck_record):
    variant = qcheck_variants.get(qcheck_variant)
    if variant.is_ptq:
        pytest.skip(f"{qcheck_variant} comes from PTQ backend {variant.report.backend}, not a qcheck plan: its "
                    "manifest and grid are checked by test_quantization_applied")
    qcheck_record(assert_plan_followed(variant.model, variant.plan, reference=qcheck_reference.model,
                                       variant=qcheck_variant))


def test_perplexity_finite(qcheck_variant, qcheck_perplexity, qcheck_record):
    result = qcheck_perplexity(qcheck_variant)
    ok = math.isfinite(result.perplexity)
    qcheck_record(CheckResult(
        name="perplexity_finite", status=Status.PASS if ok else Status.FAIL, variant=qcheck_variant,
        message=f"perplexity {result.perplexity:.4f} over {result.n_tokens} tokens (context {result.context}, "
                f"stride {result.stride})", compared="token-weighted strided perplexity", n=result.n_tokens,
        test="finite", threshold="finite", evidence=result.to_dict()))
    assert ok, f"perplexity of {qcheck_variant} is not finite"


@pytest.mark.parametrize("variant", sorted(CLOSE_TO_FP32))
def test_close_to_fp32_but_not_identical(variant, qcheck_variants, qcheck_perplexity, qcheck_record):
    if variant not in qcheck_variants.names:
        pytest.skip(f"variant {variant} not part of this run")
    ref = qcheck_perplexity(REFERENCE)
    result = qcheck_perplexity(variant)
    bound, basis = CLOSE_TO_FP32[variant]
    qcheck_record(assert_close_to_reference(ref, result, variant=variant, bound=bound, basis=basis))


@pytest.mark.parametrize("mixed", sorted(MIXED_BOUNDS))
def test_mixed_between_uniform_bounds(mixed, qcheck_variants, qcheck_perplexity, qcheck_record):
    needed = (mixed, *MIXED_BOUNDS[mixed])
    missing = [n for n in needed if n not in qcheck_variants.names]
    if missing:
        pytest.skip(f"mixed check needs variants {missing}, not part of this run")
    bounds = {n: qcheck_perplexity(n) for n in MIXED_BOUNDS[mixed]}
    variant = qcheck_variants.get(mixed)
    qcheck_record(assert_mixed_between(qcheck_perplexity(mixed), bounds, variant=mixed, plan=variant.plan,
                                       quantized=variant.model))
