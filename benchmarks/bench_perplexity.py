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

`--fidelity` times the fidelity measurement the same way (issue 20: "fidelity (two models) at the same rate per
model"): the reference against its int8 RTN variant (the built-in plan, cast back to the reference's dtype) on
the same tokens, qcheck's `fidelity_of_ids` at each batch size against a plain loop (both models' logits one window
at a time, KL(ref || variant) from log-softmaxes). Tokens/s count the tokens of both models (2 x the text), so they
compare with perplexity's one-model figure; the mean KLs must agree in fp32.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
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


def plain_windows(model: torch.nn.Module, ids: torch.Tensor, context: int = CONTEXT) -> Iterator[torch.Tensor]:
    """The plain loops' windows: consecutive `context` tokens [1, n] on the model's device, any shorter than two
    tokens (nothing to score) left out."""
    device = next(model.parameters()).device
    for begin in range(0, len(ids), context):
        window = ids[begin: begin + context].unsqueeze(0).to(device)
        if window.shape[1] >= 2:
            yield window


@torch.no_grad()
def plain_loop(model: torch.nn.Module, ids: torch.Tensor, context: int = CONTEXT) -> float:
    """Perplexity one window at a time with labels=input_ids (each window's first token unscored), pooled."""
    total, count = 0.0, 0
    for window in plain_windows(model, ids, context):
        loss = model(input_ids=window, labels=window).loss
        total += float(loss) * (window.shape[1] - 1)
        count += window.shape[1] - 1
    return math.exp(total / count)


@torch.no_grad()
def plain_fidelity(reference: torch.nn.Module, variant: torch.nn.Module, ids: torch.Tensor,
                   context: int = CONTEXT) -> float:
    """Mean KL(ref || variant) over the tokens the perplexity loop scores, one window at a time, in fp32."""
    total, count = 0.0, 0
    for window in plain_windows(reference, ids, context):
        ref = reference(input_ids=window).logits[0, :-1].float().log_softmax(-1)
        var = variant(input_ids=window).logits[0, :-1].float().log_softmax(-1)
        total += float((ref.exp() * (ref - var)).sum())
        count += window.shape[1] - 1
    return total / count


def qcheck_fidelity(reference: torch.nn.Module, variant: torch.nn.Module, ids: torch.Tensor, batch_size: int,
                    context: int = CONTEXT) -> float:
    from qcheck.measure.fidelity import fidelity_of_ids

    return float(fidelity_of_ids(reference, variant, ids, context=context, batch_size=batch_size,
                                 pad_id=2).token_kl.mean())


def int8_variant(model: torch.nn.Module) -> torch.nn.Module:
    """The built-in int8 RTN variant of `model` (a deep copy), cast back to the model's dtype: qcheck fake-quantizes
    in fp32 (a bf16 reference's variant computes in fp32, so sessions 17-18's bf16 rows timed an fp32 variant, three
    times a bf16 model's time); per model, the rate compares with perplexity's only in the same dtype."""
    from qcheck.quant.apply import quantize
    from qcheck.variants import builtin_plan

    dtype = next(model.parameters()).dtype
    return quantize(model, builtin_plan("int8"))[0].to(dtype)


