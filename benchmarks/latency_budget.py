"""Would a smaller timing budget change a verdict? Judge a stored run again with its timings cut short.

    python benchmarks/latency_budget.py REPORT.json --min-time-s 0.5 --out DIR

A timed forward is repeated until `min_repeats` samples AND `min_time_s` seconds (`qcheck.measure.latency`,
GPU_BUDGET: 20 and 1.0 s; on the 135M and 1.2B shapes that is 13-19 s of a GPU run). This takes a run's report
(`bench_scale.py` keeps each under its --out), keeps of every latency and latency-casts timing only its first
samples, as many as the smaller budget would have taken (at least `--min-repeats`, then until their sum reaches
`--min-time-s`), recomputes each timing's summary and the latency record's regime from the kept samples, and judges
both reports with `qcheck judge`. Written: the cut report, both verdict lists, and the checks whose verdicts differ.

The cut is what the smaller budget would have measured only if the first samples are representative: the samples
are consecutive calls after the same warm-up, so a drift over the window (clocks, heat) is cut with the rest.
Energy keeps its NVML windows (at least 1 s each, `MIN_ENERGY_WINDOW_S`), and a variant's slowdown profile, taken
once after its timing, is kept as it was.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _output import save
from bench_scale import verdicts

from qcheck.measure.timing import Timing, classify_regime

TIMED = ("latency", "latency_casts")


def cut_samples(samples: list[float], min_repeats: int, min_time_s: float) -> int:
    """How many of the first samples (ms) a budget of `min_repeats` and `min_time_s` would have kept."""
    total = 0.0
    for n, sample in enumerate(samples, start=1):
        total += sample / 1000
        if n >= min_repeats and total >= min_time_s:
            return n
    return len(samples)


def cut_timing(data: dict[str, Any], min_repeats: int, min_time_s: float) -> dict[str, Any]:
    """A timing's dict (`Timing.to_dict`) with only its first samples, its summary recomputed."""
    n = cut_samples(list(data["samples_ms"]), min_repeats, min_time_s)
    kept = dict(data, samples_ms=list(data["samples_ms"][:n]), host_ms=list((data.get("host_ms") or [])[:n]),
                total_s=sum(data["samples_ms"][:n]) / 1000,
                stop_reason=f"cut to {n} of {len(data['samples_ms'])} samples (latency_budget.py: {min_repeats} "
                            f"repeats and {min_time_s:g} s)")
    return Timing.from_dict(kept).to_dict()


def cut_report(report: dict[str, Any], min_repeats: int, min_time_s: float) -> tuple[dict[str, Any], list[dict]]:
    """The report with every timed record cut, and a row per timing: variant, measurement, samples before/after,
    median before/after."""
    out = copy.deepcopy(report)
    rows = []
    for record in (out.get("records") or {}).get("records") or []:
        if record.get("measurement") not in TIMED or record.get("status") != "ok":
            continue
        data = record["data"]
        timings = {"timing": data["timing"]} if "timing" in data else data.get("timings") or {}
        for key, timing in timings.items():
            new = cut_timing(timing, min_repeats, min_time_s)
            rows.append({"variant": record["variant"], "measurement": record["measurement"], "timing": key,
                         "samples": [len(timing["samples_ms"]), len(new["samples_ms"])],
                         "median_ms": [round(timing["median_ms"], 4), round(new["median_ms"], 4)],
                         "seconds": [round(sum(timing["samples_ms"]) / 1000, 3),
                                     round(sum(new["samples_ms"]) / 1000, 3)]})
            timings[key] = new
        if "timing" in data:
            data["timing"] = timings["timing"]
            data["regime"] = classify_regime(Timing.from_dict(data["timing"])).to_dict()
    return out, rows


def judge(path: Path, out: Path) -> dict[str, str]:
    """`qcheck judge` of a report: each check's status keyed `name[variant]` (`bench_scale.verdicts`)."""
    subprocess.run([sys.executable, "-m", "qcheck.cli", "judge", str(path), "--out", str(out)], check=False,
                   capture_output=True, text=True, timeout=600)
    return verdicts(json.loads((out / "qcheck-report.json").read_text(encoding="utf-8"))["checks"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="a qcheck-report.json of a GPU run")
    parser.add_argument("--min-time-s", type=float, required=True, help="the smaller budget's seconds per timing")
    parser.add_argument("--min-repeats", type=int, default=20, help="its samples per timing (default 20, as now)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    cut, rows = cut_report(report, args.min_repeats, args.min_time_s)
    with tempfile.TemporaryDirectory(prefix="qcheck-budget-") as tmp:
        cut_path = Path(tmp) / "cut.json"
        cut_path.write_text(json.dumps(cut), encoding="utf-8")
        before, after = judge(Path(args.report), Path(tmp) / "before"), judge(cut_path, Path(tmp) / "after")
    differ = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
    saved = sum(r["seconds"][0] - r["seconds"][1] for r in rows)
    data = {"args": vars(args), "timings": rows, "timed_seconds_saved": round(saved, 2), "checks": len(before),
            "differ": differ, "before": before, "after": after}
    lines = [(f"{len(rows)} timings cut to {args.min_repeats} repeats and {args.min_time_s:g} s: "
              f"{saved:.1f} s of timed forwards fewer; {len(before)} checks judged, {len(differ)} differ")]
    lines += [f"- {k}: {a} -> {b}" for k, (a, b) in differ.items()]
    save(args.out, "latency_budget", data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
