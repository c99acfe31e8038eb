"""Greedy generation speed by dtype and KV cache, with a profile of where a decoding step's time goes (issue 20).

    python benchmarks/bench_generation.py --tokenizer .device/smollm2-tokenizer --out DIR

A random-init model of SmolLM2-135M's shape (weights' values do not change kernel times; generation never stops
early on random weights, so every prompt runs the whole budget) generates greedy continuations of the first
--prompts GSM8K questions with qcheck's few-shot prompt, all prompts in one left-padded batch, as `qcheck run`
does on a GPU. Per dtype and cache: seconds of the first and second call (a static cache compiles on the first),
seconds per decoding step, and whether the tokens equal the dynamic cache's; with --count-ops, the aten operators
each decoding step dispatches (host time, where steps are host-bound). With --profile, one short call per
dtype runs under torch.profiler and the top operators by host time and by device time are listed: the 16-bit
decoding steps that cost more than fp32 ones on an H200 are explained from that table. --attention crosses the runs
with torch's scaled-dot-product-attention backends: "all" (torch's own choice) and "no-cudnn" (flash, memory-efficient
and math only; cuDNN's attention builds an execution plan for every new sequence length, and a decoding step's key
length grows by one each step). --profile-first profiles the first call of a fresh model instead of a warm one.
--gqa crosses the graph decoder's grouped-query attention: "packed" (qcheck's: the query heads that share a key/value
head are that head's query rows, and the few-shot prefix every prompt shares is held once and read from its one
copy), "unshared" (packed, but every row's cache holds its whole prompt: the cache layout before the prefix was kept
once, whose decoding steps read 50 copies of the prefix), "prefix-copied" (the prefix prefilled once, then copied
into every row, as a 16-bit cache and eager steps on a GPU do), "prefix-kept" (kept once in an fp32 cache whatever
the steps: eager LLM.int8 steps before session 22) and "copied" (transformers' sdpa as it stands, which before
5.2x copies the cache to every query head whenever a mask is passed; rows unshared). --profile-cache picks the cache
of the profiled call. --shape picks the layer shapes (bench_scale.py's SHAPES: 135m, 1.2b, 8b). Each result holds
the second call's peak GPU memory.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def attention(name: str) -> contextlib.AbstractContextManager[Any]:
    """torch's SDPA backends for one setting: "all" is torch's own choice (qcheck's generate leaves cuDNN's attention
    out, `qcheck.measure.attention`, so that is switched off here), "no-cudnn" is what qcheck runs."""
    from unittest import mock

    if name == "all":
        return mock.patch("qcheck.measure.generation.varying_shape_attention", contextlib.nullcontext)
    if name == "no-cudnn":
        from qcheck.measure.attention import varying_shape_attention

        return varying_shape_attention()
    raise SystemExit(f"--attention: unknown setting {name!r} (all, no-cudnn)")


def gqa(name: str) -> contextlib.AbstractContextManager[Any]:
    """The graph decoder's grouped-query attention for one setting: "packed" is qcheck's, "unshared" the same without
    a shared prefix (every row prefills its whole prompt), "prefix-copied" the prefix prefilled once and copied into
    every row (as a 16-bit cache and eager steps on a GPU do), "prefix-kept" the prefix kept once in an fp32 cache
    whatever the steps (as before session 22), "copied" transformers' (rows unshared: its attention cannot read a
    prefix kept apart)."""
    from unittest import mock

    stack = contextlib.ExitStack()
    if name == "prefix-copied":
        stack.enter_context(mock.patch("qcheck.measure.decode.keeps_prefix_once", lambda dtype, **_: False))
    if name == "prefix-kept":
        stack.enter_context(mock.patch("qcheck.measure.decode.keeps_prefix_once",
                                       lambda dtype, **_: dtype == torch.float32))
    if name in ("unshared", "copied"):
        stack.enter_context(mock.patch("qcheck.measure.generation.shared_prefix", lambda rows: 0))
    if name == "copied":
        stack.enter_context(mock.patch("qcheck.measure.decode.gqa_decoding",
                                       lambda model: contextlib.nullcontext(None)))
    elif name not in ("packed", "unshared", "prefix-copied", "prefix-kept"):
        raise SystemExit(f"--gqa: unknown setting {name!r} (packed, unshared, prefix-copied, prefix-kept, copied)")
    return stack


def build(dtype: torch.dtype, device: str, quick: bool, variant: str | None = None, shape: str = "135m"
          ) -> torch.nn.Module:
    """The random-init model of `shape` in `dtype`, quantized in place by the built-in `variant`'s plan where one is
    named."""
    from bench_scale import SHAPES

    from qcheck.inputs.models import random_init_like, smollm2_config, tiny_llama_config

    config = tiny_llama_config(vocab_size=49152) if quick else smollm2_config(**SHAPES[shape])
    model = random_init_like(config, seed=0, dtype=dtype, device=device)
    if variant:
        from qcheck.quant.apply import quantize
        from qcheck.variants import builtin_plan

        model, _ = quantize(model, builtin_plan(variant), inplace=True)
    return model


def host_profile(model: torch.nn.Module, tokenizer: Any, questions: list[str], new_tokens: int, top: int,
                 cache: str) -> list[dict[str, Any]]:
    """Top Python functions of one generate call by own host time (cProfile): where a host-bound step goes."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    timed_generate(model, tokenizer, questions, new_tokens, cache)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    ranked = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [{"function": f"{Path(f).name}:{line}({name})", "calls": calls, "own_ms": round(1000 * own, 1),
             "cumulative_ms": round(1000 * cum, 1)} for (f, line, name), (_, calls, own, cum, _) in ranked]


