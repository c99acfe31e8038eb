"""Timers that are right on GPUs, regime detection, NVML energy, and what the hardware can do.

GPU work is asynchronous: `measure` times with CUDA events (or synchronizes before reading a host clock),
keeps warm-up out of the samples and reports it separately, repeats until both a minimum count and a minimum
time are reached, and summarizes with the median and interquartile range. CPU work is timed with
`perf_counter_ns` and the same statistics. Clocks and power limits are read as found, never changed.
"""
from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, QCheckError


class TimingError(QCheckError):
    """A measurement could not be made as asked (graph capture failed, no samples, bad device)."""


# --------------------------------------------------------------------------------------------- hardware

# Dense datasheet peaks (FLOP/s) and memory bandwidth (B/s) by compute capability: (fp32, 16-bit, bytes/s).
_PEAKS: dict[tuple[int, int], tuple[float, float, float]] = {
    (6, 0): (10.6e12, 21.2e12, 0.73e12),   # P100: no tensor cores
    (6, 1): (12.1e12, 0.2e12, 0.48e12),    # Pascal consumer: slow fp16
    (7, 0): (15.7e12, 125e12, 0.90e12),    # V100
    (7, 5): (8.1e12, 65e12, 0.32e12),      # T4 / Turing
    (8, 0): (19.5e12, 312e12, 2.04e12),    # A100
    (8, 6): (35.6e12, 142e12, 0.94e12),    # A40 / RTX 30x0
    (8, 9): (91.6e12, 362e12, 0.86e12),    # L40S / Ada
    (9, 0): (67e12, 989e12, 4.8e12),       # H100 / H200
    (10, 0): (80e12, 2250e12, 8.0e12),     # B200
}
UNKNOWN_GPU_CEILING_FLOPS = 5.0e15
"""An upper bound on any single accelerator's FLOP/s (fp8/fp4 and sparsity included) for unknown GPUs."""
CEILING_SAFETY = 2.0
"""Implausible-speed ceilings are this multiple of the best datasheet rate (covers fp8 and sparsity)."""


def compute_capability(device: str | torch.device | None = None) -> tuple[int, int] | None:
    """The CUDA compute capability of `device`, or None for a non-CUDA device."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(dev))  # type: ignore[return-value]


def has_tensor_cores(device: str | torch.device | None = None) -> bool:
    """True for CUDA GPUs with tensor cores (compute capability >= 7.0)."""
    cc = compute_capability(device)
    return cc is not None and cc >= (7, 0)


def flops_ceiling(device: str | torch.device) -> float:
    """A generous upper bound on the FLOP/s `device` can reach in any dtype (implausible-speed rule, Z12)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        cc = compute_capability(dev)
        peaks = _PEAKS.get(cc) if cc is not None else None
        return CEILING_SAFETY * max(peaks[:2]) if peaks else UNKNOWN_GPU_CEILING_FLOPS
    if dev.type == "cpu":
        import os

        cores = os.cpu_count() or 1
        return cores * 2.0e11  # 64 FLOP/cycle (AVX-512 FMA, 2 units) at ~3 GHz per core: generous
    return UNKNOWN_GPU_CEILING_FLOPS


def numeric_flags() -> dict[str, Any]:
    """The numeric switches that change GPU speed: TF32 (matmul, cuDNN), matmul precision, cuDNN benchmark."""
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": _matmul_precision(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
            "fp16_reduced_precision_reduction": bool(
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)}


def _matmul_precision() -> str:
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:  # legacy allow_tf32 and the new fp32_precision API were both used
        return str(getattr(torch.backends.cuda.matmul, "fp32_precision", "unknown"))


@contextlib.contextmanager
def pinned_flags(*, tf32: bool = False, cudnn_benchmark: bool = False) -> Iterator[dict[str, Any]]:
    """Pin TF32 and cuDNN benchmark for a measurement and restore what was there; yields the pinned flags."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        yield numeric_flags()
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def _nvml() -> Any:
    """pynvml, initialised; raises TimingError saying why when NVML is not usable."""
    try:
        import pynvml
    except ImportError as exc:
        raise TimingError("NVML is not available: the package nvidia-ml-py is not installed") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise TimingError(f"NVML could not be initialised: {exc}") from exc
    return pynvml


def nvml_handle(device: str | torch.device) -> tuple[Any, Any]:
    """(pynvml, handle) for a CUDA device, matched by PCI bus id (robust to CUDA_VISIBLE_DEVICES)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise TimingError(f"NVML covers NVIDIA GPUs only, not device {dev}")
    nv = _nvml()
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    try:
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return nv, nv.nvmlDeviceGetHandleByPciBusId_v2(bus)
    except Exception:  # noqa: BLE001  (NVML raises one class per error code; any of them means: try by index)
        try:
            return nv, nv.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            raise TimingError(f"NVML has no handle for {dev}: {exc}") from exc


