"""Latency, throughput and energy of the default variants on the SmolLM2-135M architecture (random weights).

Run on a GPU machine (from the repository root):

    PYTHONPATH=. python benchmarks/bench_latency.py --out OUTDIR           # the benchmark, JSON + markdown
    PYTHONPATH=. python -m pytest -p qcheck.pytest_plugin -p qcheck.benchmark_integration \\
        benchmarks/bench_latency.py -m gpu --benchmark-json OUTDIR/pytest-benchmark.json

(`-p qcheck.pytest_plugin` where qcheck is not pip-installed, as on the GPU machine.)

Variants: fp32 (TF32 off), tf32, fp16, bf16, autocast (fp16 under torch.autocast on the fp32 model), and
bitsandbytes int8 (LLM.int8) / nf4 on an fp16 model when bitsandbytes is importable. Shapes 1x128, 8x512,
32x512 by default. Quality targets checked: relative IQR <= 2% on compute-bound shapes, fp16-vs-fp32 ordering
decided at p < 0.01 within 30 s, agreement with torch.utils.benchmark and triton.testing.do_bench within 3%.
`--quick --device cpu` runs a tiny model on the CPU to check the script itself.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _output import save

from qcheck.benchmark_integration import qcheck_benchmark  # noqa: F401  (fixture for the pytest part below)
from qcheck.measure.latency import measure_order
from qcheck.measure.timing import (
    classify_regime,
    device_info,
    forward_callable,
    forward_flops,
    measure,
    measure_energy,
    pinned_flags,
    random_input_ids,
    time_forward,
)

SHAPES = ((1, 128), (8, 512), (32, 512))
VARIANTS = ("fp32", "tf32", "fp16", "bf16", "autocast", "bnb-int8", "bnb-nf4")
REL_IQR_TARGET = 0.02
AGREEMENT_TARGET = 0.03


def build_reference(device: str, quick: bool) -> torch.nn.Module:
    """Random-init SmolLM2-135M-shaped model (never zeros), fp32, eval mode, on `device`."""
    from qcheck.inputs.models import random_init_like, smollm2_config, tiny_llama_config

    config = tiny_llama_config() if quick else smollm2_config()
    return random_init_like(config, seed=0, device=device)


def build_variants(reference: torch.nn.Module, names: list[str]) -> dict[str, tuple[torch.nn.Module, Any, bool]]:
    """name -> (model, autocast dtype or None, tf32). bnb variants quantize an fp16 copy (compute in fp16)."""
    out: dict[str, tuple[torch.nn.Module, Any, bool]] = {}
    for name in names:
        if name in ("fp32", "tf32", "autocast"):
            out[name] = (reference, torch.float16 if name == "autocast" else None, name == "tf32")
        elif name in ("fp16", "bf16"):
            out[name] = (copy.deepcopy(reference).to(torch.float16 if name == "fp16" else torch.bfloat16), None, False)
        elif name.startswith("bnb-"):
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                print(f"skipping {name}: bitsandbytes is not installed here", file=sys.stderr)
                continue
            out[name] = (bnb_model(reference, name), None, False)
    return out


def bnb_model(reference: torch.nn.Module, name: str) -> torch.nn.Module:
    """An fp16 copy whose Linear layers (lm_head kept) are bitsandbytes LLM.int8 (threshold 6.0) or NF4 (fp16
    compute, double quantization, blocks of 64): built on the CPU, quantized by the move to the GPU."""
    import bitsandbytes as bnb

    device = next(reference.parameters()).device
    model = copy.deepcopy(reference).to("cpu", torch.float16)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or (parent_name, child_name) == ("", "lm_head"):
                continue
            w, has_bias = child.weight.detach().clone(), child.bias is not None
            if name == "bnb-int8":
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=has_bias,
                                          has_fp16_weights=False, threshold=6.0)
                new.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=has_bias,
                                        compute_dtype=torch.float16, quant_type="nf4", compress_statistics=True)
                new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True,
                                               blocksize=64)
            if has_bias:
                new.bias = torch.nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            setattr(parent, child_name, new)
    return model.to(device).eval()


def agreement(fn: Callable[[], Any], ours_ms: float, device: torch.device) -> dict[str, Any]:
    """qcheck's median vs torch.utils.benchmark (blocked_autorange) and triton.testing.do_bench (median)."""
    from torch.utils import benchmark as tub

    res: dict[str, Any] = {"qcheck_ms": ours_ms}
    m = tub.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=1.0)
    res["torch_utils_benchmark_ms"] = m.median * 1000
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            res["triton_do_bench_ms"] = float(do_bench(fn, warmup=100, rep=1000, return_mode="median"))
        except Exception as exc:  # noqa: BLE001 - triton missing or failing: say so
            res["triton_do_bench_error"] = f"{type(exc).__name__}: {exc}"[:200]
    for key in ("torch_utils_benchmark_ms", "triton_do_bench_ms"):
        if key in res:
            res[key.replace("_ms", "_rel_diff")] = res[key] / ours_ms - 1
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    reference = build_reference(args.device, args.quick)
    variants = build_variants(reference, args.variants)
    info = device_info(device).to_dict()
    print(f"device: {info['name']} cc {info['capability']} driver {info['driver']} torch {info['torch']}", flush=True)
    vocab = reference.config.vocab_size
    shapes = [(1, 16), (2, 32)] if args.quick else [tuple(map(int, s.split("x"))) for s in args.shapes]
    rows: list[dict[str, Any]] = []
    for b, s in shapes:
        ids = random_input_ids(vocab, b, s, device=device, seed=b * 1000 + s)
        for name, (model, autocast, tf32) in variants.items():
            t = time_forward(model, ids, autocast=autocast, tf32=tf32, label=name, warmup=3,
                             min_repeats=args.repeats, min_time_s=args.min_time)
            regime = classify_regime(t)
            row = {"variant": name, "shape": f"{b}x{s}", "tokens": b * s, **t.to_dict(), "regime": regime.to_dict(),
                   "tokens_per_s": b * s / (t.median_ms / 1000)}
            row.pop("samples_ms")
            if device.type == "cuda" and b * s <= 128 and name in ("fp32", "fp16", "bf16"):
                try:
                    g = time_forward(model, ids, autocast=autocast, tf32=tf32, graph=True, label=name, warmup=3,
                                     min_repeats=args.repeats, min_time_s=args.min_time)
                    row["graph_median_ms"], row["graph_rel_iqr"] = g.median_ms, g.rel_iqr
                    row["regime"] = classify_regime(t, g).to_dict()
                except Exception as exc:  # noqa: BLE001 - a shape that cannot be captured: recorded
                    row["graph_error"] = str(exc)[:200]
            if device.type == "cuda" and (b, s) == tuple(shapes[-1]) and not args.no_energy:
                with pinned_flags(tf32=tf32):
                    e = measure_energy(forward_callable(model, ids, autocast=autocast), device=device,
                                       window_s=args.energy_window, idle_s=1.0)
                row["energy"] = e.to_dict()
                row["energy_j_per_token"] = e.per_token(b * s)
            row["floor_ms"] = forward_flops(reference, b * s) / 989e12 * 1000
            rows.append(row)
            print(f"{name:9s} {b}x{s:<4d} {t.median_ms:9.3f} ms  IQR {t.iqr_ms:7.3f} ({t.rel_iqr:6.2%}) "
                  f"n={t.n:3d} {regime.kind}" + (f" graph {row['graph_median_ms']:.3f}" if "graph_median_ms" in row
                                                 else ""), flush=True)
    quality: dict[str, Any] = {}
    big = shapes[-1]
    ids = random_input_ids(vocab, *big, device=device, seed=7)
    if "fp16" in variants and "fp32" in variants:
        with pinned_flags(tf32=False):
            order = measure_order(forward_callable(variants["fp16"][0], ids), forward_callable(reference, ids),
                                  device=device, alpha=0.01, max_time_s=30.0)
        quality["fp16_vs_fp32_order"] = order
        print(f"fp16 < fp32 at {big[0]}x{big[1]}: p={order['p']:.2g} after {order['seconds']:.1f} s, "
              f"n={order['n_each']} each", flush=True)
    agree = []
    for name in ("fp32", "fp16"):
        if name not in variants:
            continue
        for shape in dict.fromkeys((big, shapes[1] if len(shapes) > 1 else big)):
            ids = random_input_ids(vocab, *shape, device=device, seed=11)
            fn = forward_callable(variants[name][0], ids)
            with pinned_flags(tf32=False):
                ours = measure(fn, device=device, warmup=3, min_repeats=args.repeats, min_time_s=1.0)
                a = agreement(fn, ours.median_ms, device)
            agree.append({"variant": name, "shape": f"{shape[0]}x{shape[1]}", **a})
            rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in a.items()}
            print(f"agreement {name} {shape}: {json.dumps(rounded)}",
                  flush=True)
    quality["agreement"] = agree
    compute = [r for r in rows if r["regime"]["kind"] == "compute-bound"]
    quality["rel_iqr_compute_bound"] = {f"{r['variant']}@{r['shape']}": r["rel_iqr"] for r in compute}
    quality["rel_iqr_target_met"] = all(v <= REL_IQR_TARGET for v in quality["rel_iqr_compute_bound"].values())
    diffs = [abs(v) for a in agree for k, v in a.items() if k.endswith("_rel_diff")]
    quality["agreement_max_rel_diff"] = max(diffs) if diffs else None
    quality["agreement_target_met"] = bool(diffs) and max(diffs) <= AGREEMENT_TARGET
    return {"device": info, "rows": rows, "quality": quality, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime())}


