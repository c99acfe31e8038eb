"""Latency measurements: what kind of kernels a variant runs (real or simulated), timing a variant and the
reference's casts at the run's shape, energy through NVML, and — for a variant over the slowdown bound — a profile
that names where its time goes. Returns record data; `qcheck.invariants.latency` judges it."""
from __future__ import annotations

import copy
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qcheck.measure.timing import measure, placement_problems
from qcheck.quant.bnb import is_bnb_module, llm_int8_layers, llm_int8_threshold
from qcheck.quant.offload import input_device

if TYPE_CHECKING:
    from qcheck.engine import RunContext
    from qcheck.measure.steps import Subject

SIMULATED_FORMATS = frozenset({"int", "fixed", "minifloat", "prune"})
"""Formats qcheck applies as fake quantization: values on the grid, stored and computed in float."""
DEFAULT_SLOWDOWN_FACTOR = 3.0
"""A quantized variant may be this many times slower than the float reference of its dtype before it is a finding
(seed 002 reported 10x; real backends' known costs are in invariants.latency.KNOWN_BACKEND_COSTS)."""
MIN_ORDER_SAMPLES = 20
GPU_SHAPE = (16, 512)
"""fp32 compute-bound for SmolLM2-135M on an H100, with margin (benchmarks/RESULTS.md, bench_latency): the host needs
58% of the device time at 8x512 (50.5 ms, IQR 1.1%) and 31% at 32x512 (174 ms), against the launch-bound line at 85%;
1x128 is launch-bound. 16x512 (2.2e12 FLOP, ~88 ms) halves what 32x512 cost: 20 timed fp32 forwards per subject were
3.4 s of the 135M run's 4 s per variant. A GPU with twice the H100's fp32 rate comes near the line; there the
ordering checks say launch-bound and skip, they do not fail."""
GPU_FORWARD_FLOPS = 2 * 134.5e6 * GPU_SHAPE[0] * GPU_SHAPE[1]
"""The arithmetic a timed GPU forward is sized to: SmolLM2-135M's at GPU_SHAPE. A larger model gets fewer tokens (rows
of 512, at least one), so an 8B fp32 forward takes ~0.1 s, not the 2.5 s that 16 x 512 would (20 repeats per
variant)."""
CPU_SHAPE = (1, 32)
GPU_BUDGET = {"warmup": 3, "min_repeats": MIN_ORDER_SAMPLES, "min_time_s": 1.0, "max_time_s": 20.0}
CPU_BUDGET = {"warmup": 1, "min_repeats": 3, "min_time_s": 0.1, "max_time_s": 2.0}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _p_less(a: Iterable[float], b: Iterable[float]) -> float:
    from qcheck.stats import mann_whitney_less

    return mann_whitney_less(list(a), list(b))


@dataclass(frozen=True)
class VariantKind:
    """Whether a variant's kernels are real low-precision ones or simulated (fake-quant), and its bit width."""

    simulated: bool
    bits: float
    reason: str


_DTYPE_BITS = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16, torch.float64: 64}


def variant_kind(model: nn.Module | None = None, report: Any = None, *, autocast: bool = False) -> VariantKind:
    """Classify a variant from its QuantReport (or the model's dtype when there is none)."""
    if autocast:
        return VariantKind(False, 16, "torch.autocast runs matmuls in 16-bit")
    layers = [r for r in getattr(report, "layers", []) if r.applied] if report is not None else []
    if not layers:
        dtype = next(model.parameters()).dtype if model is not None else torch.float32
        return VariantKind(False, _DTYPE_BITS.get(dtype, 32), f"unquantized, {str(dtype).removeprefix('torch.')}")
    sim = sorted({r.format for r in layers if r.format in SIMULATED_FORMATS and r.backend == "qcheck"})
    bits = min(float(r.bits) for r in layers if r.bits is not None) if any(r.bits for r in layers) else 32.0
    if sim:
        return VariantKind(True, bits, f"fake-quantized ({', '.join(sim)}): grid values stored and computed in "
                                       "float, the same kernels as the float model: no speed-up is possible")
    backends = sorted({r.backend for r in layers})
    return VariantKind(False, bits, f"real {', '.join(sorted({r.format for r in layers}))} kernels "
                                    f"({', '.join(backends)})")


