"""PTQ backend variants (issue 9). Variants from `--qcheck-ptq SPEC` (or $QCHECK_PTQ) run through every module of
the suite like any other variant (applied, perplexity, accuracy, format, fidelity, latency); this module adds
what is specific to PTQ: the reference is untouched by the backend (the `oneshot` trap), the build is recorded,
and a calibrated 4-bit method (GPTQ/AWQ) is not worse than qcheck's own RTN at the same bits and group size.

Without PTQ variants every test here skips, saying how to add one.
"""
from __future__ import annotations

import pytest

from qcheck.quant.backends import PTQ_ENV

_NONE = (f"no PTQ variants configured (--qcheck-ptq SPEC, `qcheck run --ptq SPEC` or {PTQ_ENV}=SPEC[,SPEC]; "
         "e.g. bnb-config:nf4, torchao:int8-wo or checkpoint=/path/to/quantized-folder)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ptq_variant" in metafunc.fixturenames:
        from qcheck.pytest_plugin import ptq_variant_names

        names = ptq_variant_names(metafunc.config)
        metafunc.parametrize("ptq_variant", names or [pytest.param("none", marks=pytest.mark.skip(reason=_NONE))])


@pytest.fixture(scope="session")
def reference_fingerprint(qcheck_reference):
    """The reference's weight fingerprint before any PTQ backend ran (this module's first test builds them)."""
    from qcheck.quant.tensor_stats import weight_fingerprint

    return weight_fingerprint(qcheck_reference.model)


def test_ptq_reference_untouched(ptq_variant, reference_fingerprint, qcheck_variants, qcheck_reference,
                                 qcheck_report, qcheck_record):
    from qcheck.invariants.ptq import assert_reference_untouched

    variant = qcheck_variants.get(ptq_variant)
    qcheck_report.add_metric(ptq_variant, "ptq_build_seconds", {"value": variant.seconds,
                                                                "backend": variant.backend.backend})
    qcheck_record(assert_reference_untouched(qcheck_reference.model, reference_fingerprint,
                                             backend=variant.backend.backend, variant=ptq_variant))


def test_ptq_not_worse_than_rtn(ptq_variant, qcheck_variants, qcheck_reference, qcheck_perplexity,
                                qcheck_eval_text, qcheck_options, qcheck_report, qcheck_record):
    from qcheck.invariants.ptq import assert_ptq_not_worse_than_rtn
    from qcheck.pytest_plugin import run_perplexity
    from qcheck.quant.apply import quantize

    variant = qcheck_variants.get(ptq_variant)
    report = variant.report
    bits = {r.bits for r in report.applied}
    group = report.plan.get("group_size")
    calibrated = report.backend.startswith(("llmcompressor:gptq", "llmcompressor:awq")) or \
        report.plan.get("format") == "compressed-tensors"
    if bits != {4} or not group or not calibrated:
        pytest.skip(f"{ptq_variant}: the RTN differential applies to calibrated 4-bit grouped variants "
                    f"(bits {sorted(b for b in bits if b)}, group {group}, backend {report.backend})")
    result = qcheck_perplexity(ptq_variant)
    rtn_name = f"rtn-w4g{group}"
    rtn_model, _ = quantize(qcheck_reference.model, {"name": rtn_name, "default": {
        "format": "int", "bits": 4, "group_size": group}, "override": [{"match": "lm_head", "format": "keep"}]})
    rtn = run_perplexity(rtn_model, qcheck_reference.tokenizer, qcheck_eval_text.text, qcheck_options)
    qcheck_report.add_metric(ptq_variant, "rtn_perplexity", {**rtn.to_dict(), "rtn_variant": rtn_name})
    qcheck_record(assert_ptq_not_worse_than_rtn(rtn, result, variant=ptq_variant, rtn_name=rtn_name,
                                                calibration=variant.backend.details.get("calibration")))
