"""Fused mixture-of-experts weights as layers a plan can address.

transformers 5 keeps a MoE block's experts in one 3-D parameter per projection (`gate_up_proj`, `down_proj`), not
in nn.Linear modules: [experts, out, in], or [experts, in, out] where the experts class says `is_transposed`
(transformers' `use_experts_implementation` sets both `is_transposed` and `num_experts` on every such module).
Each expert's slice is the weight of one linear layer, so the parameter is addressed as one layer named
`<module>.<parameter>` (e.g. `model.layers.0.mlp.experts.gate_up_proj`) whose weight is the experts' matrices
stacked by output channel, [experts * out, in]: integer groups and channels run along the input features, as in
nn.Linear, and never span two experts. A per-tensor scale is one scale per expert (`per_expert_view`): each expert's
matrix is one linear layer's tensor, as quantized MoE checkpoints and fused-MoE kernels store their scales (vLLM's
per-tensor `w13_weight_scale` and `w2_weight_scale` hold one per expert); one scale over all experts would be coarser
than any deployment and overstate the loss.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from qcheck.quant.spec import IntSpec


class ExpertMatrix:
    """One fused experts parameter seen as a linear layer's 2-D weight, [experts * out, in]. Reads and writes go
    through the owning module's attribute, so an offloaded owner's real tensor is the one seen while it is onloaded."""

    bias = None

    def __init__(self, owner: nn.Module, name: str) -> None:
        self.owner = owner
        self.name = name

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.owner, self.name)

    @property
    def transposed(self) -> bool:
        return bool(getattr(self.owner, "is_transposed", False))

    @property
    def experts(self) -> int:
        return int(self.param.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.param.shape[1] if self.transposed else self.param.shape[2])

    @property
    def out_features(self) -> int:
        """Output channels of all experts together (rows of `weight`)."""
        return self.experts * int(self.param.shape[2] if self.transposed else self.param.shape[1])

    @property
    def weight(self) -> torch.Tensor:
        """The 2-D [experts * out, in] weight: a view of the parameter, a copy where it is stored transposed."""
        p = self.param
        return (p.transpose(1, 2) if self.transposed else p).reshape(-1, self.in_features)

    def set_weight(self, new: torch.Tensor) -> None:
        """Store a 2-D [experts * out, in] weight back in the parameter's own layout (its dtype may change)."""
        stacked = new.reshape(self.experts, -1, self.in_features)
        self.param.data = stacked.transpose(1, 2).contiguous() if self.transposed else stacked

    @property
    def label(self) -> str:
        """The owning class and parameter, as manifests name a layer's class."""
        return f"{type(self.owner).__name__}.{self.name}"


def per_expert_view(layer: Any, spec: Any, weight: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """`weight` (a layer's 2-D weight) and `spec` as the quantizer and the grid check must see them: for a per-tensor
    integer spec on fused experts, the weight as [experts, out * in] rows, one per expert, under the same spec per
    row (a view: an expert's matrix is contiguous in the 2-D weight); anything else unchanged."""
    if isinstance(layer, ExpertMatrix) and isinstance(spec, IntSpec) and spec.per_tensor:
        return weight.reshape(layer.experts, -1), dataclasses.replace(spec, per_tensor=False)
    return weight, spec


def is_fused_experts(module: nn.Module) -> bool:
    """Whether `module` is a transformers experts class whose layout qcheck knows (`num_experts` and `is_transposed`
    set by `use_experts_implementation`)."""
    return (not isinstance(module, nn.Linear) and isinstance(getattr(module, "num_experts", None), int)
            and isinstance(getattr(module, "is_transposed", None), bool))


def is_expert_weight(module: nn.Module, param: torch.Tensor) -> bool:
    """Whether `param` of `module` is a fused experts weight: 3-D, float, one slice per expert."""
    return (is_fused_experts(module) and param.dim() == 3 and param.is_floating_point()
            and int(param.shape[0]) == module.num_experts)


def expert_matrices(module_name: str, module: nn.Module) -> Iterator[tuple[str, ExpertMatrix]]:
    """The fused experts weights `module` holds, each as (layer name, ExpertMatrix); none for other modules."""
    if not is_fused_experts(module):
        return
    for pname, param in module.named_parameters(recurse=False):
        if is_expert_weight(module, param):
            yield f"{module_name}.{pname}", ExpertMatrix(module, pname)


def expert_layers(model: nn.Module) -> dict[str, ExpertMatrix]:
    """Every fused experts weight `model` holds, by layer name, in module order."""
    return {name: layer for owner_name, owner in model.named_modules()
            for name, layer in expert_matrices(owner_name, owner)}


def layer_at(model: nn.Module, name: str) -> nn.Module | ExpertMatrix:
    """The layer a plan's layer name means: a submodule, or a fused experts parameter (`<module>.<parameter>`)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        owner_name, _, pname = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        param = getattr(owner, pname, None)
        if isinstance(param, torch.Tensor) and is_expert_weight(owner, param):
            return ExpertMatrix(owner, pname)
        raise


def owner_of(layer: nn.Module | ExpertMatrix) -> nn.Module:
    """The module that holds a layer's tensors (what accelerate's hooks and qcheck's dtype adapters attach to)."""
    return layer.owner if isinstance(layer, ExpertMatrix) else layer


def weight_key(layer: nn.Module | ExpertMatrix) -> int:
    """Identity of the tensor a layer stores its weight in (tied weights share it)."""
    return id(layer.param if isinstance(layer, ExpertMatrix) else layer.weight)


def class_name(layer: nn.Module | ExpertMatrix) -> str:
    return layer.label if isinstance(layer, ExpertMatrix) else type(layer).__name__