def measure_order(fn_a: Callable[[], Any], fn_b: Callable[[], Any], *, device: str | torch.device,
                  alpha: float = 0.01, max_time_s: float = 30.0, batch: int = 5, warmup: int = 3
                  ) -> dict[str, Any]:
    """Interleave batches of timed calls of a and b (drift hits both) until 'a < b' is decided at `alpha`
    by a one-sided Mann-Whitney test, or `max_time_s` passes. Returns p, samples and seconds used."""
    a: list[float] = []
    b: list[float] = []
    start = time.perf_counter()
    p = 1.0
    first = True
    while time.perf_counter() - start < max_time_s:
        ta = measure(fn_a, device=device, warmup=warmup if first else 0, min_repeats=batch, min_time_s=0,
                     max_repeats=batch)
        tb = measure(fn_b, device=device, warmup=warmup if first else 0, min_repeats=batch, min_time_s=0,
                     max_repeats=batch)
        first = False
        a.extend(ta.samples_ms)
        b.extend(tb.samples_ms)
        p = _p_less(a, b)
        if len(a) >= 2 * batch and p < alpha:
            break
    return {"p": p, "decided": p < alpha, "n_each": len(a), "seconds": time.perf_counter() - start,
            "median_a_ms": statistics.median(a), "median_b_ms": statistics.median(b), "alpha": alpha}


def diagnose_slowdown(model: nn.Module, fn: Callable[[], Any] | None = None, *,
                      device: str | torch.device | None = None, report: Any = None,
                      profile: Any = None) -> dict[str, Any]:
    """Likely causes of a slow variant: parameters off the device, host<->device copies and dequantize ops per
    call (torch.profiler over one call of `fn`, or the caller's `profile_call` of it), bitsandbytes 4-bit layers
    computing in float32, per-call fake-quant hooks."""
    causes: dict[str, Any] = {}
    dev = torch.device(device) if device is not None else input_device(model)
    misplaced = placement_problems(model, dev)
    if misplaced:
        causes["cpu-placement"] = {"tensors": len(misplaced), "by_device": dict(Counter(misplaced.values())),
                                   "examples": list(misplaced)[:6]}
    slow4 = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4")
             and getattr(m, "compute_dtype", None) == torch.float32]
    if slow4 and dev.type == "cuda":
        causes["bnb-4bit-float32-compute"] = {"layers": len(slow4), "examples": slow4[:6]}
    hooks = [n for n, m in model.named_modules() if m._forward_pre_hooks]
    if hooks:
        causes["per-call-hooks"] = {"modules": len(hooks), "examples": hooks[:6],
                                    "meaning": "fake-quant or dtype adapters run on every call"}
    if profile is None and fn is not None:
        profile = profile_call(fn, dev)
    if profile is not None:
        ops = {evt.key: int(evt.count) for evt in profile}
        copies = {k: v for k, v in ops.items() if "Memcpy HtoD" in k or "Memcpy DtoH" in k}
        deq = {k: v for k, v in ops.items() if "dequant" in k.lower()}
        int8 = llm_int8_layers(model)
        own = backend_own_ops(copies, deq, bnb=any(is_bnb_module(m) for m in model.modules()),
                              outlier_reads=llm_int8_threshold(model, int8) > 0, int8_layers=len(int8))
        if own:
            causes["backend-own-ops"] = own
        if sum(copies.values()) > 4:
            causes["host-device-copies"] = copies
        if deq:
            causes["dequantize-per-call"] = deq
    return causes


def backend_own_ops(copies: dict[str, int], deq: dict[str, int], *, bnb: bool, outlier_reads: bool,
                    int8_layers: int = 0) -> dict[str, int]:
    """Take out of `copies` and `deq` (in place) what is bitsandbytes' normal path, not a fallback, and return it:
    its dequantize kernels (LLM.int8's int8_mm_dequant and vectorwise dequantize, NF4/FP4's blockwise dequantize
    of the weight before each matmul at batch > 1) and, for LLM.int8 with an outlier threshold, the device-to-host
    reads of its outlier test (`if outliers.any()`, then the outlier columns: about two per layer) and at most one
    host-to-device copy per int8 layer (`int8_layers`): the scalar 0 of its `out_row[:, outlier_cols] = 0`, which
    torch copies from host memory to the device on every call with outliers (bitsandbytes 0.50, cuda ops). More
    host-to-device copies than that stay a cause: something else moves data onto the device per call."""
    own: dict[str, int] = {}
    if bnb:
        for key in [k for k in deq if "bitsandbytes::" in k or k.startswith(("void kdequant", "void kDequantize"))]:
            own[key] = deq.pop(key)
    if outlier_reads:
        for key in [k for k in copies if "Memcpy DtoH" in k]:
            own[key] = copies.pop(key)
        uploads = [k for k in copies if "Memcpy HtoD" in k]
        if uploads and 0 < sum(copies[k] for k in uploads) <= int8_layers:
            for key in uploads:
                own[key] = copies.pop(key)
    return own


