"""How long loading a reference onto the GPU takes: transformers' load on the host then `.to(device)` (what
`qcheck.inputs.models.load_model` does without a placement) against `device_map={"": device}` (tensors placed on
the GPU as they are read), on a bench_scale folder; both loads must give the same tensors (issue 20).

    python benchmarks/bench_load.py --shape 8b --root /tmp/qcheck-scale --out DIR
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save
from bench_scale import SHAPES, build_apart


def _load(folder: Path, way: str, device: str) -> tuple[torch.nn.Module, float]:
    from transformers import AutoModelForCausalLM

    torch.cuda.synchronize()
    start = time.perf_counter()
    if way == "host-then-to":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
        model.to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True,
                                                     device_map={"": device})
    torch.cuda.synchronize()
    return model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--root", default="/tmp/qcheck-scale")
    parser.add_argument("--tokenizer", default=".device/smollm2-tokenizer")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    folder = build_apart(args.shape, args.tokenizer, Path(args.root), "cuda")
    device = "cuda:0"
    first, host_s = _load(folder, "host-then-to", device)
    second, direct_s = _load(folder, "device-map", device)
    a, b = dict(first.named_parameters()), dict(second.named_parameters())
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    devices = sorted({str(p.device) for p in second.parameters()})
    data: dict[str, Any] = {"shape": args.shape, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                            "host_then_to_s": round(host_s, 2), "device_map_s": round(direct_s, 2),
                            "same_tensors": same, "device_map_devices": devices,
                            "hf_device_map": {k: str(v) for k, v in (getattr(second, "hf_device_map", None) or {})
                                              .items()}}
    del first, second, a, b
    gc.collect()
    markdown = (f"load of the {args.shape} folder (bf16 on disk, fp32 in memory) on {data['gpu']}: host then .to "
                f"{host_s:.2f} s, device_map {direct_s:.2f} s; same tensors: {same}; device_map puts the "
                f"parameters on {devices}, hf_device_map {data['hf_device_map']}")
    print(markdown)
    save(args.out, "bench_load", data, markdown)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
