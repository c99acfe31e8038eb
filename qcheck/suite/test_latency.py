"""Latency, throughput and energy measured right (Z4, Z5, Z9, Z12).

Every timed variant's latency is recorded (CUDA events or perf_counter_ns, warm-up apart, median and IQR),
simulated (fake-quant) variants are marked and claim no speed-up, no variant is faster than its arithmetic
allows, and every model sits on the run's device. On a GPU: the latency ordering fp16/bf16 < fp32 and autocast
<= fp32 (tensor cores, compute-bound shapes only, else skipped with the reason), the slowdown bound against the
float reference of the same dtype with the cause named, and energy per token through NVML.
"""
from __future__ import annotations

import copy

import pytest
import torch

from qcheck.invariants.latency import (
    DEFAULT_SLOWDOWN_FACTOR,
    MIN_ORDER_SAMPLES,
    assert_latency_order,
    assert_placement,
    assert_plausible_speed,
    assert_slowdown_bound,
    assert_throughput_honest,
    diagnose_slowdown,
    profile_call,
    time_by_kernel,
    variant_kind,
)
from qcheck.measure.timing import (
    classify_regime,
    device_info,
    forward_callable,
    forward_flops,
    measure_energy,
    pinned_flags,
    random_input_ids,
    time_forward,
)
from qcheck.quant.tensor_stats import model_stored_bytes
from qcheck.results import CheckResult, Status
from qcheck.variants import REFERENCE

GPU_SHAPE = (32, 512)
"""Compute-bound for SmolLM2-135M on an H100 (1x128 is launch-bound)."""
CPU_SHAPE = (1, 32)
CPU_TIMED = ("fp32", "int8", "w4g64")
"""Variants timed on CPU (the budget): fp32 and two simulated ones (fp32 kernels). fp16/bf16 matmuls are
emulated on most CPUs (bf16 took minutes under load here) and bitsandbytes' CPU path is slow."""
GPU_BUDGET = {"warmup": 3, "min_repeats": MIN_ORDER_SAMPLES, "min_time_s": 1.0, "max_time_s": 20.0}
CPU_BUDGET = {"warmup": 1, "min_repeats": 3, "min_time_s": 0.1, "max_time_s": 2.0}
CPU_SIMULATED_TOLERANCE = 0.25
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


@pytest.fixture(scope="module")
def latency_ids(qcheck_reference, qcheck_device):
    """Seeded random token ids at the run's shape (never zeros)."""
    b, s = GPU_SHAPE if _cuda(qcheck_device) else CPU_SHAPE
    return random_input_ids(qcheck_reference.model.config.vocab_size, b, s, device=qcheck_device, seed=0)


