"""Checks specific to post-training quantization backends.

- `assert_ptq_not_worse_than_rtn`: a calibrated method (GPTQ / AWQ) at the same bits as qcheck's own RTN must
  not have a higher perplexity than RTN by more than noise (paired bootstrap over the same windows); when it
  does, the calibration is flagged (wrong source, too few samples, a broken recipe).
- `assert_reference_untouched`: the reference's weight fingerprint is unchanged after producing a variant.

The "empty / unboxed outputs" check with the reference exonerated or blamed (seed 002) belongs to the
LM-quality invariants; PTQ variants plug into it as ordinary variants (`BackendVariant.model`).
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from qcheck.errors import InvariantViolation
from qcheck.quant.tensor_stats import weight_fingerprint
from qcheck.results import CheckResult, Status
from qcheck.stats import paired_bootstrap_difference

MIN_WINDOWS = 8
"""Fewer paired perplexity windows than this cannot separate a calibration failure from noise."""


def _finish(result: CheckResult) -> CheckResult:
    if result.status in (Status.FAIL, Status.ERROR):
        raise InvariantViolation(result)
    return result


def assert_ptq_not_worse_than_rtn(rtn: Any, ptq: Any, *, variant: str, rtn_name: str = "rtn",
                                  tolerance: float = 0.01, calibration: dict[str, Any] | None = None,
                                  level: float = 0.95) -> CheckResult:
    """PTQ perplexity <= RTN perplexity * (1 + tolerance) unless within noise; both PerplexityResults on the
    same windows. Compares mean NLL per token, paired over windows (token-weighted bootstrap)."""
    name = "ptq_not_worse_than_rtn"
    compared = f"{variant} vs {rtn_name}: NLL per token over the same perplexity windows"
    if list(rtn.window_tokens) != list(ptq.window_tokens):
        return _finish(CheckResult(name, Status.ERROR, f"{variant} and {rtn_name} were scored on different "
                                   "windows: the comparison is not paired", compared=compared, variant=variant))
    n = len(rtn.window_nll)
    margin = math.log1p(tolerance)
    evidence: dict[str, Any] = {"ppl_rtn": rtn.perplexity, "ppl_ptq": ptq.perplexity, "windows": n,
                                "tokens": rtn.n_tokens, "calibration": calibration or {}}
    test = f"paired token-weighted bootstrap of NLL(ptq) - NLL(rtn) per token, {int(level * 100)}% interval"
    threshold = f"lower bound <= log(1 + {tolerance})"
    if n < MIN_WINDOWS:
        return CheckResult(name, Status.INCONCLUSIVE,
                           f"only {n} perplexity windows (< {MIN_WINDOWS}): cannot tell {variant} from {rtn_name}; "
                           "score more tokens", compared=compared, n=n, test=test, threshold=threshold,
                           evidence=evidence, variant=variant)
    per_token_rtn = [nll / t for nll, t in zip(rtn.window_nll, rtn.window_tokens)]
    per_token_ptq = [nll / t for nll, t in zip(ptq.window_nll, ptq.window_tokens)]
    diff = paired_bootstrap_difference(per_token_rtn, per_token_ptq, level=level, weights=rtn.window_tokens)
    evidence["nll_difference"] = {"point": diff.estimate, "low": diff.low, "high": diff.high}
    evidence["ppl_ratio"] = ptq.perplexity / rtn.perplexity
    if diff.low > margin:
        msg = (f"{variant} (perplexity {ptq.perplexity:.4f}) is worse than qcheck's RTN {rtn_name} "
               f"({rtn.perplexity:.4f}) at the same bits beyond noise (NLL +{diff.low:.4f}..+{diff.high:.4f} "
               f"per token > {margin:.4f}): a calibrated method should not lose to RTN — check the calibration "
               f"set ({_calibration_text(calibration)}) and the recipe")
        status = Status.FAIL
    else:
        msg = (f"{variant} perplexity {ptq.perplexity:.4f} vs RTN {rtn_name} {rtn.perplexity:.4f} "
               f"(NLL difference {diff.estimate:+.4f}, interval {diff.low:+.4f}..{diff.high:+.4f})")
        status = Status.PASS
    return _finish(CheckResult(name, status, msg, compared=compared, n=n, test=test, threshold=threshold,
                               evidence=evidence, variant=variant))


def _calibration_text(calibration: dict[str, Any] | None) -> str:
    if not calibration:
        return "not recorded here: for a checkpoint folder, see how it was produced (its recipe.yaml, if any)"
    return ", ".join(f"{k}={calibration[k]}" for k in ("source", "samples", "seq_len", "tokens") if k in calibration)


def assert_reference_untouched(reference: nn.Module, fingerprint: str, *, backend: str,
                               variant: str | None = None) -> CheckResult:
    """The reference's weights still have the fingerprint taken before `backend` produced its variant."""
    now = weight_fingerprint(reference)
    ok = now == fingerprint
    msg = (f"reference weights unchanged after {backend}" if ok else
           f"backend {backend!r} changed the reference's weights: comparisons against this 'reference' are void")
    return _finish(CheckResult("reference_untouched", Status.PASS if ok else Status.FAIL, msg, variant=variant,
                               compared="weight fingerprint of the reference before vs after", n=1,
                               test="sha256 of per-tensor float64 sums and norms", threshold="equal",
                               evidence={"before": fingerprint, "after": now, "backend": backend}))


