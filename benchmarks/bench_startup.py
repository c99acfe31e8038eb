"""Where `qcheck run`'s time before its first measurement goes on this machine: `validate_run` (imports, the memory
pre-check, the reference's load, the variants' validation) under cProfile, on a bench_scale folder (issue 20: 12-16 s
on the H100 machines of session 14 against 3.6 s on the 2-core CPU machine).

    python benchmarks/bench_startup.py --shape 135m --out DIR
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save
from bench_scale import SHAPES, build_apart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="135m", choices=sorted(SHAPES))
    parser.add_argument("--root", default="/tmp/qcheck-scale")
    parser.add_argument("--tokenizer", default=".device/smollm2-tokenizer")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    folder = build_apart(args.shape, args.tokenizer, Path(args.root), args.device)
    profiler = cProfile.Profile()
    profiler.enable()
    begun = time.perf_counter()
    from qcheck import timeline
    from qcheck.cli import build_parser
    from qcheck.runner import validate_run

    run_args = build_parser().parse_args(["run", "--model", str(folder), "--device", args.device, "--out",
                                          str(Path(args.root) / "startup-report")])
    validate_run(run_args)
    profiler.disable()
    seconds = time.perf_counter() - begun
    stats = pstats.Stats(profiler, stream=io.StringIO())
    ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])[:args.top]  # by cumulative time
    rows = [{"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "own_s": round(tt, 3),
             "cumulative_s": round(ct, 3)} for (f, line, fn), (_, nc, tt, ct, _) in ranked]
    data = {"shape": args.shape, "device": args.device, "validate_run_s": round(seconds, 2),
            "script_start_to_profile_s": round(begun - START, 2), "marks": timeline.marks(), "top": rows}
    lines = [f"validate_run on the {args.shape} shape ({args.device}): {seconds:.2f} s; marks {data['marks']}", "",
             "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
    lines += [f"| {r['function']} | {r['calls']} | {r['own_s']} | {r['cumulative_s']} |" for r in rows]
    print("\n".join(lines))
    save(args.out, "bench_startup", data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
