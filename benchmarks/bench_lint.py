"""Benchmark: `qcheck lint` on a 100,000-row results table (target: under 5 s on 2 CPU cores).

Run: pytest benchmarks/bench_lint.py --benchmark-only
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from qcheck.lint import lint_paths

ROWS = 100_000
CONFIGS = [("fp32", 32), ("fp16", 16), ("bf16", 16), ("int8", 8), ("int4", 4), ("w4g64", 4), ("mixed", ""),
           ("qat_int4", 4), ("nf4", 4), ("int2", 2)]


def write_table(path: Path, rows: int = ROWS, seed: int = 0) -> Path:
    """A realistic long-form results table: 20 models x 5 tasks x 10 configs x seeds, continuous metrics."""
    rng = np.random.default_rng(seed)
    tasks = ["arc-easy", "boolq", "gsm8k", "wikitext-2", "sst2"]
    classes = {"arc-easy": 4, "boolq": 2, "gsm8k": "", "wikitext-2": "", "sst2": 2}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "dataset", "config", "bits", "seed", "accuracy", "n", "num_classes", "ppl",
                         "latency_ms", "throughput_tok_s", "energy_mj", "power_w"])
        for i in range(rows):
            config, bits = CONFIGS[i % len(CONFIGS)]
            task = tasks[(i // len(CONFIGS)) % len(tasks)]
            latency = float(rng.uniform(5, 50))
            power = float(rng.uniform(100, 400))
            writer.writerow([f"model-{(i // 50) % 20}", task, config, bits, i // 1000,
                             f"{rng.uniform(0.55, 0.9):.6f}", 1000, classes[task], f"{rng.uniform(8, 40):.6f}",
                             f"{latency:.4f}", f"{rng.uniform(1e3, 5e4):.2f}",
                             f"{latency * power * rng.uniform(0.9, 1.1):.3f}",
                             f"{power:.2f}"])
    return path


@pytest.fixture(scope="module")
def big_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table(tmp_path_factory.mktemp("lint") / "results_100k.csv")


def test_lint_100k_rows(benchmark, big_table: Path) -> None:
    """Wall time per lint (pytest-benchmark) plus the process CPU time, which a busy shared machine cannot inflate."""
    findings = benchmark.pedantic(lint_paths, args=([str(big_table)],), rounds=5, iterations=1, warmup_rounds=1)
    start = time.process_time()
    lint_paths([str(big_table)])
    cpu = time.process_time() - start
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[0]
    benchmark.extra_info.update(rows=ROWS, cpu_s=round(cpu, 3), loadavg_1min=float(load), findings=len(findings))
    assert all(f.rule != "Q000-rule-crashed" for f in findings)
    assert cpu < 5.0


if __name__ == "__main__":  # quick manual timing without pytest-benchmark
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        table = write_table(Path(directory) / "results_100k.csv")
        start = time.perf_counter()
        result = lint_paths([str(table)])
        print(f"{ROWS} rows: {time.perf_counter() - start:.2f} s, {len(result)} findings")
