"""One side CUDA stream per device, made once, for the warm-up calls a CUDA-graph capture needs.

cuBLAS keeps a workspace for every (handle, stream) pair it has run on (32 MiB on an H100), in a map of torch's that
nothing frees while the process lives. A fresh `torch.cuda.Stream()` per capture therefore left 32 MiB more behind
after every variant's decoding: in a 1.2B run the step peaks of the fake-quant variants rose by 32.0 MiB from one
variant to the next (RESULTS.md, session 20). One stream reused keeps one workspace.
"""
from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def _stream(index: int) -> Any:
    return torch.cuda.Stream(device=index)


def side_stream(device: torch.device | str | int | None = None) -> Any:
    """The process's side stream on CUDA `device` (the current device when None or given without an index)."""
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    return _stream(dev.index if dev.index is not None else torch.cuda.current_device())
