"""Latency, throughput and energy measured right (Z4, Z5, Z9, Z12).

Every timed variant's latency is recorded (CUDA events or perf_counter_ns, warm-up apart, median and IQR),
simulated (fake-quant) variants are marked and claim no speed-up, no variant is faster than its arithmetic
allows, and every model sits on the run's device. On a GPU: the latency ordering fp16/bf16 < fp32 and autocast
<= fp32 (tensor cores, compute-bound shapes only, else skipped with the reason), the slowdown bound against the
float reference of the same dtype with the cause named, and energy per token through NVML. Each variant is timed
once (qcheck.measure.latency); these checks judge the records.
"""
from __future__ import annotations

import pytest

from qcheck.invariants.latency import (
    assert_latency_order,
    assert_plausible_speed,
    assert_slowdown_bound,
    assert_throughput_honest,
    judge_placement,
)
from qcheck.measure.latency import VariantKind, unbounded_slowdown
from qcheck.measure.timing import DeviceInfo, Timing
from qcheck.results import CheckResult, Status
from qcheck.variants import REFERENCE

needs = pytest.mark.qcheck_needs
CPU_SIMULATED_TOLERANCE = 1.0
"""On a CPU a simulated variant may time up to 2x faster than fp32 before it counts (a GPU uses
invariants.latency.FLAT_TOLERANCE). Measured on a 2-core CPU at the CPU shape (1 x 32), five deep copies of one fp32
model, identical weights: their medians spread up to 1.42x (random-init GPT-NeoX, hidden 64; 1.15-1.42x over ten
architectures; SmolLM2-135M 1.10x). Each copy sits elsewhere in memory, a difference no number of samples of one
copy averages out; 25%, the spread of one copy timed again, WARNed Mistral and Qwen3 shapes (1.25x, 1.39x)."""


def _timing(data: dict) -> Timing:
    return Timing.from_dict(data["timing"])


@pytest.mark.qcheck_check("plausible_speed")
@needs("latency")
def test_latency_plausible(qcheck_variant, qcheck_records, qcheck_record):
    data = qcheck_records.data(qcheck_variant, "latency")
    qcheck_record(assert_plausible_speed(_timing(data), flops=data["flops"], ceiling=data["ceiling_flops_per_s"],
                                         device=data["device_info"]["device"], variant=qcheck_variant,
                                         what=f"a forward of {tuple(data['shape'])} tokens"))


@needs("build")
def test_device_placement(qcheck_variant, qcheck_records, qcheck_record):
    build = qcheck_records.data(qcheck_variant, "build")
    qcheck_record(judge_placement(build["placement"], build["tensors"], build["device"], variant=qcheck_variant))


@needs("latency", variants=lambda params, names: [REFERENCE, *names])
def test_throughput_honest(qcheck_records, qcheck_record):
    timed = [n for n in [REFERENCE, *qcheck_records.variants] if qcheck_records.has(n, "latency")]
    if REFERENCE not in timed:
        qcheck_records.data(REFERENCE, "latency")  # skips (or errors) with the reference's reason
    records = {n: qcheck_records.data(n, "latency") for n in dict.fromkeys(timed)}
    cpu = records[REFERENCE]["timing"]["method"] == "perf_counter_ns"
    tolerance = {"simulated_tolerance": CPU_SIMULATED_TOLERANCE} if cpu else {}
    qcheck_record(assert_throughput_honest({n: _timing(d) for n, d in records.items()},
                                           {n: VariantKind(**d["kind"]) for n, d in records.items()},
                                           reference=REFERENCE, **tolerance))


def _reference_timing(qcheck_records, dtype: str) -> Timing:
    """The reference's timing in `dtype`: its own latency record in its own dtype, else its cast to `dtype`; skips
    where no model of that dtype was timed (an fp32 timing under a 16-bit reference)."""
    if dtype == qcheck_records.reference_dtype:
        return _timing(qcheck_records.data(REFERENCE, "latency"))
    timings = qcheck_records.data(REFERENCE, "latency_casts")["timings"]
    if dtype not in timings:
        pytest.skip(f"no {dtype} model was timed: the reference is {qcheck_records.reference_dtype} "
                    f"(--reference-dtype), and qcheck casts it only to the 16-bit dtypes it is not")
    return Timing.from_dict(timings[dtype])