def timed_generate(model: torch.nn.Module, tokenizer: Any, questions: list[str], new_tokens: int, cache: str
                   ) -> tuple[float, list[str], list[str]]:
    from qcheck.measure.generation import GenerationSettings, generate_answers

    settings = GenerationSettings(max_new_tokens=new_tokens, batch_size=len(questions), cache=cache,
                                  prompt="gsm8k_3shot")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run = generate_answers(model, tokenizer, questions, settings)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, run.texts, list(run.extra.get("decoding", []))


def ops_per_step(model: torch.nn.Module, tokenizer: Any, questions: list[str], cache: str, top: int,
                 steps: tuple[int, int] = (8, 24)) -> dict[str, Any]:
    """aten operators dispatched per decoding step: two calls of `steps` new tokens each, counted by a dispatch mode,
    their difference over the steps between. Where the steps are host-bound (bitsandbytes LLM.int8 on a GPU) each
    operator is host time, so the count compares settings on any machine. A CUDA graph's replays dispatch none (only
    its warm-up and capture count), and bitsandbytes' operators count once each, their insides not at all."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: dict[str, int] = {}

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            self.ops[str(func)] = self.ops.get(str(func), 0) + 1
            return func(*args, **(kwargs or {}))

    counts = []
    for new_tokens in steps:
        with Count() as count:
            timed_generate(model, tokenizer, questions, new_tokens, cache)
        counts.append(count.ops)
    span = steps[1] - steps[0]
    per = {op: (counts[1].get(op, 0) - counts[0].get(op, 0)) / span for op in counts[1]}
    ranked = sorted(((n, op) for op, n in per.items() if n > 0), reverse=True)[:top]
    return {"per_step": round(sum(per.values()), 1), "layers": int(model.config.num_hidden_layers),
            "top": [{"op": op, "per_step": round(n, 1)} for n, op in ranked]}


def profile(model: torch.nn.Module, tokenizer: Any, questions: list[str], new_tokens: int, top: int,
            cache: str = "dynamic") -> dict[str, list[dict[str, Any]]]:
    """Top operators of one generate call by self host time and by self device time (ms, calls)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        timed_generate(model, tokenizer, questions, new_tokens, cache)
    events = prof.key_averages()
    device_key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"

    def rows(key: str) -> list[dict[str, Any]]:
        ranked = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:top]
        return [{"op": e.key, "calls": e.count, "ms": round(getattr(e, key, 0) / 1000, 2)} for e in ranked]

    return {"host": rows("self_cpu_time_total"), "device": rows(device_key)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from qcheck.inputs.tasks import load_gsm8k

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    questions = [p.question for p in load_gsm8k(args.prompts).items]
    out: dict[str, Any] = {"device": args.device, "prompts": len(questions), "new_tokens": args.new_tokens,
                           "torch": torch.__version__, "results": {}, "profiles": {},
                           "host_profiles": {}, "variant": args.variant, "shape": args.shape}
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    out["cudnn_sdp_enabled"] = bool(torch.backends.cuda.cudnn_sdp_enabled())
    for name in args.dtypes.split(","):
        reference_texts = None
        for backends in args.attention.split(","):
            for heads in args.gqa.split(","):
                model = build(DTYPES[name], args.device, args.quick, args.variant, args.shape)  # the first call counts
                with attention(backends), gqa(heads):
                    if args.profile_first:
                        out["profiles"][f"{name}/{backends}/first"] = profile(model, tokenizer, questions,
                                                                              args.profile_tokens, args.top)
                    for cache in args.caches.split(","):
                        if cache != "graph" and heads != args.gqa.split(",")[0]:
                            continue  # --gqa changes only the graph decoder: the other caches ran with the first
                        first, texts, decoding = timed_generate(model, tokenizer, questions, args.new_tokens, cache)
                        if args.device == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                        second, texts2, _ = timed_generate(model, tokenizer, questions, args.new_tokens, cache)
                        peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
                        reference_texts = reference_texts if reference_texts is not None else texts
                        key = (f"{name}/{cache}" + ("" if backends == "all" else f"/{backends}")
                               + (f"/gqa-{heads}" if cache == "graph" else ""))
                        out["results"][key] = {
                            "first_s": round(first, 3), "second_s": round(second, 3),
                            "ms_per_step": round(1000 * second / args.new_tokens, 2),
                            "same_tokens_as_first_cache": texts2 == reference_texts, "repeatable": texts == texts2,
                            "rows_differing": sum(a != b for a, b in zip(texts2, reference_texts)),
                            "peak_mb": None if peak is None else round(peak, 1), "decoding": decoding}
                        if args.count_ops:
                            out["results"][key]["ops"] = ops_per_step(model, tokenizer, questions, cache, args.top)
                        print(key, out["results"][key], flush=True)
                    if args.host_profile:
                        out["host_profiles"][f"{name}/{args.profile_cache}"] = host_profile(
                            model, tokenizer, questions, args.profile_tokens, args.top, args.profile_cache)
                    if args.profile:
                        out["profiles"][f"{name}/{backends}/{args.profile_cache}/gqa-{heads}"] = profile(
                            model, tokenizer, questions, args.profile_tokens, args.top, args.profile_cache)
                del model
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    return out


def markdown(data: dict[str, Any]) -> str:
    title = (f"Greedy generation, {data['prompts']} GSM8K prompts in one batch, {data['new_tokens']} new tokens, "
             f"random-init {data.get('shape', '135m')} shape{', variant ' + data['variant'] if data.get('variant') else ''} ({data.get('gpu', data['device'])}, torch {data['torch']})")
    lines = [title, "",
             ("| dtype / cache / attention | first call s | second call s | ms per step | peak MiB (second call) "
              "| same tokens as the first setting |"),
             "|---|---|---|---|---|---|"]
    for key, r in data["results"].items():
        lines.append(f"| {key} | {r['first_s']} | {r['second_s']} | {r['ms_per_step']} | {r.get('peak_mb')} | "
                     f"{r['same_tokens_as_first_cache']} |")
    lines += ["", f"cuDNN attention enabled in torch: {data.get('cudnn_sdp_enabled')}"]
    for key, r in data["results"].items():
        if r.get("ops"):
            ops = r["ops"]
            lines += ["", (f"{key}: {ops['per_step']} aten operators per decoding step "
                           f"({ops['per_step'] / ops['layers']:.1f} per layer), the most frequent:"), "",
                      "| op | per step |", "|---|---|"]
            lines += [f"| `{o['op']}` | {o['per_step']} |" for o in ops["top"]]
    for name, rows in data.get("host_profiles", {}).items():
        lines += ["", f"{name}, top Python functions by own host time (cProfile, one call)", "",
                  "| function | calls | own ms | cumulative ms |", "|---|---|---|---|"]
        lines += [f"| `{r['function']}` | {r['calls']} | {r['own_ms']} | {r['cumulative_ms']} |" for r in rows]
    for name, prof in data["profiles"].items():
        for side in ("host", "device"):
            lines += ["", f"{name}, top operators by self {side} time (one call)", "", "| op | calls | ms |",
                      "|---|---|---|"]
            lines += [f"| `{r['op']}` | {r['calls']} | {r['ms']} |" for r in prof[side]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokenizer", default=".device/smollm2-tokenizer")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--caches", default="dynamic,static")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="profile one dynamic-cache call per dtype")
    parser.add_argument("--profile-first", action="store_true",
                        help="profile the first call of each fresh model (where a 16-bit model's extra time goes)")
    parser.add_argument("--attention", default="all", help="SDPA backend settings to cross: all, no-cudnn")
    parser.add_argument("--gqa", default="packed",
                        help="graph decoder's grouped-query attention: packed, unshared, prefix-copied, prefix-kept, "
                             "copied")
    parser.add_argument("--shape", default="135m", help="layer shapes: 135m, 1.2b, 8b (bench_scale.py)")
    parser.add_argument("--profile-cache", default="dynamic", help="cache of the profiled call")
    parser.add_argument("--profile-tokens", type=int, default=16)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--variant", default=None, help="a built-in variant applied to each model (e.g. bnb-int8)")
    parser.add_argument("--host-profile", action="store_true",
                        help="one call per dtype under cProfile: the top Python functions by own host time")
    parser.add_argument("--count-ops", action="store_true",
                        help="aten operators per decoding step for each setting (two more calls each, 8 and 24 tokens)")
    parser.add_argument("--quick", action="store_true", help="tiny model (checks the script, not a benchmark)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    data = run(args)
    text = markdown(data)
    print(text)
    save(args.out, "bench_generation", data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
