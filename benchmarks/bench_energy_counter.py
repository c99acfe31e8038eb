"""How often NVML's total-energy counter advances, idle and under load, and how much the energy per call that
`qcheck.measure.timing.measure_energy` reports spreads between repeats with 1 s and 2 s windows: the evidence a
shorter energy window needs (the `energy_measured` check allows 10% over the power limit, so the counter's step over a
window must stay well below that).

    python benchmarks/bench_energy_counter.py --seconds 3 --repeats 5 --out DIR
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save


def _advances(nv: Any, handle: Any, seconds: float, busy: bool) -> dict[str, Any]:
    """Poll the counter for `seconds` (keeping the GPU busy with queued matmuls when `busy`): the intervals between
    the reads at which it changed."""
    a = torch.randn(8192, 8192, device="cuda")
    changes: list[tuple[float, int]] = []
    last = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    reads = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if busy and reads % 200 == 0:
            for _ in range(8):
                a = torch.tanh(a @ a)
        value = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
        reads += 1
        if value != last:
            changes.append((time.perf_counter(), value - last))
            last = value
    torch.cuda.synchronize()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(changes)]
    return {"busy": busy, "seconds": seconds, "reads": reads, "changes": len(changes),
            "median_interval_ms": 1000 * statistics.median(gaps) if gaps else None,
            "max_interval_ms": 1000 * max(gaps) if gaps else None,
            "median_step_mj": statistics.median(d for _, d in changes) if changes else None}


def _spread(window_s: float, repeats: int) -> dict[str, Any]:
    """measure_energy of one fixed GPU workload `repeats` times with a `window_s` window: joules per call's spread."""
    from qcheck.measure.timing import measure_energy

    a = torch.randn(4096, 4096, device="cuda")

    def fn() -> None:
        torch.tanh(a @ a)

    runs = [measure_energy(fn, device="cuda", window_s=window_s, idle_s=1.0) for _ in range(repeats)]
    per_call = [r.joules_per_call for r in runs]
    power = [r.avg_power_w for r in runs]
    mean = statistics.mean(per_call)
    return {"window_s": window_s, "repeats": repeats, "joules_per_call": per_call, "avg_power_w": power,
            "relative_spread": (max(per_call) - min(per_call)) / mean,
            "cv": statistics.stdev(per_call) / mean if repeats > 1 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/energy"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from qcheck.measure.timing import nvml_handle

    nv, handle = nvml_handle("cuda")
    rows = [_advances(nv, handle, args.seconds, busy) for busy in (False, True)]
    spreads = [_spread(w, args.repeats) for w in (1.0, 2.0)]
    lines = ["| GPU | reads | counter changes | median interval ms | max interval ms | median step mJ |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {'busy' if r['busy'] else 'idle'} | {r['reads']} | {r['changes']} | "
                     f"{r['median_interval_ms']} | {r['max_interval_ms']} | {r['median_step_mj']} |")
    lines += ["", "| window s | joules per call (repeats) | average W | max-min / mean | CV |",
              "| --- | --- | --- | --- | --- |"]
    for s in spreads:
        lines.append(f"| {s['window_s']} | {', '.join(f'{j:.5f}' for j in s['joules_per_call'])} | "
                     f"{', '.join(f'{w:.0f}' for w in s['avg_power_w'])} | {s['relative_spread']:.4f} | "
                     f"{s['cv']:.4f} |")
    text = "\n".join(lines)
    print(text)
    save(args.out, "bench_energy_counter", {"args": vars(args) | {"out": str(args.out)}, "counter": rows,
                                            "spread": spreads}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