def profile_call(fn: Callable[[], Any], device: str | torch.device) -> Any:
    """torch.profiler's per-name averages over one call of `fn` (CPU ops, and GPU kernels on CUDA): measured once,
    read by diagnose_slowdown and time_by_kernel."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return prof.key_averages()


def short_kernel_name(name: str) -> str:
    """A kernel's name without its return type, namespaces and template arguments
    (`void at::native::(anonymous namespace)::tinygemm_m16n8k16_chunk_kernel<...>(...)` -> the kernel's own name);
    operator names such as `aten::addmm` are kept whole."""
    if not (name.startswith("void ") or "<" in name or "(" in name):
        return name[:80]
    plain = name.removeprefix("void ").replace("(anonymous namespace)", "")
    base = plain.split("<", 1)[0].split("(", 1)[0].strip()
    return (base.rsplit("::", 1)[-1] or name)[:80]


def time_by_kernel(profile: Any, device: str | torch.device, *, top: int = 5) -> list[dict[str, Any]]:
    """Where the profiled call (`profile_call`) spent its time, largest first: GPU kernels by device time on CUDA,
    operators by self CPU time elsewhere, each with its share of the total. Names the kernel behind a slowdown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        rows = [(e.key, e.count, e.self_device_time_total) for e in profile
                if e.device_type != torch.autograd.DeviceType.CPU and e.self_device_time_total > 0]
    else:
        rows = [(e.key, e.count, e.self_cpu_time_total) for e in profile if e.self_cpu_time_total > 0]
    return rank_kernels(rows, clock="device" if dev.type == "cuda" else "cpu", top=top)


def rank_kernels(rows: Iterable[tuple[str, int, float]], *, clock: str, top: int = 5) -> list[dict[str, Any]]:
    """(name, calls, microseconds) rows ranked by time, template instances of one kernel merged under its short
    name (the largest instance's full name kept), each with its share of all the time."""
    rows = sorted(rows, key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    merged: dict[str, dict[str, Any]] = {}
    for key, count, us in rows:
        row = merged.setdefault(short_kernel_name(key), {"name": key[:300], "calls": 0, "us": 0.0})
        row["calls"] += int(count)
        row["us"] += us
    ranked = sorted(merged.items(), key=lambda kv: -kv[1]["us"])[:top]
    return [{"kernel": short, "name": row["name"], "calls": row["calls"], "ms": row["us"] / 1000,
             "share": row["us"] / total if total else 0.0, "clock": clock} for short, row in ranked]




def kind_of(manifest: dict[str, Any] | None, dtype_name: str = "fp32") -> VariantKind:
    """The VariantKind of a recorded variant: from its manifest's applied layers, else its float dtype."""
    layers = [r for r in (manifest or {}).get("layers", []) if r.get("applied")]
    if not layers:
        bits = {"fp32": 32, "fp16": 16, "bf16": 16}.get(dtype_name, 32)
        names = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
        return VariantKind(False, bits, f"unquantized, {names.get(dtype_name, dtype_name)}")
    sim = sorted({r["format"] for r in layers if r["format"] in SIMULATED_FORMATS and r.get("backend") == "qcheck"})
    with_bits = [float(r["bits"]) for r in layers if r.get("bits")]
    bits = min(with_bits) if with_bits else 32.0
    if sim:
        return VariantKind(True, bits, f"fake-quantized ({', '.join(sim)}): grid values stored and computed in "
                                       "float, the same kernels as the float model: no speed-up is possible")
    backends = sorted({r.get("backend", "qcheck") for r in layers})
    return VariantKind(False, bits, f"real {', '.join(sorted({r['format'] for r in layers}))} kernels "
                                    f"({', '.join(backends)})")


def latency_inputs(ctx: RunContext) -> torch.Tensor:
    """Seeded random token ids at the run's shape (never zeros): GPU_SHAPE on a GPU, CPU_SHAPE on a CPU."""
    from qcheck.measure.timing import random_input_ids

    if not ctx.gpu:
        b, s = CPU_SHAPE
    else:
        params = sum(p.numel() for p in ctx.reference_model.parameters())
        b, s = max(1, min(GPU_SHAPE[0], int(GPU_FORWARD_FLOPS / (2 * params * GPU_SHAPE[1])))), GPU_SHAPE[1]
    return random_input_ids(ctx.vocab_size, b, s, device=ctx.device, seed=0)


def _budget(ctx: RunContext) -> dict[str, Any]:
    return GPU_BUDGET if ctx.gpu else CPU_BUDGET


def measure_latency(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    """Time one variant's forward; record its kind, regime, arithmetic floor and memory. On a GPU, a quantized
    variant slower than DEFAULT_SLOWDOWN_FACTOR x the reference of its dtype is profiled once: the causes found
    and the time by kernel go into the record for the slowdown check."""
    from qcheck.measure.gpu_peak import reset_step_peak
    from qcheck.measure.timing import (
        classify_regime,
        device_info,
        flops_ceiling,
        forward_callable,
        forward_flops,
        time_forward,
    )
    from qcheck.quant.tensor_stats import model_stored_bytes

    ids = latency_inputs(ctx)
    model = s.model
    if ctx.gpu:
        torch.cuda.synchronize(ctx.device)
        torch.cuda.empty_cache()
        reset_step_peak(ctx.device)
        base = torch.cuda.memory_allocated(ctx.device)
    timing = time_forward(model, ids, tf32=False, label=s.name, **_budget(ctx))
    manifest = None if s.is_reference else s.variant.report.to_dict()
    dtype_name = ctx.reference_dtype if s.is_reference else s.variant.dtype_name
    kind = kind_of(manifest, dtype_name)
    memory: dict[str, Any] = {"weights_mb": round(model_stored_bytes(model) / 2**20, 2), "shape": list(ids.shape),
                              "what": "parameter + buffer bytes as stored (packed where the backend packs)"}
    if ctx.gpu:
        memory.update(peak_forward_mb=round((torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20, 2),
                      resident_mb=round(base / 2**20, 2),
                      peak_what="torch.cuda.max_memory_allocated during the timed forwards, above what was "
                                "allocated before (the reference and this variant)")
    formats = sorted({r["format"] for r in (manifest or {}).get("layers", []) if r.get("applied")})
    data: dict[str, Any] = {
        "timing": timing.to_dict(), "kind": asdict(kind), "regime": classify_regime(timing).to_dict(),
        "shape": list(ids.shape), "flops": forward_flops(model, ids.numel()), "ceiling_flops_per_s":
        flops_ceiling(ctx.device), "device_info": device_info(ctx.device).to_dict(), "memory": memory,
        "dtype_name": dtype_name, "backend_format": formats[0] if len(formats) == 1 else None}
    unbounded = unbounded_slowdown(s.name, kind.simulated, ctx.reference_dtype)
    if ctx.gpu and not s.is_reference and s.name not in ("fp16", "bf16") and unbounded is None:
        reference = reference_timing(ctx, dtype_name)
        if reference is not None and timing.median_ms > DEFAULT_SLOWDOWN_FACTOR * reference.median_ms:
            profile = profile_call(forward_callable(model, ids), ctx.device)
            data["slowdown"] = {
                "causes": diagnose_slowdown(model, device=ctx.device, report=s.variant.report, profile=profile),
                "kernels": time_by_kernel(profile, ctx.device)}
    return data, {"shape": list(ids.shape), "budget": dict(_budget(ctx)), "tf32": False, "seed": 0}


def unbounded_slowdown(name: str, simulated: bool, reference_dtype: str) -> str | None:
    """Why `slowdown_bound` does not judge a simulated variant against a 16-bit reference (None where it does):
    inside a 16-bit model its grid layers compute in fp32 between casts, slower by construction (11x a bf16
    reference at 70B layer widths, session 24), which is qcheck's simulation, not a kernel of the user's."""
    if not simulated or reference_dtype == "fp32":
        return None
    return (f"{name} is simulated (fake-quant): inside the {reference_dtype} model its quantized layers compute in "
            f"fp32 between casts (qcheck's simulation, not a quantized kernel), so its time against the "
            f"{reference_dtype} reference bounds no kernel of yours")


def reference_timing(ctx: RunContext, dtype_name: str) -> Any:
    """The reference's timing in `dtype_name` (fp32: its own latency record; fp16/bf16: its casts), if measured."""
    from qcheck.measure.timing import Timing
    from qcheck.variants import REFERENCE

    if dtype_name == ctx.reference_dtype and ctx.store.has(REFERENCE, "latency"):
        return Timing.from_dict(ctx.store.data(REFERENCE, "latency")["timing"])
    if ctx.store.has(REFERENCE, "latency_casts"):
        casts = ctx.store.data(REFERENCE, "latency_casts")["timings"]
        if dtype_name in casts:
            return Timing.from_dict(casts[dtype_name])
    return None


def cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` with its floating-point parameters and buffers in `dtype`, as `deepcopy(model).to(dtype)`
    gives, its parameters made tensor by tensor: the fp32 copy that call holds first (28 GiB beside the 8B
    reference, in session 13) is never made. Tied parameters stay tied; buffers (small) are copied, then cast by
    `.to` as before."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        value = p.detach().to(dtype, copy=True) if p.is_floating_point() else p.detach().clone()
        memo[id(p)] = nn.Parameter(value, requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo).to(dtype)


def _casts(ctx: RunContext, names: tuple[str, ...] = ("fp16", "bf16")) -> Any:
    """The reference cast to each of `names` (fp16, bf16), one at a time (plain casts: no per-layer adapters adding
    host time). A reference accelerate spread over several GPUs is loaded afresh with its placement (a deep copy would
    share its hooks) and cast where it lies."""
    from qcheck.quant.offload import is_dispatched
    from qcheck.variants import free_memory

    dispatched = is_dispatched(ctx.reference_model)
    for name in names:
        source = ctx.variants.reload() if dispatched and ctx.variants.reload is not None else None
        folder = getattr(source, "_qcheck_offload_dir", None)
        model = source.to(_DTYPES[name]) if source is not None else cast_copy(ctx.reference_model, _DTYPES[name])
        try:
            yield name, model
        finally:
            del model, source
            if folder is not None:
                folder.cleanup()
            free_memory()


def measure_reference_casts(ctx: RunContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """fp16 / bf16 casts of the reference and the reference under fp16 autocast, timed at the run's shape: the
    latency ordering (Z5) and the float baseline a quantized variant's slowdown is measured against (Z9)."""
    from qcheck.measure.timing import device_info, time_forward

    ids = latency_inputs(ctx)
    timings: dict[str, Any] = {}
    not_timed: dict[str, str] = {}
    if ctx.reference_dtype == "fp32":
        timings["autocast"] = time_forward(ctx.reference_model, ids, autocast=torch.float16, tf32=False,
                                           label="autocast", **_budget(ctx)).to_dict()
    else:
        not_timed["autocast"] = (f"fp16 autocast is an fp32 model's mixed precision; the reference is "
                                 f"{ctx.reference_dtype}")
    names = tuple(n for n in ("fp16", "bf16") if n != ctx.reference_dtype)
    not_timed.update({n: "the reference's own dtype: its latency record is this timing"
                      for n in ("fp16", "bf16") if n not in names})
    for name, model in _casts(ctx, names):
        timings[name] = time_forward(model, ids, tf32=False, label=name, **_budget(ctx)).to_dict()
    return ({"timings": timings, "not_timed": not_timed, "reference_dtype": ctx.reference_dtype,
             "device_info": device_info(ctx.device).to_dict()},
            {"shape": list(ids.shape), "budget": dict(_budget(ctx)), "tf32": False})


def measure_reference_energy(ctx: RunContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Energy per forward of the reference (under "fp32", the report's name for the reference, in its own dtype)
    and of its fp16 cast, from NVML's total-energy counter over a 2 s window each; the idle baseline (1 s) is
    measured once, before the reference's window, and serves both. An fp16 reference has no cast to measure."""
    from qcheck.measure.timing import device_info, forward_callable, measure_energy, pinned_flags

    ids = latency_inputs(ctx)
    out: dict[str, Any] = {}
    with pinned_flags(tf32=False):
        fp32 = measure_energy(forward_callable(ctx.reference_model, ids), device=ctx.device, window_s=2.0, idle_s=1.0)
        out["fp32"] = {**fp32.to_dict(), "dtype": ctx.reference_dtype}
        if ctx.reference_dtype == "fp16":
            out["fp16"] = {"supported": False, "dtype": "fp16",
                           "reason": "the reference is fp16 (--reference-dtype): its energy is the entry above"}
        for name, model in _casts(ctx, () if ctx.reference_dtype == "fp16" else ("fp16",)):
            out[name] = {**measure_energy(forward_callable(model, ids), device=ctx.device, window_s=2.0, idle_s=1.0,
                                          idle_w=fp32.idle_power_w).to_dict(), "dtype": name}
    limit = device_info(ctx.device).clocks.get("power_limit_w")
    return {"energy": out, "tokens": int(ids.numel()), "power_limit_w": limit}, {"shape": list(ids.shape)}
