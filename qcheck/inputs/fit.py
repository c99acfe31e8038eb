"""Will the run fit? A lower bound of the memory a run needs, checked before the reference is loaded.

A run holds the reference in fp32, one variant beside it (fidelity compares the two; variants are built one at a
time) and a batch of logits. The reference's size comes from its config, instantiated on the meta device (no
memory, a second even for 70B shapes); a variant's storage from its plan resolved on that instance
(`stored_bytes`: the plan's float dtype, except the layers it fake-quantizes, which hold fp32 in a 16-bit model too,
and those it casts). PTQ variants are not counted, so the figure stays a lower bound: a run
refused here could never have finished, and one let through may still need more.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcheck.errors import QCheckError

GiB = 2**30
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class MemoryNeed:
    """The lower bound of a run's memory on one device, and its parts."""

    device: str
    parameters: int
    reference_bytes: int
    variant: str | None
    variant_bytes: int
    working_bytes: int
    available_bytes: int | None
    not_counted: tuple[str, ...] = field(default=())
    reference_dtype: str = "fp32"
    budget_bytes: int | None = None
    """--max-memory's budget per model on this device (each model takes at most that here; the rest is offloaded)."""
    copies: int = 1
    """Worker processes sharing this device (--workers above the GPU count, or on a CPU): each holds all of the
    above."""

    @property
    def total_bytes(self) -> int:
        return (self.reference_bytes + self.variant_bytes + self.working_bytes) * self.copies

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def message(self) -> str:
        """Why the run cannot fit, with the parts and what to do."""
        size = f"{self.parameters / 1e9:.2f}B parameters, {self.reference_bytes / GiB:.1f} GiB"
        parts = [f"the reference in {self.reference_dtype} ({size})"]
        if self.budget_bytes is not None:
            parts = [(f"the reference and one variant each within --max-memory's {self.budget_bytes / GiB:.1f} "
                      f"GiB for {self.device} ({size} in all)")]
        if self.variant:
            parts.append(f"one variant beside it (the largest, {self.variant}: {self.variant_bytes / GiB:.1f} GiB)")
        parts.append(f"one batch of logits ({self.working_bytes / GiB:.1f} GiB)")
        if self.copies > 1:
            parts.append(f"all of it in each of the {self.copies} --workers processes that share this device")
        skipped = f"; not counted: {', '.join(self.not_counted)}" if self.not_counted else ""
        digits = 1
        while digits < 4 and f"{self.total_bytes / GiB:.{digits}f}" == f"{(self.available_bytes or 0) / GiB:.{digits}f}":
            digits += 1  # never "needs 5.6 GiB and 5.6 GiB is available"
        if self.budget_bytes is not None:
            advice = f"Lower --max-memory for {self.device} (what does not fit there is offloaded to CPU, then disk)"
        else:
            ways = ["Run it where that much memory is free",
                    ("spread each model over the GPUs, CPU and disk with --device-map auto --max-memory "
                     "0=SIZE,cpu=SIZE (a budget per model: the reference and one variant are alive at once)")]
            if self.reference_dtype == "fp32":
                ways.append("hold the reference in half precision with --reference-dtype bf16 (or auto for the "
                            "checkpoint's own dtype)")
            if self.variant and self.variant not in ("fp16", "bf16") and self.variant_bytes >= self.reference_bytes:
                # simulated formats store their rounded weights in fp32
                half = "fp16,bf16" if self.reference_dtype == "fp32" else "fp16"
                ways.append(f"leave out the variants stored in fp32 (--variants {half} keeps one half-precision copy)")
            advice = ", or ".join(ways)
        if self.copies > 1:
            advice = ("Pass fewer --workers (one per GPU holds one reference and one variant on each), or "
                      + advice[0].lower() + advice[1:])
        return (f"this run needs at least {self.total_bytes / GiB:.{digits}f} GiB of {self.device} memory and "
                f"{(self.available_bytes or 0) / GiB:.{digits}f} GiB is available: {'; '.join(parts)}{skipped}. "
                + advice)


def meta_model(folder: Path | None, trust_remote_code: bool = False) -> tuple[Any, int] | None:
    """(the model of the config in `folder` on the meta device, vocabulary size); None without a folder or when the
    config cannot be instantiated without its weights (the run is then not pre-checked)."""
    if folder is None:
        return None
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        return model, int(getattr(config, "vocab_size", 0) or 0)
    except Exception:  # noqa: BLE001 - an unknown architecture is checked when it loads, not here
        return None


def model_size(folder: Path | None, trust_remote_code: bool = False) -> tuple[int, int] | None:
    """(parameters, vocabulary size) from the config in `folder`, instantiated on the meta device (tied weights
    counted once); None where `meta_model` gives None."""
    meta = meta_model(folder, trust_remote_code)
    return None if meta is None else (sum(p.numel() for p in meta[0].parameters()), meta[1])


