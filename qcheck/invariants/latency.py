"""Latency and throughput invariants (Z4, Z5, Z9, Z12) and the audit that names planted timing bugs.

Each assert_* returns a CheckResult when it holds (or is SKIPPED / INCONCLUSIVE with the reason) and raises
InvariantViolation when it does not. Nothing here knows about pytest.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError
from qcheck.measure.latency import DEFAULT_SLOWDOWN_FACTOR, MIN_ORDER_SAMPLES, VariantKind
from qcheck.measure.timing import (
    COMPUTE_BOUND,
    LAUNCH_BOUND,
    DeviceInfo,
    Regime,
    Timing,
    classify_regime,
    degenerate_tensors,
    device_info,
    flops_ceiling,
    measure,
    placement_problems,
)
from qcheck.results import CheckResult, Status, raise_if_failed

ORDER_ALPHA = 0.01
"""Significance level of every latency ordering test (one-sided Mann-Whitney U): a 1% false-alarm rate per pair."""
FLAT_TOLERANCE = 0.05
"""Throughput within 5% across real bit widths 2x apart is 'flat' (seed 000's +-1.6%); an ordering claim allows
the same 5% for autocast vs fp32."""

KNOWN_BACKEND_COSTS: dict[str, tuple[float, str]] = {
    "bnb-int8": (6.0, ("LLM.int8 (bitsandbytes, outlier threshold > 0) decomposes each matmul into an int8 and an "
                      "fp16 part: 4.3x slower than fp16 at 32x512 on an H100")),
    "bnb-nf4": (3.0, ("bitsandbytes NF4 dequantizes weights to 16-bit before each matmul at batch > 1: 1.9x "
                     "slower than fp16 at 32x512 on an H100")),
    "torchao-int4-wo": (12.0, ("torchao's int4 weight-only kernel (tinygemm, aten::_weight_int4pack_mm) is built "
                               "for small-batch decoding; at 32x512 tokens on SmolLM2-135M it ran 7.4x (H100) and "
                               "8.0x-8.9x (H200) slower than bf16, whose own forward is launch-bound there")),
}
"""Slowdowns vs the 16-bit reference that a backend's own kernels explain (measured, not a fallback)."""


def _p_less(a: Iterable[float], b: Iterable[float]) -> float:
    from qcheck.stats import mann_whitney_less

    return mann_whitney_less(list(a), list(b))


def _describe(t: Timing) -> str:
    q1, q3 = t.quartiles_ms
    return f"{t.median_ms:.4g} ms (IQR {q1:.4g}-{q3:.4g}, n={t.n})"


# --------------------------------------------------------------------------------------------- ordering (Z5)

def _info(device: DeviceInfo | str | torch.device | None, timing: Timing) -> DeviceInfo:
    if isinstance(device, DeviceInfo):
        return device
    return device_info(device if device is not None else timing.device)


def assert_latency_order(faster: Timing, slower: Timing, *, faster_name: str = "fp16", slower_name: str = "fp32",
                         device: DeviceInfo | str | torch.device | None = None, regime: Regime | None = None,
                         mode: str = "faster", alpha: float = ORDER_ALPHA, tolerance: float = FLAT_TOLERANCE,
                         min_samples: int = MIN_ORDER_SAMPLES, variant: str | None = None) -> CheckResult:
    """On tensor-core GPUs (cc >= 7.0) at compute-bound shapes, `faster` beats `slower` (mode "faster") or is
    not slower beyond `tolerance` (mode "not-slower", e.g. autocast vs fp32), by a one-sided Mann-Whitney test
    at `alpha`. Elsewhere: SKIPPED with the reason (no tensor cores, launch-bound, not a GPU). When only the
    expected-faster side is launch-bound, a decided ordering still passes (its kernels are faster still); a
    failure there is skipped as launch-bound, since launches, not the 16-bit kernels, set that time."""
    if mode not in ("faster", "not-slower"):
        raise ConfigError("mode must be 'faster' or 'not-slower'", field="mode")
    name = "latency_order"
    claim = f"{faster_name} {'<' if mode == 'faster' else '<='} {slower_name}"
    info = _info(device, slower)
    regimes = {faster_name: regime or classify_regime(faster), slower_name: regime or classify_regime(slower)}
    evidence: dict[str, Any] = {"claim": claim, "device": info.to_dict(), "regimes": {k: v.to_dict() for k, v in
                                                                                       regimes.items()},
                                faster_name: faster.to_dict(), slower_name: slower.to_dict()}
    flags = slower.info.get("flags", {}) if slower.info else {}
    if flags.get("tf32_matmul"):
        evidence["note"] = f"{slower_name} was timed with TF32 on: it then uses tensor cores too"
    basis = {"compared": f"{faster_name} vs {slower_name} latency, same shape, {faster.method}",
             "test": f"one-sided Mann-Whitney U, alpha={alpha}", "variant": variant}

    def skipped(reason_id: str, message: str) -> CheckResult:
        evidence["skip"] = reason_id
        return CheckResult(name, Status.SKIPPED, f"{claim} not asserted: {message}", n=min(faster.n, slower.n),
                           threshold={"alpha": alpha}, evidence=evidence, **basis)

    if not info.device.startswith("cuda"):
        return skipped("not-a-gpu", f"the ordering is a claim about GPU tensor cores; these timings ran on "
                                    f"{info.device} ({info.name})")
    if not info.tensor_cores:
        cc = ".".join(map(str, info.capability)) if info.capability else "?"
        return skipped("no-tensor-cores", f"{info.name} (compute capability {cc}) has no tensor cores (< 7.0): "
                                          "16-bit is not expected to be faster there")
    launch = [k for k, r in regimes.items() if r.kind == LAUNCH_BOUND]

    def launch_skip() -> CheckResult:
        return skipped("launch-bound", f"the shape is launch-bound for {', '.join(launch)} "
                                       f"({regimes[launch[0]].reason}): kernel launches, not arithmetic, set the "
                                       "time; time it with CUDA-graph replay or a larger shape")

    if slower_name in launch:
        return launch_skip()
    n = min(faster.n, slower.n)
    ratio = slower.median_ms / faster.median_ms
    p_faster = _p_less(faster.samples_ms, slower.samples_ms)
    p_slower = _p_less(slower.samples_ms, faster.samples_ms)
    evidence.update(speedup=ratio, p_faster=p_faster, p_slower=p_slower)
    text = f"{faster_name} {_describe(faster)} vs {slower_name} {_describe(slower)} on {info.name}"
    if mode == "faster":
        if p_faster < alpha and ratio > 1:
            status, message = Status.PASS, f"{text}: {ratio:.2f}x faster (p={p_faster:.2g})" + (
                f"; {faster_name} is launch-bound, so its arithmetic is faster still" if launch else "")
        elif launch:
            return launch_skip()
        elif p_slower < alpha:
            status, message = Status.FAIL, (f"{text}: {faster_name} is SLOWER ({1 / ratio:.2f}x, p={p_slower:.2g}) "
                                            "on a tensor-core GPU at a compute-bound shape")
        elif n < min_samples:
            status, message = Status.INCONCLUSIVE, (f"{text}: not decided at p<{alpha} with n={n} "
                                                    f"(< {min_samples}); measure longer")
        else:
            status, message = Status.FAIL, (f"{text}: {faster_name} is not faster beyond noise "
                                            f"(p={p_faster:.2g} >= {alpha}) on a tensor-core GPU at a compute-bound "
                                            "shape: are the 16-bit kernels used?")
    else:
        if p_slower < alpha and ratio < 1 - tolerance and launch:
            return launch_skip()
        if p_slower < alpha and ratio < 1 - tolerance:
            status, message = Status.FAIL, (f"{text}: {faster_name} is {1 / ratio:.2f}x SLOWER (p={p_slower:.2g}, "
                                            f"tolerance {tolerance:.0%}) on a tensor-core GPU at a compute-bound "
                                            "shape")
        elif n < min_samples:
            status, message = Status.INCONCLUSIVE, f"{text}: n={n} < {min_samples}; measure longer"
        else:
            status, message = Status.PASS, f"{text}: not slower ({ratio:.2f}x; p(slower)={p_slower:.2g})"
    return raise_if_failed(CheckResult(name, status, message, n=n, threshold={"alpha": alpha, "tolerance": tolerance,
                                                                       "mode": mode},
                               evidence=evidence, **basis))


# --------------------------------------------------------------------------------------------- honest throughput (Z4)

CPU_TIMING_WARNING = " (CPU timings: reported as a warning)"
"""How a throughput finding on CPU timings ends: a shared, noisy machine's timings make it a WARN, not a FAIL."""


def assert_throughput_honest(timings: Mapping[str, Timing], kinds: Mapping[str, VariantKind], *,
                             reference: str = "fp32", regime: Regime | None = None,
                             flat_tolerance: float = FLAT_TOLERANCE, simulated_tolerance: float = FLAT_TOLERANCE,
                             alpha: float = ORDER_ALPHA, fail_on_cpu: bool = False) -> CheckResult:
    """Simulated (fake-quant) variants claim no speed-up and are not measured faster than the reference
    (beyond `simulated_tolerance`, one-sided Mann-Whitney at `alpha`); real variants whose bit widths differ 2x
    or more are not flat within `flat_tolerance` on a tensor-core GPU at a compute-bound shape. CPU timings
    (shared, noisy machines) turn a finding into WARN unless `fail_on_cpu`."""
    if reference not in timings:
        raise ConfigError(f"no timing for the reference {reference!r}", field="reference")
    ref = timings[reference]
    regime = regime or classify_regime(ref)
    problems: list[str] = []
    claims: dict[str, Any] = {}
    for name, t in timings.items():
        kind = kinds.get(name, VariantKind(False, 32, "no kind given"))
        speedup = ref.median_ms / t.median_ms
        claims[name] = {"median_ms": t.median_ms, "bits": kind.bits, "simulated": kind.simulated,
                        "speedup_vs_reference": None if kind.simulated else speedup, "kind": kind.reason}
        if kind.simulated and name != reference:
            claims[name]["measured_ratio"] = speedup
            if speedup > 1 + simulated_tolerance and _p_less(t.samples_ms, ref.samples_ms) < alpha:
                problems.append(f"{name} is simulated ({kind.reason.split(':')[0]}) yet measured {speedup:.2f}x "
                                f"faster than {reference} ({t.median_ms:.4g} vs {ref.median_ms:.4g} ms): fake "
                                "quantization runs the float kernels, so the measurement is broken (warm-up in the "
                                "reference's samples, a missing synchronize, or different inputs)")
    real = {n: t for n, t in timings.items() if not claims[n]["simulated"]}
    flat: dict[str, Any] = {}
    if len(real) >= 2:
        bits = {n: claims[n]["bits"] for n in real}
        if max(bits.values()) / min(bits.values()) >= 2:
            medians = [t.median_ms for t in real.values()]
            spread = max(medians) / min(medians) - 1
            flat = {"spread": spread, "bits": bits, "tolerance": flat_tolerance}
            if spread <= flat_tolerance:
                msg = (f"throughput is flat across real bit widths {sorted(set(bits.values()), reverse=True)}: "
                       f"{', '.join(f'{n} {t.median_ms:.4g} ms' for n, t in real.items())} ({spread:.1%} spread, "
                       f"<= {flat_tolerance:.0%})")
                if regime.kind != COMPUTE_BOUND:
                    flat["note"] = msg + f" - not asserted at a {regime.kind} shape"
                else:
                    problems.append(msg + ": real low-precision kernels change speed; check the timer "
                                          "(synchronize, warm-up) and that the dtypes reached the kernels")
    evidence = {"claims": claims, "flat": flat, "regime": regime.to_dict(), "reference": reference}
    simulated = [n for n, c in claims.items() if c["simulated"]]
    on_cpu = ref.method == "perf_counter_ns"
    if problems:
        status = Status.WARN if on_cpu and not fail_on_cpu else Status.FAIL
        message = "; ".join(problems) + (CPU_TIMING_WARNING if status == Status.WARN else "")
    else:
        status = Status.PASS
        marked = (f"simulated ({', '.join(simulated)}) marked: no speed-up claimed" if simulated
                  else "no simulated variants")
        message = f"{len(timings)} timings consistent; {marked}"
    return raise_if_failed(CheckResult("throughput_honest", status, message, n=min(t.n for t in timings.values()),
                               compared=f"variant latencies vs {reference}; real variants across bit widths",
                               test=f"one-sided Mann-Whitney U (alpha={alpha}) for simulated speed-ups; "
                                    "max/min median spread for flatness",
                               threshold={"flat_tolerance": flat_tolerance,
                                          "simulated_tolerance": simulated_tolerance, "alpha": alpha},
                               evidence=evidence))


# --------------------------------------------------------------------------------------------- slowdown (Z9)

def assert_placement(model: nn.Module, device: str | torch.device, *, variant: str | None = None) -> CheckResult:
    """Every parameter and buffer sits on `device` (a model left partly on CPU runs, slowly, through copies)."""
    total = sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers())
    return judge_placement(placement_problems(model, device), total, str(device), variant=variant)


