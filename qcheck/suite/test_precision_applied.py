"""Quantization took effect (Z1), 16-bit/8-bit differ from fp32 yet stay close, mixed plans lie between their uniform
bounds and follow their plan (Z2), every variant's perplexity is finite. PTQ backend variants are checked against
their backend's manifest (unpacked weights on their grid, module classes named) instead of a plan. Every check here
judges the run's records (`qcheck_records`); the plugin measures what the selected checks need."""
from __future__ import annotations

import pytest

from qcheck.errors import InvariantViolation
from qcheck.invariants.applied import assert_mixed_between, judge_plan_followed, judge_quantization_applied
from qcheck.invariants.closeness import CLOSE_TO_REFERENCE, assert_close_to_reference
from qcheck.invariants.ptq import judge_ptq_applied
from qcheck.invariants.quality import judge_perplexity_finite
from qcheck.measure.perplexity import PerplexityResult
from qcheck.variants import MIXED_BOUNDS, REFERENCE

needs = pytest.mark.qcheck_needs


def _with_reference(name: str) -> object:
    return lambda params, names: [REFERENCE, params[name]] if params[name] in names else []


def _mixed_and_bounds(params: dict, names: list[str]) -> list[str]:
    group = (params["mixed"], *MIXED_BOUNDS[params["mixed"]])
    return list(group) if all(n in names for n in group) else []


@needs("weights")
def test_quantization_applied(qcheck_variant, qcheck_records, qcheck_record):
    data = qcheck_records.data(qcheck_variant, "weights")
    if "ptq" in data:
        qcheck_record(judge_ptq_applied(data["ptq"], variant=qcheck_variant))
        return
    qcheck_record(judge_quantization_applied(data, variant=qcheck_variant))


@needs("weights")
def test_plan_followed(qcheck_variant, qcheck_records, qcheck_record):
    data = qcheck_records.data(qcheck_variant, "weights")
    if "ptq" in data:
        pytest.skip(f"{qcheck_variant} comes from a PTQ backend, not a qcheck plan: its manifest and grid are "
                    "checked by test_quantization_applied")
    qcheck_record(judge_plan_followed(data["plan_followed"], variant=qcheck_variant))


@needs("perplexity")
def test_perplexity_finite(qcheck_variant, qcheck_records, qcheck_record):
    record = qcheck_records.find(qcheck_variant, "perplexity")
    qcheck_record(judge_perplexity_finite(record, variant=qcheck_variant))


@pytest.mark.qcheck_check("precision_differs_from_fp32", param="variant")
@needs("perplexity", variants=_with_reference("variant"))
@pytest.mark.parametrize("variant", sorted(CLOSE_TO_REFERENCE))
def test_close_to_fp32_but_not_identical(variant, qcheck_records, qcheck_record):
    if variant not in qcheck_records.variants:
        pytest.skip(f"variant {variant} not part of this run")
    ref = PerplexityResult.from_dict(qcheck_records.data(REFERENCE, "perplexity"))
    result = PerplexityResult.from_dict(qcheck_records.data(variant, "perplexity"))
    bound = CLOSE_TO_REFERENCE[variant]
    qcheck_record(assert_close_to_reference(ref, result, variant=variant, bound=bound.relative, basis=bound.basis))


@pytest.mark.qcheck_check("mixed_between_uniform", param="mixed")
@needs("perplexity", variants=_mixed_and_bounds)
@needs("weights", variants=lambda params, names: [params["mixed"]] if params["mixed"] in names else [])
@pytest.mark.parametrize("mixed", sorted(MIXED_BOUNDS))
def test_mixed_between_uniform_bounds(mixed, qcheck_records, qcheck_record):
    missing = [n for n in (mixed, *MIXED_BOUNDS[mixed]) if n not in qcheck_records.variants]
    if missing:
        pytest.skip(f"mixed check needs variants {missing}, not part of this run")
    bounds = {n: PerplexityResult.from_dict(qcheck_records.data(n, "perplexity")) for n in MIXED_BOUNDS[mixed]}
    mixed_data = qcheck_records.data(mixed, "perplexity")
    mixed_ppl = PerplexityResult.from_dict(mixed_data)
    weights = qcheck_records.data(mixed, "weights")
    plan_check = None
    if "plan_followed" in weights:
        try:
            plan_check = judge_plan_followed(weights["plan_followed"], variant=mixed)
        except InvariantViolation as exc:
            plan_check = exc.result
    qcheck_record(assert_mixed_between(mixed_ppl, bounds, variant=mixed, plan_check=plan_check,
                                       vocab_size=mixed_data.get("vocab_size")))
