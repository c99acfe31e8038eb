"""Where `qcheck run`'s time before its first measurement goes on this machine: `validate_run` (imports, the memory
pre-check, the reference's load, the variants' validation) under cProfile, on a bench_scale folder (issue 20: 12-16 s
on the H100 machines of session 14 against 3.6 s on the 2-core CPU machine).

    python benchmarks/bench_startup.py --shape 135m --out DIR
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import importlib.machinery
import io
import pstats
import sys
import time
import traceback
from pathlib import Path

START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save
from bench_scale import SHAPES, build_apart


def _package_of(filename: str) -> str:
    """The top-level package a source file belongs to, for grouping (site-packages/<pkg>/..., else the repo's)."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    return parts[-2] if len(parts) > 1 else filename


def _watch(totals: dict[str, collections.Counter]) -> None:
    """Time two suspects of the device's slow start-up, each by who caused it: bytecode compiled because no .pyc was
    cached (3,027 modules, 7-8 s, in session 15), and torch custom-op registrations (cProfile gave them 5.4 s of
    own time in session 15's first profile; timed directly, 14 registrations took 0.04 s)."""
    loader = importlib.machinery.SourceFileLoader
    compile_source = loader.source_to_code

    def timed_compile(self, data, path, *args, **kwargs):
        begun = time.perf_counter()
        try:
            return compile_source(self, data, path, *args, **kwargs)
        finally:
            totals["compiled_s_by_package"][_package_of(str(path))] += time.perf_counter() - begun
            totals["compiled_files_by_package"][_package_of(str(path))] += 1

    loader.source_to_code = timed_compile
    try:
        from torch._library import custom_ops
    except ImportError:
        return
    register = custom_ops.CustomOpDef._register_to_dispatcher

    def timed_register(self, *args, **kwargs):
        begun = time.perf_counter()
        try:
            return register(self, *args, **kwargs)
        finally:
            frames = [f.filename for f in traceback.extract_stack()[:-2]]
            outside = [f for f in frames if "/torch/" not in f and "importlib" not in f and "<frozen" not in f]
            cause = _package_of(outside[-1]) + ":" + Path(outside[-1]).name if outside else "?"
            totals["custom_op_s_by_namespace"][getattr(self, "_namespace", "?")] += time.perf_counter() - begun
            totals["custom_op_s_by_importer"][cause] += time.perf_counter() - begun
            totals["custom_op_count_by_importer"][cause] += 1

    custom_ops.CustomOpDef._register_to_dispatcher = timed_register


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
    totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    _watch(totals)
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
    by_own = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:args.top // 2]
    own_rows = [{"function": f"{f}:{line}({fn})", "own_s": round(tt, 3),
                 "callers": sorted(((f"{Path(cf).name}:{cl}({cn})", round(c[3], 3)) for (cf, cl, cn), c in
                                    callers.items()), key=lambda x: -x[1])[:4]}
                for (f, line, fn), (_, nc, tt, ct, callers) in by_own]
    rows = [{"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "own_s": round(tt, 3),
             "cumulative_s": round(ct, 3)} for (f, line, fn), (_, nc, tt, ct, _) in ranked]
    data = {"shape": args.shape, "device": args.device, "validate_run_s": round(seconds, 2),
            "script_start_to_profile_s": round(begun - START, 2), "marks": timeline.marks(), "top": rows,
            "top_own": own_rows, **{k: {p: round(v, 3) for p, v in c.most_common(15)} for k, c in totals.items()}}
    lines = [f"validate_run on the {args.shape} shape ({args.device}): {seconds:.2f} s; marks {data['marks']}", "",
             "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
    lines += [f"| {r['function']} | {r['calls']} | {r['own_s']} | {r['cumulative_s']} |" for r in rows]
    lines += ["", "By own time, with callers:"] + [f"- {r['function']} {r['own_s']} s <- {r['callers']}"
                                                 for r in own_rows]
    lines += [""] + [f"{k}: {data[k]}" for k in sorted(totals)]
    print("\n".join(lines))
    save(args.out, "bench_startup", data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
