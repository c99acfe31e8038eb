"""The false-alarm sweep (issue 17): the README's main job on other slices of every data set, none may FAIL.

    python benchmarks/false_alarm_sweep.py --slices 8-15 --out DIR          # runs `qcheck run --slice K` per slice
    python benchmarks/false_alarm_sweep.py --slices 0,8-15 --out DIR --summarize-only

Slice K is the K-th block of every data set the run reads (WikiText-2 tokens from K * --tokens, ARC-Easy questions
and GSM8K problems from K * their sample count): text and questions nobody tuned a threshold on. Each run writes its
reports into DIR/sK; the summary table gives per slice the verdict and exit code, the check counts, the closeness
changes of the near-lossless variants with their intervals, the KL of int8, the checks that warned or were
inconclusive, and the run's wall time and peak RSS (from its records).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _output import save

CHANGE = re.compile(r"([+-][0-9.]+%) \(95% interval \[([+-][0-9.]+%), ([+-][0-9.]+%)\]")
KL = re.compile(r"mean KL ([0-9.e-]+) nats/token .*top-1 agreement ([0-9.]+)%")


def parse_slices(text: str) -> list[int]:
    """'0,8-15' -> [0, 8, 9, ..., 15]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def run_slice(k: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """`qcheck run --slice k` in a subprocess: its exit code and wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qcheck.cli", "run", "--slice", str(k), "--out", str(out), *extra],
                          check=False, capture_output=True, text=True)
    return {"exit": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "last_line": (proc.stdout.strip().splitlines() or [""])[-1][:300]}


def summarize(k: int, folder: Path, run: dict[str, Any] | None) -> dict[str, Any]:
    """One slice's row from its report."""
    report = json.loads((folder / "qcheck-report.json").read_text())
    meta = report.get("records", {}).get("meta", {})
    row: dict[str, Any] = {"slice": k, "status": report["status"], "counts": report["counts"],
                           "offset_tokens": report["meta"].get("data", {}).get("perplexity_text", {}).get(
                               "offset_tokens"),
                           "failed": [], "attention": [], "closeness": {}, "kl": {},
                           "duration_s": report["meta"].get("duration_s"),
                           "rss_max_mb": meta.get("peak_memory", {}).get("rss_max_mb"), **(run or {})}
    for check in report["checks"]:
        label = f"{check['name']}[{check.get('variant')}]"
        if check["status"] in ("FAIL", "ERROR"):
            row["failed"].append(label)
        elif check["status"] in ("WARN", "INCONCLUSIVE"):
            row["attention"].append(label)
        if check["name"] == "precision_differs_from_fp32" and (m := CHANGE.search(check["message"])):
            row["closeness"][check["variant"]] = list(m.groups())
        if check["name"] == "kl_sane" and check["status"] == "PASS" and (m := KL.search(check["message"])):
            row["kl"][check["variant"]] = [float(m.group(1)), float(m.group(2))]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [("| slice | WikiText offset | verdict | pass / warn / inconclusive / fail / skip | closeness to fp32 "
              "(estimate [95% interval]) | int8 mean KL, top-1 | warned or inconclusive | wall | peak RSS |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["counts"]
        close = "; ".join(f"{v} {e} [{lo}, {hi}]" for v, (e, lo, hi) in sorted(r["closeness"].items()))
        kl = r["kl"].get("int8")
        wall = r.get("wall_s") or r.get("duration_s")
        exit_text = f" (exit {r['exit']})" if "exit" in r else ""
        lines.append(
            f"| {r['slice']} | {r['offset_tokens']} | {r['status']}{exit_text} | "
            f"{c.get('PASS', 0)} / {c.get('WARN', 0)} / {c.get('INCONCLUSIVE', 0)} / "
            f"{c.get('FAIL', 0) + c.get('ERROR', 0)} / {c.get('SKIPPED', 0)} | {close} | "
            f"{f'{kl[0]:.3g}, {kl[1]:.1f}%' if kl else ''} | {', '.join(r['attention'])} | "
            f"{f'{wall / 60:.1f} min' if wall else ''} | {r['rss_max_mb'] or ''} MiB |")
    failed = [f"slice {r['slice']}: {', '.join(r['failed'])}" for r in rows if r["failed"]]
    lines += ["", f"FAILs: {'; '.join(failed) if failed else 'none'} on {len(rows)} slices."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="8-15")
    parser.add_argument("--out", required=True)
    parser.add_argument("--summarize-only", action="store_true", help="read DIR/sK reports written before")
    parser.add_argument("--qcheck-arg", action="append", default=[], help="extra argument for qcheck run")
    args = parser.parse_args()
    root = Path(args.out)
    rows = []
    for k in parse_slices(args.slices):
        folder = root / f"s{k}"
        run = None if args.summarize_only else run_slice(k, folder, args.qcheck_arg)
        if (folder / "qcheck-report.json").exists():
            rows.append(summarize(k, folder, run))
            print(f"slice {k}: {rows[-1]['status']}", flush=True)
        else:
            print(f"slice {k}: no report ({run})", flush=True)
    text = table(rows)
    save(args.out, "false_alarm_sweep", rows, text)
    print(text)
    sys.exit(1 if any(r["failed"] for r in rows) or len(rows) < len(parse_slices(args.slices)) else 0)


if __name__ == "__main__":
    main()
