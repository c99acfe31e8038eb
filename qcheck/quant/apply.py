"""`quantize(model, plan) -> (quantized, report)`: apply a plan to a copy of the model, layer by layer.

The reference is never modified: its weights are fingerprinted before and after, and a change is an error.
Each layer's record is measured on the weights actually written, not taken from the plan.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, QCheckError, VariantUnavailable
from qcheck.quant.experts import ExpertMatrix, class_name, layer_at, per_expert_view, weight_key
from qcheck.quant.manifest import LayerRecord, QuantReport
from qcheck.quant.plan import MODEL_DTYPES, Assignment, Plan, output_embeddings, unaddressable_weights
from qcheck.quant.spec import BnbSpec, CastSpec, FixedSpec, IntSpec, KeepSpec, MinifloatSpec, PruneSpec, spec_to_dict
from qcheck.quant.tensor_stats import (
    count_true,
    distinct_per_group,
    fraction,
    rel_change_and_sqnr_db,
    weight_fingerprint,
)


def quantize(
    model: nn.Module, plan: Plan | Mapping[str, Any] | str | Path, *, inplace: bool = False
) -> tuple[nn.Module, QuantReport]:
    """Quantize `model` as `plan` says; returns the quantized model and its per-layer manifest.

    With inplace=False (default) the reference is deep-copied first and left untouched.
    """
    plan = Plan.load(plan)
    assignments = plan.resolve(model)
    refuse_bnb_experts(plan, assignments)
    before = weight_fingerprint(model)
    # with inplace=False each layer's reference weight is read from the untouched reference when its turn comes (a
    # transposed experts weight's 2-D form is a copy: taken all at once they would hold the experts twice)
    reference_weights = ({a.layer: layer_at(model, a.layer).weight.detach().clone() for a in assignments}
                         if inplace else {})
    quantized = model if inplace else copy.deepcopy(model)
    if plan.dtype != "fp32":
        quantized.to(MODEL_DTYPES[plan.dtype])
    total, outside = unaddressable_weights(model, output_embeddings(model))
    report = QuantReport(plan=plan.to_dict(), reference_fingerprint=before, model_dtype=compute_dtype(quantized),
                         outside_linear=outside, weight_elements=total)
    seen: dict[int, str] = {}
    with _bnb_staging(assignments):
        for assignment in assignments:
            ref_w = (reference_weights.pop(assignment.layer) if inplace
                     else layer_at(model, assignment.layer).weight.detach())
            report.layers.append(_apply_one(quantized, assignment, ref_w, seen))
    if not inplace and weight_fingerprint(model) != before:
        raise QCheckError("the reference model's weights changed while producing the quantized variant "
                          f"(plan {plan.name!r}): the backend mutated its input; keep a separate reference copy")
    quantized.eval()
    quantized.qcheck_report = report
    return quantized, report


def refuse_bnb_experts(plan: Plan, assignments: list[Assignment]) -> None:
    """bitsandbytes stores nn.Linear layers only: a plan that gives fused experts weights a bitsandbytes format is
    not built (its variant's checks skip, saying so), before any copy is made."""
    layers = [a.layer for a in assignments if a.kind == "experts" and isinstance(a.rule.spec, BnbSpec)]
    if layers:
        raise VariantUnavailable(f"plan {plan.name!r} gives {len(layers)} fused mixture-of-experts weights (first "
                                 f"{layers[0]}) a bitsandbytes format, and bitsandbytes stores nn.Linear layers only: "
                                 "the variant is not built (give the experts a grid format in an override, e.g. "
                                 "match = \"*.experts.*\" with format = \"int\", or leave this variant out)")


def _bnb_staging(assignments: list[Assignment]) -> contextlib.AbstractContextManager[Any]:
    """One pinned host buffer for a plan's bitsandbytes layers (qcheck.quant.bnb.HostStaging), else nothing."""
    if not any(isinstance(a.rule.spec, BnbSpec) for a in assignments):
        return contextlib.nullcontext()
    from qcheck.quant.bnb import host_staging

    return host_staging()


def compute_dtype(model: nn.Module) -> str:
    """The float dtype a model computes in ("fp32", "fp16" or "bf16"): its first float parameter's (a plan that does
    not cast keeps the reference's dtype, so its fake-quantized weights are stored and multiplied in that dtype)."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    names = {torch.float16: "fp16", torch.bfloat16: "bf16"}
    return names.get(first.dtype, "fp32") if first is not None else "fp32"


def _apply_one(model: nn.Module, a: Assignment, ref_w: torch.Tensor, seen: dict[int, str],
               key: int | None = None) -> LayerRecord:
    """One layer quantized as its rule says; `key` identifies its weight for tie detection (default: its id)."""
    module = layer_at(model, a.layer)
    spec = a.rule.spec
    rec = LayerRecord(name=a.layer, module_class=class_name(module), rule=a.rule.label, format=spec.format,
                      spec=spec_to_dict(spec), applied=False, numel=ref_w.numel(), dtype=str(module.weight.dtype))
    key = weight_key(module) if key is None else key
    if key in seen:
        rec.kept_reason = f"weight shared with {seen[key]} (tied), quantized there"
        rec.shared_with = seen[key]
        return rec
    seen[key] = a.layer
    if isinstance(spec, KeepSpec):
        rec.kept_reason = spec.reason
        return rec
    with torch.no_grad():
        if isinstance(spec, BnbSpec):
            rec = _apply_bnb(model, a, module, spec, ref_w, rec)
        else:
            _apply_weight_spec(module, spec, rec, ref_w)
    if a.rule.activations is not None:
        _add_activation_quant(model.get_submodule(a.layer), a.rule.activations)
        rec.activations = spec_to_dict(a.rule.activations)
    return rec


def _apply_weight_spec(module: nn.Module | ExpertMatrix, spec: Any, rec: LayerRecord, ref_w: torch.Tensor) -> None:
    w = module.weight
    if isinstance(spec, PruneSpec):
        new = _prune(w.detach(), spec)
        rec.requested_sparsity = float(spec.sparsity)
        rec.sparsity = float(count_true(lambda p: p == 0, new) / max(1, new.numel()))
    elif isinstance(spec, CastSpec):
        if w.dtype != spec.dtype:  # a cast layer inside a model of another dtype: adapt its input and output
            _add_dtype_adapter(module)  # (never an experts weight: Plan.resolve refuses that cast)
        new = w.detach().to(spec.dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(spec.dtype)
    else:
        view, per = per_expert_view(module, spec, w.detach().to(torch.float32))  # fused experts: a scale per expert
        new_view = per.quantize(view)
        new = new_view.reshape(w.shape)
        if w.dtype != torch.float32:
            # grid values stored in fp16/bf16 would be rounded off their grid (8 significant bits in bf16): the layer
            # keeps them in fp32 and computes in fp32 between casts of its input and output
            if isinstance(module, ExpertMatrix):
                _experts_in_fp32(module.owner)
            else:
                _add_dtype_adapter(module)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(torch.float32)
        lo_hi = _range_of(spec)
        if lo_hi is not None:
            lo, hi = lo_hi
            rec.saturation_rate = fraction(count_true(lambda r: (r < lo) | (r > hi), ref_w), ref_w.numel())
    if isinstance(module, ExpertMatrix):
        module.set_weight(new)
    else:
        w.data = new
    rec.applied = True
    rec.bits = spec.bits
    rec.dtype = str(new.dtype)
    if isinstance(spec, IntSpec):
        rec.max_distinct_per_group = distinct_per_group(new_view, per.group_size, per.per_tensor)
    rec.rel_change, rec.sqnr_db = rel_change_and_sqnr_db(ref_w, new)
    rec.underflow_rate = fraction(count_true(lambda r, n: (r != 0) & (n.to(r.device) == 0), ref_w, new),
                                  ref_w.numel())


def _apply_bnb(model: nn.Module, a: Assignment, module: nn.Module, spec: BnbSpec, ref_w: torch.Tensor,
               rec: LayerRecord) -> LayerRecord:
    from qcheck.quant.bnb import dequantized_weight, make_bnb_linear

    if not isinstance(module, nn.Linear):
        raise ConfigError(f"layer {a.layer}: {spec.format} applies to nn.Linear only, not {type(module).__name__}",
                          field="format", layer=a.layer)
    new_module = make_bnb_linear(module, spec)
    parent_name, _, child = a.layer.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new_module)
    deq = dequantized_weight(new_module)
    rec.module_class = type(new_module).__name__
    rec.backend = "bitsandbytes"
    rec.applied = True
    rec.bits = spec.bits
    rec.dtype = str(new_module.weight.dtype)
    rec.max_distinct_per_group = distinct_per_group(deq, spec.blocksize if spec.bits == 4 else None)
    rec.rel_change, rec.sqnr_db = rel_change_and_sqnr_db(ref_w, deq)
    rec.spec = {**rec.spec, "llm_int8_threshold": spec.threshold} if spec.bits == 8 else rec.spec
    return rec


def _range_of(spec: Any) -> tuple[float, float] | None:
    if isinstance(spec, FixedSpec):
        from qcheck.formats import fixed_point_range

        g = fixed_point_range(spec.width, spec.frac_width, spec.signed)
        return g.min, g.max
    if isinstance(spec, MinifloatSpec):
        from qcheck.formats import minifloat_format

        m = minifloat_format(spec.exp_bits, spec.man_bits, spec.bias, spec.special).max
        return -m, m
    return None


def _prune(w: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """Zero exactly round(sparsity * numel) weights: smallest |w| (l1) or a seeded random choice."""
    k = round(float(spec.sparsity) * w.numel())
    if k == 0:
        return w.clone()
    flat = w.flatten().clone()
    if spec.method == "l1":
        idx = torch.topk(flat.abs().to(torch.float32), k, largest=False).indices
    else:
        gen = torch.Generator().manual_seed(spec.seed)
        idx = torch.randperm(flat.numel(), generator=gen)[:k].to(flat.device)
    flat[idx] = 0
    return flat.reshape(w.shape)


def _add_dtype_adapter(module: nn.Module) -> None:
    """Cast a layer's input to its weight's dtype and its output back, so it sits in a model of another dtype (a cast
    layer, or a grid layer kept in fp32 inside a 16-bit model). Not added
    where the whole model is already in the layer's dtype (the fp16/bf16 plans): two Python hooks per layer cost
    host time on every call, and made 16-bit generation slower than fp32 in host-bound decoding."""
    def pre(mod: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        mod._qcheck_in_dtype = x.dtype
        if x.dtype != mod.weight.dtype:
            return (x.to(mod.weight.dtype),) + tuple(args[1:])
        return None

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(_output_back_to_input_dtype)


def _output_back_to_input_dtype(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    """Forward hook of the dtype adapters: the output cast back to the dtype the input came in (noted by their
    pre-hooks)."""
    in_dtype = getattr(mod, "_qcheck_in_dtype", out.dtype)
    return out.to(in_dtype) if out.dtype != in_dtype else None


def _experts_in_fp32(owner: nn.Module) -> None:
    """A fused experts module that holds fake-quantized weights inside a 16-bit model: every float tensor of it in
    fp32 (its other weights and biases are exact there) and its hidden states cast to fp32 on the way in and back on
    the way out, once per module. Its experts multiply their intermediate states by its other weight, so the whole
    module computes in one dtype."""
    for p in owner.parameters(recurse=False):
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.to(torch.float32)
    if getattr(owner, "_qcheck_fp32", False):
        return
    owner._qcheck_fp32 = True

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = args[0] if args else kwargs["hidden_states"]
        mod._qcheck_in_dtype = x.dtype
        if x.dtype == torch.float32:
            return None
        if args:
            return (x.to(torch.float32),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x.to(torch.float32)}

    owner.register_forward_pre_hook(pre, with_kwargs=True)
    owner.register_forward_hook(_output_back_to_input_dtype)


def _add_activation_quant(module: nn.Module, spec: Any) -> None:
    """Fake-quantize the layer's input with a straight-through estimator (gradients pass unchanged)."""
    def pre(mod: nn.Module, args: tuple) -> tuple:
        x = args[0]
        q = spec.quantize(x.detach().to(torch.float32)).to(x.dtype)
        return (x + (q - x).detach(),) + tuple(args[1:])

    module.register_forward_pre_hook(pre)
