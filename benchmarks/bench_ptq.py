"""PTQ backends on the embedded SmolLM2: perplexity, \\boxed{} rate, forward latency and memory per variant.

Not a pytest module (no tests inside); run it as a script, one JSON line per variant:
    python benchmarks/bench_ptq.py --variants bnb-config:int8,bnb-config:nf4,checkpoint=/tmp/ckpt-gptq-wikitext
    python benchmarks/bench_ptq.py --device cuda --variants torchao:int8-wo,torchao:int4-wo,bnb-config:nf4
Variant specs as for QCHECK_PTQ (qcheck.quant.backends.backend_from_spec); the fp32 reference and qcheck's RTN
w4g64 are always measured too. Latency: median of --repeats synchronized forwards of 1 x 256 tokens after 3
warm-ups. Memory: bytes of the variant's parameters and buffers as stored (packed where packed), and the
process's peak RSS (CPU) or torch.cuda.max_memory_allocated during its forwards (GPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from qcheck.quant.tensor_stats import model_stored_bytes


def latency_ms(model: torch.nn.Module, vocab: int, device: str, repeats: int) -> dict:
    """Median / min / max of synchronized 1 x 256 forwards after 3 warm-ups."""
    ids = torch.randint(0, vocab, (1, 256), generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for i in range(3 + repeats):
            sync()
            start = time.perf_counter()
            model(input_ids=ids)
            sync()
            if i >= 3:
                times.append((time.perf_counter() - start) * 1e3)
    out = {"median": statistics.median(times), "min": min(times), "max": max(times), "repeats": repeats}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 1e6
    return out


def boxed_rate(model, tokenizer, n: int) -> dict | None:
    """Share of n GSM8K answers (greedy, 96 new tokens, chat template) with a \\boxed{} answer; accuracy too."""
    if n <= 0:
        return None
    from qcheck.inputs.tasks import load_gsm8k
    from qcheck.measure.boxed import answers_match, extract_boxed
    from qcheck.measure.generation import GenerationSettings, generate_answers

    problems = load_gsm8k(n).items
    run = generate_answers(model, tokenizer, [p.question for p in problems],
                           GenerationSettings(max_new_tokens=96, batch_size=4))
    boxed = [extract_boxed(o.text) for o in run.outputs]
    has = [b.answer is not None for b in boxed]
    correct = [answers_match(b.answer, p.gold) for b, p in zip(boxed, problems)]
    return {"n": n, "boxed_rate": sum(has) / n, "accuracy": sum(correct) / n,
            "empty": sum(1 for o in run.outputs if not o.text.strip()), "seconds": run.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="bnb-config:int8,bnb-config:nf4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--boxed", type=int, default=0, help="GSM8K questions for the boxed rate (0: skip)")
    parser.add_argument("--random-init", action="store_true", help="SmolLM2's shape with random weights (GPU "
                        "machines without the model file): latency only, quality figures meaningless")
    args = parser.parse_args()

    from qcheck.errors import QCheckError
    from qcheck.inputs.data import wikitext_test
    from qcheck.inputs.models import load_model, random_init_like
    from qcheck.measure.perplexity import perplexity
    from qcheck.quant.apply import quantize
    from qcheck.quant.backends import BackendVariant, backend_from_spec, produce_variant

    machine = {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if args.random_init:

        from qcheck.inputs.models import tiny_llama_config

        config = tiny_llama_config(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192)
        reference, tokenizer = random_init_like(config, seed=0), None
    else:
        reference, tokenizer = load_model()
    text, _ = wikitext_test(max_chars=args.tokens * 8)
    models = {"fp32": (lambda: reference, "reference"),
              "rtn-w4g64": (lambda: quantize(reference, {"default": {"format": "int", "bits": 4, "group_size": 64},
                                                         "override": [{"match": "lm_head", "format": "keep"}]})[0],
                            "qcheck")}
    for spec in [s for s in args.variants.split(",") if s.strip()]:
        models[spec] = (lambda spec=spec: produce_variant(backend_from_spec(spec, device=args.device),
                                                         reference, tokenizer), "backend")
    for name, (build, kind) in models.items():
        start = time.perf_counter()
        try:
            built = build()
        except (QCheckError, RuntimeError, ValueError, ImportError) as exc:  # reported; the others still run
            print(json.dumps({"variant": name, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        model = built.model if isinstance(built, BackendVariant) else built
        build_s = time.perf_counter() - start
        device = args.device if kind != "backend" or name.startswith("torchao") else \
            str(next(model.parameters()).device)
        if kind != "backend":
            model = model.to(device)
        row = {"variant": name, "build_seconds": build_s, "machine": machine,
               "stored_mb": model_stored_bytes(model) / 1e6,
               "latency_ms_1x256": latency_ms(model, 49152, device, args.repeats)}
        if tokenizer is not None:
            ppl = perplexity(model, tokenizer, text, context=args.context, max_tokens=args.tokens, batch_size=1)
            row.update({"perplexity": ppl.perplexity, "tokens": ppl.n_tokens, "context": ppl.context})
            row["boxed"] = boxed_rate(model, tokenizer, args.boxed)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        if isinstance(built, BackendVariant):
            row["summary"] = built.report.summary()
            row["module_classes"] = sorted({r.module_class for r in built.report.layers})
        print(json.dumps(row, default=str), flush=True)
        if model is not reference:
            model.to("cpu")
            del model, built


if __name__ == "__main__":
    main()
