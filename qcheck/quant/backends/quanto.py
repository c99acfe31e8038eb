"""optimum-quanto (Hugging Face's PyTorch quantization library) on a copy of the reference, CPU or CUDA.

`quantize(model, weights=qint4, activations=...)` swaps each Linear for a `QLinear`; with activations, a
`Calibration` pass over a calibration set sets the per-tensor activation scales; `freeze(model)` then replaces the
float weights by quanto's packed tensors (`WeightQBytesTensor` for int8/float8, `WeightQBitsTensor` with int4/int2
codes packed into uint8). The manifest reads every layer back through quanto's own `dequantize()` and measures that
against the reference: a layer quanto never froze, or one left float, is named, never counted from the plan.

Spec: `quanto:WEIGHTS[:ACTIVATIONS[:SOURCE]]` — WEIGHTS int8 | int4 | int2 | float8, ACTIVATIONS a8 (int8) | af8
(float8 e4m3), SOURCE the activation calibration set (wikitext | chat-gsm8k; default wikitext).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, QCheckError, require
from qcheck.inputs.calibration import SOURCES, CalibrationSpec, build_calibration
from qcheck.options import PTQ_ENV
from qcheck.quant.backends import BackendVariant, linear_like_modules
from qcheck.quant.manifest import LayerRecord, QuantReport
from qcheck.quant.tensor_stats import distinct_per_group, rel_change_and_sqnr_db

WEIGHTS = {"int8": "qint8", "int4": "qint4", "int2": "qint2", "float8": "qfloat8_e4m3fn"}
"""Spec name -> quanto weight qtype (quanto's qfloat8 is its e4m3fn)."""
ACTIVATIONS = {"a8": "qint8", "af8": "qfloat8_e4m3fn"}
"""Spec name -> quanto activation qtype (per-tensor scales, set by calibration)."""
BITS = {"int8": 8, "int4": 4, "int2": 2, "float8": 8}
SPEC_FORMS = (f"quanto:{'|'.join(WEIGHTS)}[:{'|'.join(ACTIVATIONS)}[:{'|'.join(SOURCES)}]] "
              "(e.g. quanto:int8, quanto:int4, quanto:int8:a8, quanto:float8:af8:chat-gsm8k)")
CALIBRATION_MOMENTUM = 0.9
"""quanto's own default momentum for the running activation scales (`optimum.quanto.Calibration`)."""
NOT_FROZEN = ("weights could not be unpacked: quanto QLinear was quantize()d but never freeze()d (it stores float "
              "weights and re-quantizes them on every forward; call optimum.quanto.freeze(model))")


@dataclass
class QuantoBackend:
    """optimum-quanto weights (and optionally activations) on a deep copy of the reference, frozen to packed tensors."""

    weights: str = "int8"
    activations: str | None = None
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    exclude: tuple[str, ...] = ("lm_head",)
    device: str = "cpu"
    name: str = "quanto"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ConfigError(f"quanto weights {self.weights!r}: use one of {', '.join(WEIGHTS)}", field="weights")
        if self.activations is not None and self.activations not in ACTIVATIONS:
            raise ConfigError(f"quanto activations {self.activations!r}: use one of {', '.join(ACTIVATIONS)}",
                              field="activations")
        if isinstance(self.calibration, dict):
            self.calibration = CalibrationSpec(**self.calibration)

    @property
    def variant_name(self) -> str:
        """The name its spec runs under (`quanto:int8:a8` -> quanto-int8-a8; a non-default source is named)."""
        source = f"-{self.calibration.source}" if self.calibration.source != CalibrationSpec.source else ""
        return f"quanto-{self.weights}" + (f"-{self.activations}{source}" if self.activations else "")

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None:
            return "the package 'optimum-quanto' is not installed (pip install \"qcheck[quanto]\")"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return "device cuda was asked for and none is available"
        return _extension_reason(self.weights, self.device)

    def produce(self, reference: nn.Module, tokenizer: Any) -> BackendVariant:
        quanto = require("optimum.quanto", "the quanto backend", extra="quanto")
        start = time.perf_counter()
        batches, calib = None, None
        if self.activations:
            if tokenizer is None:
                raise QCheckError(f"{self.variant_name}: activation calibration needs the model's tokenizer")
            calib = build_calibration(tokenizer, self.calibration)
            batches = [torch.tensor([ids]) for ids in calib.input_ids]
        model = quantize_copy(reference, self.weights, self.activations, exclude=self.exclude, device=self.device,
                              batches=batches)
        plan = {"name": self.variant_name, "format": f"quanto-{self.weights}", "weights": WEIGHTS[self.weights],
                "activations": ACTIVATIONS.get(self.activations or ""), "exclude": list(self.exclude),
                "group_rule": "quanto's: int4/int2 groups of 128, else 96 or 64 when they divide the input width, "
                              "else per output channel; int8/float8 per output channel"}
        report = quanto_manifest(reference, model, plan=plan, bits=BITS[self.weights], exclude=self.exclude)
        details = {"quanto_version": quanto.__version__, "weights": WEIGHTS[self.weights],
                   "activations": ACTIVATIONS.get(self.activations or ""),
                   "group_sizes": dict(Counter(str((r.spec or {}).get("group_size")) for r in report.applied)),
                   "calibration": calib.describe() if calib else None,
                   "calibration_momentum": CALIBRATION_MOMENTUM if calib else None}
        return BackendVariant(self.variant_name, self.name, model, report, time.perf_counter() - start, None, details)


def parse_spec(spec: str) -> dict[str, Any]:
    """QuantoBackend options from `quanto:WEIGHTS[:ACTIVATIONS[:SOURCE]]`; anything else is a ConfigError naming
    the allowed forms."""
    kind, _, arg = spec.strip().partition(":")
    parts = arg.split(":") if arg else []
    if (kind != "quanto" or not 1 <= len(parts) <= 3 or parts[0] not in WEIGHTS
            or (len(parts) > 1 and parts[1] not in ACTIVATIONS) or (len(parts) > 2 and parts[2] not in SOURCES)):
        raise ConfigError(f"PTQ variant spec {spec.strip()!r}: use {SPEC_FORMS}; a calibration source only goes "
                          "with activations", field=PTQ_ENV)
    options: dict[str, Any] = {"weights": parts[0]}
    if len(parts) > 1:
        options["activations"] = parts[1]
        options["calibration"] = CalibrationSpec(source=parts[2] if len(parts) > 2 else "wikitext")
    return options


def quantize_copy(reference: nn.Module, weights: str, activations: str | None = None, *,
                  exclude: Iterable[str] = ("lm_head",), device: str | None = None,
                  batches: Iterable[torch.Tensor] | None = None) -> nn.Module:
    """A deep copy of `reference` quantized by quanto, calibrated on `batches` when activations are quantized, and
    frozen; the reference is never handed to quanto (its `quantize` replaces modules in place)."""
    q = require("optimum.quanto", "the quanto backend", extra="quanto")
    model = copy.deepcopy(reference)
    if device is not None:
        model = model.to(device)
    model.eval()
    act_qtype = q.qtypes[ACTIVATIONS[activations]] if activations else None
    q.quantize(model, weights=q.qtypes[WEIGHTS[weights]], activations=act_qtype, exclude=list(exclude))
    if act_qtype is not None:
        batches = list(batches or [])
        if not batches:
            raise QCheckError("quanto activation quantization needs calibration batches: without them every "
                              "activation scale stays 1.0")
        dev = next(model.parameters()).device
        with torch.no_grad(), q.Calibration(momentum=CALIBRATION_MOMENTUM):
            for ids in batches:
                model(ids.to(dev))
        _check_calibrated(model, q.QModuleMixin)
    q.freeze(model)
    return model


def _check_calibrated(model: nn.Module, mixin: type) -> None:
    """Refuse a model whose quantized activations kept quanto's initial scale of exactly 1.0 (never calibrated)."""
    stale = [n for n, m in model.named_modules() if isinstance(m, mixin) and m.activation_qtype is not None
             and float(m.input_scale) == 1.0]
    if stale:
        raise QCheckError(f"quanto calibration never reached {len(stale)} layers ({', '.join(stale[:5])}): their "
                          "input scales are still the initial 1.0, which would clip activations to [-127, 127]")


def quanto_manifest(reference: nn.Module, model: nn.Module, *, plan: dict[str, Any], bits: int,
                    exclude: Iterable[str] = ("lm_head",)) -> QuantReport:
    """Per-layer manifest read back from quanto's tensors (`weight.dequantize()`) and measured against `reference`."""
    from optimum.quanto import QModuleMixin

    report = QuantReport(plan=plan, backend="quanto", model_dtype=str(_float_dtype(model)))
    ref_modules = dict(reference.named_modules())
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, module in linear_like_modules(model).items():
        ref = ref_modules.get(name)
        ref_w = None if ref is None or getattr(ref, "weight", None) is None else ref.weight.detach().to(torch.float32)
        is_q = isinstance(module, QModuleMixin)
        rec = LayerRecord(name=name, module_class=type(module).__name__, rule="quanto", format=plan["format"],
                          spec={}, applied=False, backend="quanto", dtype=str(module.weight.dtype))
        pattern = next((p for p in exclude if fnmatch(name, p)), None)
        if ref_w is None or tuple(module.weight.shape) != tuple(ref_w.shape):
            rec.kept_reason = "weights could not be unpacked or have no reference counterpart"
        elif is_q and not module.frozen:
            rec.kept_reason = NOT_FROZEN
            _measure(rec, ref_w, module.weight.detach().to(torch.float32))
        elif is_q:
            _read_packed(rec, module, ref_w, bits)
        else:
            _measure(rec, ref_w, module.weight.detach().to(torch.float32))
            if pattern is not None:
                tied = "; its weight is the input embedding's (tied)" if id(module.weight) in embedding_ids else ""
                rec.kept_reason = (f"left in float: excluded from quanto's quantize() by {pattern!r} (the output head "
                                   f"stays in float, as in qcheck's other backends{tied})")
            elif rec.rel_change == 0.0:
                rec.kept_reason = "weights identical to the reference"
            else:  # a float layer quanto should have quantized, changed some other way: judged on the grid
                rec.applied, rec.bits = True, bits
                rec.max_distinct_per_group = distinct_per_group(module.weight.detach().to(torch.float32))
                rec.spec = {"stored": "float nn.Linear: not a quanto tensor"}
        report.layers.append(rec)
    return report


def _read_packed(rec: LayerRecord, module: nn.Module, ref_w: torch.Tensor, bits: int) -> None:
    """Fill `rec` from a frozen QModule: dequantize its packed weight through quanto, count values per group."""
    weight = module.weight
    deq = weight.dequantize().detach().to(torch.float32)
    group = getattr(weight, "_group_size", None)
    data = weight._data
    rec.module_class = f"{type(module).__name__}[{type(weight).__name__}, {weight.qtype.name}]"
    rec.dtype = str(data.dtype)
    rec.spec = {"weights": weight.qtype.name, "axis": weight.axis, "group_size": group,
                "storage": type(data).__name__ + (f" ({8 // data._bits} codes per byte)" if hasattr(data, "_bits")
                                                  else "")}
    _measure(rec, ref_w, deq)
    rec.applied, rec.bits = True, bits
    rec.max_distinct_per_group = distinct_per_group(deq, group)
    act = module.activation_qtype
    if act is not None:
        rec.activations = {"qtype": act.name, "input_scale": float(module.input_scale),
                           "output_scale": float(module.output_scale),
                           "output_quantized": "output" in module._quantize_hooks}


def _measure(rec: LayerRecord, ref_w: torch.Tensor, w: torch.Tensor) -> None:
    rec.numel = ref_w.numel()
    rec.rel_change, rec.sqnr_db = rel_change_and_sqnr_db(ref_w, w)


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model computes in: that of its first floating-point parameter (quanto tensors report their
    scale's dtype)."""
    return next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)


def _extension_reason(weights: str, device: str) -> str | None:
    """int4/int2 unpack through quanto's C++ (CPU) or CUDA extension, compiled on first use: say so where the
    compiler it needs is missing, rather than fail mid-run."""
    if weights not in ("int4", "int2"):
        return None
    if device.startswith("cuda"):
        from torch.utils.cpp_extension import CUDA_HOME

        return None if CUDA_HOME else ("quanto's int4/int2 CUDA kernels are compiled on first use and need the CUDA "
                                       "toolkit (nvcc, CUDA_HOME), which is not installed")
    compiler = os.environ.get("CXX", "c++")
    return None if shutil.which(compiler) else (f"quanto unpacks int4/int2 on CPU with a C++ extension compiled on "
                                                f"first use, and the compiler {compiler!r} is not on PATH")
