"""How long building each variant takes, and where a slow build's time goes (issue 20).

    python benchmarks/bench_build.py --shape 1.2b --variants int8,bnb-int8,bnb-nf4 --out DIR

A random-init model of a bench_scale shape, in fp32 on the device, is quantized by `qcheck.quant.apply.quantize` with
each built-in plan twice (the first build pays imports and kernel loads); the second build of each variant named in
--profile runs under cProfile, and its top functions by own time are listed. In session 12's 1.2B run on an H100,
bitsandbytes' int8 and nf4 builds took 15.3 s and 9.5 s where qcheck's own int8 took 0.8 s.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save
from bench_scale import SHAPES


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_build(reference: torch.nn.Module, name: str, device: str, profile: bool, top: int
                ) -> tuple[float, list[dict[str, Any]]]:
    """Seconds for one build of `name` (the model released after), with cProfile's top rows when asked."""
    from qcheck.quant.apply import quantize
    from qcheck.variants import builtin_plan, free_memory

    profiler = cProfile.Profile() if profile else None
    _sync(device)
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    model, _ = quantize(reference, builtin_plan(name))
    _sync(device)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - start
    del model
    free_memory()
    rows: list[dict[str, Any]] = []
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=io.StringIO())
        ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # (cc, nc, tottime, cumtime, callers)
        rows = [{"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "own_s": round(tt, 3),
                 "cumulative_s": round(ct, 3)} for (f, line, fn), (_, nc, tt, ct, _) in ranked]
    return seconds, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1.2b", choices=sorted(SHAPES))
    parser.add_argument("--variants", default="int8,bnb-int8,bnb-nf4")
    parser.add_argument("--profile", default="bnb-int8,bnb-nf4", help="variants whose second build is profiled")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from qcheck.inputs.models import random_init_like, smollm2_config

    reference = random_init_like(smollm2_config(**SHAPES[args.shape]), seed=0, device=args.device)
    data: dict[str, Any] = {"shape": args.shape, "device": args.device, "torch": torch.__version__,
                            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "builds": {}}
    profiled = set(args.profile.split(","))
    for name in args.variants.split(","):
        first, _ = timed_build(reference, name, args.device, False, args.top)
        second, rows = timed_build(reference, name, args.device, name in profiled, args.top)
        data["builds"][name] = {"first_s": round(first, 2), "second_s": round(second, 2), "profile": rows}
        print(name, first, second, flush=True)
    title = (f"Variant builds, random-init {args.shape} shape in fp32 ({data['gpu'] or args.device}, torch "
             f"{data['torch']})")
    lines = [title, "", "| variant | first build s | second build s |", "|---|---|---|"]
    lines += [f"| {n} | {b['first_s']} | {b['second_s']} |" for n, b in data["builds"].items()]
    for name, build in data["builds"].items():
        if build["profile"]:
            lines += ["", f"{name}, second build under cProfile: top functions by own time", "",
                      "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
            lines += [f"| `{r['function']}` | {r['calls']} | {r['own_s']} | {r['cumulative_s']} |"
                      for r in build["profile"]]
    text = "\n".join(lines) + "\n"
    print(text)
    save(args.out, "bench_build", data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
