"""Perplexity throughput: qcheck's batched strided evaluation vs a plain one-window-at-a-time transformers loop
(`model(input_ids=window, labels=window).loss`, the recipe of the transformers perplexity guide), same tokens.

SmolLM2-135M's architecture with seeded random weights (the GGUF file cannot travel to the GPU machine;
weights' values do not change dense kernel times) and seeded random token ids. Tokens/s are timed with the
device synchronized, after a warm-up, median of --repeats. Both figures must agree (they score the same
tokens), and batching must be at least 2x faster on a GPU in bf16 (exit status 1 otherwise).

Run on a GPU machine (from the repository root):

    PYTHONPATH=. python benchmarks/bench_perplexity.py --out OUTDIR
    PYTHONPATH=. python -m pytest benchmarks/bench_perplexity.py -m gpu -q     # the >= 2x gate as a test

`--quick --device cpu` runs a tiny model on the CPU to check the script itself.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _output import save

CONTEXT = 1024
MIN_SPEEDUP = 2.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(dtype: torch.dtype, device: str, quick: bool) -> torch.nn.Module:
    from qcheck.inputs.models import random_init_like, smollm2_config, tiny_llama_config

    config = tiny_llama_config(max_position_embeddings=CONTEXT) if quick else smollm2_config()
    return random_init_like(config, seed=0, dtype=dtype, device=device)


def random_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def plain_loop(model: torch.nn.Module, ids: torch.Tensor, context: int = CONTEXT) -> float:
    """Perplexity one window at a time with labels=input_ids (each window's first token unscored), pooled."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for begin in range(0, len(ids), context):
        window = ids[begin: begin + context].unsqueeze(0).to(device)
        if window.shape[1] < 2:
            continue
        loss = model(input_ids=window, labels=window).loss
        total += float(loss) * (window.shape[1] - 1)
        count += window.shape[1] - 1
    return math.exp(total / count)


def qcheck_batched(model: torch.nn.Module, ids: torch.Tensor, batch_size: int, compiled: bool = False,
                   context: int = CONTEXT) -> float:
    from qcheck.measure.perplexity import perplexity_of_ids

    return perplexity_of_ids(model, ids, context=context, batch_size=batch_size, pad_id=2,
                             compile_decoder=compiled).perplexity


def timed(fn: Callable[..., float], args: tuple[Any, ...], device: str, repeats: int) -> tuple[float, list[float]]:
    """(value, seconds per repeat) of fn(*args) after one warm-up call, synchronizing the device around each."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn(*args)
    sync()
    times, value = [], float("nan")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        value = fn(*args)
        sync()
        times.append(time.perf_counter() - start)
    return value, times


def describe_device(device: str) -> dict[str, Any]:
    """Name, compute capability and library versions of the device the figures were taken on."""
    info: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        info.update(name=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                    cuda=torch.version.cuda)
    return info


def run(device: str, tokens: int, batch_sizes: list[int], dtypes: list[str], repeats: int,
        quick: bool, compiled: tuple[int, ...] = ()) -> dict[str, Any]:
    """Tokens/s of the plain loop and of qcheck at each batch size (and with a compiled decoder at the `compiled`
    batch sizes: compilation happens in the untimed warm-up call), per dtype, with the figures compared."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out: dict[str, Any] = {"device": describe_device(device), "tokens": tokens,
                           "context": CONTEXT, "repeats": repeats, "quick": quick, "results": {}}
    for name in dtypes:
        model = build(DTYPES[name], device, quick)
        ids = random_ids(tokens, model.config.vocab_size)
        ref_value, ref_times = timed(plain_loop, (model, ids), device, repeats)
        entry: dict[str, Any] = {"plain": {"perplexity": ref_value, "seconds": ref_times,
                                           "tokens_per_s": tokens / statistics.median(ref_times),
                                           "median_s": statistics.median(ref_times)}}
        runs = [(bs, False) for bs in batch_sizes] + [(bs, True) for bs in compiled]
        for bs, comp in runs:
            value, times = timed(qcheck_batched, (model, ids, bs, comp), device, repeats)
            tps = tokens / statistics.median(times)
            entry[f"qcheck_b{bs}" + ("_compiled" if comp else "")] = {"perplexity": value, "seconds": times, "tokens_per_s": tps,
                                      "speedup": tps / entry["plain"]["tokens_per_s"], "median_s": statistics.median(times),
                                      "relative_difference": abs(value / ref_value - 1)}
            print(name, "plain", entry["plain"]["median_s"], f"qcheck_b{bs}", "compiled" if comp else "",
                  statistics.median(times), value, ref_value, flush=True)
        out["results"][name] = entry
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def markdown(data: dict[str, Any]) -> str:
    title = (f"Perplexity throughput, {data['tokens']:,} random tokens, context {data['context']}, non-overlapping "
             f"windows, median of {data['repeats']} ({data['device'].get('name', data['device'].get('device'))})")
    lines = [title, "", "| dtype | method | seconds | tokens/s | speedup vs plain | perplexity | rel. diff |",
             "|---|---|---|---|---|---|---|"]
    for dtype, entry in data["results"].items():
        for method, r in entry.items():
            lines.append(f"| {dtype} | {method} | {r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                         f"{r.get('speedup', 1.0):.2f}x | "
                         f"{r['perplexity']:.4f} | {r.get('relative_difference', 0.0):.1e} |")
    return "\n".join(lines) + "\n"


def gate(data: dict[str, Any], dtype: str = "bf16") -> list[str]:
    """Problems: batched qcheck below MIN_SPEEDUP x the plain loop (best batch size), or figures that disagree."""
    problems = []
    for name, entry in data["results"].items():
        tol = 1e-3 if name == "fp32" else 2e-2
        for method, r in entry.items():
            if r.get("relative_difference", 0.0) > tol:
                problems.append(f"{name} {method}: perplexity differs from the plain loop by {r['relative_difference']:.2e}")
    if dtype in data["results"] and not data["quick"]:
        best = max(r.get("speedup", 0.0) for r in data["results"][dtype].values())
        if best < MIN_SPEEDUP:
            problems.append(f"{dtype}: batched qcheck is only {best:.2f}x the plain loop (< {MIN_SPEEDUP}x)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--compiled-batch-sizes", default="", help="batch sizes also timed with a compiled decoder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny model (checks the script, not a benchmark)")
    parser.add_argument("--out", default=None, help="folder for bench_perplexity.json / .md")
    args = parser.parse_args(argv)
    tokens = min(args.tokens, 8192) if args.quick else args.tokens
    data = run(args.device, tokens, [int(b) for b in args.batch_sizes.split(",")], args.dtypes.split(","),
               args.repeats, args.quick, tuple(int(b) for b in args.compiled_batch_sizes.split(",") if b))
    data["problems"] = gate(data)
    text = markdown(data)
    print(text)
    save(args.out, "bench_perplexity", data, text)
    for p in data["problems"]:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if data["problems"] else 0


@pytest.mark.gpu
def test_batched_perplexity_at_least_2x_faster_than_plain_loop_on_gpu():
    data = run("cuda", 65536, [32], ["bf16"], repeats=3, quick=False)
    assert gate(data) == [], markdown(data)


def test_quick_cpu_run_agrees_with_the_plain_loop():
    data = run("cpu", 2048, [4], ["fp32"], repeats=1, quick=True)
    assert gate(data) == [], markdown(data)


if __name__ == "__main__":
    sys.exit(main())