@pytest.mark.gpu
@needs("latency", "latency_casts", variants=lambda params, names: [REFERENCE])
@pytest.mark.parametrize("faster,slower,mode", [("fp16", "fp32", "faster"), ("bf16", "fp32", "faster"),
                                                ("autocast", "fp32", "not-slower")])
def test_latency_order(faster, slower, mode, qcheck_records, qcheck_record):
    if qcheck_records.reference_dtype != "fp32":
        pytest.skip(f"the order {faster} {'<' if mode == 'faster' else '<='} fp32 needs an fp32 model, and the "
                    f"reference is {qcheck_records.reference_dtype} (--reference-dtype): none was timed")
    casts = qcheck_records.data(REFERENCE, "latency_casts")
    result = qcheck_record(assert_latency_order(_reference_timing(qcheck_records, faster), _reference_timing(
        qcheck_records, slower), faster_name=faster, slower_name=slower,
        device=DeviceInfo.from_dict(casts["device_info"]), mode=mode))
    if result.status == Status.SKIPPED:
        pytest.skip(result.message)


@pytest.mark.gpu
@needs("latency", variants=lambda params, names: [REFERENCE, params["qcheck_variant"]])
@needs("latency_casts", variants=lambda params, names: [REFERENCE])
def test_slowdown_bound(qcheck_variant, qcheck_records, qcheck_record):
    if qcheck_variant in ("fp16", "bf16"):
        pytest.skip(f"{qcheck_variant} is a float reference, not a quantized variant")
    data = qcheck_records.data(qcheck_variant, "latency")
    unbounded = unbounded_slowdown(qcheck_variant, data["kind"]["simulated"], qcheck_records.reference_dtype)
    if unbounded:
        pytest.skip(unbounded)
    dtype = data["dtype_name"]
    slowdown = data.get("slowdown") or {}
    qcheck_record(assert_slowdown_bound(_reference_timing(qcheck_records, dtype), _timing(data),
                                        variant=qcheck_variant, reference_name=dtype,
                                        backend_format=data.get("backend_format"), causes=slowdown.get("causes"),
                                        kernels=slowdown.get("kernels") or ()))


@pytest.mark.qcheck_check("energy_measured", param="name")
@pytest.mark.gpu
@needs("energy", variants=lambda params, names: [REFERENCE])
@pytest.mark.parametrize("name", ["fp32", "fp16"])
def test_energy_per_token(name, qcheck_records, qcheck_record):
    data = qcheck_records.data(REFERENCE, "energy")
    energy = data["energy"][name]
    if not energy.get("supported"):
        qcheck_record(CheckResult("energy_measured", Status.SKIPPED, energy.get("reason", "not supported"),
                                  variant=name, evidence=energy))
    dtype = energy.get("dtype", name)
    what = f"the reference in {dtype}: " if dtype != name else ""
    tokens = data["tokens"]
    per_token = energy["joules_per_call"] / tokens
    limit = data.get("power_limit_w")
    ok = limit is None or energy["avg_power_w"] <= 1.1 * limit
    qcheck_record(CheckResult(
        "energy_measured", Status.PASS if ok else Status.FAIL, variant=name,
        message=(f"{what}{per_token * 1000:.3f} mJ/token ({energy['joules_per_call']:.3f} J per forward of {tokens} tokens, "
                 f"{energy['avg_power_w']:.0f} W average, {energy['idle_power_w']:.0f} W idle, {energy['calls']} "
                 f"calls over {energy['window_s']:.2f} s)" if ok else
                 f"average power {energy['avg_power_w']:.0f} W exceeds the power limit {limit} W: the counter is "
                 "wrong"),
        compared="NVML total-energy counter around back-to-back forwards", n=energy["calls"],
        test="counter difference over a >= 1 s window", threshold={"max_power_w": limit}, evidence=energy))
    assert ok

