"""`quantize_placed(model, plan)`: apply a plan in place to a model accelerate dispatched over devices or offloaded.

A dispatched reference cannot be deep-copied into a variant (its offloaded weights live in accelerate's weights map,
which the copy would share, and quantizing meta tensors changes nothing), so a variant of it is a fresh load of the
same checkpoint with the reference's own placement, passed here. Each layer is quantized where it lives: its
offloaded weights are brought in, rewritten by the same per-layer code `quantize` uses, and stored back where the
hook reads them (`qcheck.quant.offload`). The result is what `quantize` gives on one device, layer for layer.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcheck.errors import VariantUnavailable
from qcheck.quant.apply import _apply_one, compute_dtype
from qcheck.quant.experts import layer_at, owner_of, weight_key
from qcheck.quant.manifest import QuantReport
from qcheck.quant.offload import onloaded
from qcheck.quant.plan import MODEL_DTYPES, Plan, output_embeddings, unaddressable_weights
from qcheck.quant.spec import BnbSpec


def quantize_placed(model: nn.Module, plan: Plan | Mapping[str, Any] | str | Path, *,
                    reference_fingerprint: str = "") -> tuple[nn.Module, QuantReport]:
    """Quantize a freshly loaded, dispatched copy of the reference in place; returns it with its manifest."""
    plan = Plan.load(plan)
    assignments = plan.resolve(model)
    if any(isinstance(a.rule.spec, BnbSpec) for a in assignments):
        raise VariantUnavailable(f"plan {plan.name!r} uses bitsandbytes layers, which qcheck builds by replacing "
                                 "modules of a model on one device; with --device-map they are not built (use "
                                 "--ptq bnb-config:int8 / nf4, which transformers places itself, or drop "
                                 "--device-map)")
    if plan.dtype != "fp32":
        cast_model(model, MODEL_DTYPES[plan.dtype])
    total, outside = unaddressable_weights(model, output_embeddings(model))
    report = QuantReport(plan=plan.to_dict(), reference_fingerprint=reference_fingerprint,
                         model_dtype=compute_dtype(model), outside_linear=outside, weight_elements=total)
    # tied weights are found by the identity of the parameters as loaded, all alive now: an onloaded weight is a new
    # object each time, whose id Python may reuse after it is freed
    keys = {a.layer: weight_key(layer_at(model, a.layer)) for a in assignments}
    seen: dict[int, str] = {}
    for assignment in assignments:
        layer = layer_at(model, assignment.layer)
        with onloaded(owner_of(layer), write=True), torch.no_grad():
            before = layer.weight.detach().clone()
            report.layers.append(_apply_one(model, assignment, before, seen, key=keys[assignment.layer]))
    model.eval()
    model.qcheck_report = report
    return model, report


def cast_model(model: nn.Module, dtype: torch.dtype) -> None:
    """What `model.to(dtype)` does (every float parameter and buffer cast), module by module and wherever each
    tensor lives: accelerate's hooks keep a dispatched model from being moved or cast as a whole."""
    with torch.no_grad():
        for module in model.modules():
            with onloaded(module, write=True):
                for name, p in module.named_parameters(recurse=False):
                    if p.is_floating_point() and p.dtype != dtype:
                        p.data = p.data.to(dtype)
                for name, b in module.named_buffers(recurse=False):
                    if b is not None and b.is_floating_point() and b.dtype != dtype:
                        module._buffers[name] = b.to(dtype)
