"""Quantization took effect (Z1) and follows its plan (Z2): judges of the weight evidence a run records
(`qcheck.measure.weights.quantization_evidence` / `plan_evidence`), and the model-taking `assert_*` forms of the
public API that measure and judge in one call.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from qcheck.errors import InvariantViolation
from qcheck.measure.weights import plan_evidence, quantization_evidence
from qcheck.quant.manifest import QuantReport
from qcheck.quant.plan import Plan
from qcheck.results import CheckResult, Status, raise_if_failed


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
    return judge_quantization_applied(quantization_evidence(reference, quantized, report, input_ids=input_ids),
                                      variant=variant)


def judge_quantization_applied(evidence: Mapping[str, Any], *, variant: str | None = None) -> CheckResult:
    """The quantization-applied verdict from recorded evidence (see `quantization_evidence`)."""
    problems: dict[str, list[str]] = {"off_grid": [], "unchanged": [], "wrong_dtype": [], "destroyed": [],
                                      "missing": [], "already_in_format": []}
    with_manifest = bool(evidence.get("manifest"))
    layers = evidence.get("layers") or {}
    for name, layer in layers.items():
        if layer.get("missing"):
            problems["missing"].append(name)
            continue
        if with_manifest and not layer.get("on_grid", True):
            problems["wrong_dtype" if layer.get("cast") else "off_grid"].append(name)
        if layer.get("changed_fraction") == 0.0:
            problems["already_in_format" if layer.get("reference_in_format") else "unchanged"].append(name)
        floor, sqnr = layer.get("sqnr_floor_db"), layer.get("sqnr_db")
        if with_manifest and floor is not None and sqnr is not None and sqnr < floor:
            problems["destroyed"].append(name)
    claimed = len(layers)
    out = evidence["logits"]
    probe = evidence.get("probe") or {}
    messages = []
    all_unchanged = not with_manifest and claimed > 0 and len(problems["unchanged"]) == claimed
    changed_layers = claimed - len(problems["unchanged"]) - len(problems["missing"]) - \
        len(problems["already_in_format"])
    if problems["already_in_format"] and len(problems["already_in_format"]) == claimed and out["identical"]:
        return CheckResult(
            name="quantization_applied", status=Status.INCONCLUSIVE, variant=variant, n=int(out["tokens"]),
            message=f"all {claimed} layers of the reference already hold only {variant} values (e.g. a bf16 "
                    "checkpoint loaded in fp32), so this variant equals the reference: nothing to quantize; load "
                    "the reference in the checkpoint's own dtype (--reference-dtype auto) or compare other formats",
            compared="quantized vs reference: per-layer weights and logits", test="exact comparison",
            evidence=_summary(evidence, problems, claimed))
    if not out.get("reference_finite", True):
        return raise_if_failed(CheckResult(
            name="quantization_applied", status=Status.ERROR, variant=variant, n=int(out["tokens"]),
            message="the reference's own logits contain NaN/inf on the probe: the reference is broken, so no "
                    "variant can be judged against it (check the reference's weights)",
            compared="reference logits on the probe", evidence=dict(evidence)))
    if out["identical"] and probe.get("blind") and changed_layers > 0:
        return CheckResult(
            name="quantization_applied", status=Status.INCONCLUSIVE, variant=variant, n=int(out["tokens"]),
            message=f"{changed_layers} of {claimed} layers changed, but the logits cannot tell: {probe['blind']}",
            compared="quantized vs reference: per-layer weights and logits on the probe",
            test="exact comparison", threshold={"logits": "not bit-identical"},
            evidence={**_summary(evidence, problems, claimed)})
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
        messages.append("the quantized model's logits contain NaN/inf (the reference's are finite)")
    failed = bool(messages) and (with_manifest or all_unchanged or out["identical"] or not out["finite"])
    if not failed and problems["unchanged"]:
        status, message = Status.WARN, messages[0]
    elif failed:
        status, message = Status.FAIL, "; ".join(messages)
    else:
        status = Status.PASS
        message = (f"{claimed} layers quantized and on their grids; logits differ from the reference "
                   f"(SQNR {out['sqnr_db']:.1f} dB, top-1 agreement {out['top1_agreement']:.1%})")
        if problems["already_in_format"]:
            message += (f"; {len(problems['already_in_format'])} layers were already {variant} values in the "
                        "reference (unchanged, as they must be)")
    return raise_if_failed(CheckResult(
        name="quantization_applied", status=status, message=message, variant=variant,
        compared="quantized vs reference: per-layer weights (grid, change, dtype, SQNR) and logits",
        n=int(out["tokens"]), test="exact comparison; grid = idempotence + distinct-value bound; SQNR floors",
        threshold={"logits": "not bit-identical", "sqnr_floor_db": "per format (measure.weights.SQNR_FLOORS_DB)"},
        evidence=_summary(evidence, problems, claimed)))


def _summary(evidence: Mapping[str, Any], problems: dict[str, list[str]], claimed: int) -> dict[str, Any]:
    layers = evidence.get("layers") or {}
    return {"logits": evidence["logits"], "probe": evidence.get("probe"), "layers_checked": claimed,
            "problems": {k: v for k, v in problems.items() if v},
            "layers": {k: layers[k] for k in list(layers)[:400]}}


def assert_plan_followed(quantized: nn.Module, plan: Plan | Mapping[str, Any] | str, *,
                         reference: nn.Module | None = None, variant: str | None = None) -> CheckResult:
    """Every layer carries the format the plan assigns it, judged on the weights alone (not on any manifest):
    a layer meant for int8 whose weights sit on a 4-bit grid, or the reverse, is named."""
    return judge_plan_followed(plan_evidence(quantized, plan, reference), variant=variant)


def judge_plan_followed(evidence: Mapping[str, Any], *, variant: str | None = None) -> CheckResult:
    """The plan-followed verdict from recorded evidence (see `plan_evidence`)."""
    mismatched, checked = dict(evidence["mismatched"]), int(evidence["checked"])
    name = evidence["plan"].get("name")
    status = Status.FAIL if mismatched else Status.PASS
    message = (f"{len(mismatched)} of {checked} layers do not carry the format the plan assigns: "
               f"{_names(list(mismatched))}" if mismatched else
               f"all {checked} layers carry the formats plan {name!r} assigns")
    return raise_if_failed(CheckResult(
        name="plan_followed", status=status, message=message, variant=variant, n=checked,
        compared=f"each layer's weights vs the grid of the spec plan {name!r} assigns it",
        test="grid membership (idempotence + distinct-value bound)", threshold="every layer on its grid",
        evidence={"mismatched": mismatched, "plan": evidence["plan"]}))


def assert_mixed_between(mixed: Any, bounds: Mapping[str, Any], *, variant: str = "mixed",
                         plan: Plan | Mapping[str, Any] | str | None = None, quantized: nn.Module | None = None,
                         plan_check: CheckResult | None = None, level: float = 0.95,
                         tolerance: float | None = None, vocab_size: int | None = None) -> CheckResult:
    """A mixed plan's perplexity lies between the uniform plans it mixes, within noise (paired bootstrap over
    blocks of tokens) and `tolerance` nats/token (the ordering checks' ORDER_TOLERANCE: a real but negligible
    difference, such as random weights give, is no finding); layers whose format differs from the plan
    (`plan_check`, or checked here from `plan` and `quantized`) are named first (Z2). `mixed` and the values of
    `bounds` are PerplexityResults on the same text. With `vocab_size`, a mix outside bounds that all predict no
    better than a uniform guess (perplexity >= vocab_size) is INCONCLUSIVE, as `perplexity_order` is: quantization
    noise moves such a model's perplexity either way (a random-init Llama of hidden 1024: the mix 1.4% above both
    bounds, session 28). A layer off its plan still FAILs."""
    from qcheck.invariants.quality import ORDER_TOLERANCE, _paired_nll_difference, no_better_than_uniform

    tolerance = ORDER_TOLERANCE if tolerance is None else tolerance

    followed = plan_check
    if followed is None and plan is not None and quantized is not None:
        try:
            followed = assert_plan_followed(quantized, plan, variant=variant)
        except InvariantViolation as exc:
            followed = exc.result
    ordered = sorted(bounds.items(), key=lambda kv: kv[1].perplexity)
    (low_name, low), (high_name, high) = ordered[0], ordered[-1]
    above, units, unit = _paired_nll_difference(high, mixed, level)
    below, _, _ = _paired_nll_difference(low, mixed, level)
    evidence: dict[str, Any] = {"mixed_ppl": mixed.perplexity, "bounds": {k: v.perplexity for k, v in bounds.items()},
                                "units": units, "unit": unit, "tokens": mixed.n_tokens,
                                "nll_per_token_minus_upper": above.to_dict(),
                                "nll_per_token_minus_lower": below.to_dict()}
    messages = []
    if followed is not None:
        evidence["plan_followed"] = followed.evidence.get("mismatched")
        if followed.status == Status.FAIL:
            messages.append(followed.message)
    off_plan = bool(messages)
    if above.low > tolerance:
        messages.append(f"mixed perplexity {mixed.perplexity:.3f} is above its worst uniform bound {high_name} "
                        f"({high.perplexity:.3f}) beyond noise and {tolerance:g} nats/token "
                        f"({mixed.perplexity / high.perplexity:.2f}x)")
    if below.high < -tolerance:
        messages.append(f"mixed perplexity {mixed.perplexity:.3f} is below its best uniform bound {low_name} "
                        f"({low.perplexity:.3f}) beyond noise and {tolerance:g} nats/token")
    uninformed = no_better_than_uniform(low.perplexity, vocab_size)
    status = Status.FAIL if off_plan or (messages and not uninformed) else (
        Status.INCONCLUSIVE if messages else Status.PASS)
    if status == Status.INCONCLUSIVE:
        messages.append(f"but its best uniform bound {low_name} scores {low.perplexity:.1f}, not below the "
                        f"vocabulary's {vocab_size} tokens, what a uniform guess scores: models that predict the text "
                        "no better than chance have nothing for bits to lose, and quantization noise moves their "
                        "perplexity either way (random or broken weights), so the bounds cannot hold the mix")
    outside = (f"below {low_name} by {-below.estimate:.2g}" if below.estimate < 0 else
               f"above {high_name} by {above.estimate:.2g}" if above.estimate > 0 else None)
    message = "; ".join(messages) if messages else (
        f"mixed perplexity {mixed.perplexity:.3f} lies within [{low.perplexity:.3f} ({low_name}), "
        f"{high.perplexity:.3f} ({high_name})]" + (f" within noise and {tolerance:g} nats/token (it is {outside} "
                                                    "nats/token)" if outside else ""))
    return raise_if_failed(CheckResult(
        name="mixed_between_uniform", status=status, message=message, variant=variant, n=units,
        compared=f"{variant} vs uniform bounds {list(bounds)} on the same tokens",
        test=f"paired bootstrap over {unit} of NLL/token differences ({level:.0%} interval)",
        threshold={"violated_when": "interval of (mixed - bound) lies beyond tolerance on the wrong side",
                   "tolerance_nats_per_token": tolerance,
                   "inconclusive_when": "best uniform bound's perplexity >= vocabulary size"},
        evidence={**evidence, "vocab_size": vocab_size}))


def _names(names: list[str], k: int = 8) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" (+{len(names) - k} more)" if len(names) > k else "")