def run_fidelity(device: str, tokens: int, batch_sizes: list[int], dtypes: list[str], repeats: int,
                 quick: bool) -> dict[str, Any]:
    """Tokens/s (both models' tokens) of the plain fidelity loop and of qcheck's at each batch size, per dtype."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out: dict[str, Any] = {"device": describe_device(device), "tokens": tokens, "context": CONTEXT,
                           "repeats": repeats, "quick": quick, "results": {}, "measure": "fidelity"}
    for name in dtypes:
        reference = build(DTYPES[name], device, quick)
        variant = int8_variant(reference)
        ids = random_ids(tokens, reference.config.vocab_size)
        ref_value, ref_times = timed(plain_fidelity, (reference, variant, ids), device, repeats)
        entry: dict[str, Any] = {"plain": {"mean_kl": ref_value, "seconds": ref_times, "median_s":
                                           statistics.median(ref_times),
                                           "tokens_per_s": 2 * tokens / statistics.median(ref_times)}}
        for bs in batch_sizes:
            value, times = timed(qcheck_fidelity, (reference, variant, ids, bs), device, repeats)
            tps = 2 * tokens / statistics.median(times)
            entry[f"qcheck_b{bs}"] = {"mean_kl": value, "seconds": times, "median_s": statistics.median(times),
                                      "tokens_per_s": tps, "speedup": tps / entry["plain"]["tokens_per_s"],
                                      "relative_difference": abs(value / ref_value - 1) if ref_value else 0.0,
                                      "absolute_difference": abs(value - ref_value)}
            print(name, "fidelity plain", entry["plain"]["median_s"], f"qcheck_b{bs}", statistics.median(times),
                  value, ref_value, flush=True)
        out["results"][name] = entry
        del reference, variant
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


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
    if data.get("measure") == "fidelity":
        return fidelity_markdown(data)
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


def fidelity_markdown(data: dict[str, Any]) -> str:
    title = (f"Fidelity throughput (reference vs its int8 RTN variant), {data['tokens']:,} random tokens, context "
             f"{data['context']}, median of {data['repeats']} ({data['device'].get('name', data['device'].get('device'))});"
             " tokens/s count both models' tokens")
    lines = [title, "", "| dtype | method | seconds | tokens/s (both models) | speedup vs plain | mean KL | rel. diff |",
             "|---|---|---|---|---|---|---|"]
    for dtype, entry in data["results"].items():
        for method, r in entry.items():
            lines.append(f"| {dtype} | {method} | {r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                         f"{r.get('speedup', 1.0):.2f}x | {r['mean_kl']:.6g} | {r.get('relative_difference', 0.0):.1e} |")
    return "\n".join(lines) + "\n"


KL_ABSOLUTE_SLACK = 2e-6
"""The plain loop's KL is the textbook sum p (log p - log q) in fp32, which carries about eps x |log Z| ~ 1e-6 per
token from rounding the two log-normalizers (`qcheck.measure.fidelity._kl_from_logit_difference`, which avoids it).
On a variant this close to its reference (the tiny CPU model: mean KL 1.4e-7) that error is the whole difference."""


def fidelity_gate(data: dict[str, Any]) -> list[str]:
    """Problems: qcheck's mean KL differs from the plain loop's in fp32 by more than 0.1% plus KL_ABSOLUTE_SLACK
    (bf16 logits round differently per path, so bf16 is reported, not gated)."""
    problems = []
    for method, r in data["results"].get("fp32", {}).items():
        plain = data["results"]["fp32"]["plain"]["mean_kl"]
        if r.get("absolute_difference", 0.0) > 1e-3 * abs(plain) + KL_ABSOLUTE_SLACK:
            problems.append(f"fp32 {method}: mean KL {r['mean_kl']:.6g} against the plain loop's {plain:.6g}")
    return problems


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
    parser.add_argument("--fidelity", action="store_true", help="time fidelity (two models) instead of perplexity")
    parser.add_argument("--out", default=None, help="folder for bench_perplexity.json / .md")
    args = parser.parse_args(argv)
    tokens = min(args.tokens, 8192) if args.quick else args.tokens
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.fidelity:
        data = run_fidelity(args.device, tokens, batch_sizes, args.dtypes.split(","), args.repeats, args.quick)
        data["problems"] = fidelity_gate(data)
    else:
        data = run(args.device, tokens, batch_sizes, args.dtypes.split(","), args.repeats, args.quick,
                   tuple(int(b) for b in args.compiled_batch_sizes.split(",") if b))
        data["problems"] = gate(data)
    text = markdown(data)
    print(text)
    save(args.out, "bench_fidelity" if args.fidelity else "bench_perplexity", data, text)
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


def test_quick_cpu_fidelity_agrees_with_the_plain_loop():
    data = run_fidelity("cpu", 2048, [2], ["fp32"], repeats=1, quick=True)
    assert fidelity_gate(data) == [] and data["results"]["fp32"]["plain"]["mean_kl"] > 0, markdown(data)


if __name__ == "__main__":
    sys.exit(main())