@pytest.fixture(scope="module")
def latency_of(qcheck_variants, latency_ids, qcheck_device, qcheck_report):
    """`latency_of(name)` -> (Timing, VariantKind), measured once and recorded as the latency_ms metric."""
    cache: dict[str, tuple] = {}
    budget = GPU_BUDGET if _cuda(qcheck_device) else CPU_BUDGET
    qcheck_report.meta.setdefault("latency", {})["device"] = device_info(qcheck_device).to_dict()

    def get(name: str):
        if name not in cache:
            model = qcheck_variants.model(name)
            report = None if name == REFERENCE else qcheck_variants.get(name).report
            if _cuda(qcheck_device):
                torch.cuda.synchronize(qcheck_device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(qcheck_device)
                base = torch.cuda.memory_allocated(qcheck_device)
            t = time_forward(model, latency_ids, label=name, tf32=False, **budget)
            kind = variant_kind(model, report)
            cache[name] = (t, kind)
            qcheck_report.add_metric(name, "latency_ms", t.to_metric(
                simulated=kind.simulated, kind=kind.reason, shape=list(latency_ids.shape),
                regime=classify_regime(t).kind, tf32=False))
            memory = {"weights_mb": round(model_stored_bytes(model) / 2**20, 2), "shape": list(latency_ids.shape),
                      "what": "parameter + buffer bytes as stored (packed where the backend packs)"}
            if _cuda(qcheck_device):
                memory.update(peak_forward_mb=round((torch.cuda.max_memory_allocated(qcheck_device) - base) / 2**20, 2),
                              resident_mb=round(base / 2**20, 2),
                              peak_what="torch.cuda.max_memory_allocated during the timed forwards, above what was "
                                        "allocated before (every loaded variant's weights)")
            qcheck_report.add_metric(name, "memory", memory)
        return cache[name]

    return get


def _timed_here(name: str, device: torch.device) -> bool:
    return _cuda(device) or name in CPU_TIMED


def test_latency_plausible(qcheck_variant, qcheck_variants, latency_of, latency_ids, qcheck_device, qcheck_record):
    if not _timed_here(qcheck_variant, qcheck_device):
        pytest.skip(f"{qcheck_variant} is not timed on CPU (CPU timing covers {', '.join(CPU_TIMED)}: 16-bit "
                    "matmuls are emulated on most CPUs); GPU runs time every variant")
    timing, _ = latency_of(qcheck_variant)
    model = qcheck_variants.model(qcheck_variant)
    qcheck_record(assert_plausible_speed(timing, flops=forward_flops(model, latency_ids.numel()),
                                         device=qcheck_device, variant=qcheck_variant,
                                         what=f"a forward of {tuple(latency_ids.shape)} tokens"))


def test_device_placement(qcheck_variant, qcheck_variants, qcheck_device, qcheck_record):
    qcheck_record(assert_placement(qcheck_variants.model(qcheck_variant), qcheck_device, variant=qcheck_variant))


def test_throughput_honest(qcheck_variants, latency_of, qcheck_device, qcheck_record):
    names = [REFERENCE] + [n for n in qcheck_variants.names if _timed_here(n, qcheck_device)]
    pairs = {n: latency_of(n) for n in names}
    tolerance = {} if _cuda(qcheck_device) else {"simulated_tolerance": CPU_SIMULATED_TOLERANCE}
    qcheck_record(assert_throughput_honest({n: p[0] for n, p in pairs.items()}, {n: p[1] for n, p in pairs.items()},
                                           reference=REFERENCE, **tolerance))


@pytest.fixture(scope="module")
def float_models(qcheck_reference):
    """fp32 / fp16 / bf16 casts of the reference (plain casts: no per-layer adapters adding host overhead)."""
    models = {"fp32": qcheck_reference.model}
    for name in ("fp16", "bf16"):
        models[name] = copy.deepcopy(qcheck_reference.model).to(_DTYPES[name])
    return models


@pytest.mark.gpu
@pytest.mark.parametrize("faster,slower,mode", [("fp16", "fp32", "faster"), ("bf16", "fp32", "faster"),
                                                ("autocast", "fp32", "not-slower")])
def test_latency_order(faster, slower, mode, float_models, latency_ids, qcheck_device, qcheck_record):
    def timed(name: str):
        model = float_models["fp32" if name == "autocast" else name]
        return time_forward(model, latency_ids, autocast=torch.float16 if name == "autocast" else None,
                            tf32=False, label=name, **GPU_BUDGET)

    result = qcheck_record(assert_latency_order(timed(faster), timed(slower), faster_name=faster,
                                                slower_name=slower, device=qcheck_device, mode=mode))
    if result.status == Status.SKIPPED:
        pytest.skip(result.message)


@pytest.mark.gpu
def test_slowdown_bound(qcheck_variant, qcheck_variants, latency_of, float_models, latency_ids, qcheck_device,
                        qcheck_record):
    variant = qcheck_variants.get(qcheck_variant)
    if qcheck_variant in ("fp16", "bf16"):
        pytest.skip(f"{qcheck_variant} is a float reference, not a quantized variant")
    dtype = variant.dtype_name
    ref_model = float_models.get(dtype, float_models["fp32"])
    reference = time_forward(ref_model, latency_ids, tf32=False, label=dtype, **GPU_BUDGET)
    timing, _ = latency_of(qcheck_variant)
    causes, kernels = {}, []
    if timing.median_ms > DEFAULT_SLOWDOWN_FACTOR * reference.median_ms:
        profile = profile_call(forward_callable(variant.model, latency_ids), qcheck_device)
        causes = diagnose_slowdown(variant.model, device=qcheck_device, report=variant.report, profile=profile)
        kernels = time_by_kernel(profile, qcheck_device)
    formats = {r.format for r in variant.report.layers if r.applied}
    qcheck_record(assert_slowdown_bound(reference, timing, variant=qcheck_variant, reference_name=dtype,
                                        backend_format=formats.pop() if len(formats) == 1 else None, causes=causes,
                                        kernels=kernels))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fp32", "fp16"])
def test_energy_per_token(name, float_models, latency_ids, qcheck_device, qcheck_report, qcheck_record):
    with pinned_flags(tf32=False):
        energy = measure_energy(forward_callable(float_models[name], latency_ids), device=qcheck_device,
                                window_s=2.0, idle_s=1.0)
    if not energy.supported:
        qcheck_record(CheckResult("energy_measured", Status.SKIPPED, energy.reason, variant=name,
                                  evidence=energy.to_dict()))
        pytest.skip(f"energy not measured: {energy.reason}")
    tokens = latency_ids.numel()
    qcheck_report.add_metric(name, "energy_j_per_token", {"value": energy.per_token(tokens), "unit": "J/token",
                                                          **energy.to_dict()})
    limit = device_info(qcheck_device).clocks.get("power_limit_w")
    ok = limit is None or energy.avg_power_w <= 1.1 * limit
    qcheck_record(CheckResult(
        "energy_measured", Status.PASS if ok else Status.FAIL, variant=name,
        message=(f"{energy.per_token(tokens) * 1000:.3f} mJ/token ({energy.joules_per_call:.3f} J per forward of "
                 f"{tokens} tokens, {energy.avg_power_w:.0f} W average, {energy.idle_power_w:.0f} W idle, "
                 f"{energy.calls} calls over {energy.window_s:.2f} s)" if ok else
                 f"average power {energy.avg_power_w:.0f} W exceeds the power limit {limit} W: the counter is wrong"),
        compared="NVML total-energy counter around back-to-back forwards", n=energy.calls,
        test="counter difference over a >= 1 s window", threshold={"max_power_w": limit},
        evidence=energy.to_dict()))
    assert ok
