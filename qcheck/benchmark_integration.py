"""pytest-benchmark that is right on GPUs: a synchronizing timer, pedantic rounds with warm-up, and qcheck's
fields (device, capability, dtype flags, regime, CUDA-event median) in the benchmark JSON.

pytest-benchmark reads `time.perf_counter` around its rounds and never synchronizes: on GPU code it times the
kernel launches. `synchronized_perf_counter` synchronizes every CUDA device before reading the clock; use it
with `--benchmark-timer qcheck.benchmark_integration.synchronized_perf_counter`, or through the
`qcheck_benchmark` fixture, which also sets it per test. Top-level imports stay light: the pytest plugin
imports this module.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

SYNC_TIMER_NAME = "qcheck.benchmark_integration.synchronized_perf_counter"


def synchronized_perf_counter() -> float:
    """time.perf_counter() after waiting for all queued CUDA work (a plain perf_counter without CUDA)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)
    return time.perf_counter()


def benchmark_extra_info(device: Any = None, *, timing: Any = None, regime: Any = None, **fields: Any
                         ) -> dict[str, Any]:
    """The fields qcheck adds to a benchmark's extra_info: device, capability, flags, clocks, regime, events."""
    from qcheck.measure.timing import device_info

    info = device_info(device).to_dict()
    out: dict[str, Any] = {"qcheck_device": info["device"], "qcheck_gpu": info["name"],
                           "qcheck_capability": info["capability"], "qcheck_tensor_cores": info["tensor_cores"],
                           "qcheck_driver": info["driver"], "qcheck_torch": info["torch"], "qcheck_cuda": info["cuda"],
                           "qcheck_flags": info["flags"], "qcheck_clocks": info["clocks"],
                           "qcheck_timer": SYNC_TIMER_NAME}
    if timing is not None:
        q1, q3 = timing.quartiles_ms
        out.update(qcheck_method=timing.method, qcheck_median_ms=timing.median_ms, qcheck_q1_ms=q1,
                   qcheck_q3_ms=q3, qcheck_rel_iqr=timing.rel_iqr, qcheck_n=timing.n,
                   qcheck_warmup_ms=list(timing.warmup_ms), qcheck_host_median_ms=timing.host_median_ms)
    if regime is not None:
        out.update(qcheck_regime=regime.kind, qcheck_regime_reason=regime.reason)
    out.update({f"qcheck_{k}": v for k, v in fields.items()})
    return out


class GpuBenchmark:
    """Wraps pytest-benchmark's fixture: synchronizing timer, pedantic rounds after warm-up rounds, and a
    CUDA-event measurement of the same callable whose median, IQR and regime go into extra_info."""

    def __init__(self, benchmark: Any) -> None:
        self.benchmark = benchmark
        benchmark._timer = synchronized_perf_counter
        self.timing: Any = None
        self.regime: Any = None

    @property
    def extra_info(self) -> dict[str, Any]:
        return self.benchmark.extra_info

    def __call__(self, fn: Callable[[], Any], *, device: Any = None, rounds: int = 20, warmup_rounds: int = 3,
                 iterations: int = 1, events: bool = True, **fields: Any) -> Any:
        """Benchmark `fn()` (pedantic mode) and record qcheck's fields; returns fn's last result."""
        import torch

        from qcheck.measure.timing import classify_regime, default_device, measure

        dev = torch.device(device) if device is not None else default_device()
        if dev.type != "cuda":
            self.benchmark._timer = time.perf_counter
        if events:
            self.timing = measure(fn, device=dev, warmup=warmup_rounds, min_repeats=rounds, min_time_s=0.0)
            self.regime = classify_regime(self.timing)
        self.extra_info.update(benchmark_extra_info(dev, timing=self.timing, regime=self.regime, **fields))
        return self.benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup_rounds, iterations=iterations)


@pytest.fixture
def qcheck_benchmark(benchmark: Any) -> GpuBenchmark:
    """pytest-benchmark's `benchmark`, made right for GPU code: `qcheck_benchmark(fn, device=..., rounds=...)`."""
    return GpuBenchmark(benchmark)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Add the GPU (name, capability, driver, flags, clocks as found) to pytest-benchmark's machine info."""
    try:
        import torch

        from qcheck.measure.timing import device_info

        if torch.cuda.is_available():
            machine_info["qcheck_gpu"] = device_info("cuda").to_dict()
    except Exception as exc:  # noqa: BLE001  (machine info must never break a benchmark run)
        machine_info["qcheck_gpu"] = {"unreadable": f"{type(exc).__name__}: {exc}"}