def assert_ptq_applied(reference: nn.Module, variant: Any, *, input_ids: Any = None) -> CheckResult:
    """A backend variant is really quantized: every layer its manifest claims has at most 2^bits distinct
    unpacked values per group, changed from the reference, above the bits' SQNR floor; logits differ and
    are finite. Layers named by module class (the backend's own: Linear4bit, Linear[pack-quantized], ...).
    Layers left unchanged or not unpackable without a declared reason are a WARN naming them."""
    from qcheck.measure.weights import SQNR_FLOORS_DB, output_divergence, probe_input_ids

    report = variant.report
    problems: dict[str, list[str]] = {"too_many_values": [], "destroyed": [], "unchanged": [], "not_unpacked": []}
    smoothed: dict[str, list[str]] = {}
    classes: dict[str, int] = {}
    applied = 0
    for rec in report.layers:
        classes[rec.module_class] = classes.get(rec.module_class, 0) + 1
        if rec.kept_reason.startswith("weights could not be unpacked"):
            problems["not_unpacked"].append(rec.name)
        elif rec.kept_reason == "weights identical to the reference":
            problems["unchanged"].append(rec.name)
        if not rec.applied:
            continue
        applied += 1
        if rec.bits and rec.max_distinct_per_group is not None and rec.max_distinct_per_group > 2 ** rec.bits:
            problems["too_many_values"].append(rec.name)
        if rec.transform:  # smoothing rescaled the weights: SQNR against the reference measures that, not rounding
            smoothed.setdefault(rec.transform, []).append(rec.name)
            continue
        floor = SQNR_FLOORS_DB.get(f"int{rec.bits}")
        if floor is not None and rec.sqnr_db is not None and rec.sqnr_db < floor:
            problems["destroyed"].append(rec.name)
    if input_ids is None:
        input_ids = probe_input_ids(getattr(reference.config, "vocab_size", 256))
    out = output_divergence(reference, variant.model, input_ids)
    messages = [f"{len(v)} layers {k.replace('_', ' ')}: {', '.join(v[:5])}" for k, v in problems.items() if v]
    if applied == 0:
        messages.insert(0, "no layer of the variant is quantized")
    if out["identical"]:
        messages.append("logits bit-identical to the reference")
    if not out["finite"]:
        messages.append("logits contain NaN/inf")
    evidence = {"backend": report.backend, "module_classes": classes, "applied": applied,
                "layers": len(report.layers), "problems": {k: v for k, v in problems.items() if v}, "logits": out,
                "summary": report.summary(),
                "smoothed": {k: {"layers": len(v), "first": v[:5], "checked_by": "grid and logits; weight SQNR vs "
                                 "the reference skipped (the smoothing rescaled the weights)"} for k, v in smoothed.items()}}
    warn_only = messages and not (applied == 0 or out["identical"] or not out["finite"]
                                  or any(problems[k] for k in ("too_many_values", "destroyed")))
    status = Status.WARN if warn_only else Status.FAIL if messages else Status.PASS
    msg = ("; ".join(messages) if messages else
           f"{applied} of {len(report.layers)} layers quantized by {report.backend} "
           f"({', '.join(f'{k} x{v}' for k, v in classes.items())}); logits SQNR {out['sqnr_db']:.1f} dB, "
           f"top-1 agreement {out['top1_agreement']:.1%}"
           + "".join(f"; {len(v)} layers rescaled by {k} (checked by grid and logits, not weight SQNR)"
                     for k, v in smoothed.items()))
    return _finish(CheckResult("ptq_applied", status, msg, variant=variant.name,
                               compared="unpacked per-layer weights and logits vs the reference",
                               n=int(out["tokens"]), test="distinct values per group <= 2^bits; SQNR floors; "
                               "exact logits comparison", threshold={"sqnr_floor_db": SQNR_FLOORS_DB},
                               evidence=evidence))