def judge_placement(problems: Mapping[str, str], total: int, device: str, *, variant: str | None = None
                    ) -> CheckResult:
    """The placement verdict from recorded misplaced tensors (name -> device) out of `total`."""
    where = Counter(problems.values())
    if problems:
        names = list(problems)
        status = Status.FAIL
        message = (f"{len(problems)} of {total} tensors are not on {device}: "
                   f"{', '.join(f'{c} on {d}' for d, c in where.items())} ({', '.join(names[:6])}"
                   f"{' ...' if len(names) > 6 else ''}): the model is partly on another device")
    else:
        status, message = Status.PASS, f"all {total} parameters and buffers on {device}"
    return raise_if_failed(CheckResult("device_placement", status, message, variant=variant, n=total,
                               compared=f"each parameter's and buffer's device vs {device}",
                               test="exact comparison", threshold="all on the timed device",
                               evidence={"misplaced": dict(list(problems.items())[:200]), "by_device": dict(where)}))


def assert_slowdown_bound(reference: Timing, timing: Timing, *, factor: float = DEFAULT_SLOWDOWN_FACTOR,
                          variant: str = "quantized", reference_name: str = "fp16", backend_format: str | None = None,
                          causes: Mapping[str, Any] | None = None, kernels: Sequence[Mapping[str, Any]] = (),
                          alpha: float = ORDER_ALPHA) -> CheckResult:
    """A quantized variant is at most `factor` times slower than the 16-bit reference (beyond noise: one-sided
    Mann-Whitney of factor x reference < variant). Over the bound: FAIL naming the likely cause from `causes`
    (diagnose_slowdown), or WARN when the backend's own documented cost explains it (the variant is not beyond that
    cost by the same one-sided test) and no fallback is found.
    `kernels` (time_by_kernel of the variant) names where its time goes in the message and evidence."""
    if factor <= 1:
        raise ConfigError("slowdown factor must be > 1", field="factor")
    ratio = timing.median_ms / reference.median_ms
    p = _p_less([factor * s for s in reference.samples_ms], timing.samples_ms)
    causes = dict(causes or {})
    evidence: dict[str, Any] = {"ratio": ratio, "p_over_bound": p, "factor": factor, "causes": causes,
                                reference_name: reference.to_dict(), variant: timing.to_dict()}
    text = f"{variant} {_describe(timing)} vs {reference_name} {_describe(reference)}: {ratio:.2f}x"
    known = KNOWN_BACKEND_COSTS.get(backend_format or "")
    own = causes.get("backend-own-ops")
    found = {k: v for k, v in causes.items() if k != "backend-own-ops"}
    if ratio <= factor or p >= alpha:
        status, message = Status.PASS, f"{text} (bound {factor:g}x)"
    elif found:
        status = Status.FAIL
        message = (f"{text} slower, over the {factor:g}x bound (p={p:.2g}); likely cause: "
                   + "; ".join(_cause_text(k, v) for k, v in found.items()))
    elif known and (p_known := _p_less([known[0] * s for s in reference.samples_ms], timing.samples_ms)) >= alpha:
        # the known cost is judged as the bound is, beyond noise: a host-bound backend's samples spread widely (LLM.int8
        # at 1.2B, bf16 reference, H100: 49-98 ms, median 6.39x, not beyond 6x at p=0.60)
        status = Status.WARN
        beyond = f"{ratio:.2f}x, " if ratio > known[0] else ""
        message = (f"{text} slower, over the {factor:g}x bound, but within the backend's known cost of "
                   f"{known[0]:g}x ({beyond}not beyond it at p={p_known:.2g}: {known[1]}); no fallback or placement "
                   "problem found" + (f" ({_cause_text('backend-own-ops', own)})" if own else ""))
        evidence["known_cost"] = {"max_factor": known[0], "why": known[1], "p_over_known": p_known}
    else:
        status = Status.FAIL
        message = (f"{text} slower, over the {factor:g}x bound (p={p:.2g}); no placement problem, host copies or "
                   "dequantize fallback found" + ("" if kernels else ": profile the variant"))
    if kernels and status != Status.PASS:
        evidence["time_by_kernel"] = [dict(k) for k in kernels]
        message += (f"; {kernels[0].get('clock', 'device')} time by kernel: "
                    + ", ".join(f"{k['kernel']} {k['share']:.0%}" for k in kernels[:3]))
    return raise_if_failed(CheckResult("slowdown_bound", status, message, variant=variant, n=min(reference.n, timing.n),
                               compared=f"{variant} vs {reference_name} latency at the same shape",
                               test=f"one-sided Mann-Whitney U of {factor:g}x reference < variant, alpha={alpha}",
                               threshold={"factor": factor}, evidence=evidence))


