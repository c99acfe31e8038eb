"""Time of the robustness evaluation (clean pass x2, FGSM, PGD cascade) per variant.

GPU (from the repository root; the GGUF cannot travel, so the SmolLM2-135M architecture with random weights
and random token ids shaped like the ARC-Easy slice):

    PYTHONPATH=. python benchmarks/bench_robustness.py --device cuda --questions 128 --out OUTDIR

CPU with the embedded SmolLM2 and real ARC-Easy questions (the figures in RESULTS.md):

    python benchmarks/bench_robustness.py --device cpu --embedded --questions 16 --out OUTDIR

`--quick` runs a tiny random model to check the script itself. Writes OUTDIR/bench_robustness.json and .md.
Random weights answer at chance, so on GPU only the times mean anything; the accuracies are recorded anyway.
`--shape` picks bench_scale.py's layer shapes for the random model (135m, 1.2b, 8b). `--backward before,qcheck`
crosses the attacks' gradient pass: "qcheck" is the current one (weights frozen for the pass, grouped-query heads
attended to without copies), "before" the pass of session 19 (weights requiring grad, transformers' sdpa copying
the key/value heads under the choice rows' mask); each row holds the peak GPU memory above what was allocated
before, and whether the per-question predictions equal the first setting's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import pytest
import torch
from _output import save

from qcheck.measure.robustness import ROBUSTNESS_ATTACK as ATTACK
from qcheck.measure.robustness import ChoiceItem, arc_easy_items, evaluate_robustness

VARIANTS = ("fp32", "int8", "w4g64", "bf16")


def random_items(n: int, vocab: int, seed: int = 0) -> list[ChoiceItem]:
    """ARC-Easy-shaped questions of random token ids: prompts 16-40 tokens, 4 choices of 2-10 tokens."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> tuple[int, ...]:
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return tuple(torch.randint(3, vocab, (length,), generator=g).tolist())

    return [ChoiceItem(f"r{i}", ids(16, 40), tuple(ids(2, 10) for _ in range(4)), int(torch.randint(0, 4, (1,),
                                                                                                    generator=g)))
            for i in range(n)]


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, list[ChoiceItem], dict[str, Any], int]:
    from qcheck.inputs.models import load_model, random_init_like, smollm2_config, tiny_llama_config

    if args.embedded:
        loaded = load_model(device=args.device)
        items, info = arc_easy_items(loaded.tokenizer, args.questions, max_tokens=64)
        return loaded.model, items, {"model": loaded.describe(), "data": info}, loaded.tokenizer.pad_token_id or 0
    from bench_scale import SHAPES

    config = tiny_llama_config() if args.quick else smollm2_config(**SHAPES[args.shape])
    model = random_init_like(config, seed=0, device=args.device)
    items = random_items(args.questions, config.vocab_size)
    return model, items, {"model": {"architecture": f"{args.shape} shape" if not args.quick else "tiny llama",
                                    "weights": "random init, seed 0",
                                    "parameters": sum(p.numel() for p in model.parameters())},
                          "data": {"questions": len(items), "kind": "random token ids, ARC-Easy shaped"}}, 0