def markdown(result: dict[str, Any]) -> str:
    """The results as a markdown table plus the quality targets."""
    dev = result["device"]
    lines = [(f"Machine: {dev['name']} (cc {dev['capability']}, driver {dev['driver']}, torch {dev['torch']}, "
             f"CUDA {dev['cuda']}); clocks as found: {json.dumps(dev['clocks'])}"), "",
             ("| variant | shape | median ms | IQR ms (rel) | n | host ms | tokens/s | regime | graph ms | J/token "
              "| W |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        e = r.get("energy") or {}
        jt = f"{r['energy_j_per_token'] * 1000:.2f} mJ" if r.get("energy_j_per_token") else (
            "" if not e else f"unsupported: {e.get('reason')}")
        graph = f"{r['graph_median_ms']:.3f}" if "graph_median_ms" in r else ""
        watts = f"{e['avg_power_w']:.0f}" if e.get("avg_power_w") else ""
        host = f"{r['host_median_ms']:.2f}" if r.get("host_median_ms") is not None else ""
        lines.append(f"| {r['variant']} | {r['shape']} | {r['median_ms']:.3f} | {r['iqr_ms']:.3f} ({r['rel_iqr']:.1%}) "
                     f"| {r['n']} | {host} | {r['tokens_per_s']:,.0f} | {r['regime']['kind']} | {graph} | {jt} "
                     f"| {watts} |")
    q = result["quality"]
    verdict = ("no compute-bound shapes" if not q["rel_iqr_compute_bound"] else
               "met" if q["rel_iqr_target_met"] else "NOT met")
    lines += ["", (f"- relative IQR on compute-bound shapes <= {REL_IQR_TARGET:.0%}: {verdict} "
                  f"({', '.join(f'{k} {v:.2%}' for k, v in q['rel_iqr_compute_bound'].items())})")]
    if "fp16_vs_fp32_order" in q:
        o = q["fp16_vs_fp32_order"]
        lines.append(f"- fp16 < fp32 decided: p={o['p']:.2g} after {o['seconds']:.1f} s ({o['n_each']} samples each; "
                     f"target p<0.01 within 30 s: {'met' if o['decided'] and o['seconds'] <= 30 else 'NOT met'})")
    for a in q["agreement"]:
        lines.append(f"- agreement {a['variant']} {a['shape']}: qcheck {a['qcheck_ms']:.3f} ms, torch.utils.benchmark "
                     f"{a['torch_utils_benchmark_ms']:.3f} ms ({a['torch_utils_benchmark_rel_diff']:+.2%})"
                     + (f", triton do_bench {a['triton_do_bench_ms']:.3f} ms ({a['triton_do_bench_rel_diff']:+.2%})"
                        if "triton_do_bench_ms" in a else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--shapes", nargs="+", default=[f"{b}x{s}" for b, s in SHAPES])
    p.add_argument("--repeats", type=int, default=30, help="minimum repeats per timing")
    p.add_argument("--min-time", type=float, default=1.0, help="minimum seconds per timing")
    p.add_argument("--energy-window", type=float, default=2.0)
    p.add_argument("--no-energy", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny model and shapes (checks the script)")
    p.add_argument("--out", default=None, help="folder for latency.json and latency.md")
    p.add_argument("--save-model", default=None, help="also save the random model + --tokenizer as an HF folder")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder to save with --save-model")
    args = p.parse_args(argv)
    if args.save_model:
        save_model(args.save_model, args.tokenizer, args.quick)
        print(f"saved random SmolLM2-shaped model to {args.save_model}")
        if args.out is None:
            return 0
    result = run(args)
    text = markdown(result)
    save(args.out, "latency", result, text)
    print(text)
    return 0


def save_model(folder: str, tokenizer: str | None, quick: bool) -> None:
    """A random-init SmolLM2-135M-shaped HF folder (for `--qcheck-model` on machines without the GGUF)."""
    from transformers import AutoTokenizer

    model = build_reference("cpu", quick)
    model.save_pretrained(folder)
    if tokenizer:
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except Exception:  # noqa: BLE001 - an older transformers that lacks the saved tokenizer class
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(tokenizer) / "tokenizer.json"),
                                          bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>")
        tok.save_pretrained(folder)


# ----------------------------------------------------------------------------------- pytest-benchmark part

@pytest.fixture(scope="module")
def smollm2_fp16() -> torch.nn.Module:
    return build_reference("cuda", False).half()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 128), (32, 512)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_forward_fp16(qcheck_benchmark, smollm2_fp16, shape):  # noqa: F811 - the imported fixture, by name
    """pytest-benchmark with a synchronizing timer; extra_info carries qcheck's event median and regime."""
    ids = random_input_ids(smollm2_fp16.config.vocab_size, *shape, device="cuda")
    qcheck_benchmark(forward_callable(smollm2_fp16, ids), device="cuda", rounds=20, warmup_rounds=3,
                     shape=f"{shape[0]}x{shape[1]}", dtype="fp16")
    stats = qcheck_benchmark.benchmark.stats.stats
    events = qcheck_benchmark.timing.median_ms
    qcheck_benchmark.extra_info["pytest_benchmark_median_ms"] = stats.median * 1000
    assert qcheck_benchmark.extra_info["qcheck_regime"] in ("launch-bound", "compute-bound")
    assert abs(stats.median * 1000 / events - 1) < 0.15, (stats.median * 1000, events)


if __name__ == "__main__":
    raise SystemExit(main())