def clocks_as_found(device: str | torch.device) -> dict[str, Any]:
    """SM/memory clocks, their maxima, power limit, P-state and temperature as found (never changed).

    Readings NVML refuses are left out and named under "unreadable"."""
    try:
        nv, h = nvml_handle(device)
    except TimingError as exc:
        return {"unreadable": str(exc)}
    readings: dict[str, Callable[[], Any]] = {
        "sm_clock_mhz": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
        "sm_clock_max_mhz": lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
        "mem_clock_max_mhz": lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM),
        "power_limit_w": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        "power_w": lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
        "pstate": lambda: int(nv.nvmlDeviceGetPerformanceState(h)),
        "temperature_c": lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
        "driver": lambda: _text(nv.nvmlSystemGetDriverVersion()),
    }
    out: dict[str, Any] = {}
    failed = []
    for key, read in readings.items():
        try:
            out[key] = read()
        except Exception:  # noqa: BLE001  (an unreadable clock is recorded as such, whatever NVML raised)
            failed.append(key)
    if failed:
        out["unreadable"] = failed
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeviceInfo:
    """What a timing ran on: device, GPU name, capability, tensor cores, driver, versions, flags, clocks."""

    device: str
    name: str
    capability: tuple[int, int] | None
    tensor_cores: bool
    driver: str | None
    cuda: str | None
    torch: str
    multiprocessors: int | None
    memory_gib: float | None
    flags: Mapping[str, Any] = field(default_factory=dict)
    clocks: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "name": self.name,
                "capability": ".".join(map(str, self.capability)) if self.capability else None,
                "tensor_cores": self.tensor_cores, "driver": self.driver, "cuda": self.cuda, "torch": self.torch,
                "multiprocessors": self.multiprocessors, "memory_gib": self.memory_gib, "flags": dict(self.flags),
                "clocks": dict(self.clocks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceInfo:
        """The description `to_dict()` wrote (a stored run is judged without the device)."""
        cap = data.get("capability")
        capability = tuple(int(x) for x in str(cap).split(".")) if cap else None
        return cls(data["device"], data["name"], capability, bool(data["tensor_cores"]), data.get("driver"),
                   data.get("cuda"), data["torch"], data.get("multiprocessors"), data.get("memory_gib"),
                   dict(data.get("flags") or {}), dict(data.get("clocks") or {}))


def device_info(device: str | torch.device | None = None) -> DeviceInfo:
    """Describe `device` (default: cuda when available) with the numeric flags and clocks as found now."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TimingError("device cuda was asked for, but torch.cuda.is_available() is False")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        clocks = clocks_as_found(torch.device("cuda", index))
        cc = (props.major, props.minor)
        return DeviceInfo(str(dev), props.name, cc, cc >= (7, 0), clocks.get("driver"), torch.version.cuda,
                          torch.__version__, props.multi_processor_count, round(props.total_memory / 2**30, 1),
                          numeric_flags(), clocks)
    import os

    return DeviceInfo(str(dev), platform.processor() or platform.machine(), None, False, None, None,
                      torch.__version__, None, None,
                      {**numeric_flags(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()}, {})


# --------------------------------------------------------------------------------------------- timings

@dataclass(frozen=True)
class Timing:
    """Repeated measurements of one callable, warm-up kept apart. Times in milliseconds.

    `host_ms` is how long each call took to return on the host before synchronizing (GPU only): when it is
    close to the device time the GPU waited on kernel launches.
    """

    samples_ms: tuple[float, ...]
    warmup_ms: tuple[float, ...]
    method: str
    device: str
    total_s: float
    stop_reason: str
    host_ms: tuple[float, ...] = ()
    label: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise TimingError(f"timing {self.label!r} has no samples")
        bad = [s for s in self.samples_ms if not (math.isfinite(s) and s >= 0)]
        if bad:
            raise TimingError(f"timing {self.label!r} has non-finite or negative samples: {bad[:5]}")

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.samples_ms))

    @property
    def quartiles_ms(self) -> tuple[float, float]:
        if self.n < 2:
            return self.samples_ms[0], self.samples_ms[0]
        q = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return float(q[0]), float(q[2])

    @property
    def iqr_ms(self) -> float:
        q1, q3 = self.quartiles_ms
        return q3 - q1

    @property
    def rel_iqr(self) -> float:
        """Interquartile range over the median."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf

    @property
    def host_median_ms(self) -> float | None:
        return float(statistics.median(self.host_ms)) if self.host_ms else None

    def to_dict(self) -> dict[str, Any]:
        q1, q3 = self.quartiles_ms
        return {"label": self.label, "method": self.method, "device": self.device, "n": self.n,
                "median_ms": self.median_ms, "q1_ms": q1, "q3_ms": q3, "iqr_ms": self.iqr_ms,
                "rel_iqr": self.rel_iqr, "min_ms": min(self.samples_ms), "max_ms": max(self.samples_ms),
                "warmup_ms": list(self.warmup_ms), "host_median_ms": self.host_median_ms,
                "total_s": self.total_s, "stop_reason": self.stop_reason, "info": dict(self.info),
                "samples_ms": list(self.samples_ms), "host_ms": list(self.host_ms)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timing:
        """The timing `to_dict()` wrote (raw samples included)."""
        return cls(tuple(data["samples_ms"]), tuple(data.get("warmup_ms") or ()), data["method"], data["device"],
                   float(data["total_s"]), data["stop_reason"], tuple(data.get("host_ms") or ()),
                   data.get("label", ""), dict(data.get("info") or {}))

    def to_metric(self, **extra: Any) -> dict[str, Any]:
        """The report's latency_ms metric: median with the interquartile range as its interval."""
        q1, q3 = self.quartiles_ms
        return {"value": self.median_ms, "interval": {"low": q1, "high": q3, "kind": "interquartile range"},
                "unit": "ms", "n": self.n, "method": self.method, "device": self.device,
                "warmup_ms": list(self.warmup_ms), "rel_iqr": self.rel_iqr, **extra}


def default_device() -> torch.device:
    """cuda when available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def measure(fn: Callable[[], Any], *, device: str | torch.device | None = None, warmup: int = 3,
            min_repeats: int = 10, min_time_s: float = 0.25, max_repeats: int = 10_000, max_time_s: float = 30.0,
            graph: bool = False, label: str = "", info: Mapping[str, Any] | None = None) -> Timing:
    """Time `fn()`: `warmup` untimed-in-the-statistics calls (reported), then repeats until at least
    `min_repeats` samples AND `min_time_s` seconds (or a max is hit). CUDA: events around each call, the
    device idle before it; graph=True captures `fn` in a CUDA graph and times its replays. CPU: perf_counter_ns.
    """
    dev = torch.device(device) if device is not None else default_device()
    if min_repeats < 1 or warmup < 0 or max_repeats < min_repeats or min_time_s < 0 or max_time_s <= 0:
        raise ConfigError("measure needs warmup >= 0, 1 <= min_repeats <= max_repeats, min_time_s >= 0, "
                          "max_time_s > 0", field="min_repeats")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TimingError("CUDA timing asked for, but torch.cuda.is_available() is False")
        return _measure_cuda(fn, dev, warmup, min_repeats, min_time_s, max_repeats, max_time_s, graph, label,
                             dict(info or {}))
    if graph:
        raise ConfigError("CUDA-graph replay needs a CUDA device", field="graph")
    return _measure_cpu(fn, dev, warmup, min_repeats, min_time_s, max_repeats, max_time_s, label, dict(info or {}))


def _stop(n: int, elapsed: float, min_repeats: int, min_time_s: float, max_repeats: int,
          max_time_s: float) -> str | None:
    if n >= min_repeats and elapsed >= min_time_s:
        return f"reached {min_repeats} repeats and {min_time_s:g} s"
    if n >= max_repeats:
        return f"hit max_repeats={max_repeats} before {min_time_s:g} s"
    if elapsed >= max_time_s:
        return f"hit max_time_s={max_time_s:g} after {n} repeats"
    return None


def _measure_cpu(fn: Callable[[], Any], dev: torch.device, warmup: int, min_repeats: int, min_time_s: float,
                 max_repeats: int, max_time_s: float, label: str, info: dict[str, Any]) -> Timing:
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter_ns()
        fn()
        warm.append((time.perf_counter_ns() - t0) / 1e6)
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        reason = _stop(len(samples), time.perf_counter() - start, min_repeats, min_time_s, max_repeats, max_time_s)
        if reason:
            break
    return Timing(tuple(samples), tuple(warm), "perf_counter_ns", str(dev), time.perf_counter() - start, reason,
                  label=label, info=info)


def capture_graph(fn: Callable[[], Any], device: torch.device) -> Any:
    """Capture `fn` in a CUDA graph (after two warm-up calls on the process's side stream, `side_stream`); raises
    TimingError if it cannot."""
    from qcheck.measure.side_stream import side_stream

    try:
        side = side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize(device)
        return g
    except Exception as exc:
        torch.cuda.synchronize(device)
        raise TimingError(f"CUDA-graph capture failed: {type(exc).__name__}: {str(exc)[:300]}") from exc


def _measure_cuda(fn: Callable[[], Any], dev: torch.device, warmup: int, min_repeats: int, min_time_s: float,
                  max_repeats: int, max_time_s: float, graph: bool, label: str, info: dict[str, Any]) -> Timing:
    with torch.cuda.device(dev):
        torch.cuda.synchronize(dev)
        warm = []
        for _ in range(warmup):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            warm.append(s.elapsed_time(e))
        run = capture_graph(fn, dev).replay if graph else fn
        samples: list[float] = []
        host: list[float] = []
        start = time.perf_counter()
        while True:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            t0 = time.perf_counter_ns()
            run()
            t1 = time.perf_counter_ns()
            e.record()
            e.synchronize()
            samples.append(s.elapsed_time(e))
            host.append((t1 - t0) / 1e6)
            reason = _stop(len(samples), time.perf_counter() - start, min_repeats, min_time_s, max_repeats,
                           max_time_s)
            if reason:
                break
    return Timing(tuple(samples), tuple(warm), "cuda-graph" if graph else "cuda-events", str(dev),
                  time.perf_counter() - start, reason, host_ms=tuple(host), label=label, info=info)


def forward_callable(model: nn.Module, input_ids: torch.Tensor, *, autocast: torch.dtype | None = None
                     ) -> Callable[[], Any]:
    """A no-grad forward of a causal LM on `input_ids` (no KV cache), optionally under autocast."""
    device_type = input_ids.device.type

    def forward() -> Any:
        with torch.inference_mode():
            if autocast is not None:
                with torch.autocast(device_type, dtype=autocast):
                    return model(input_ids, use_cache=False)
            return model(input_ids, use_cache=False)

    return forward


def time_forward(model: nn.Module, input_ids: torch.Tensor, *, autocast: torch.dtype | None = None,
                 tf32: bool = False, graph: bool = False, label: str = "", **measure_kwargs: Any) -> Timing:
    """Time a model's forward on `input_ids` with TF32 pinned (off by default) and the flags recorded."""
    shape = tuple(input_ids.shape)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    with pinned_flags(tf32=tf32) as flags:
        return measure(forward_callable(model, input_ids, autocast=autocast), device=input_ids.device,
                       graph=graph, label=label,
                       info={"shape": list(shape), "tokens": int(input_ids.numel()), "param_dtypes": dtypes,
                             "autocast": str(autocast).removeprefix("torch.") if autocast else None, "flags": flags},
                       **measure_kwargs)


def random_input_ids(vocab_size: int, batch: int, seq: int, *, device: str | torch.device = "cpu",
                     seed: int = 0) -> torch.Tensor:
    """Seeded random token ids (never all zeros: degenerate inputs can time faster than real data)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (batch, seq), generator=gen).to(device)


# --------------------------------------------------------------------------------------------- regime

LAUNCH_BOUND = "launch-bound"
COMPUTE_BOUND = "compute-bound"
CPU_REGIME = "cpu"


@dataclass(frozen=True)
class Regime:
    """Whether a shape's time is set by kernel launches (host) or by the device's arithmetic/memory."""

    kind: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def launch_bound(self) -> bool:
        return self.kind == LAUNCH_BOUND

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "evidence": dict(self.evidence)}


def classify_regime(timing: Timing, graph_timing: Timing | None = None,
                    scaled: tuple[Timing, float] | None = None, *, host_ratio: float = 0.85,
                    graph_gain: float = 1.3) -> Regime:
    """Launch-bound when the host needs most of the device time to issue the work (host/device >= host_ratio),
    when CUDA-graph replay is `graph_gain` times faster than eager, or when `scaled` (a timing of `factor`
    times the work) grows less than a quarter of the work; compute-bound otherwise. CPU timings: 'cpu'."""
    if timing.method == "perf_counter_ns":
        return Regime(CPU_REGIME, "CPU timing: no launch/compute split", {"median_ms": timing.median_ms})
    evidence: dict[str, Any] = {"device_median_ms": timing.median_ms, "rel_iqr": timing.rel_iqr}
    reasons = []
    host = timing.host_median_ms
    if host is not None and timing.method == "cuda-events":
        ratio = host / timing.median_ms if timing.median_ms > 0 else math.inf
        evidence.update(host_median_ms=host, host_over_device=ratio)
        if ratio >= host_ratio:
            reasons.append(f"the host takes {host:.3g} ms to issue work the device finishes in "
                           f"{timing.median_ms:.3g} ms ({ratio:.0%} >= {host_ratio:.0%}): the GPU waits on launches")
    if graph_timing is not None:
        gain = timing.median_ms / graph_timing.median_ms if graph_timing.median_ms > 0 else math.inf
        evidence.update(graph_median_ms=graph_timing.median_ms, graph_gain=gain)
        if gain >= graph_gain:
            reasons.append(f"CUDA-graph replay is {gain:.2f}x faster than eager (>= {graph_gain}x)")
    if scaled is not None:
        big, factor = scaled
        growth = big.median_ms / timing.median_ms if timing.median_ms > 0 else math.inf
        evidence.update(scaled_work_factor=factor, scaled_time_factor=growth)
        if factor > 1 and growth < 1 + 0.25 * (factor - 1):
            reasons.append(f"{factor:g}x the work takes only {growth:.2f}x the time")
    if reasons:
        return Regime(LAUNCH_BOUND, "; ".join(reasons), evidence)
    return Regime(COMPUTE_BOUND, "the device, not kernel launches, sets the time"
                  + (f" (host/device {evidence['host_over_device']:.0%})" if "host_over_device" in evidence else ""),
                  evidence)


# --------------------------------------------------------------------------------------------- energy

@dataclass(frozen=True)
class Energy:
    """Energy per call from NVML's total-energy counter over a window of >= 1 s, with idle power measured.

    Unsupported devices give supported=False and the reason, never zeros."""

    supported: bool
    reason: str
    joules_per_call: float | None = None
    dynamic_joules_per_call: float | None = None
    avg_power_w: float | None = None
    idle_power_w: float | None = None
    calls: int = 0
    window_s: float = 0.0
    counter: str = "nvmlDeviceGetTotalEnergyConsumption (mJ)"

    def per_token(self, tokens: int) -> float | None:
        """Joules per token for a call that processes `tokens` tokens."""
        return self.joules_per_call / tokens if self.joules_per_call is not None and tokens > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("supported", "reason", "joules_per_call", "dynamic_joules_per_call",
                                               "avg_power_w", "idle_power_w", "calls", "window_s", "counter")}


MIN_ENERGY_WINDOW_S = 1.0
"""The shortest window `measure_energy` takes. NVML's total-energy counter advances every 100 ms on an H100, idle and
busy (benchmarks/bench_energy_counter.py, session 23), so a window's energy is known to about one update: +-10% of a
1 s window, +-5% of a 2 s one (joules per call over five repeats spread 8.7% and 4.4%, max - min over the mean). The
energy step takes 2 s windows: `energy_measured` allows 10% over the power limit, which a 1 s window's error could
reach on a GPU at its limit; the 1 s idle window is reported, not judged."""


def measure_energy(fn: Callable[[], Any], *, device: str | torch.device, window_s: float = 2.0,
                   idle_s: float = 1.0, warmup: int = 2, idle_w: float | None = None) -> Energy:
    """Energy of `fn()` on an NVIDIA GPU: idle power over `idle_s` (or `idle_w`, the idle power an earlier call
    measured on the same GPU), then calls back to back for >= `window_s` (>= 1 s: the counter updates far slower
    than a kernel) between two counter reads."""
    if window_s < MIN_ENERGY_WINDOW_S or (idle_w is None and idle_s < MIN_ENERGY_WINDOW_S):
        raise ConfigError(f"energy windows must be >= {MIN_ENERGY_WINDOW_S} s (NVML's counter updates slowly)",
                          field="window_s")
    dev = torch.device(device)
    if dev.type != "cuda":
        return Energy(False, f"energy is measured on NVIDIA GPUs through NVML; device {dev} has no such counter")
    try:
        nv, h = nvml_handle(dev)
        nv.nvmlDeviceGetTotalEnergyConsumption(h)
    except TimingError as exc:
        return Energy(False, str(exc))
    except Exception as exc:  # noqa: BLE001  (NVML's per-code error classes: all mean no energy counter)
        return Energy(False, f"this GPU does not support nvmlDeviceGetTotalEnergyConsumption: {exc}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(dev)
    if idle_w is None:
        e0, t0 = nv.nvmlDeviceGetTotalEnergyConsumption(h), time.perf_counter()
        time.sleep(idle_s)
        e1, t1 = nv.nvmlDeviceGetTotalEnergyConsumption(h), time.perf_counter()
        idle_w = (e1 - e0) / 1000.0 / (t1 - t0)
    calls = 0
    e2, t2 = nv.nvmlDeviceGetTotalEnergyConsumption(h), time.perf_counter()
    while True:
        fn()
        calls += 1
        if calls % 4 == 0 or time.perf_counter() - t2 >= window_s:
            torch.cuda.synchronize(dev)
            if time.perf_counter() - t2 >= window_s:
                break
    e3, t3 = nv.nvmlDeviceGetTotalEnergyConsumption(h), time.perf_counter()
    joules = (e3 - e2) / 1000.0
    window = t3 - t2
    if joules <= 0:
        return Energy(False, f"NVML's energy counter did not advance over {window:.2f} s ({joules} J): "
                             "the counter is not updated on this GPU", calls=calls, window_s=window)
    return Energy(True, "measured", joules / calls, max(0.0, joules - idle_w * window) / calls, joules / window,
                  idle_w, calls, window)


# --------------------------------------------------------------------------------------------- inputs, placement

def degenerate_tensors(obj: nn.Module | torch.Tensor | Mapping[str, Any] | list | tuple, name: str = "input"
                       ) -> list[str]:
    """Names of tensors that are all zeros: weight matrices (dim >= 2) of a module, or any input tensor.

    Zeros time faster than real data (a bf16 matmul ran 13% faster on zeros on an H200) and hide bugs."""
    found: list[str] = []
    if isinstance(obj, nn.Module):
        for pname, p in obj.named_parameters():
            if p.dim() >= 2 and p.numel() > 1 and p.device.type != "meta" and not bool(p.detach().any()):
                found.append(pname)
        return found
    if isinstance(obj, torch.Tensor):
        if obj.numel() > 1 and obj.device.type != "meta" and not bool(obj.detach().any()):
            found.append(name)
        return found
    items = obj.items() if isinstance(obj, Mapping) else ((f"{name}[{i}]", v) for i, v in enumerate(obj))
    for key, value in items:
        if isinstance(value, (torch.Tensor, nn.Module, Mapping, list, tuple)):
            found.extend(degenerate_tensors(value, str(key)))
    return found


def placement_problems(model: nn.Module, device: str | torch.device) -> dict[str, str]:
    """Parameters and buffers not on `device` (name -> where they are), plus accelerate offload entries; for a model
    placed with --device-map, those not where its device map puts them."""
    from qcheck.quant.offload import is_dispatched, misplaced

    if is_dispatched(model):
        return misplaced(model)
    want = torch.device(device)
    problems: dict[str, str] = {}
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if t.device.type != want.type or (want.index is not None and t.device.index not in (None, want.index)):
            problems[name] = str(t.device)
    device_map = getattr(model, "hf_device_map", None) or {}
    for name, where in device_map.items():
        if str(where) in ("cpu", "disk") and want.type != "cpu":
            problems.setdefault(f"hf_device_map:{name}", str(where))
    return problems


def forward_flops(model: nn.Module, tokens: int) -> float:
    """2 x (weights of every nn.Linear, lm_head included) x tokens: a floor on one forward's arithmetic."""
    weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return 2.0 * weights * tokens