def backward(name: str) -> contextlib.AbstractContextManager[Any]:
    """The attacks' gradient pass for one setting: "qcheck" as it is, "before" without the frozen weights and the
    packed grouped-query attention."""
    from unittest import mock

    if name == "qcheck":
        return contextlib.nullcontext()
    if name != "before":
        raise SystemExit(f"--backward: unknown setting {name!r} (before, qcheck)")
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch("qcheck.measure.robustness.frozen_parameters", contextlib.nullcontext))
    stack.enter_context(mock.patch("qcheck.measure.robustness.packed_gqa_attention",
                                   lambda model: contextlib.nullcontext(False)))
    return stack


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qcheck.quant.apply import quantize
    from qcheck.variants import builtin_plan

    device = torch.device(args.device)
    reference, items, meta, pad_id = build(args)
    out: dict[str, Any] = {"meta": {**meta, "device": _device_name(device), "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "attack": ATTACK.to_dict(),
                                    "batch_size": args.batch_size, "repeats": args.repeats,
                                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
                           "variants": {}}
    for name in args.variants:
        model = reference if name == "fp32" else quantize(reference, builtin_plan(name))[0]
        first_preds = None
        for setting in args.backward:
            times, cpu_times = [], []
            evaluation = None
            peak = None
            for _ in range(args.repeats):
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                with backward(setting):
                    evaluation = evaluate_robustness(model, items, ATTACK, pad_id=pad_id, batch_size=args.batch_size,
                                                     variant=name, repeats=2)
                _sync(device)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
                if device.type == "cuda":
                    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            assert evaluation is not None
            preds = [(r.clean_pred, sorted(r.attack_preds.items())) for r in evaluation.records]
            first_preds = preds if first_preds is None else first_preds
            key = name if len(args.backward) == 1 else f"{name}/{setting}"
            out["variants"][key] = {
                "seconds_median": statistics.median(times), "seconds": times,
                "process_cpu_seconds_median": statistics.median(cpu_times),
                "seconds_per_question": statistics.median(times) / len(items), "questions": len(items),
                "clean_accuracy": evaluation.clean_accuracy, "robust_accuracy": evaluation.robust_accuracy,
                "attacked": evaluation.attacked, "gradient_source": evaluation.gradient_source,
                "gradients": evaluation.gradient_counts(), "randomized": evaluation.randomization.randomized,
                "peak_above_resident_mb": None if peak is None else round(peak, 1),
                "same_predictions_as_first_setting": preds == first_preds}
            print(f"{key:16s} {statistics.median(times):8.2f} s  clean {evaluation.clean_accuracy:.3f} "
                  f"robust {evaluation.robust_accuracy:.3f}  peak {peak}", flush=True)
        if name != "fp32":
            del model
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    head = (f"Device: {meta['device']}; model: {meta['model'].get('architecture', meta['model'].get('name'))}; "
            f"questions: {meta['data'].get('questions')}; attack: FGSM + PGD-{meta['attack']['pgd_steps']} at "
            f"epsilon {meta['attack']['epsilon']} (embedding-norm units); batch {meta['batch_size']}; "
            f"median of {meta['repeats']}; load average {meta['load_average']}")
    lines = [head, "",
             ("| variant | seconds | process CPU s | s / question | clean | robust | attacked | peak MiB above resident "
              "| same predictions as the first setting |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        lines.append(f"| {name} | {v['seconds_median']:.2f} | {v['process_cpu_seconds_median']:.1f} | "
                     f"{v['seconds_per_question']:.3f} | "
                     f"{v['clean_accuracy']:.3f} | {v['robust_accuracy']:.3f} | {v['attacked']} | "
                     f"{v.get('peak_above_resident_mb')} | {v.get('same_predictions_as_first_setting')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--questions", type=int, default=None, help="questions (default 128 on cuda, 12 on cpu)")
    parser.add_argument("--batch-size", type=int, default=None, help="questions per forward (16 cuda, 4 cpu)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (3 cuda, 1 cpu)")
    parser.add_argument("--embedded", action="store_true", help="embedded SmolLM2 and real ARC-Easy (CPU figures)")
    parser.add_argument("--quick", action="store_true", help="tiny random model (checks the script)")
    parser.add_argument("--shape", default="135m", help="random model's layer shapes: 135m, 1.2b, 8b (bench_scale.py)")
    parser.add_argument("--backward", default="qcheck", help="attack gradient passes to cross: before, qcheck")
    parser.add_argument("--out", default=None, help="folder for bench_robustness.json/.md")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.questions = args.questions or (128 if cuda else 12)
    args.batch_size = args.batch_size or (16 if cuda else 4)
    args.repeats = args.repeats or (3 if cuda else 1)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.backward = [b.strip() for b in args.backward.split(",") if b.strip()]
    result = run(args)
    text = markdown(result)
    print(text)
    save(args.out, "bench_robustness", result, text)
    return 0


@pytest.mark.gpu
def test_robustness_time_per_variant_gpu(tmp_path):
    """pytest entry: the GPU benchmark on 64 questions, one repeat; every variant evaluates and keeps robust<=clean."""
    assert main(["--device", "cuda", "--questions", "64", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_robustness.json").read_text())
    for v in result["variants"].values():
        assert v["robust_accuracy"] <= v["clean_accuracy"] and not v["randomized"]


def test_robustness_bench_quick_cpu(tmp_path):
    """The script itself on a tiny model (CPU)."""
    assert main(["--device", "cpu", "--quick", "--questions", "4", "--variants", "fp32,bf16",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench_robustness.md").read_text().count("| fp32 |") == 1


if __name__ == "__main__":
    sys.exit(main())
