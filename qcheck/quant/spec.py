"""Quantization specs: small frozen dataclasses, validated on construction, one per plan `format`.

`spec_from_dict` turns a plan table (TOML / dict) into a spec and names the offending key on error.
Nothing here touches a model; `bits` is what a layer's weights may use (None for keep/prune).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import torch

from qcheck.errors import ConfigError
from qcheck.formats import check_group_size, fixed_point_range, minifloat_format
from qcheck.formats._validate import require_int
from qcheck.formats.integer import MAX_BITS, MIN_BITS


def _require_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}", field=name)
    return value


@dataclass(frozen=True)
class IntSpec:
    """Integer RTN: bits 2..8; group_size None = per output channel; per_tensor for one scale per tensor."""

    bits: int
    group_size: int | None = None
    symmetric: bool = True
    per_tensor: bool = False
    format: str = field(default="int", init=False)

    def __post_init__(self) -> None:
        require_int("bits", self.bits, MIN_BITS, MAX_BITS)
        if self.group_size is not None:
            require_int("group_size", self.group_size, 1)
        _require_bool("symmetric", self.symmetric)
        _require_bool("per_tensor", self.per_tensor)
        if self.per_tensor and self.group_size is not None:
            raise ConfigError("per_tensor and group_size exclude each other: pick one granularity", field="group_size")

    @property
    def label(self) -> str:
        gran = "t" if self.per_tensor else (f"g{self.group_size}" if self.group_size else "c")
        return f"int{self.bits}{gran}{'' if self.symmetric else 'a'}"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        from qcheck.formats import integer

        return integer(w, self.bits, self.group_size, self.symmetric, per_tensor=self.per_tensor)

    def validate_for(self, in_features: int, layer: str) -> None:
        if self.group_size is not None:
            check_group_size(self.group_size, in_features, where=f"layer {layer}")


@dataclass(frozen=True)
class FixedSpec:
    """Fixed point (width, frac_width, signed): any integer frac_width, never clamped."""

    width: int
    frac_width: int
    signed: bool = True
    format: str = field(default="fixed", init=False)

    def __post_init__(self) -> None:
        fixed_point_range(self.width, self.frac_width, self.signed)

    @property
    def bits(self) -> int:
        return self.width

    @property
    def label(self) -> str:
        return f"fixed{self.width}.{self.frac_width}{'' if self.signed else 'u'}"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        from qcheck.formats import fixed_point

        return fixed_point(w, self.width, self.frac_width, self.signed)

    def validate_for(self, in_features: int, layer: str) -> None:
        return None


@dataclass(frozen=True)
class MinifloatSpec:
    """Minifloat (exp_bits, man_bits, bias, special) with subnormals and saturation."""

    exp_bits: int
    man_bits: int
    bias: int | None = None
    special: str = "ieee"
    format: str = field(default="minifloat", init=False)

    def __post_init__(self) -> None:
        minifloat_format(self.exp_bits, self.man_bits, self.bias, self.special)

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def label(self) -> str:
        return f"e{self.exp_bits}m{self.man_bits}"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        from qcheck.formats import minifloat

        return minifloat(w, self.exp_bits, self.man_bits, self.bias, self.special)

    def validate_for(self, in_features: int, layer: str) -> None:
        return None


@dataclass(frozen=True)
class CastSpec:
    """A real dtype change of the layer's parameters: fp16 or bf16."""

    format: str

    def __post_init__(self) -> None:
        if self.format not in ("fp16", "bf16"):
            raise ConfigError(f"cast format must be fp16 or bf16, got {self.format!r}", field="format")

    @property
    def bits(self) -> int:
        return 16

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.format == "fp16" else torch.bfloat16

    @property
    def label(self) -> str:
        return self.format

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return w.to(self.dtype)

    def validate_for(self, in_features: int, layer: str) -> None:
        return None


@dataclass(frozen=True)
class BnbSpec:
    """bitsandbytes modules: LLM.int8 (threshold recorded) or 4-bit nf4/fp4 with optional double quantization. A 4-bit
    layer computes in `compute_dtype`; unset, in its weight's dtype (fp32 in an fp32 model, bf16 in a bf16 one, as
    users set `bnb_4bit_compute_dtype`: fp32 compute in a 16-bit model is bitsandbytes' slow path)."""

    format: str
    threshold: float = 6.0
    double_quant: bool = True
    blocksize: int = 64
    compute_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.format not in ("bnb-int8", "bnb-nf4", "bnb-fp4"):
            raise ConfigError(f"bnb format must be bnb-int8, bnb-nf4 or bnb-fp4, got {self.format!r}", field="format")
        if not isinstance(self.threshold, numbers.Real) or isinstance(self.threshold, bool) or self.threshold < 0:
            raise ConfigError(f"threshold must be a number >= 0 (LLM.int8 outlier threshold), got {self.threshold!r}",
                              field="threshold")
        _require_bool("double_quant", self.double_quant)
        require_int("blocksize", self.blocksize, 32, 4096)
        if self.compute_dtype not in (None, "fp32", "fp16", "bf16"):
            raise ConfigError(f"compute_dtype must be fp32, fp16 or bf16, got {self.compute_dtype!r}", field="compute_dtype")

    @property
    def bits(self) -> int:
        return 8 if self.format == "bnb-int8" else 4

    @property
    def label(self) -> str:
        return self.format

    def validate_for(self, in_features: int, layer: str) -> None:
        return None


