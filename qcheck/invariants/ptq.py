"""Checks specific to post-training quantization backends.

- `assert_ptq_not_worse_than_rtn`: a calibrated method (GPTQ / AWQ) at the same bits as qcheck's own RTN must
  not have a higher perplexity than RTN by more than noise (paired bootstrap over blocks of the same tokens); when it
  does, the calibration is flagged (wrong source, too few samples, a broken recipe).
- `assert_reference_untouched`: the reference's weight fingerprint is unchanged after producing a variant.

The "empty / unboxed outputs" check with the reference exonerated or blamed (seed 002) belongs to the
LM-quality invariants; PTQ variants plug into it as ordinary variants (`BackendVariant.model`).
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from qcheck.errors import DataError
from qcheck.quant.tensor_stats import weight_fingerprint
from qcheck.results import CheckResult, Status, raise_if_failed

MIN_BLOCKS = 8
"""Fewer paired blocks of 128 tokens than this (1,024 tokens) cannot separate a calibration failure from noise."""



def assert_ptq_not_worse_than_rtn(rtn: Any, ptq: Any, *, variant: str, rtn_name: str = "rtn",
                                  tolerance: float = 0.01, calibration: dict[str, Any] | None = None,
                                  level: float = 0.95) -> CheckResult:
    """PTQ perplexity <= RTN perplexity * (1 + tolerance) unless within noise; both PerplexityResults on the
    same windows. Compares mean NLL per token, paired over windows (token-weighted bootstrap)."""
    from qcheck.invariants.quality import _paired_nll_difference

    name = "ptq_not_worse_than_rtn"
    compared = f"{variant} vs {rtn_name}: NLL per token on the same tokens"
    margin = math.log1p(tolerance)
    evidence: dict[str, Any] = {"ppl_rtn": rtn.perplexity, "ppl_ptq": ptq.perplexity, "tokens": rtn.n_tokens,
                                "calibration": calibration or {}}
    test = f"paired token-weighted block bootstrap of NLL(ptq) - NLL(rtn) per token, {int(level * 100)}% interval"
    threshold = f"lower bound <= log(1 + {tolerance})"
    try:
        diff, n, unit = _paired_nll_difference(rtn, ptq, level)
    except DataError as exc:
        return raise_if_failed(CheckResult(name, Status.ERROR, f"{variant} and {rtn_name} cannot be paired: {exc}",
                                   compared=compared, variant=variant))
    evidence.update(units=n, unit=unit)
    if n < MIN_BLOCKS:
        return CheckResult(name, Status.INCONCLUSIVE,
                           f"only {n} {unit} (< {MIN_BLOCKS}): cannot tell {variant} from {rtn_name}; "
                           "score more tokens", compared=compared, n=n, test=test, threshold=threshold,
                           evidence=evidence, variant=variant)
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
    return raise_if_failed(CheckResult(name, status, msg, compared=compared, n=n, test=test, threshold=threshold,
                               evidence=evidence, variant=variant))


def _calibration_text(calibration: dict[str, Any] | None) -> str:
    if not calibration:
        return "not recorded here: for a checkpoint folder, see how it was produced (its recipe.yaml, if any)"
    return ", ".join(f"{k}={calibration[k]}" for k in ("source", "samples", "seq_len", "tokens") if k in calibration)


def assert_reference_untouched(reference: nn.Module, fingerprint: str, *, backend: str,
                               variant: str | None = None) -> CheckResult:
    """The reference's weights still have the fingerprint taken before `backend` produced its variant."""
    return judge_reference_untouched(fingerprint, weight_fingerprint(reference), backend=backend, variant=variant)


def judge_reference_untouched(before: str, after: str, *, backend: str, variant: str | None = None) -> CheckResult:
    """The reference-untouched verdict from the fingerprints recorded before and after the build."""
    ok = before == after
    msg = (f"reference weights unchanged after {backend}" if ok else
           f"backend {backend!r} changed the reference's weights: comparisons against this 'reference' are void")
    return raise_if_failed(CheckResult("reference_untouched", Status.PASS if ok else Status.FAIL, msg, variant=variant,
                               compared="weight fingerprint of the reference before vs after", n=1,
                               test="sha256 of per-tensor integer sums of the bit patterns and their squares",
                               threshold="equal",
                               evidence={"before": before, "after": after, "backend": backend}))


def assert_ptq_applied(reference: nn.Module, variant: Any, *, input_ids: Any = None) -> CheckResult:
    """A backend variant is really quantized: every layer its manifest claims has at most 2^bits distinct
    unpacked values per group, changed from the reference, above the bits' SQNR floor; logits differ and
    are finite. Layers named by module class (the backend's own: Linear4bit, Linear[pack-quantized], ...).
    Layers left unchanged or not unpackable without a declared reason are a WARN naming them."""
    return judge_ptq_applied(ptq_evidence(reference, variant, input_ids=input_ids), variant=variant.name)


