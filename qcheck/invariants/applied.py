"""The invariants: `assert_*` functions that return a CheckResult when they hold and raise
InvariantViolation (an AssertionError carrying the CheckResult and its evidence) when they do not.

Nothing here knows about pytest. Invariants of later capabilities live beside their measurements and are
re-exported here so users import every assert_* from one place.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from qcheck.errors import InvariantViolation
from qcheck.measure.weights import (
    effective_weight,
    floor_for,
    grid_evidence,
    output_divergence,
    probe_input_ids,
    spec_of_record,
    weight_deltas,
)
from qcheck.quant.manifest import QuantReport
from qcheck.quant.plan import Plan
from qcheck.quant.spec import CastSpec, KeepSpec
from qcheck.results import CheckResult, Status


def _finish(result: CheckResult) -> CheckResult:
    if result.status in (Status.FAIL, Status.ERROR):
        raise InvariantViolation(result)
    return result


def assert_quantization_applied(
    reference: nn.Module,
    quantized: nn.Module,
    report: QuantReport | None = None,
    *,
    input_ids: torch.Tensor | None = None,
    variant: str | None = None,
) -> CheckResult:
    """Quantization took effect: claimed layers on their format's grid, changed where lossy, of the right dtype,
    above their format's SQNR floor; logits not bit-identical to the reference (SQNR recorded).

    Without a report every nn.Linear is compared with the reference and at least one must have changed.
    """
    report = report if report is not None else getattr(quantized, "qcheck_report", None)
    deltas = weight_deltas(reference, quantized)
    problems: dict[str, list[str]] = {"off_grid": [], "unchanged": [], "wrong_dtype": [], "destroyed": [],
                                      "missing": []}
    layer_evidence: dict[str, Any] = {}
    q_modules = dict(quantized.named_modules())
    ref_modules = dict(reference.named_modules())
    claimed = 0
    if report is not None:
        for rec in report.layers:
            if not rec.applied:
                continue
            claimed += 1
            spec = spec_of_record(rec)
            module = q_modules.get(rec.name)
            if module is None:
                problems["missing"].append(rec.name)
                continue
            ref_w = effective_weight(ref_modules[rec.name]) if rec.name in ref_modules else None
            grid = grid_evidence(module, spec, ref_w)
            d = deltas.get(rec.name, {})
            ev = {"format": spec.label, "grid": grid.reason, "changed_fraction": d.get("changed_fraction"),
                  "sqnr_db": d.get("sqnr_db"), "dtype": d.get("dtype")}
            if not grid.on_grid:
                problems["wrong_dtype" if isinstance(spec, CastSpec) else "off_grid"].append(rec.name)
            if d.get("changed_fraction") == 0.0:
                problems["unchanged"].append(rec.name)
            floor = floor_for(spec)
            if floor is not None and d.get("sqnr_db") is not None and d["sqnr_db"] < floor:
                problems["destroyed"].append(rec.name)
                ev["sqnr_floor_db"] = floor
            layer_evidence[rec.name] = ev
    else:
        for name, d in deltas.items():
            claimed += 1
            if d.get("changed_fraction") == 0.0:
                problems["unchanged"].append(name)
            layer_evidence[name] = d
    if input_ids is None:
        vocab = getattr(getattr(reference, "config", None), "vocab_size", 256)
        input_ids = probe_input_ids(vocab)
    out = output_divergence(reference, quantized, input_ids)
    evidence: dict[str, Any] = {"logits": out, "layers_checked": claimed,
                                "problems": {k: v for k, v in problems.items() if v}}
    evidence["layers"] = {k: layer_evidence[k] for k in list(layer_evidence)[:400]}
    messages = []
    all_unchanged = report is None and claimed > 0 and len(problems["unchanged"]) == claimed
    if out["identical"]:
        messages.append("logits are bit-identical to the reference: quantization was not applied")
    if problems["unchanged"]:
        messages.append(f"quantization not applied to {len(problems['unchanged'])} of {claimed} layers "
                        f"(weights bit-identical to the reference): {_names(problems['unchanged'])}")
    if problems["off_grid"]:
        messages.append(f"{len(problems['off_grid'])} layers are not on their format's grid: "
                        f"{_names(problems['off_grid'])}")
    if problems["wrong_dtype"]:
        messages.append(f"{len(problems['wrong_dtype'])} layers do not have the dtype their spec says: "
                        f"{_names(problems['wrong_dtype'])}")
    if problems["destroyed"]:
        messages.append(f"{len(problems['destroyed'])} layers fall below their format's SQNR floor (destroyed): "
                        f"{_names(problems['destroyed'])}")
    if problems["missing"]:
        messages.append(f"layers in the manifest are missing from the model: {_names(problems['missing'])}")
    if not out["finite"]:
        messages.append("the quantized model's logits contain NaN/inf")
    failed = bool(messages) and (report is not None or all_unchanged or out["identical"] or not out["finite"])
    if not failed and problems["unchanged"]:
        status, message = Status.WARN, messages[0]
    elif failed:
        status, message = Status.FAIL, "; ".join(messages)
    else:
        status = Status.PASS
        message = (f"{claimed} layers quantized and on their grids; logits differ from the reference "
                   f"(SQNR {out['sqnr_db']:.1f} dB, top-1 agreement {out['top1_agreement']:.1%})")
    return _finish(CheckResult(
        name="quantization_applied", status=status, message=message, variant=variant,
        compared="quantized vs reference: per-layer weights (grid, change, dtype, SQNR) and logits",
        n=int(out["tokens"]), test="exact comparison; grid = idempotence + distinct-value bound; SQNR floors",
        threshold={"logits": "not bit-identical", "sqnr_floor_db": "per format (evidence.SQNR_FLOORS_DB)"},
        evidence=evidence))


def assert_plan_followed(quantized: nn.Module, plan: Plan | Mapping[str, Any] | str, *,
                         reference: nn.Module | None = None, variant: str | None = None) -> CheckResult:
    """Every layer carries the format the plan assigns it, judged on the weights alone (not on any manifest):
    a layer meant for int8 whose weights sit on a 4-bit grid, or the reverse, is named."""
    plan = Plan.load(plan)
    ref_modules = dict(reference.named_modules()) if reference is not None else {}
    mismatched: dict[str, str] = {}
    checked = 0
    for a in plan.resolve(quantized):
        module = quantized.get_submodule(a.layer)
        spec = a.rule.spec
        if isinstance(spec, KeepSpec) and a.layer not in ref_modules:
            continue
        ref_w = effective_weight(ref_modules[a.layer]) if a.layer in ref_modules else None
        grid = grid_evidence(module, spec, ref_w)
        checked += 1
        if not grid.on_grid:
            mismatched[a.layer] = f"plan says {spec.label} ({a.rule.label}); {grid.reason}"
    status = Status.FAIL if mismatched else Status.PASS
    message = (f"{len(mismatched)} of {checked} layers do not carry the format the plan assigns: "
               f"{_names(list(mismatched))}" if mismatched else
               f"all {checked} layers carry the formats plan {plan.name!r} assigns")
    return _finish(CheckResult(
        name="plan_followed", status=status, message=message, variant=variant, n=checked,
        compared=f"each layer's weights vs the grid of the spec plan {plan.name!r} assigns it",
        test="grid membership (idempotence + distinct-value bound)", threshold="every layer on its grid",
        evidence={"mismatched": mismatched, "plan": plan.to_dict()}))


def assert_16bit_differs(reference_ppl: float, ppl: float, *, variant: str, tolerance: float = 0.01,
                         n_tokens: int | None = None) -> CheckResult:
    """A 16-bit (or 8-bit) variant's perplexity differs from fp32 (not identical to 10 decimals) yet stays within
    `tolerance` (relative). Identical means the precision change never reached the computation (Z1)."""
    rel = abs(ppl - reference_ppl) / reference_ppl
    identical = round(ppl, 10) == round(reference_ppl, 10)
    evidence = {"reference_ppl": reference_ppl, "ppl": ppl, "relative_difference": rel}
    if identical:
        status, message = Status.FAIL, (f"perplexity {ppl:.10f} is identical to fp32's to 10 decimals: "
                                         "quantization was not applied")
    elif not math.isfinite(ppl) or rel > tolerance:
        status, message = Status.FAIL, (f"perplexity {ppl:.4f} differs from fp32's {reference_ppl:.4f} by "
                                         f"{rel:.3%}, more than the {tolerance:.0%} a {variant} model should")
    else:
        status, message = Status.PASS, (f"perplexity {ppl:.4f} vs fp32 {reference_ppl:.4f}: differs by {rel:.4%} "
                                         f"(> 0, <= {tolerance:.0%})")
    return _finish(CheckResult(
        name="precision_differs_from_fp32", status=status, message=message, variant=variant, n=n_tokens,
        compared=f"{variant} perplexity vs fp32 perplexity on the same tokens", test="relative difference",
        threshold={"identical_decimals": 10, "max_relative_difference": tolerance}, evidence=evidence))


def assert_mixed_between(mixed: Any, bounds: Mapping[str, Any], *, variant: str = "mixed",
                         plan: Plan | Mapping[str, Any] | str | None = None, quantized: nn.Module | None = None,
                         level: float = 0.95) -> CheckResult:
    """A mixed plan's perplexity lies between the uniform plans it mixes, within noise (paired bootstrap over
    windows); with `plan` and `quantized`, layers whose format differs from the plan are named first (Z2).

    `mixed` and the values of `bounds` are PerplexityResult objects computed on the same windows.
    """
    from qcheck.stats import bootstrap_interval

    followed = None
    if plan is not None and quantized is not None:
        try:
            followed = assert_plan_followed(quantized, plan, variant=variant)
        except InvariantViolation as exc:
            followed = exc.result
    ordered = sorted(bounds.items(), key=lambda kv: kv[1].perplexity)
    (low_name, low), (high_name, high) = ordered[0], ordered[-1]
    evidence: dict[str, Any] = {"mixed_ppl": mixed.perplexity, "bounds": {k: v.perplexity for k, v in bounds.items()},
                                "windows": len(mixed.window_nll), "tokens": mixed.n_tokens}

    def diff_interval(other: Any) -> Any:
        if len(other.window_nll) != len(mixed.window_nll):
            raise ValueError("mixed and bound perplexities were not computed on the same windows")
        d = [(a - b) / t for a, b, t in zip(mixed.window_nll, other.window_nll, mixed.window_tokens)]
        return bootstrap_interval(d, level=level, weights=mixed.window_tokens)

    above = diff_interval(high)
    below = diff_interval(low)
    evidence["nll_per_token_minus_upper"] = above.to_dict()
    evidence["nll_per_token_minus_lower"] = below.to_dict()
    messages = []
    if followed is not None:
        evidence["plan_followed"] = followed.evidence.get("mismatched")
        if followed.status == Status.FAIL:
            messages.append(followed.message)
    if above.low > 0:
        messages.append(f"mixed perplexity {mixed.perplexity:.3f} is above its worst uniform bound {high_name} "
                        f"({high.perplexity:.3f}) beyond noise ({mixed.perplexity / high.perplexity:.2f}x)")
    if below.high < 0:
        messages.append(f"mixed perplexity {mixed.perplexity:.3f} is below its best uniform bound {low_name} "
                        f"({low.perplexity:.3f}) beyond noise")
    status = Status.FAIL if messages else Status.PASS
    message = "; ".join(messages) if messages else (
        f"mixed perplexity {mixed.perplexity:.3f} lies within [{low.perplexity:.3f} ({low_name}), "
        f"{high.perplexity:.3f} ({high_name})] within noise")
    return _finish(CheckResult(
        name="mixed_between_uniform", status=status, message=message, variant=variant, n=len(mixed.window_nll),
        compared=f"{variant} vs uniform bounds {list(bounds)} on the same windows",
        test=f"paired bootstrap over windows of NLL/token differences ({level:.0%} interval)",
        threshold="interval of (mixed - bound) must not exclude 0 on the wrong side", evidence=evidence))


def _names(names: list[str], k: int = 8) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" (+{len(names) - k} more)" if len(names) > k else "")
