"""Peak memory of streamed fidelity (KL, top-1 agreement) vs one forward pass: the streaming must stay within
2x of a single forward pass of the same window batch (issue 11).

Models: SmolLM2-135M's architecture with seeded random weights (the GGUF file cannot travel to the GPU machine;
memory does not depend on the weights' values), the variant a copy with 1e-3 relative noise on every weight.
Each measurement runs in a fresh child process so nothing one leaves allocated counts for the other:
- CPU: resident set size (Linux /proc/self/status); the peak (VmHWM) is reset after the models are built
  (/proc/self/clear_refs), so the figure is the peak above the models' resident baseline. The children run
  with MALLOC_MMAP_THRESHOLD_=131072 (glibc otherwise raises the threshold after big frees and keeps freed
  blocks resident, so RSS would count memory no tensor holds); --malloc-default measures without it.
- CUDA: torch.cuda.max_memory_allocated() above memory_allocated() after the models are built.
"forward" is `model(input_ids=batch).logits` of batch x context tokens; "fidelity" is fidelity_many() over
--windows window batches of the same shape (reference and variant, head applied in chunks of positions).

Run (from the repository root):

    PYTHONPATH=. python benchmarks/bench_fidelity.py --device cpu --out OUTDIR
    PYTHONPATH=. python benchmarks/bench_fidelity.py --device cuda --batch 8 --out OUTDIR
    PYTHONPATH=. python -m pytest benchmarks/bench_fidelity.py -q          # the 2x gate as tests (cpu; gpu with CUDA)

`--quick` uses a tiny model to check the script itself. Exit status 1 when a ratio exceeds 2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from _output import save

CONTEXT = 1024
MAX_RATIO = 2.0


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _models(device: str, quick: bool, with_variant: bool) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    from qcheck.inputs.models import random_init_like, smollm2_config, tiny_llama_config

    config = tiny_llama_config(max_position_embeddings=CONTEXT) if quick else smollm2_config()
    reference = random_init_like(config, seed=0, device=device)
    if not with_variant:
        return reference, None
    variant = random_init_like(config, seed=0, device=device)
    gen = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for p in variant.parameters():
            p.add_(torch.randn(p.shape, generator=gen, device=device) * p.abs().mean() * 1e-3)
    return reference, variant


def measure(kind: str, device: str, batch: int, windows: int, quick: bool, chunk: int | None) -> dict[str, Any]:
    """Peak memory above the models' baseline of one `kind` ('forward' or 'fidelity'), in this process."""
    from qcheck.measure.fidelity import chunk_positions, fidelity_many

    reference, variant = _models(device, quick, with_variant=kind == "fidelity")
    vocab = reference.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    cuda = device.startswith("cuda")
    out: dict[str, Any] = {"kind": kind, "device": device, "batch": batch, "context": CONTEXT}
    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _status_kib("VmRSS") * 1024
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        start = time.perf_counter()
        if kind == "forward":
            ids = torch.randint(0, vocab, (batch, CONTEXT), generator=gen).to(device)
            logits = reference(input_ids=ids, use_cache=False).logits
            out["logits_bytes"] = logits.numel() * logits.element_size()
            del logits
            out["tokens"] = batch * CONTEXT
        else:
            ids = torch.randint(0, vocab, (batch * windows * CONTEXT,), generator=gen)
            result = fidelity_many(reference, {"variant": variant}, ids, context=CONTEXT, batch_size=batch,
                                   chunk=chunk)["variant"]
            out.update(tokens=result.n_tokens, windows=result.n_windows, kl_mean=result.kl_mean,
                       top1_agreement=result.top1_agreement, paths=result.paths,
                       chunk=chunk or chunk_positions(batch * (CONTEXT - 1), vocab),
                       full_logits_bytes_if_held=result.n_tokens * vocab * 4 * 2)
        if cuda:
            torch.cuda.synchronize()
            out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
            out["method"] = "torch.cuda.max_memory_allocated above the models' baseline"
        else:
            out["peak_bytes"] = _status_kib("VmHWM") * 1024 - base
            out["method"] = "peak RSS (VmHWM, reset via clear_refs) above the models' resident baseline"
        out["baseline_bytes"] = base
        out["seconds"] = time.perf_counter() - start
    return out


