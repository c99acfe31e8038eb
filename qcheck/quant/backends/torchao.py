"""torchao weight-only int8 / int4 and float8 on a copy of the reference (real low-bit kernels, CUDA).

`quantize_(model, Config())` swaps each Linear's weight for a tensor subclass; the manifest dequantizes it
(`weight.dequantize()`, or through the layer's own kernel where the layout has no dequantize) for the evidence
checks and names the subclass per layer. int4 needs whole groups: layers whose input width is not a multiple of
the group size stay in float, and the manifest says why.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, require
from qcheck.quant.backends import BackendVariant, manifest_of

MODES = ("int8-wo", "int4-wo", "float8-wo", "float8-dq")
INT4_GROUP_SIZES = (32, 64, 128, 256)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class TorchAOBackend:
    """torchao's `quantize_` with one of MODES, on a deep copy moved to `device` in `dtype`."""

    mode: str = "int8-wo"
    group_size: int = 128
    dtype: str = "bf16"
    device: str = "cuda"
    name: str = "torchao"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"torchao mode {self.mode!r}: use one of {', '.join(MODES)}", field="mode")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"torchao dtype {self.dtype!r}: use one of {', '.join(_DTYPES)}", field="dtype")
        if self.group_size not in INT4_GROUP_SIZES:
            raise ConfigError(f"torchao group_size {self.group_size!r}: int4 supports "
                              f"{', '.join(map(str, INT4_GROUP_SIZES))}", field="group_size")

    def unavailable_reason(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("torchao") is None:
            return "the package 'torchao' is not installed"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return "torchao's low-bit kernels need CUDA and none is available"
        if self.mode.startswith("float8") and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if (major, minor) < (8, 9):
                return f"float8 needs compute capability >= 8.9, this GPU has {major}.{minor}"
        return None

    def config(self) -> Any:
        """The torchao config object for this mode."""
        ao = require("torchao.quantization", "the torchao backend")
        if self.mode == "int8-wo":
            return ao.Int8WeightOnlyConfig()
        if self.mode == "int4-wo":
            # tinygemm's layout (torch's own _weight_int4pack_mm); the default "plain" needs the mslk package
            return ao.Int4WeightOnlyConfig(group_size=self.group_size, int4_packing_format="tile_packed_to_4d")
        if self.mode == "float8-wo":
            return ao.Float8WeightOnlyConfig()
        return ao.Float8DynamicActivationFloat8WeightConfig()

    def produce(self, reference: nn.Module, tokenizer: Any) -> BackendVariant:
        ao = require("torchao.quantization", "the torchao backend")
        start = time.perf_counter()
        model = copy.deepcopy(reference).to(device=self.device, dtype=_DTYPES[self.dtype])
        partial = {fqn: m.in_features for fqn, m in model.named_modules()
                   if isinstance(m, nn.Linear) and self.mode == "int4-wo" and m.in_features % self.group_size}
        ao.quantize_(model, self.config(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and "lm_head" not in fqn
                     and fqn not in partial)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        bits = 8 if self.mode != "int4-wo" else 4
        label = f"torchao-{self.mode}" + (f"-{self.group_size}" if self.mode == "int4-wo" else "")
        plan = {"name": label, "format": f"torchao-{self.mode}", "dtype": self.dtype,
                **({"group_size": self.group_size} if self.mode == "int4-wo" else {})}
        report = manifest_of(reference, model.eval(), backend="torchao", plan=plan, bits=bits,
                             group_size=self.group_size if self.mode == "int4-wo" else None,
                             skip=("lm_head", *partial))
        for rec in report.layers:
            if rec.name in partial:
                rec.kept_reason = (f"input width {partial[rec.name]} is not a multiple of int4 group size "
                                   f"{self.group_size} (left in float; try torchao:int4-wo:64)")
            weight = getattr(model.get_submodule(rec.name), "weight", None)
            rec.module_class = f"{rec.module_class}[{type(weight).__name__}]"
        return BackendVariant(plan["name"], self.name, model, report, time.perf_counter() - start, None,
                              {"torchao_version": getattr(require("torchao", "the torchao backend"), "__version__", "")})