def ptq_evidence(reference: nn.Module, variant: Any, *, input_ids: Any = None) -> dict[str, Any]:
    """What `judge_ptq_applied` reads: the backend's manifest (measured on its unpacked weights) and the logits."""
    from qcheck.measure.weights import _divergence, logits_of, probe_input_ids, probe_view

    if input_ids is None:
        input_ids = probe_input_ids(getattr(reference.config, "vocab_size", 256))
    ref_logits = logits_of(reference, input_ids)
    return {"manifest": variant.report.to_dict(),
            "logits": _divergence(ref_logits, logits_of(variant.model, input_ids), input_ids),
            "probe": probe_view(ref_logits, input_ids)}


def judge_ptq_applied(evidence: dict[str, Any], *, variant: str | None = None) -> CheckResult:
    """The PTQ-applied verdict from recorded evidence (see `ptq_evidence`)."""
    from qcheck.measure.weights import SQNR_FLOORS_DB

    manifest = evidence["manifest"]
    layers = manifest.get("layers") or []
    problems: dict[str, list[str]] = {"too_many_values": [], "destroyed": [], "unchanged": [], "not_unpacked": []}
    smoothed: dict[str, list[str]] = {}
    classes: dict[str, int] = {}
    applied = 0
    for rec in layers:
        classes[rec["module_class"]] = classes.get(rec["module_class"], 0) + 1
        kept = rec.get("kept_reason") or ""
        if kept.startswith("weights could not be unpacked"):
            problems["not_unpacked"].append(rec["name"])
        elif kept == "weights identical to the reference":
            problems["unchanged"].append(rec["name"])
        if not rec.get("applied"):
            continue
        applied += 1
        bits, distinct = rec.get("bits"), rec.get("max_distinct_per_group")
        if bits and distinct is not None and distinct > 2 ** bits:
            problems["too_many_values"].append(rec["name"])
        if rec.get("transform"):  # smoothing rescaled the weights: SQNR against the reference measures that
            smoothed.setdefault(rec["transform"], []).append(rec["name"])
            continue
        floor = SQNR_FLOORS_DB.get(f"int{bits}")
        sqnr = rec.get("sqnr_db")
        if floor is not None and isinstance(sqnr, (int, float)) and sqnr < floor:
            problems["destroyed"].append(rec["name"])
    out = evidence["logits"]
    probe = evidence.get("probe") or {}
    backend = manifest.get("backend")
    messages = [f"{len(v)} layers {k.replace('_', ' ')}: {', '.join(v[:5])}" for k, v in problems.items() if v]
    if applied == 0:
        messages.insert(0, "no layer of the variant is quantized")
    if out["identical"]:
        if probe.get("blind") and applied:
            return CheckResult("ptq_applied", Status.INCONCLUSIVE, f"{applied} layers quantized by {backend}, but "
                               f"the logits cannot tell: {probe['blind']}", variant=variant,
                               compared="unpacked per-layer weights and logits vs the reference",
                               n=int(out["tokens"]), evidence={"logits": out, "probe": probe})
        messages.append("logits bit-identical to the reference")
    if not out["finite"]:
        messages.append("logits contain NaN/inf")
    evidence_out = {"backend": backend, "module_classes": classes, "applied": applied, "layers": len(layers),
                    "problems": {k: v for k, v in problems.items() if v}, "logits": out, "probe": probe,
                    "summary": manifest.get("summary"),
                    "smoothed": {k: {"layers": len(v), "first": v[:5],
                                     "checked_by": "grid and logits; weight SQNR vs the reference skipped (the "
                                                   "smoothing rescaled the weights)"} for k, v in smoothed.items()}}
    warn_only = messages and not (applied == 0 or out["identical"] or not out["finite"]
                                  or any(problems[k] for k in ("too_many_values", "destroyed")))
    status = Status.WARN if warn_only else Status.FAIL if messages else Status.PASS
    msg = ("; ".join(messages) if messages else
           f"{applied} of {len(layers)} layers quantized by {backend} "
           f"({', '.join(f'{k} x{v}' for k, v in classes.items())}); logits SQNR {out['sqnr_db']:.1f} dB, "
           f"top-1 agreement {out['top1_agreement']:.1%}"
           + "".join(f"; {len(v)} layers rescaled by {k} (checked by grid and logits, not weight SQNR)"
                     for k, v in smoothed.items()))
    return raise_if_failed(CheckResult("ptq_applied", status, msg, variant=variant,
                               compared="unpacked per-layer weights and logits vs the reference",
                               n=int(out["tokens"]), test="distinct values per group <= 2^bits; SQNR floors; "
                               "exact logits comparison", threshold={"sqnr_floor_db": SQNR_FLOORS_DB},
                               evidence=evidence_out))
