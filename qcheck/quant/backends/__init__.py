"""Post-training quantization backends: a registry, one interface, and the reference-fingerprint guard.

A backend turns a float reference into a quantized variant (GPTQ through llm-compressor, bitsandbytes
through transformers' BitsAndBytesConfig, torchao, optimum-quanto, or a user's already-quantized checkpoint folder).
`produce_variant` fingerprints the reference's weights before and after: a backend that mutated the model
it was given (llm-compressor's `oneshot` does, when handed the reference itself) is an error naming it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from qcheck.errors import ConfigError, QCheckError
from qcheck.options import PTQ_ENV, ptq_specs_from_env  # noqa: F401 - re-exported for backends' users
from qcheck.quant.manifest import LayerRecord, QuantReport
from qcheck.quant.tensor_stats import distinct_per_group, rel_change_and_sqnr_db, weight_fingerprint


class ReferenceMutatedError(QCheckError):
    """A backend changed the reference model's weights while producing its variant."""

    def __init__(self, backend: str, before: str, after: str) -> None:
        super().__init__(
            f"backend {backend!r} changed the reference model's weights while producing its variant "
            f"(fingerprint {before[:12]} -> {after[:12]}): it quantized the model it was given in place; "
            "give it a copy (qcheck keeps its own reference) — scores of this 'reference' would equal the variant's")
        self.backend = backend
        self.before = before
        self.after = after


