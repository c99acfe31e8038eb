"""A user's already-quantized checkpoint folder (GPTQ / AWQ / compressed-tensors / bitsandbytes) as a variant.

The folder's `config.json` names its `quantization_config`; transformers loads it with the matching library,
nothing is re-quantized. The manifest names each layer's module class and is measured against the reference.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from qcheck.errors import ModelLoadError, require
from qcheck.quant.backends import BackendVariant, manifest_of

KNOWN_METHODS = {
    "gptq": ("gptqmodel", "GPTQ checkpoints"),
    "awq": ("awq", "AWQ checkpoints"),
    "compressed-tensors": ("compressed_tensors", "compressed-tensors checkpoints (llm-compressor's output)"),
    "bitsandbytes": ("bitsandbytes", "bitsandbytes checkpoints"),
    "torchao": ("torchao", "torchao checkpoints"),
}


@dataclass(frozen=True)
class QuantizationInfo:
    """What a checkpoint's config.json says about its quantization."""

    method: str
    bits: int | None
    group_size: int | None
    ignore: tuple[str, ...]
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.method, "quant_method": self.method, "bits": self.bits, "group_size": self.group_size,
                "ignore": list(self.ignore)}


def detect_quantization(folder: str | Path) -> QuantizationInfo | None:
    """The quantization a checkpoint folder declares in config.json, or None for a float checkpoint."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON: {exc}") from None
    qc = config.get("quantization_config") or config.get("compression_config")
    if not qc:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if not method and "config_groups" in qc:
        method = "compressed-tensors"
    if method not in KNOWN_METHODS:
        raise ModelLoadError(f"{config_path}: quantization method {method!r} is not one qcheck loads "
                             f"(known: {', '.join(KNOWN_METHODS)})")
    bits, group = _bits_and_group(method, qc)
    return QuantizationInfo(method, bits, group, tuple(qc.get("ignore") or qc.get("modules_to_not_convert")
                                                    or qc.get("llm_int8_skip_modules") or ()), qc)


def _bits_and_group(method: str, qc: dict[str, Any]) -> tuple[int | None, int | None]:
    if method == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            weights = group.get("weights") or {}
            return weights.get("num_bits"), weights.get("group_size")
        return None, None
    if method == "bitsandbytes":
        if qc.get("load_in_8bit"):
            return 8, None
        return (4 if qc.get("load_in_4bit") else None), qc.get("bnb_4bit_blocksize") or 64
    return qc.get("bits") or qc.get("w_bit"), qc.get("group_size") or qc.get("q_group_size")


@dataclass
class CheckpointBackend:
    """Loads an already-quantized folder as a variant (no re-quantization)."""

    folder: str
    variant_name: str | None = None
    device: str = "cpu"
    name: str = "checkpoint"

    def unavailable_reason(self) -> str | None:
        info = detect_quantization(self.folder)
        if info is None:
            return None
        package, _ = KNOWN_METHODS[info.method]
        import importlib.util

        if importlib.util.find_spec(package) is None:
            return f"{info.method} checkpoints need the package '{package}', which is not installed"
        return None

    def produce(self, reference: nn.Module, tokenizer: Any) -> BackendVariant:
        start = time.perf_counter()
        info = detect_quantization(self.folder)
        model = load_quantized_folder(self.folder, device=self.device)
        check_same_architecture(reference, model, self.folder)
        plan = {"name": self.variant_name or Path(self.folder).name, **(info.to_dict() if info else {"format": "float"})}
        recipe = Path(self.folder) / "recipe.yaml"
        transformed = None
        if recipe.is_file():
            from qcheck.quant.backends import linear_like_modules, smoothed_layers

            transformed = smoothed_layers(recipe.read_text(encoding="utf-8"), list(linear_like_modules(model)))
        report = manifest_of(reference, model, backend=f"checkpoint:{info.method if info else 'float'}", plan=plan,
                             bits=info.bits if info else None, group_size=info.group_size if info else None,
                             skip=info.ignore if info else (), transformed=transformed)
        return BackendVariant(plan["name"], self.name, model, report, time.perf_counter() - start, str(self.folder),
                              {"quantization_config": info.raw if info else None})


def load_quantized_folder(folder: str | Path, *, device: str = "cpu") -> nn.Module:
    """Load a quantized HF folder through transformers (its own quantizer), offline, in eval mode."""
    info = detect_quantization(folder)
    if info is not None:
        package, purpose = KNOWN_METHODS[info.method]
        require(package, f"loading {purpose}", extra="ptq")
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if info is not None and info.method == "bitsandbytes":
        kwargs["device_map"] = device
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(f"cannot load quantized checkpoint {folder}: {type(exc).__name__}: {exc}") from None
    if info is None or info.method != "bitsandbytes":
        model.to(device)
    return model.eval()


ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads")


def check_same_architecture(reference: nn.Module, quantized: nn.Module, folder: str | Path) -> None:
    """Refuse a checkpoint whose shape differs from the reference's: it cannot be a quantization of it."""
    ref_cfg, q_cfg = getattr(reference, "config", None), getattr(quantized, "config", None)
    if ref_cfg is None or q_cfg is None:
        return
    diff = {k: (getattr(ref_cfg, k, None), getattr(q_cfg, k, None)) for k in ARCH_KEYS
            if getattr(ref_cfg, k, None) != getattr(q_cfg, k, None)}
    if diff:
        raise ModelLoadError(f"checkpoint {folder} is not a quantization of the reference: "
                             + ", ".join(f"{k} {a} (reference) vs {b}" for k, (a, b) in diff.items()))
