"""Perplexity done right (Z6, Z1): non-decreasing as bits go down within each family of uniform plans (paired block
bootstrap), and higher at context 128 than at the run's context on the same tokens, with the ratio stated so figures
measured at different contexts are never compared. Judges the run's perplexity records."""
from __future__ import annotations

import pytest

from qcheck.invariants.quality import assert_context_sensitivity, assert_perplexity_order
from qcheck.measure.perplexity import PerplexityResult
from qcheck.variants import FAMILIES, REFERENCE

needs = pytest.mark.qcheck_needs


def _family(params: dict, names: list[str]) -> list[str]:
    members = [n for n in FAMILIES[params["family"]] if n in names]
    return [REFERENCE, *members] if members else []


@needs("perplexity", variants=_family)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_perplexity_order_within_family(family, qcheck_records, qcheck_record):
    members = [n for n in FAMILIES[family] if n in qcheck_records.variants]
    if not members:
        pytest.skip(f"no variant of family {family!r} ({', '.join(FAMILIES[family])}) in this run")
    results = {n: PerplexityResult.from_dict(qcheck_records.data(n, "perplexity")) for n in [REFERENCE, *members]}
    qcheck_record(assert_perplexity_order(results, family=family))


@needs("perplexity", "perplexity_short")
def test_context_sensitivity(qcheck_records, qcheck_record):
    full = PerplexityResult.from_dict(qcheck_records.data(REFERENCE, "perplexity"))
    short_data = qcheck_records.data(REFERENCE, "perplexity_short")
    result = assert_context_sensitivity(PerplexityResult.from_dict(short_data), full, variant=REFERENCE)
    result.evidence["model_max_context"] = short_data.get("model_max_context")
    qcheck_record(result)