@dataclass
class BackendVariant:
    """A variant a PTQ backend produced: the model, its per-layer manifest, and where it came from."""

    name: str
    backend: str
    model: nn.Module
    report: QuantReport
    seconds: float
    folder: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """What a PTQ backend provides: a name, why it cannot run here (or None), and one verb."""

    name: str

    def unavailable_reason(self) -> str | None:
        """None when the backend can run on this machine, else why not (missing package, no GPU)."""

    def produce(self, reference: nn.Module, tokenizer: Any) -> BackendVariant:
        """Quantize (a copy of) `reference`; must leave `reference` untouched."""


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make a backend constructible by name (`make_backend(name, **options)`)."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    """Names of the registered backends."""
    _register_builtin()
    return sorted(_REGISTRY)


def make_backend(name: str, **options: Any) -> Backend:
    """Construct a registered backend with its options."""
    _register_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown PTQ backend {name!r}; known: {', '.join(sorted(_REGISTRY))}", field="backend")
    return _REGISTRY[name](**options)


def produce_variant(backend: Backend, reference: nn.Module, tokenizer: Any) -> BackendVariant:
    """Run `backend` on `reference`, guarding the reference with a weight fingerprint taken before and after."""
    reason = backend.unavailable_reason()
    if reason is not None:
        raise QCheckError(f"PTQ backend {backend.name!r} cannot run here: {reason}")
    before = weight_fingerprint(reference)
    start = time.perf_counter()
    variant = backend.produce(reference, tokenizer)
    variant.seconds = variant.seconds or time.perf_counter() - start
    after = weight_fingerprint(reference)
    if after != before:
        raise ReferenceMutatedError(backend.name, before, after)
    variant.report.reference_fingerprint = before
    variant.model.eval()
    variant.model.qcheck_report = variant.report
    return variant


def unpacked_weight(module: nn.Module) -> torch.Tensor | None:
    """The float32 weight a quantized linear computes with (packed/int weights dequantized), or None."""
    from qcheck.quant.bnb import dequantized_weight, is_bnb_module
    from qcheck.quant.experts import ExpertMatrix

    if isinstance(module, ExpertMatrix):
        return module.weight.detach().to(torch.float32)
    if is_bnb_module(module):
        return dequantized_weight(module)
    if hasattr(module, "weight_packed"):
        return _unpack_compressed_tensors(module)
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    if hasattr(weight, "dequantize") and type(weight).__name__ != "Parameter":
        try:
            return weight.dequantize().to(torch.float32)
        except (NotImplementedError, RuntimeError):
            return weight_through_kernel(module)
    if not weight.dtype.is_floating_point:
        scale = getattr(module, "weight_scale", None)
        if scale is None:
            return None
        zero = getattr(module, "weight_zero_point", None)
        return _dequantize_grouped(weight, scale, zero)
    return weight.detach().to(torch.float32)


def weight_through_kernel(module: nn.Module) -> torch.Tensor:
    """The weight a linear layer computes with, read through its own kernel: F.linear(I, W) = W^T. For packed
    layouts with no dequantize op (torchao's int4 tile-packed tensors); exact where the kernel dequantizes to the
    activation dtype and accumulates in fp32."""
    weight = module.weight
    eye = torch.eye(weight.shape[-1], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        return torch.nn.functional.linear(eye, weight).t().to(torch.float32).contiguous()


def _unpack_compressed_tensors(module: nn.Module) -> torch.Tensor:
    """compressed-tensors' pack-quantized layout: int4 values packed into int32, group scales (and zero points)."""
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    except ImportError:
        from compressed_tensors.compressors.quantized_compressors.pack_quantized import unpack_from_int32
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    args = module.quantization_scheme.weights
    shape = torch.Size(int(v) for v in module.weight_shape.tolist())
    q = unpack_from_int32(module.weight_packed.detach(), args.num_bits, shape)
    zero = getattr(module, "weight_zero_point", None)
    if zero is not None and zero.dtype == torch.int32:
        zero = unpack_from_int32(zero.detach(), args.num_bits, torch.Size([shape[0], zero.shape[-1]]), packed_dim=0)
    return dequantize(q, module.weight_scale.detach(), zero, args, dtype=torch.float32)


def _dequantize_grouped(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """(q - zero) * scale with scales per output row and column group (compressed-tensors' layout)."""
    q = q.detach().to(torch.float32)
    scale = scale.detach().to(torch.float32)
    group = q.shape[1] // scale.shape[1] if scale.dim() == 2 else q.shape[1]
    s = scale.reshape(q.shape[0], -1).repeat_interleave(group, dim=1)
    z = 0.0 if zero is None else zero.detach().to(torch.float32).reshape(q.shape[0], -1).repeat_interleave(group, dim=1)
    return (q - z) * s


def module_label(module: nn.Module) -> str:
    """The module's class, with compressed-tensors' storage format when it keeps the nn.Linear class."""
    from qcheck.quant.experts import ExpertMatrix, class_name

    if isinstance(module, ExpertMatrix):
        return class_name(module)
    scheme = getattr(module, "quantization_scheme", None)
    fmt = getattr(getattr(scheme, "format", None), "value", None) or getattr(scheme, "format", None)
    status = getattr(getattr(module, "quantization_status", None), "value", "")
    return f"{type(module).__name__}[{fmt}{', ' + status if status else ''}]" if scheme is not None else \
        type(module).__name__


def linear_like_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module holding a 2-D linear weight (nn.Linear and the backends' replacements), by name."""
    out = {}
    for name, module in model.named_modules():
        w = _stored_weight(module)
        if not name or w is None or isinstance(module, nn.Embedding):
            continue
        if isinstance(module, nn.Linear) or (hasattr(w, "shape") and len(getattr(w, "shape", ())) == 2
                                             and "norm" not in type(module).__name__.lower()):
            out[name] = module
    return out


def _stored_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight tensor as stored: `weight`, or compressed-tensors' `weight_packed` (a fused experts weight's
    parameter)."""
    from qcheck.quant.experts import ExpertMatrix

    if isinstance(module, ExpertMatrix):
        return module.param
    w = getattr(module, "weight", None)
    return w if w is not None else getattr(module, "weight_packed", None)


def smoothed_layers(recipe_text: str, names: list[str]) -> dict[str, str]:
    """Layers an llm-compressor recipe rescales before quantizing (SmoothQuantModifier / AWQModifier), by name ->
    modifier. Balance layers come from the modifier's `mappings` (`re:` patterns); an AWQ recipe without
    mappings uses the model's default ones, so every layer is marked."""
    import re

    out: dict[str, str] = {}
    blocks = re.split(r"(?m)^(\s*)(\w+Modifier):\s*$", recipe_text)
    for i in range(2, len(blocks) - 1, 3):
        modifier, body = blocks[i], blocks[i + 1]
        if modifier not in ("SmoothQuantModifier", "AWQModifier"):
            continue
        patterns = [p for p in re.findall(r"re:([^'\",\]\s]+)", body) if "norm" not in p]
        for name in names:
            if not patterns and modifier == "AWQModifier" or any(re.match(p, name) for p in patterns):
                out[name] = modifier
    return out


def manifest_of(reference: nn.Module, quantized: nn.Module, *, backend: str, plan: dict[str, Any],
                bits: int | None = None, group_size: int | None = None, skip: tuple[str, ...] = (),
                transformed: dict[str, str] | None = None) -> QuantReport:
    """A per-layer manifest measured on `quantized`'s unpacked weights against `reference` (module class named);
    `transformed` names layers a smoothing step rescaled (their records say so)."""
    from qcheck.quant.experts import expert_layers

    report = QuantReport(plan=plan, backend=backend, model_dtype=str(_first_float_dtype(quantized)))
    # fused experts weights held in float are compared too: a backend that quantized the attention and left the
    # experts as they were is named, as for any unchanged layer
    ref_modules = {**dict(reference.named_modules()), **expert_layers(reference)}
    embedding_ids = {id(m.weight) for m in quantized.modules() if isinstance(m, nn.Embedding)}
    for name, module in {**linear_like_modules(quantized), **expert_layers(quantized)}.items():
        ref = ref_modules.get(name)
        rec = LayerRecord(name=name, module_class=module_label(module), rule=backend, format=plan.get("format", backend),
                          spec=dict(plan), applied=False, backend=backend,
                          transform=(transformed or {}).get(name))
        deq = unpacked_weight(module)
        ref_w = None if ref is None or getattr(ref, "weight", None) is None else ref.weight.detach().to(torch.float32)
        rec.dtype = str(_stored_weight(module).dtype)
        if deq is None or ref_w is None or tuple(deq.shape) != tuple(ref_w.shape):
            rec.kept_reason = "weights could not be unpacked or have no reference counterpart"
            report.layers.append(rec)
            continue
        rec.numel = ref_w.numel()
        if any(name == s or name.endswith("." + s) for s in skip):
            rec.kept_reason = "left in float by the backend's recipe (ignored)"
        elif id(_stored_weight(module)) in embedding_ids:
            rec.kept_reason = "weight tied to the input embedding (left in float)"
        rec.rel_change, rec.sqnr_db = rel_change_and_sqnr_db(ref_w, deq)
        rec.applied = rec.rel_change > 0.0 and not rec.kept_reason
        if rec.applied:
            rec.bits = bits
            usable_group = group_size if group_size and ref_w.shape[-1] % group_size == 0 else None
            rec.max_distinct_per_group = distinct_per_group(deq, usable_group)
        elif not rec.kept_reason:
            rec.kept_reason = "weights identical to the reference"
        report.layers.append(rec)
    return report


def _first_float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def save_float_folder(model: nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """Save a float model (and tokenizer) as an HF folder; GGUF quantizer marks must already be cleared."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


_BUILTIN_DONE: list[bool] = []


def _register_builtin() -> None:
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE.append(True)
    from qcheck.quant.backends.checkpoint import CheckpointBackend
    from qcheck.quant.backends.llmcompressor import LLMCompressorBackend
    from qcheck.quant.backends.quanto import QuantoBackend
    from qcheck.quant.backends.torchao import TorchAOBackend
    from qcheck.quant.backends.transformers_bnb import BnbConfigBackend

    for name, factory in (("checkpoint", CheckpointBackend), ("llmcompressor", LLMCompressorBackend),
                          ("bnb-config", BnbConfigBackend), ("torchao", TorchAOBackend), ("quanto", QuantoBackend)):
        _REGISTRY.setdefault(name, factory)


def ptq_variant_name(spec: str) -> str:
    """The variant name a PTQ spec runs under: a checkpoint folder's name, else the spec with ':' as '-'
    (`torchao:int8-wo` -> `torchao-int8-wo`, `checkpoint=/models/gptq-w4` -> `gptq-w4`)."""
    text = spec.strip()
    if text.startswith("checkpoint="):
        folder = Path(text.split("=", 1)[1].rstrip("/"))
        if not folder.name:
            raise ConfigError(f"PTQ variant spec {spec!r} names no checkpoint folder", field=PTQ_ENV)
        return folder.name
    return text.replace(":", "-")


def backend_from_spec(text: str, *, device: str = "cpu") -> Backend:
    """A backend from a short spec: `bnb-config:nf4|fp4|int8`, `gptq[:wikitext|chat-gsm8k]`, `awq[:source]`,
    `w8a8-sq[:source]`, `torchao:int8-wo|int4-wo[:GROUP]|float8-wo|float8-dq`,
    `quanto:int8|int4|int2|float8[:a8|af8[:source]]`, or `checkpoint=PATH` (a quantized folder)."""
    text = text.strip()
    if text.startswith("checkpoint="):
        return make_backend("checkpoint", folder=text.split("=", 1)[1], device=device)
    kind, _, arg = text.partition(":")
    if kind == "bnb-config":
        return make_backend("bnb-config", mode=arg or "nf4", device=device)
    if kind in ("gptq", "awq", "w8a8-sq"):
        from qcheck.inputs.calibration import CalibrationSpec

        algorithm = "smoothquant-w8a8" if kind == "w8a8-sq" else kind
        return make_backend("llmcompressor", algorithm=algorithm, device=device,
                            calibration=CalibrationSpec(source=arg or "wikitext"))
    if kind == "torchao":
        mode, _, group = (arg or "int8-wo").partition(":")
        options: dict[str, Any] = {}
        if group:
            if mode != "int4-wo" or not group.isdigit():
                raise ConfigError(f"PTQ variant spec {text!r}: only torchao:int4-wo takes a group size "
                                  "(torchao:int4-wo:64)", field=PTQ_ENV)
            options["group_size"] = int(group)
        return make_backend("torchao", mode=mode, device="cuda" if device == "cpu" else device, **options)
    if kind == "quanto":
        from qcheck.quant.backends.quanto import parse_spec

        return make_backend("quanto", device=device, **parse_spec(text))
    raise ConfigError(f"PTQ variant spec {text!r}: use bnb-config:MODE, gptq[:SOURCE], awq[:SOURCE], "
                      "w8a8-sq[:SOURCE], torchao:MODE, quanto:WEIGHTS[:ACTIVATIONS[:SOURCE]] or checkpoint=PATH",
                      field=PTQ_ENV)
