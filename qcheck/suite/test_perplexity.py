"""Perplexity done right (Z6, Z1): non-decreasing as bits go down within each family of uniform plans (paired
block bootstrap), and higher at context 128 than at the run's context on the same text, with the ratio stated
so figures measured at different contexts are never compared. Per-variant perplexity (token, word and byte
units, context and stride) is recorded by the qcheck_perplexity fixture."""
from __future__ import annotations

import pytest

from qcheck.invariants.quality import assert_context_sensitivity, assert_perplexity_order
from qcheck.measure.perplexity import model_context, perplexity
from qcheck.variants import FAMILIES, REFERENCE

SHORT_CONTEXT = 128


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_perplexity_order_within_family(family, qcheck_variants, qcheck_perplexity, qcheck_record):
    members = [n for n in FAMILIES[family] if n in qcheck_variants.names]
    if not members:
        pytest.skip(f"no variant of family {family!r} ({', '.join(FAMILIES[family])}) in this run")
    names = [REFERENCE, *members]
    qcheck_record(assert_perplexity_order({n: qcheck_perplexity(n) for n in names}, family=family))


def test_context_sensitivity(qcheck_reference, qcheck_eval_text, qcheck_options, qcheck_perplexity, qcheck_report,
                             qcheck_record):
    if qcheck_options.context <= SHORT_CONTEXT:
        pytest.skip(f"the run's context ({qcheck_options.context}) is not above {SHORT_CONTEXT}")
    full = qcheck_perplexity(REFERENCE)
    short = perplexity(qcheck_reference.model, qcheck_reference.tokenizer, qcheck_eval_text.text,
                       context=SHORT_CONTEXT, max_tokens=qcheck_options.tokens, batch_size=8)
    qcheck_report.add_metric(REFERENCE, f"perplexity_context{SHORT_CONTEXT}", short.to_dict())
    result = assert_context_sensitivity(short, full, variant=REFERENCE)
    result.evidence["model_max_context"] = model_context(qcheck_reference.model)
    qcheck_record(result)