def run_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """`measure` in a fresh Python process (nothing allocated by one measurement is reused by the other)."""
    cmd = [sys.executable, __file__, "--child", kind, "--device", args.device, "--batch", str(args.batch),
           "--windows", str(args.windows)]
    cmd += (["--chunk", str(args.chunk)] if args.chunk else []) + (["--quick"] if args.quick else [])
    env = dict(os.environ)
    if not args.device.startswith("cuda") and not getattr(args, "malloc_default", False):
        # glibc raises its mmap threshold after big frees and then keeps freed blocks resident: with a fixed
        # threshold every tensor block is returned on free, so RSS follows the live tensors
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict[str, Any]:
    forward = run_child("forward", args)
    streamed = run_child("fidelity", args)
    ratio = streamed["peak_bytes"] / forward["peak_bytes"]
    return {"forward": forward, "fidelity": streamed, "ratio": ratio, "max_ratio": MAX_RATIO,
            "ok": ratio <= MAX_RATIO, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}


def render(report: dict[str, Any]) -> str:
    f, s = report["forward"], report["fidelity"]
    mib = 1024 * 1024
    lines = [
        (f"device {f['device']} ({report['gpu'] or 'cpu'}), batch {f['batch']} x context {f['context']}, torch "
         f"{report['torch']}; {f['method']}"),
        "| measured | tokens | peak above baseline | baseline | seconds |", "|---|---|---|---|---|",
        (f"| one forward pass (logits {f['logits_bytes'] / mib:.0f} MiB) | {f['tokens']} | "
         f"{f['peak_bytes'] / mib:.0f} MiB | {f['baseline_bytes'] / mib:.0f} MiB | {f['seconds']:.2f} |"),
        (f"| streamed fidelity, {s['windows']} windows, chunk {s['chunk']} | {s['tokens']} | "
         f"{s['peak_bytes'] / mib:.0f} MiB | {s['baseline_bytes'] / mib:.0f} MiB | {s['seconds']:.2f} |"),
        (f"ratio {report['ratio']:.2f} (limit {MAX_RATIO}); full-vocabulary logits of both models for the whole "
         f"text would be {s['full_logits_bytes_if_held'] / mib:.0f} MiB")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1, help="windows per forward (default 1)")
    parser.add_argument("--windows", type=int, default=4, help="window batches the fidelity pass streams")
    parser.add_argument("--chunk", type=int, default=None,
                        help="positions whose logits exist at once (default: qcheck's, sized by bytes and batch)")
    parser.add_argument("--quick", action="store_true", help="tiny model (checks the script)")
    parser.add_argument("--malloc-default", action="store_true",
                        help="CPU: keep glibc's dynamic mmap threshold (RSS then includes freed, retained blocks)")
    parser.add_argument("--out", default=None, help="folder for bench_fidelity.json / .md")
    parser.add_argument("--child", default=None, choices=("forward", "fidelity"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.device, args.batch, args.windows, args.quick, args.chunk)))
        return 0
    report = compare(args)
    text = render(report)
    print(text)
    save(args.out, "bench_fidelity", report, text)
    return 0 if report["ok"] else 1


def _args(device: str, batch: int) -> argparse.Namespace:
    return argparse.Namespace(device=device, batch=batch, windows=4, chunk=None, quick=False, malloc_default=False)


def test_streaming_within_2x_of_a_forward_cpu():
    report = compare(_args("cpu", 1))
    print(render(report))
    assert report["ratio"] <= MAX_RATIO, render(report)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])
def test_streaming_within_2x_of_a_forward_gpu(batch):
    report = compare(_args("cuda", batch))
    print(render(report))
    assert report["ratio"] <= MAX_RATIO, render(report)


if __name__ == "__main__":
    sys.exit(main())
