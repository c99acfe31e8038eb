"""Model variants a run compares: the fp32 reference plus quantized variants built lazily from plans.

The default set (package plans in qcheck/plans/) covers fp16, bf16, int8 RTN per channel, w4g64 RTN,
fixed point 8.4 and 16.8, a mixed int8/int4 plan, and bitsandbytes int8 / nf4.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from torch import nn

from qcheck.errors import ConfigError
from qcheck.quant.apply import quantize
from qcheck.quant.manifest import QuantReport
from qcheck.quant.plan import Plan

REFERENCE = "fp32"
DEFAULT_VARIANTS = ("fp16", "bf16", "int8", "w4g64", "fixed8.4", "fixed16.8", "mixed", "bnb-int8", "bnb-nf4")
_PLAN_FILES = {"fp16": "fp16.toml", "bf16": "bf16.toml", "int8": "int8.toml", "w4g64": "w4g64.toml",
               "fixed8.4": "fixed8_4.toml", "fixed16.8": "fixed16_8.toml", "mixed": "mixed.toml",
               "bnb-int8": "bnb-int8.toml", "bnb-nf4": "bnb-nf4.toml"}
FAMILIES: dict[str, tuple[str, ...]] = {"int": ("int8", "w4g64"), "fixed": ("fixed16.8", "fixed8.4"),
                                        "float": ("fp16", "bf16")}
"""Uniform plans of one family, ordered from more to fewer bits (perplexity must not go down along them)."""
MIXED_BOUNDS: dict[str, tuple[str, str]] = {"mixed": ("int8", "w4g64")}


def builtin_plan(name: str) -> Plan:
    """One of the default variant plans shipped with qcheck."""
    if name not in _PLAN_FILES:
        raise ConfigError(f"unknown built-in variant {name!r}; built-in: {', '.join(_PLAN_FILES)}", field="variant")
    text = resources.files("qcheck.plans").joinpath(_PLAN_FILES[name]).read_text(encoding="utf-8")
    return Plan.from_toml(text, name=name)


@dataclass
class Variant:
    """A quantized model with its plan and manifest."""

    name: str
    plan: Plan
    model: nn.Module
    report: QuantReport
    seconds: float


@dataclass
class VariantSet:
    """Builds each variant once, on first use, from the reference model; `on_build` sees every new variant."""

    reference: nn.Module
    plans: dict[str, Plan]
    on_build: Callable[[Variant], None] | None = None
    _built: dict[str, Variant] = field(default_factory=dict)

    @classmethod
    def from_names(cls, reference: nn.Module, names: list[str] | tuple[str, ...], plan_files: list[str] = (),
                   **kwargs: Any) -> "VariantSet":
        plans = {n: builtin_plan(n) for n in names}
        for path in plan_files:
            plan = Plan.load(path)
            name = plan.name if plan.name != "plan" else Path(path).stem
            if name in plans or name == REFERENCE:
                raise ConfigError(f"plan {path} is named {name!r}, which another variant already uses; "
                                  "set a distinct name = \"...\" in the plan file", field="name")
            plans[name] = plan
        return cls(reference, plans, **kwargs)

    @property
    def names(self) -> list[str]:
        return list(self.plans)

    def validate(self) -> None:
        """Resolve every plan against the reference (globs, group sizes) before anything runs."""
        for plan in self.plans.values():
            plan.resolve(self.reference)

    def get(self, name: str) -> Variant:
        if name not in self.plans:
            raise ConfigError(f"no variant {name!r} in this run; variants: {', '.join(self.plans)}", field="variant")
        if name not in self._built:
            start = time.perf_counter()
            model, report = quantize(self.reference, self.plans[name])
            variant = Variant(name, self.plans[name], model, report, time.perf_counter() - start)
            self._built[name] = variant
            if self.on_build is not None:
                self.on_build(variant)
        return self._built[name]

    def model(self, name: str) -> nn.Module:
        return self.reference if name == REFERENCE else self.get(name).model
