"""The same run with and without a device map that forces offload: same perplexities and verdicts (issue 20).

    python benchmarks/bench_device_map.py --shape 1.2b --max-memory 0=2GiB,cpu=64GiB --out DIR

Builds a random-init Llama folder of `--shape` (benchmarks/bench_scale.py's shapes), then runs `qcheck run` on it
twice in subprocesses: on one device, and with `--device-map auto --max-memory ...` (a budget that leaves part of
the model on the CPU or the disk). Recorded: each run's wall time, placement and peak memory; per variant the
perplexity of both runs and their relative difference (the bar: 1e-5); per check the two verdicts.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save
from bench_scale import build_folder, run

TOLERANCE = 1e-5


def compare(plain: dict[str, Any], mapped: dict[str, Any]) -> dict[str, Any]:
    """Relative perplexity differences per variant and the checks whose verdicts differ. The timing checks the
    offloaded run skips by design (its forwards time weight transfers) are listed apart, not compared."""
    diffs = {v: abs(mapped["perplexity"][v] / p - 1) for v, p in plain.get("perplexity", {}).items()
             if v in mapped.get("perplexity", {})}
    untimed = set(mapped.get("not_timed_offloaded") or ())
    compared = {k: v for k, v in plain.get("verdicts", {}).items() if k not in untimed}
    changed = {k: (v, mapped.get("verdicts", {}).get(k)) for k, v in compared.items()
               if mapped.get("verdicts", {}).get(k) != v}
    return {"relative_difference": diffs, "largest": max(diffs.values(), default=None),
            "variants_compared": len(diffs), "checks_compared": len(compared),
            "not_timed_offloaded": sorted(untimed), "verdicts_differ": changed,
            "ok": bool(diffs) and max(diffs.values()) <= TOLERANCE and not changed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1.2b")
    parser.add_argument("--tokenizer", default=".device/smollm2-tokenizer")
    parser.add_argument("--root", default="/tmp/qcheck-device-map")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-memory", default="0=2GiB,cpu=64GiB")
    parser.add_argument("--qcheck-arg", action="append", default=[], help="extra argument for both runs")
    parser.add_argument("--limit-s", type=float, default=600)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    root = Path(args.root)
    folder = build_folder(args.shape, args.tokenizer, root, args.device)
    plain = run(folder, root / "plain", args.device, args.qcheck_arg, args.limit_s)
    print("plain", json.dumps({k: v for k, v in plain.items() if k != "tail"}), flush=True)
    mapped = run(folder, root / "mapped", args.device,
                        ["--device-map", "auto", "--max-memory", args.max_memory, *args.qcheck_arg], args.limit_s)
    print("mapped", json.dumps({k: v for k, v in mapped.items() if k != "tail"}), flush=True)
    result = compare(plain, mapped)
    data = {"args": vars(args), "plain": plain, "mapped": mapped, "comparison": result}
    lines = [f"`qcheck run` on the {args.shape} shape, plain vs `--device-map auto --max-memory {args.max_memory}`", "",
             "| variant | perplexity (one device) | perplexity (device map) | relative difference |", "|---|---|---|---|"]
    for v, p in plain.get("perplexity", {}).items():
        q = mapped.get("perplexity", {}).get(v)
        lines.append(f"| {v} | {p:.6f} | {q if q is None else f'{q:.6f}'} | "
                     f"{result['relative_difference'].get(v, float('nan')):.1e} |")
    summary = (f"wall: {plain['wall_s']} s vs {mapped['wall_s']} s; exits {plain['exit']} / {mapped['exit']}; "
               f"{result['checks_compared']} checks compared, verdicts that differ: {result['verdicts_differ'] or 'none'}; "
               f"{len(result['not_timed_offloaded'])} timing checks skipped under offload by design "
               f"({', '.join(result['not_timed_offloaded']) or 'none'}); "
               f"placement: {mapped.get('placement')}")
    lines += ["", summary]
    text = "\n".join(lines)
    print(text)
    save(args.out, "bench_device_map", data, text)
    if not result["ok"]:
        print(plain["tail"], mapped["tail"], sep="\n", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