@dataclass(frozen=True)
class PruneSpec:
    """Unstructured pruning to `sparsity` (fraction of weights set to zero) by |w| (l1) or at random (seeded)."""

    sparsity: float
    method: str = "l1"
    seed: int = 0
    format: str = field(default="prune", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, numbers.Real) or not (
            0.0 <= float(self.sparsity) < 1.0
        ) or math.isnan(float(self.sparsity)):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}", field="sparsity")
        if self.method not in ("l1", "random"):
            raise ConfigError(f"method must be 'l1' or 'random', got {self.method!r}", field="method")
        require_int("seed", self.seed, 0)

    bits = None

    @property
    def label(self) -> str:
        return f"prune-{self.method}{self.sparsity:g}"

    def validate_for(self, in_features: int, layer: str) -> None:
        return None


@dataclass(frozen=True)
class KeepSpec:
    """Leave the layer as it is (the manifest records it as kept, with this reason)."""

    reason: str = "kept by plan"
    format: str = field(default="keep", init=False)

    bits = None

    @property
    def label(self) -> str:
        return "keep"

    def validate_for(self, in_features: int, layer: str) -> None:
        return None


Spec = IntSpec | FixedSpec | MinifloatSpec | CastSpec | BnbSpec | PruneSpec | KeepSpec
WeightSpec = IntSpec | FixedSpec | MinifloatSpec | CastSpec

_BUILDERS: dict[str, type] = {
    "int": IntSpec, "fixed": FixedSpec, "minifloat": MinifloatSpec, "fp16": CastSpec, "bf16": CastSpec,
    "bnb-int8": BnbSpec, "bnb-nf4": BnbSpec, "bnb-fp4": BnbSpec, "prune": PruneSpec, "keep": KeepSpec,
}
FORMATS = tuple(_BUILDERS)
_MINIFLOAT_PRESETS = {"fp8-e4m3": (4, 3, 7, "fn"), "fp8-e5m2": (5, 2, 15, "ieee")}
ACTIVATION_FORMATS = ("int", "fixed", "minifloat", "fp8-e4m3", "fp8-e5m2")


def spec_from_dict(table: Mapping[str, Any], where: str = "plan", allow_extra: tuple[str, ...] = ()) -> Spec:
    """Build a spec from a plan table such as {"format": "int", "bits": 4, "group_size": 64}."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table of format settings, got {type(table).__name__}", field=where)
    data = {k: v for k, v in table.items() if k not in allow_extra}
    fmt = data.pop("format", None)
    if fmt is None:
        raise ConfigError(f"{where}: missing key 'format' (one of {', '.join(FORMATS + tuple(_MINIFLOAT_PRESETS))})",
                          field="format")
    if isinstance(fmt, str) and fmt in _MINIFLOAT_PRESETS:  # an unhashable fmt (list) raised TypeError
        e, m, b, special = _MINIFLOAT_PRESETS[fmt]
        if data:
            raise ConfigError(f"{where}: format {fmt!r} takes no other keys, got {sorted(data)}", field=min(data))
        return MinifloatSpec(e, m, b, special)
    if not isinstance(fmt, str) or fmt not in _BUILDERS:
        raise ConfigError(f"{where}: unknown format {fmt!r}; allowed: {', '.join(FORMATS + tuple(_MINIFLOAT_PRESETS))}",
                          field="format")
    cls = _BUILDERS[fmt]
    allowed = [f.name for f in fields(cls) if f.init and f.name != "format"]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: key {unknown[0]!r} is not valid for format {fmt!r}; allowed keys: {allowed}",
                          field=unknown[0])
    try:
        if cls in (CastSpec, BnbSpec):
            return cls(format=fmt, **data)
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}", field=exc.field) from None
    except TypeError:
        missing = [f.name for f in fields(cls) if f.init and f.name not in data and f.name != "format"
                   and f.default is MISSING and f.default_factory is MISSING]
        raise ConfigError(f"{where}: format {fmt!r} is missing key {missing[0]!r} (keys: {allowed})",
                          field=missing[0] if missing else "format") from None


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The plan-table form of a spec (round-trips through spec_from_dict)."""
    data = asdict(spec)
    return {"format": spec.format, **{k: v for k, v in data.items() if k != "format"}}
