"""PTQ backend variants (issue 9). Variants from `--qcheck-ptq SPEC` (or $QCHECK_PTQ) run through every module of
the suite like any other variant; this module adds what is specific to PTQ: the reference is untouched by the
backend (the `oneshot` trap) and a calibrated 4-bit method (GPTQ/AWQ) is not worse than qcheck's own RTN at the same
bits and group size. Judges the run's build, perplexity and rtn_perplexity records.

Without PTQ variants every test here skips, saying how to add one.
"""
from __future__ import annotations

import pytest

from qcheck.invariants.ptq import assert_ptq_not_worse_than_rtn, judge_reference_untouched
from qcheck.measure.perplexity import PerplexityResult
from qcheck.options import PTQ_ENV

needs = pytest.mark.qcheck_needs
_NONE = (f"no PTQ variants configured (--qcheck-ptq SPEC, `qcheck run --ptq SPEC` or {PTQ_ENV}=SPEC[,SPEC]; "
         "e.g. bnb-config:nf4, torchao:int8-wo or checkpoint=/path/to/quantized-folder)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ptq_variant" in metafunc.fixturenames:
        from qcheck.pytest_plugin import ptq_variant_names

        names = ptq_variant_names(metafunc.config)
        metafunc.parametrize("ptq_variant", names or [pytest.param("none", marks=pytest.mark.skip(reason=_NONE))])


@pytest.mark.qcheck_check("reference_untouched", param="ptq_variant")
@needs("build", variants=lambda params, names: [params["ptq_variant"]])
def test_ptq_reference_untouched(ptq_variant, qcheck_records, qcheck_record):
    build = qcheck_records.data(ptq_variant, "build")
    qcheck_record(judge_reference_untouched(build["fingerprint_before"], build["fingerprint_after"],
                                            backend=build["backend"]["name"], variant=ptq_variant))


@pytest.mark.qcheck_check("ptq_not_worse_than_rtn", param="ptq_variant")
@needs("build", "perplexity", "rtn_perplexity", variants=lambda params, names: [params["ptq_variant"]])
def test_ptq_not_worse_than_rtn(ptq_variant, qcheck_records, qcheck_record):
    rtn_data = qcheck_records.data(ptq_variant, "rtn_perplexity")
    result = PerplexityResult.from_dict(qcheck_records.data(ptq_variant, "perplexity"))
    qcheck_record(assert_ptq_not_worse_than_rtn(PerplexityResult.from_dict(rtn_data), result, variant=ptq_variant,
                                                rtn_name=rtn_data["rtn_variant"],
                                                calibration=rtn_data.get("calibration")))