def _cause_text(key: str, value: Any) -> str:
    if key == "cpu-placement":
        return (f"CPU/device placement: {value['tensors']} tensors off the timed device ({value['by_device']}), e.g. "
                f"{', '.join(value['examples'][:3])}")
    if key == "backend-own-ops":
        return (f"the backend's own kernels and reads, {sum(value.values())} per call ("
                f"{', '.join(k.split('(')[0] for k in list(value)[:3])}), its normal path")
    if key == "host-device-copies":
        return f"host<->device copies on every call ({sum(value.values())} per call)"
    if key == "dequantize-per-call":
        return f"dequantize fallback: {sum(value.values())} dequantize ops per call ({', '.join(list(value)[:3])})"
    if key == "bnb-4bit-float32-compute":
        return f"{value['layers']} bitsandbytes 4-bit layers compute in float32 (compute_dtype), the slow path"
    if key == "per-call-hooks":
        return f"per-call hooks on {value['modules']} modules (fake quantization / dtype casts each call)"
    return f"{key}: {value}"


# --------------------------------------------------------------------------------------------- plausible speed (Z12)

def assert_plausible_speed(timing: Timing | float, *, flops: float, device: str | torch.device | None = None,
                           ceiling: float | None = None, variant: str | None = None,
                           what: str = "one call") -> CheckResult:
    """A measured time (Timing median, or milliseconds) is not below the arithmetic floor: `flops` over a
    generous ceiling of the device's FLOP/s (`ceiling`, else looked up for `device`). Faster means the work was not
    done (mock, cache, unsynced timer)."""
    ms = timing.median_ms if isinstance(timing, Timing) else float(timing)
    ceiling = ceiling if ceiling is not None else flops_ceiling(device)
    floor_ms = flops / ceiling * 1000.0
    evidence = {"measured_ms": ms, "flops": flops, "ceiling_flops_per_s": ceiling, "floor_ms": floor_ms,
                "device": str(device), "implied_flops_per_s": flops / (ms / 1000.0) if ms > 0 else math.inf}
    if ms < floor_ms:
        status = Status.FAIL
        message = (f"{what} took {ms:.4g} ms, faster than the arithmetic allows: {flops:.3g} FLOP at no more than "
                   f"{ceiling:.3g} FLOP/s on {device} needs >= {floor_ms:.4g} ms (implied "
                   f"{evidence['implied_flops_per_s']:.3g} FLOP/s). The work was not done or not waited for: a "
                   "mock/simulated evaluation, cached outputs, or a timer read before the GPU finished")
    else:
        status, message = Status.PASS, f"{what} took {ms:.4g} ms >= the arithmetic floor {floor_ms:.3g} ms"
    return raise_if_failed(CheckResult("plausible_speed", status, message, variant=variant, n=getattr(timing, "n", 1),
                               compared="measured time vs 2 x linear weights x tokens / peak FLOP/s",
                               test="floor comparison", threshold={"ceiling_flops_per_s": ceiling}, evidence=evidence))


