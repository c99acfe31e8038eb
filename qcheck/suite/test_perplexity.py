"""Perplexity done right (Z6, Z1): non-decreasing as bits go down within each family of uniform plans (paired block
bootstrap), and higher at context 128 than at the run's context on the same tokens, with the ratio stated so figures
measured at different contexts are never compared; lm-eval's WikiText word and byte perplexity (issue 19) finite and
consistent with what they are computed from, stated beside qcheck's own figure with why the two differ. Judges the
run's perplexity and lm_eval_perplexity records."""
from __future__ import annotations

from typing import Any

import pytest

from qcheck.invariants.quality import assert_context_sensitivity, assert_perplexity_order, judge_lm_eval_perplexity
from qcheck.measure.perplexity import PerplexityResult
from qcheck.variants import FAMILIES, REFERENCE, float_chain

needs = pytest.mark.qcheck_needs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lm_eval_subject" in metafunc.fixturenames:
        metafunc.parametrize("lm_eval_subject", _lm_eval_subjects(metafunc.config))


def _lm_eval_subjects(config: pytest.Config) -> list[Any]:
    """The reference and every variant; qcheck's perplexity of one is measured for this check only where lm-eval's
    is (a CPU run does not pay a perplexity pass for a check that skips with the budget's reason)."""
    from qcheck.measure.budget import not_measured
    from qcheck.pytest_plugin import run_on_gpu, run_options, variant_names

    options, gpu = run_options(config), run_on_gpu(config)
    out = []
    for name in [REFERENCE, *variant_names(config)]:
        taken = not_measured("lm_eval_perplexity", name, gpu=gpu, options=options, context=options.context) is None
        marks = [needs("perplexity", variants=lambda params, names, name=name: [name])] if taken else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _family(params: dict, names: list[str]) -> list[str]:
    members = [n for n in FAMILIES[params["family"]] if n in names]
    return [REFERENCE, *members] if members else []


@pytest.mark.qcheck_check("perplexity_order", param="family")
@needs("perplexity", variants=_family)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_perplexity_order_within_family(family, qcheck_records, qcheck_record):
    members = [n for n in FAMILIES[family] if n in qcheck_records.variants]
    if not members:
        pytest.skip(f"no variant of family {family!r} ({', '.join(FAMILIES[family])}) in this run")
    chain = float_chain(members, qcheck_records.reference_dtype) if family == "float" else [REFERENCE, *members]
    results = {n: PerplexityResult.from_dict(qcheck_records.data(n, "perplexity")) for n in chain}
    vocab = qcheck_records.data(REFERENCE, "perplexity").get("vocab_size")
    qcheck_record(assert_perplexity_order(results, family=family, vocab_size=vocab))



@pytest.mark.qcheck_check("context_sensitivity", variant=REFERENCE)
@needs("perplexity", "perplexity_short")
def test_context_sensitivity(qcheck_records, qcheck_record):
    full_data = qcheck_records.data(REFERENCE, "perplexity")
    short_data = qcheck_records.data(REFERENCE, "perplexity_short")
    result = assert_context_sensitivity(PerplexityResult.from_dict(short_data), PerplexityResult.from_dict(full_data),
                                        variant=REFERENCE, vocab_size=full_data.get("vocab_size"))
    result.evidence["model_max_context"] = short_data.get("model_max_context")
    qcheck_record(result)


@pytest.mark.qcheck_check("lm_eval_perplexity", param="lm_eval_subject")
@needs("lm_eval_perplexity", variants=lambda params, names: [params["lm_eval_subject"]])
def test_lm_eval_perplexity(lm_eval_subject, qcheck_records, qcheck_record):
    record = qcheck_records.find(lm_eval_subject, "lm_eval_perplexity")
    if record is None:
        pytest.skip(f"lm-eval's perplexity of {lm_eval_subject} was not measured in this run")
    ours = (PerplexityResult.from_dict(qcheck_records.data(lm_eval_subject, "perplexity"))
            if qcheck_records.has(lm_eval_subject, "perplexity") else None)
    qcheck_record(judge_lm_eval_perplexity(record, ours, variant=lm_eval_subject))
