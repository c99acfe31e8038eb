"""End-to-end wall time and peak memory of `qcheck run` at the model sizes users bring (issue 20).

    python benchmarks/bench_scale.py --shapes 135m,1.2b,8b --tokenizer .device/smollm2-tokenizer --out DIR

For each shape a random-init Llama folder is built on the device (weights' values do not change time or memory,
only quality verdicts) with SmolLM2's tokenizer, then `qcheck run --model FOLDER --device cuda` runs the default
variant set in a subprocess, timed from start to exit (model load included). Recorded per shape: wall time, the
run's verdict counts, the peak GPU memory the run's allocator saw against the reference plus its largest variant
(the bar: within 1.3x), the seconds per variant and per measurement from the run's records, each variant's build
(its seconds outside its measurements), what is left of the wall time (start-up, loading, judging, reports), and
the run's timeline (`qcheck.timeline`: seconds since qcheck started at each mark) with each phase's length,
the last being the reports and exit (the wall time after the last mark).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _output import save

SHAPES: dict[str, dict[str, Any]] = {
    "135m": {},
    "1.2b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
             "num_key_value_heads": 8, "tie_word_embeddings": True, "rope_theta": 500000.0},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": False, "rope_theta": 500000.0},
    "70b-slice": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 8, "num_attention_heads": 64,
                  "num_key_value_heads": 8, "tie_word_embeddings": False, "rope_theta": 500000.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}
SHAPES["1.2b-v128k"] = {**SHAPES["1.2b"], "vocab_size": 128256}
SHAPES["8b-v128k"] = {**SHAPES["8b"], "vocab_size": 128256}
"""Llama 3.2 1B / Llama 3.1 8B layer shapes, 8 of Llama 3.1 70B's 80 layers (each weight and head at 70B's size:
what one GPU can hold twice in bf16, 15 GB), all with SmolLM2's 49,152-token vocabulary (the tokenizer that travels),
and SmolLM2-135M itself (`qcheck.inputs.models.smollm2_config`). The `-v128k` shapes are Llama 3.2 1B and Llama 3.1
8B with their own 128,256-token vocabulary (the head and logits 2.6x wider; SmolLM2's tokenizer uses its first
49,152 ids, as Qwen's checkpoints carry more rows than their tokenizer has tokens)."""


def build_folder(shape: str, tokenizer: str, root: Path, device: str) -> Path:
    """A random-init model of `shape` saved in bf16 with the tokenizer (built on `device`: seconds for 8B)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qcheck.inputs.models import smollm2_config

    folder = root / f"llama-{shape}"
    if (folder / "config.json").is_file():
        return folder
    config = smollm2_config(**SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return folder


def build_apart(shape: str, tokenizer: str, root: Path, device: str) -> Path:
    """`build_folder` in a child process: the run that follows is another process, and GPU memory this one kept
    (cached blocks, a model alive in a reference cycle) would be memory the run lacks and its pre-check counts."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(build_folder, shape, tokenizer, root, device).result()


def run(folder: Path, out: Path, device: str, extra: list[str], limit_s: float) -> dict[str, Any]:
    """`qcheck run` on the folder in a subprocess: wall time, exit code and what its report says. Past `limit_s` it
    gets SIGTERM, and writes its report marked unfinished (what did not finish is listed there)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qcheck.cli", "run", "--model", str(folder), "--device", device,
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)  # the run writes its report (marked unfinished) on SIGTERM
    wall = time.perf_counter() - start
    written = re.search(r"report written in ([0-9.]+) s", output)
    row: dict[str, Any] = {"wall_s": round(wall, 1), "exit": proc.returncode, "head": output[:1500],
                           "tail": output[-3000:],
                           # of "reports and exit": the writing of the reports (the rest is pytest's and the
                           # interpreter's exit, the models' teardown included)
                           "report_write_s": float(written.group(1)) if written else None}
    report_path = out / "qcheck-report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        records = report.get("records") or {"records": [], "meta": {}}
        sizes = {r["variant"]: r["data"].get("weights_mb") for r in records["records"]
                 if r["measurement"] == "build" and r["status"] == "ok"}
        reference = sizes.get("fp32") or 0.0
        largest = max((v for k, v in sizes.items() if k != "fp32" and v), default=0.0)
        peak = records["meta"].get("peak_memory", {})
        per_measurement: dict[str, float] = {}
        per_variant: dict[str, dict[str, float]] = {}
        generation: dict[str, dict[str, Any]] = {}
        for r in records["records"]:
            if r.get("seconds"):
                per_measurement[r["measurement"]] = per_measurement.get(r["measurement"], 0.0) + r["seconds"]
                per_variant.setdefault(r["variant"], {})[r["measurement"]] = round(r["seconds"], 2)
            if r["measurement"] == "generation" and r["status"] == "ok":
                gen = r["data"]["run"]
                new = sum(o["n_new_tokens"] for o in gen["outputs"])
                generation[r["variant"]] = {"seconds": round(gen["seconds"], 2), "prompts": len(gen["outputs"]),
                                            "new_tokens": new, "batch_size": gen["extra"].get("batch_size"),
                                            "longest": max(o["n_new_tokens"] for o in gen["outputs"]),
                                            "tokens_per_s": round(new / max(gen["seconds"], 1e-9), 1),
                                            "decoding": gen["extra"].get("decoding")}
        row.update(status=report["status"], counts=report["counts"], weights_mb=sizes, peak_memory=peak,
                   complete=report["complete"], unfinished=len(report.get("unfinished") or []),
                   cut_in=(report.get("interruption") or {}).get("cut_in"),
                   bar_mb=round(1.3 * (reference + largest), 1),
                   peak_kind="GPU allocator" if peak.get("gpu_max_allocated_mb") else "process RSS (CPU run)",
                   peak_over_reference_plus_largest=(round(peak_mb / (reference + largest), 3)
                                                     if (peak_mb := peak.get("gpu_max_allocated_mb")
                                                         or peak.get("rss_max_mb")) and reference else None),
                   variant_seconds=records["meta"].get("variant_seconds"),
                   measurement_seconds={k: round(v, 1) for k, v in sorted(per_measurement.items(),
                                                                          key=lambda kv: -kv[1])},
                   seconds_by_variant=per_variant, generation=generation,
                   perplexity={r["variant"]: r["data"]["perplexity"] for r in records["records"]
                               if r["measurement"] == "perplexity" and r["status"] == "ok"},
                   verdicts=verdicts(report.get("checks", [])),
                   not_passed={k: m[:400] for k, m in verdicts(report.get("checks", []), messages=True).items()
                               if verdicts(report.get("checks", [])).get(k) in ("FAIL", "WARN", "ERROR")},
                   step_peaks_mb=dict(sorted((records["meta"].get("step_peak_mb") or {}).items(),
                                             key=lambda kv: -kv[1])[:8]),
                   not_timed_offloaded=sorted(k for k, m in verdicts(report.get("checks", []), messages=True).items()
                                              if "offloaded to the CPU or disk" in m),
                   placement=report.get("meta", {}).get("placement"),
                   errors=sorted({(c.get("message") or "")[:600] for c in report.get("checks", [])
                                  if c["status"] == "ERROR"})[:5])
        built = {v: round(t - sum(per_variant.get(v, {}).values()), 2)
                 for v, t in (records["meta"].get("variant_seconds") or {}).items()}
        row.update(build_seconds=built, unaccounted_s=round(wall - sum(per_measurement.values()) - sum(built.values()),
                                                            1))
        meta = records["meta"]
        if (meta.get("workers") or 1) > 1:
            # the parent's peak above is its own; the device's is at most the parent's plus every worker's
            worker_peaks = {i: p.get("gpu_max_allocated_mb") or p.get("rss_max_mb")
                            for i, p in (meta.get("workers_peak_memory") or {}).items()}
            row.update(workers=meta["workers"], workers_measured=meta.get("workers_measured"),
                       workers_peak_mb=worker_peaks, workers_variant_seconds=meta.get("workers_variant_seconds"),
                       timed_after_workers=meta.get("timed_after_workers"),
                       device_peak_at_most_mb=round(sum(v or 0 for v in worker_peaks.values())
                                                    + (peak.get("gpu_max_allocated_mb") or 0), 1))
        timeline = records["meta"].get("timeline") or {}
        row.update(timeline=timeline, phases=phase_seconds(timeline, wall))
    return row


def phase_seconds(timeline: dict[str, float], wall: float) -> dict[str, float]:
    """Each phase's seconds (from the previous mark to its own), then the reports and exit (the wall time after the
    last mark; the process starts about when the wall clock does)."""
    from qcheck.timeline import phases

    if not timeline:
        return {}
    return {**phases(timeline), "reports and exit": round(wall - max(timeline.values()), 2)}


def verdicts(checks: list[dict[str, Any]], *, messages: bool = False) -> dict[str, str]:
    """Each check's status (or with messages=True its message) keyed `name[variant]`; a key met again (one check
    per task, say) gets `#2`, `#3`."""
    out: dict[str, str] = {}
    for c in checks:
        key = base = f"{c['name']}[{c.get('variant')}]"
        n = 1
        while key in out:
            n += 1
            key = f"{base}#{n}"
        out[key] = (c.get("message") or "") if messages else c["status"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="135m,1.2b,8b")
    parser.add_argument("--tokenizer", default=".device/smollm2-tokenizer")
    parser.add_argument("--root", default="/tmp/qcheck-scale", help="where the model folders are built")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--qcheck-arg", action="append", default=[], help="extra argument for qcheck run")
    parser.add_argument("--limit-s", type=float, default=3600, help="SIGTERM a run after this many seconds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = {}
    for shape in args.shapes.split(","):
        start = time.perf_counter()
        folder = build_apart(shape, args.tokenizer, Path(args.root), args.device)
        built = time.perf_counter() - start
        report = Path(args.root) / f"report-{shape}"
        row = run(folder, report, args.device, args.qcheck_arg, args.limit_s)
        row["folder_build_s"] = round(built, 1)
        if args.out and (report / "qcheck-report.json").is_file():
            # the whole report, records included: `qcheck judge` can judge its records again off the device (a
            # check's budget or threshold tried on a GPU run's own samples)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report / "qcheck-report.json", Path(args.out) / f"report-{shape}.json")
        rows[shape] = row
        print(shape, json.dumps({k: v for k, v in row.items() if k not in ("tail", "head", "verdicts")}), flush=True)
        save(args.out, "bench_scale", {"args": vars(args), "rows": rows}, "")  # kept if a later shape is cut short
        if row["exit"] not in (0, 1):
            print(row["tail"], flush=True)
    lines = [("| shape | wall (s, load included) | exit | verdict | peak GPU MiB | bar 1.3 x (ref + largest) | ratio | "
              "outside measurements and builds, s |"), "|---|---|---|---|---|---|---|---|"]
    for shape, row in rows.items():
        peak = (row.get("peak_memory") or {}).get("gpu_max_allocated_mb")
        lines.append(f"| {shape} | {row['wall_s']} | {row['exit']} | {row.get('status')} | {peak} | "
                     f"{row.get('bar_mb')} | {row.get('peak_over_reference_plus_largest')} | "
                     f"{row.get('unaccounted_s')} |")
    timed = {shape: row["phases"] for shape, row in rows.items() if row.get("phases")}
    if timed:
        lines += ["", "Wall time by phase (the run's timeline; the last, the wall time after its last mark):", ""]
        lines += [f"- {shape}: " + ", ".join(f"{k} {v:.1f} s" for k, v in p.items())
                  + (f" (of it writing the reports {w:.1f} s)" if (w := rows[shape].get("report_write_s")) else "")
                  for shape, p in timed.items()]
    save(args.out, "bench_scale", {"args": vars(args), "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