# --------------------------------------------------------------------------------------------- timing audit

def audit_timing(fn: Callable[[], Any], *, device: str | torch.device, reported_ms: float | None = None,
                 samples_ms: Iterable[float] | None = None, inputs: Any = None, model: nn.Module | None = None,
                 flops: float | None = None, warmup: int = 3, min_repeats: int = 10, min_time_s: float = 0.2,
                 variant: str | None = None) -> CheckResult:
    """Check someone's timing of `fn` against qcheck's own and name what is wrong with it: "unsynchronized"
    (well under the CUDA-event time), "warmup-included" (first calls in the samples, or a mean far above the
    steady state), "zeros" (all-zero inputs or weights), "placement" (model partly on another device),
    "implausible-speed" (below the arithmetic floor). A reported figure far from qcheck's median but within the
    range of qcheck's own samples is INCONCLUSIVE, not a finding: the machine's speed moved during the audit (a CPU
    shared with another process ran an honest 14.9 ms against qcheck's samples of 6.7-7.0 ms, then 15.2-15.7 ms:
    session 28), and the ratio cannot tell the user's timing from the machine's. For the same reason a slow first
    call counts as warm-up only beyond every sample qcheck took after its own warm-up."""
    dev = torch.device(device)
    problems: dict[str, str] = {}
    evidence: dict[str, Any] = {}
    if model is not None:
        misplaced = placement_problems(model, dev)
        if misplaced:
            problems["placement"] = (f"model partly on another device than {dev}: {len(misplaced)} tensors "
                                     f"({dict(Counter(misplaced.values()))}), e.g. {', '.join(list(misplaced)[:3])}")
            evidence["misplaced"] = dict(list(misplaced.items())[:50])
    zeros = (degenerate_tensors(inputs, "input") if inputs is not None else []) + \
        (degenerate_tensors(model) if model is not None else [])
    if zeros:
        problems["zeros"] = (f"timing on zeros: {', '.join(zeros[:5])}{' ...' if len(zeros) > 5 else ''} "
                             "all zero; zeros can run faster than real data (13% for a bf16 matmul on an H200) and "
                             "hide wrong outputs: use seeded random data")
        evidence["zero_tensors"] = zeros[:200]
    ours = measure(fn, device=dev, warmup=warmup, min_repeats=min_repeats, min_time_s=min_time_s, label="qcheck")
    evidence["qcheck_timing"] = ours.to_dict()
    steady = ours.median_ms
    samples = list(samples_ms) if samples_ms is not None else []
    if samples:
        evidence["reported_samples_ms"] = samples[:1000]
        rest = samples[1:] if len(samples) > 1 else samples
        med_rest = statistics.median(rest)
        # the first call stands out only beyond every sample qcheck took itself after warm-up: on a busy machine
        # any call, the first included, can take twice the median (session 28: 15.9 ms against 7.3 ms, honest)
        if len(samples) >= 3 and samples[0] > 2 * med_rest and samples[0] > 2 * steady and \
                samples[0] > max(ours.samples_ms):
            problems["warmup-included"] = (f"the first timed call took {samples[0]:.4g} ms, "
                                           f"{samples[0] / med_rest:.1f}x "
                                           f"the rest's median {med_rest:.4g} ms: warm-up/compilation (lazy "
                                           "initialisation, autotuning, caches) is inside the samples; exclude it "
                                           "and report it separately")
        if reported_ms is None:
            reported_ms = statistics.median(samples)
    unsteady = None
    if reported_ms is not None:
        evidence["reported_ms"] = reported_ms
        ratio = reported_ms / steady if steady > 0 else math.inf
        evidence["reported_over_qcheck"] = ratio
        host = ours.host_median_ms
        low, high = min(ours.samples_ms), max(ours.samples_ms)
        if (ratio < 0.5 or ratio > 1.5) and low <= reported_ms <= high:
            unsteady = (f"reported {reported_ms:.4g} ms is {ratio:.2f}x qcheck's median {steady:.4g} ms, but within "
                        f"the range of qcheck's own {ours.n} samples ({low:.4g}-{high:.4g} ms, interquartile spread "
                        f"{ours.rel_iqr:.0%} of the median): the machine's speed moved during the audit (another "
                        "process, frequency or thermal changes), so the ratio judges nothing; rerun on a quiet "
                        "machine")
        elif dev.type == "cuda" and ratio < 0.5:
            near_host = host is not None and reported_ms <= 1.5 * host
            problems["unsynchronized"] = (
                f"timing without synchronize: reported {reported_ms:.4g} ms but the device needs {steady:.4g} ms "
                f"(CUDA events){f', about the {host:.4g} ms the host takes to launch the kernels' if near_host else ''}"
                ": the timer stopped when the kernels were queued, not when they finished; synchronize before "
                "reading the clock or use CUDA events")
        elif ratio > 1.5 and "warmup-included" not in problems:
            problems["warmup-included"] = (f"reported {reported_ms:.4g} ms is {ratio:.1f}x the steady-state "
                                           f"{steady:.4g} ms qcheck measured after warm-up (its warm-up calls: "
                                           f"{', '.join(f'{w:.4g}' for w in ours.warmup_ms)} ms): warm-up/"
                                           "compilation is included, or a different workload was timed")
        if flops is not None:
            ceiling = flops_ceiling(dev)
            floor_ms = flops / ceiling * 1000.0
            evidence["floor_ms"] = floor_ms
            if reported_ms < floor_ms:
                problems["implausible-speed"] = (f"reported {reported_ms:.4g} ms is below the arithmetic floor "
                                                 f"{floor_ms:.4g} ms ({flops:.3g} FLOP at <= {ceiling:.3g} FLOP/s)")
    evidence["problems"] = list(problems)
    if problems:
        status = Status.FAIL
        message = "; ".join(f"[{k}] {v}" for k, v in problems.items())
    elif unsteady is not None:
        status, message = Status.INCONCLUSIVE, unsteady
    else:
        status = Status.PASS
        message = (f"timing sound: {f'reported {reported_ms:.4g} ms vs ' if reported_ms is not None else ''}"
                   f"qcheck {_describe(ours)} on {dev}; inputs and weights not zero"
                   + ("; model on the device" if model is not None else ""))
    return raise_if_failed(CheckResult("timing_audit", status, message, variant=variant, n=ours.n,
                               compared="the reported timing vs qcheck's synchronized, warmed-up measurement; inputs, "
                                        "weights and placement",
                               test="ratio to the steady-state median; first-sample outlier; zero and device scans",
                               threshold={"unsynchronized_below": 0.5, "warmup_above": 1.5, "first_sample_over": 2.0,
                                          "inconclusive_when": "the reported figure lies within the range of "
                                                               "qcheck's own samples",
                                          "first_sample_also_above": "qcheck's slowest sample"},
                               evidence=evidence))