def stored_bytes(model: Any, plan: Any, reference_dtype: str = "fp32") -> int | None:
    """Bytes of `plan`'s variant of `model` (a meta-device instance; tied weights once): every parameter in the
    plan's dtype (the reference's for a plan that keeps it), except the layers the plan changes. Fake-quantized
    ones (int, fixed, minifloat) hold fp32 weights and biases in a 16-bit model too: grid values stored in 16 bits
    would round off their grid (`qcheck.quant.apply`), so an int8 variant of a bf16 8B model takes 28 GiB, not the
    15 GiB its dtype alone says. Cast ones hold their cast's dtype. None where the plan does not resolve on the
    model (its own error is reported when the variant is built)."""
    from qcheck.quant.experts import ExpertMatrix, layer_at
    from qcheck.quant.spec import CastSpec, FixedSpec, IntSpec, MinifloatSpec

    base = _BYTES.get(reference_dtype if plan.dtype == "fp32" else plan.dtype, 4)
    try:
        assignments = plan.resolve(model)
    except QCheckError:
        return None
    total = sum(p.numel() for p in model.parameters()) * base
    seen: set[int] = set()
    for a in assignments:
        spec = a.rule.spec
        if isinstance(spec, (IntSpec, FixedSpec, MinifloatSpec)):
            width = 4
        elif isinstance(spec, CastSpec):
            width = _BYTES[spec.format]
        else:
            continue
        layer = layer_at(model, a.layer)
        params = ((layer.param,) if isinstance(layer, ExpertMatrix)
                  else (getattr(layer, "weight", None), getattr(layer, "bias", None)))
        for param in params:
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                total += param.numel() * (width - base)
    return total


_SHARE = 1
"""How many worker processes share this process's GPU (`qcheck.engine.measure_parallel`)."""


def share_device(workers: int) -> None:
    """Size this process's batches within 1/`workers` of its GPU: workers that share one size their batches at
    the same time, and each counting the whole free memory as its own would overcommit it."""
    global _SHARE
    _SHARE = max(1, int(workers))


def available_bytes(device: Any) -> int | None:
    """Free memory of the device: on a GPU the driver's free bytes plus what torch's allocator holds cached and
    unused (a step's batches are sized while earlier steps' blocks are still cached: counted free by torch, not by
    the driver; session 13's 8B run sized bitsandbytes int8's generation at 31 rows of 50 that way), within this
    process's share of the GPU when workers share it (`share_device`); else the host's MemAvailable plus free swap."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        free = int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
        if _SHARE > 1:
            share = torch.cuda.get_device_properties(device).total_memory // _SHARE
            free = min(free, max(0, share - int(torch.cuda.memory_allocated(device))))
        return free
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return (int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        try:
            import psutil

            return int(psutil.virtual_memory().available + psutil.swap_memory().free)
        except ImportError:
            return None


def rows_on_every_device(layers: Mapping[Any, int], row_bytes: Callable[[int], float],
                         room: Callable[[Any], float]) -> int:
    """The most rows every device holds: the least over devices of room(device) // row_bytes(its layer count). A
    model spread over GPUs keeps each layer's cache and activations on the device that runs it, so weighing all its
    layers against one device's free memory would size a 70B model's batches at one row."""
    fits = [int(max(0.0, room(device)) // max(1.0, row_bytes(n))) for device, n in layers.items() if n]
    return min(fits) if fits else 0


def memory_need(parameters: int, variant_dtypes: dict[str, str], *, not_counted: tuple[str, ...] = (),
                vocab_size: int, context: int, batch: int, device: Any, available: int | None,
                reference_dtype: str = "fp32", budget: int | None = None, copies: int = 1,
                variant_bytes: Mapping[str, int] | None = None) -> MemoryNeed:
    """The lower bound for a reference of `parameters` in `reference_dtype` and variants stored in the given dtypes
    ("fp32" for a plan that keeps the model's dtype means the reference's), or in `variant_bytes` where given
    (`stored_bytes`); with a --max-memory `budget` for this device each model takes at most that much of it;
    `copies` worker processes sharing the device each need it all."""
    known = dict(variant_bytes or {})

    def stored(name: str) -> int:
        if name in known:
            return known[name]
        dtype = variant_dtypes[name]
        return parameters * _BYTES.get(reference_dtype if dtype == "fp32" else dtype, 4)

    largest = max(variant_dtypes, key=stored, default=None)
    reference_bytes, largest_bytes = parameters * _BYTES.get(reference_dtype, 4), stored(largest) if largest else 0
    if budget is not None:
        reference_bytes, largest_bytes = min(reference_bytes, budget), min(largest_bytes, budget)
    return MemoryNeed(str(getattr(device, "type", device)), parameters, reference_bytes, largest, largest_bytes,
                      batch * context * vocab_size * 4, available, not_counted, reference_dtype, budget, copies)


def check_fits(need: MemoryNeed) -> None:
    """Raise the run's bad-input error (exit 2) when the lower bound exceeds the free memory."""
    if not need.fits:
        raise QCheckError(need.message())
