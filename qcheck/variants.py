"""Model variants a run compares: the fp32 reference plus quantized variants, built one at a time and released.

The default set (package plans in qcheck/inputs/plans/) covers fp16, bf16, int8 RTN per channel, w4g64 RTN,
fixed point 8.4 and 16.8, a mixed int8/int4 plan, and bitsandbytes int8 / nf4. A run builds a variant, measures it
and releases it (`VariantSet.built`), so its memory is the reference plus one variant whatever the number of
variants; `VariantSet.get` keeps at most the last variant it built.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcheck.errors import ConfigError
from qcheck.quant.plan import Plan

if TYPE_CHECKING:
    from torch import nn

    from qcheck.quant.manifest import QuantReport

REFERENCE = "fp32"
DEFAULT_VARIANTS = ("fp16", "bf16", "int8", "w4g64", "fixed8.4", "fixed16.8", "mixed", "bnb-int8", "bnb-nf4")
_PLAN_FILES = {"fp16": "fp16.toml", "bf16": "bf16.toml", "int8": "int8.toml", "w4g64": "w4g64.toml",
               "fixed8.4": "fixed8_4.toml", "fixed16.8": "fixed16_8.toml", "mixed": "mixed.toml",
               "bnb-int8": "bnb-int8.toml", "bnb-nf4": "bnb-nf4.toml"}
FAMILIES: dict[str, tuple[str, ...]] = {"int": ("int8", "w4g64"), "fixed": ("fixed16.8", "fixed8.4"),
                                        "float": ("fp16", "bf16")}
"""Uniform plans of one family, ordered from more to fewer bits (perplexity must not go down along them)."""
MIXED_BOUNDS: dict[str, tuple[str, str]] = {"mixed": ("int8", "w4g64")}


def float_chain(members: list[str], reference_dtype: str = "fp32") -> list[str]:
    """The reference and the float family's casts from more to fewer mantissa bits: fp32 > fp16 > bf16 with an
    fp32 reference; with a bf16 reference the fp16 cast comes before it (it computes with more bits than the
    reference does)."""
    from qcheck.formats.casts import MANTISSA_BITS

    bits = {REFERENCE: MANTISSA_BITS.get(reference_dtype, 23), **{n: MANTISSA_BITS[n] for n in members}}
    return sorted([REFERENCE, *members], key=lambda n: -bits[n])


def builtin_plan(name: str) -> Plan:
    """One of the default variant plans shipped with qcheck."""
    if name not in _PLAN_FILES:
        raise ConfigError(f"unknown built-in variant {name!r}; built-in: {', '.join(_PLAN_FILES)}", field="variant")
    text = resources.files("qcheck.inputs.plans").joinpath(_PLAN_FILES[name]).read_text(encoding="utf-8")
    return Plan.from_toml(text, name=name)


@dataclass
class Variant:
    """A quantized model with its plan and manifest; PTQ variants carry their backend's result instead of a plan."""

    name: str
    plan: Plan | None
    model: nn.Module
    report: QuantReport
    seconds: float
    backend: Any = None
    spec: str | None = None

    @property
    def dtype_name(self) -> str:
        """The float dtype the variant computes in ("fp32", "fp16" or "bf16"): its plan's, or for a PTQ variant the
        dtype of its model's first float parameters (the float reference its timing is compared with)."""
        if self.plan is not None:
            return self.report.model_dtype if self.report.model_dtype in ("fp32", "fp16", "bf16") else self.plan.dtype
        return {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(self.report.model_dtype, "fp32")

    @property
    def is_ptq(self) -> bool:
        """Whether a PTQ backend (not a qcheck plan) produced this variant."""
        return self.backend is not None


@dataclass
class VariantSet:
    """Builds variants from the reference model on demand; `on_build` sees every new variant."""

    reference: nn.Module
    plans: dict[str, Plan]
    on_build: Callable[[Variant], None] | None = None
    backends: dict[str, str] = field(default_factory=dict)
    tokenizer: Any = None
    device: str = "cpu"
    sources: dict[str, str] = field(default_factory=dict)
    """Where each plan came from (its file; built-in plans are absent), for error messages."""
    reload: Callable[[], nn.Module] | None = None
    """For a reference accelerate dispatched (offload, several devices): a fresh copy of it with the same placement,
    which a plan variant is quantized into in place (such a reference cannot be deep-copied)."""
    reference_fingerprint: str = ""
    _last: Variant | None = None
    _failed: dict[str, Exception] = field(default_factory=dict)

    @classmethod
    def from_names(cls, reference: nn.Module, names: list[str] | tuple[str, ...], plan_files: list[str] = (),
                   ptq_specs: list[str] | tuple[str, ...] = (), **kwargs: Any) -> VariantSet:
        """Built-in variants by name, plan files, and PTQ backend specs (see qcheck.quant.backends)."""
        from qcheck.quant.backends import backend_from_spec, ptq_variant_name

        plans = {n: builtin_plan(n) for n in names}
        sources: dict[str, str] = {}
        for path in plan_files:
            plan = Plan.load(path)
            name = plan.name if plan.name != "plan" else Path(path).stem
            if name in plans or name == REFERENCE:
                raise ConfigError(f"plan {path} is named {name!r}, which another variant already uses; "
                                  "set a distinct name = \"...\" in the plan file", field="name")
            plans[name] = plan
            sources[name] = str(path)
        backends: dict[str, str] = {}
        for spec in ptq_specs:
            backend_from_spec(spec)  # a malformed spec is a ConfigError now, before anything runs
            name = ptq_variant_name(spec)
            if name in plans or name in backends or name == REFERENCE:
                raise ConfigError(f"PTQ variant {spec!r} would run as {name!r}, which another variant already uses; "
                                  "give its checkpoint folder a distinct name", field="ptq")
            backends[name] = spec
        return cls(reference, plans, backends=backends, sources=sources, **kwargs)

    @property
    def names(self) -> list[str]:
        return list(self.plans) + list(self.backends)

    def validate(self) -> None:
        """Resolve every plan against the reference (globs, group sizes) and check every PTQ spec's inputs (a
        checkpoint folder that is missing or not a model is an error here, before anything runs)."""
        from qcheck.quant.backends import backend_from_spec

        for name, plan in self.plans.items():
            try:
                plan.resolve(self.reference)
            except ConfigError as exc:
                where = f"plan file {self.sources[name]}" if name in self.sources else f"built-in plan {name!r}"
                raise ConfigError(f"{where}: {exc}", field=exc.field, layer=exc.layer) from None
        for spec in self.backends.values():
            # called for what it raises: a checkpoint folder that is missing or has no config.json; a backend that
            # merely cannot run on this machine is not an error here (its tests skip, saying why)
            backend_from_spec(spec, device=self.device).unavailable_reason()

    def get(self, name: str) -> Variant:
        """The variant, built on first use; building another releases this one (memory: one variant at a time)."""
        if self._last is not None and self._last.name == name:
            return self._last
        if name in self._failed:
            raise self._failed[name]
        self.release_cached()
        try:
            self._last = self.build(name)
        except Exception as exc:
            self._failed[name] = exc  # every test of the variant reports the same build error
            raise
        return self._last

    def build(self, name: str) -> Variant:
        """A new copy of the variant (not cached): the caller releases it."""
        if name not in self.plans and name not in self.backends:
            raise ConfigError(f"no variant {name!r} in this run; variants: {', '.join(self.names)}", field="variant")
        variant = self._build(name)
        if self.on_build is not None:
            self.on_build(variant)
        return variant

    @contextmanager
    def built(self, name: str) -> Iterator[Variant]:
        """Build the variant, hand it out, then release its memory (also on error)."""
        variant = self.build(name)
        try:
            yield variant
        finally:
            release(variant)
            del variant
            free_memory()

    def release_cached(self) -> None:
        """Drop the variant `get` keeps."""
        if self._last is not None:
            release(self._last)
            self._last = None
            free_memory()

    def _build(self, name: str) -> Variant:
        from qcheck.errors import VariantUnavailable
        from qcheck.quant.apply import quantize

        start = time.perf_counter()
        if name in self.plans and self.reload is not None:
            from qcheck.quant.placed import quantize_placed

            model, report = quantize_placed(self.reload(), self.plans[name],
                                            reference_fingerprint=self.reference_fingerprint)
            return Variant(name, self.plans[name], model, report, time.perf_counter() - start)
        if name in self.plans:
            model, report = quantize(self.reference, self.plans[name])
            return Variant(name, self.plans[name], model, report, time.perf_counter() - start)
        from qcheck.quant.backends import backend_from_spec, produce_variant

        if self.reload is not None:
            raise VariantUnavailable(f"PTQ variant {name} ({self.backends[name]}): PTQ backends quantize a copy of a "
                                     "reference held on one device; with --device-map placing the reference over "
                                     "devices or offloading it they are not built")
        backend = backend_from_spec(self.backends[name], device=self.device)
        reason = backend.unavailable_reason()
        if reason is not None:
            raise VariantUnavailable(f"PTQ variant {name} ({self.backends[name]}) cannot be built here: {reason}")
        # the backend names its variant from its own options; checks must report the name this run knows it by
        built = replace(produce_variant(backend, self.reference, self.tokenizer), name=name)
        return Variant(name, None, built.model, built.report, built.seconds, backend=built, spec=self.backends[name])

    def model(self, name: str) -> nn.Module:
        return self.reference if name == REFERENCE else self.get(name).model


def release(variant: Variant) -> None:
    """Let go of a variant's model (and a PTQ backend's copy of it) so its memory can be freed."""
    folder = getattr(variant.model, "_qcheck_offload_dir", None)
    variant.model = None  # type: ignore[assignment]
    if folder is not None:
        folder.cleanup()
    if variant.backend is not None and hasattr(variant.backend, "model"):
        variant.backend.model = None


def free_memory() -> None:
    """Collect garbage, return cached CUDA blocks and glibc's freed heap pages, so the next variant starts from the
    reference alone (without the trim, a released variant's pages stay in the process's resident memory)."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
