"""PTQ backend variants (issue 9): each configured backend's variant is really quantized (unpacked weights on
a 2^bits grid, module classes named), the reference is untouched (the oneshot trap), perplexity is recorded,
and a calibrated 4-bit method is not worse than qcheck's RTN at the same bits.

Runs only when PTQ variants are configured: `QCHECK_PTQ="bnb-config:nf4,checkpoint=/path/to/folder"`
(see qcheck.quant.backends.backend_from_spec); otherwise every test skips, saying so.
"""
from __future__ import annotations

import math
import os

import pytest

from qcheck.quant.backends import PTQ_ENV

SPECS = [s for s in os.environ.get(PTQ_ENV, "").split(",") if s.strip()]
_NONE = f"no PTQ variants configured (set {PTQ_ENV}, e.g. {PTQ_ENV}=bnb-config:nf4 or checkpoint=/path)"


@pytest.fixture(scope="session")
def ptq_built(qcheck_reference, qcheck_device):
    """spec -> BackendVariant or the error that stopped it (built once per session)."""
    from qcheck.errors import QCheckError
    from qcheck.quant.backends import backend_from_spec, produce_variant
    from qcheck.tensor_stats import weight_fingerprint

    built: dict[str, object] = {"__fingerprint__": weight_fingerprint(qcheck_reference.model)}

    def get(spec: str):
        if spec not in built:
            backend = backend_from_spec(spec, device=str(qcheck_device))
            reason = backend.unavailable_reason()
            if reason is not None:
                built[spec] = pytest.skip.Exception(f"PTQ variant {spec}: {reason}")
            else:
                try:
                    built[spec] = produce_variant(backend, qcheck_reference.model, qcheck_reference.tokenizer)
                except QCheckError as exc:
                    built[spec] = exc
        value = built[spec]
        if isinstance(value, BaseException):
            raise value
        return value

    get.fingerprint = built["__fingerprint__"]
    return get


@pytest.fixture(scope="session")
def ptq_perplexity(qcheck_reference, qcheck_eval_text, qcheck_options, qcheck_report):
    """Perplexity of any model on the run's evaluation text, recorded under the variant's name."""
    from qcheck.metrics.perplexity import perplexity

    cache: dict[str, object] = {}

    def get(name, model):
        if name not in cache:
            device = next(model.parameters()).device.type
            cache[name] = perplexity(model, qcheck_reference.tokenizer, qcheck_eval_text.text,
                                     context=qcheck_options.context, max_tokens=qcheck_options.tokens,
                                     batch_size=1 if device == "cpu" else 8)
            qcheck_report.add_metric(name, "perplexity", cache[name].to_dict(with_windows=True))
        return cache[name]

    return get


@pytest.mark.skipif(not SPECS, reason=_NONE)
@pytest.mark.parametrize("spec", SPECS or ["none"])
def test_ptq_variant_applied(spec, ptq_built, qcheck_reference, qcheck_probe_ids, qcheck_record, qcheck_report):
    from qcheck.ptq import assert_ptq_applied, assert_reference_untouched

    variant = ptq_built(spec)
    qcheck_report.add_metric(variant.name, "ptq_build_seconds", {"value": variant.seconds, "backend": variant.backend})
    qcheck_record(assert_reference_untouched(qcheck_reference.model, ptq_built.fingerprint, backend=variant.backend))
    qcheck_record(assert_ptq_applied(qcheck_reference.model, variant, input_ids=qcheck_probe_ids))


@pytest.mark.skipif(not SPECS, reason=_NONE)
@pytest.mark.parametrize("spec", SPECS or ["none"])
def test_ptq_perplexity_finite_and_not_worse_than_rtn(spec, ptq_built, qcheck_reference, ptq_perplexity,
                                                      qcheck_record):
    from qcheck.ptq import assert_ptq_not_worse_than_rtn
    from qcheck.quant.apply import quantize
    from qcheck.results import CheckResult, Status

    variant = ptq_built(spec)
    result = ptq_perplexity(variant.name, variant.model)
    ok = math.isfinite(result.perplexity)
    qcheck_record(CheckResult("perplexity_finite", Status.PASS if ok else Status.FAIL, variant=variant.name,
                              message=f"perplexity {result.perplexity:.4f} over {result.n_tokens} tokens",
                              compared="token-weighted strided perplexity", n=result.n_tokens, test="finite",
                              threshold="finite", evidence=result.to_dict()))
    assert ok, f"perplexity of {variant.name} is not finite"
    bits = {r.bits for r in variant.report.applied}
    group = variant.report.plan.get("group_size")
    calibrated = variant.report.backend.startswith(("llmcompressor:gptq", "llmcompressor:awq")) or \
        variant.report.plan.get("format") == "compressed-tensors"
    if bits != {4} or not group or not calibrated:
        pytest.skip(f"{variant.name}: RTN differential applies to calibrated 4-bit grouped variants "
                    f"(bits {sorted(b for b in bits if b)}, group {group}, backend {variant.report.backend})")
    rtn_name = f"rtn-w4g{group}"
    rtn_model, _ = quantize(qcheck_reference.model, {"name": rtn_name, "default": {
        "format": "int", "bits": 4, "group_size": group}, "override": [{"match": "lm_head", "format": "keep"}]})
    rtn = ptq_perplexity(rtn_name, rtn_model)
    qcheck_record(assert_ptq_not_worse_than_rtn(rtn, result, variant=variant.name, rtn_name=rtn_name,
                                                calibration=variant.details.get("calibration")))
