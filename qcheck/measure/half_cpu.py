"""fp16/bf16 matrix products on a CPU as fp32 GEMMs of the 16-bit values, rounded to 16 bits once.

torch's CPU kernels for half-precision GEMMs accumulate in fp32 but run 4-6x slower than its fp32 GEMM on CPUs
without AVX512-FP16 or AMX (measured on this project's 2-core AVX2 CI machine: SmolLM2-135M's forward of 1,024
tokens took 5.6 s in fp32, 22.7 s in fp16, 25.6 s in bf16; 92-95% of it in `aten::mm`). Each product of two 16-bit
values is exact in fp32, so an fp32 GEMM of the upcast operands followed by one rounding to 16 bits is the same
arithmetic (fp32 accumulation, one 16-bit rounding of the result) as torch's own CPU and CUDA half GEMMs, and
differs from them only in the order of the fp32 sums (0.2% of outputs by one unit in the last place, on a
1,024x576 by 576x1,536 fp16 product). Weights stay stored in 16 bits; only the product is computed this way.

Used by the measurement engine around every step that is not a timing (timing must run the kernels a user would)
on a subject with 16-bit weights, with `--cpu-half-matmul native` to keep torch's own kernels everywhere.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

HALF_MATMUL_MODES = ("fast", "native")
_HALF = (torch.float16, torch.bfloat16)
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _matmuls() -> frozenset[Any]:
    return frozenset({F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm,
                      torch.bmm, torch.Tensor.bmm, torch.addmm, torch.Tensor.addmm, torch.baddbmm,
                      torch.Tensor.baddbmm})


def _half_dtype(tensors: list[Any]) -> torch.dtype | None:
    """The common 16-bit dtype of CPU operands that are all plain tensors of it, else None (left to torch)."""
    found = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not found or any(type(t) not in _PLAIN or t.device.type != "cpu" for t in found):
        return None
    dtypes = {t.dtype for t in found}
    return dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in _HALF else None


def has_half_weights(model: torch.nn.Module) -> bool:
    """Whether any of the model's floating-point parameters is fp16 or bf16 (a 16-bit cast, or a 16-bit reference)."""
    return any(p.dtype in _HALF for p in model.parameters())


class Fp32AccumulateOnCpu(TorchFunctionMode):
    """Runs 16-bit CPU matrix products as fp32 GEMMs of the same values, rounded once to the 16-bit dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.matmuls = _matmuls()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.matmuls and "out" not in kwargs:
            dtype = _half_dtype([*args, *kwargs.values()])
            if dtype is not None:
                self.calls += 1
                up = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)
                kw = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                return func(*up, **kw).to(dtype)
        return func(*args, **kwargs)


@contextmanager
def half_matmul(mode: str = "fast") -> Iterator[Fp32AccumulateOnCpu | None]:
    """Within the block, 16-bit CPU matrix products run as fp32 GEMMs ("fast"), or torch's own kernels ("native")."""
    if mode not in HALF_MATMUL_MODES:
        raise ValueError(f"half matmul mode must be one of {HALF_MATMUL_MODES}, got {mode!r}")
    if mode == "native":
        yield None
        return
    with Fp32AccumulateOnCpu() as active:
        yield active
