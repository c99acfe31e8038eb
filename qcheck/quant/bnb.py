"""bitsandbytes backend: swap nn.Linear for bnb's Linear8bitLt (LLM.int8) or Linear4bit (nf4/fp4).

bitsandbytes >= 0.50 runs these on CPU too. Dequantization helpers give the float weights the evidence
checks compare with the reference.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

from qcheck.errors import require
from qcheck.quant.spec import BnbSpec

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _bnb():
    with contextlib.redirect_stderr(io.StringIO()):
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        return require("bitsandbytes", "the bitsandbytes backend (formats bnb-int8 / bnb-nf4 / bnb-fp4)")


class HostStaging:
    """One pinned host buffer that every layer of a build passes through. bitsandbytes quantizes Int8Params /
    Params4bit as they move from the host to the GPU, so a GPU weight makes a round trip. At the 8B shape on an H100
    the pageable round trip made the int8 build 25.0 s and the nf4 build 23.8 s; through this buffer they took 6.9 s
    and 3.1 s (session 14). The buffer grows to the largest layer and is released with the build."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def hold(self, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (on the GPU) in fp16, copied into the buffer: the host tensor bitsandbytes quantizes from. The
        copy is synchronous, and bitsandbytes' copy back to the GPU is too, so the next layer may reuse the buffer."""
        half = weight.detach().to(torch.float16)
        if self.buffer is None or self.buffer.numel() < half.numel():
            self.buffer = None
            try:
                self.buffer = torch.empty(half.numel(), dtype=torch.float16, pin_memory=True)
            except RuntimeError:  # no page-locked memory to be had (a small host, a 2 GB lm_head): pageable copy
                return half.to("cpu", copy=True)
        host = self.buffer[:half.numel()].view(half.shape)
        host.copy_(half)
        return host


_STAGING: ContextVar[HostStaging | None] = ContextVar("qcheck_bnb_staging", default=None)


@contextlib.contextmanager
def host_staging() -> Iterator[HostStaging]:
    """Builds of bitsandbytes layers on a GPU inside this block share one pinned host buffer (HostStaging)."""
    staging = HostStaging()
    token = _STAGING.set(staging)
    try:
        yield staging
    finally:
        _STAGING.reset(token)
        staging.buffer = None


def make_bnb_linear(linear: nn.Linear, spec: BnbSpec) -> nn.Module:
    """A bitsandbytes module holding `linear`'s weights, quantized on the linear's device."""
    bnb = _bnb()
    device = linear.weight.device
    compute = (_DTYPES[spec.compute_dtype] if spec.compute_dtype else
               linear.weight.dtype if linear.weight.dtype in (torch.float16, torch.bfloat16) else torch.float32)
    # built on the host and moved: bitsandbytes quantizes Int8Params / Params4bit when they move to the device
    staging = _STAGING.get() if device.type == "cuda" else None
    if staging is not None:
        weight = staging.hold(linear.weight)
    else:
        weight = linear.weight.detach().to("cpu", torch.float32 if device.type == "cpu" else torch.float16, copy=True)
    has_bias = linear.bias is not None
    # made on the meta device: the constructor's random init of a weight replaced at once cost 50-100 ms a layer
    # (kaiming_uniform_ on the CPU) at 1B-8B sizes, most of a bitsandbytes variant's build
    if spec.format == "bnb-int8":
        with torch.device("meta"):
            module = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                         has_fp16_weights=False, threshold=float(spec.threshold))
        module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        quant_type = "nf4" if spec.format == "bnb-nf4" else "fp4"
        with torch.device("meta"):
            module = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                       compute_dtype=compute, quant_type=quant_type,
                                       compress_statistics=spec.double_quant)
        module.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quant_type,
                                          compress_statistics=spec.double_quant, blocksize=spec.blocksize)
    if has_bias:
        module.bias = nn.Parameter(linear.bias.detach().to("cpu", copy=True), requires_grad=False)
    return module.to(device)


def is_bnb_module(module: nn.Module) -> bool:
    """True for bitsandbytes' quantized linear modules (checked by class name: no import needed)."""
    return type(module).__name__ in ("Linear8bitLt", "Linear4bit", "LinearNF4", "LinearFP4")


def llm_int8_layers(model: nn.Module) -> list[nn.Module]:
    """The model's bitsandbytes LLM.int8 layers (Linear8bitLt, by class name)."""
    return [m for m in model.modules() if type(m).__name__ == "Linear8bitLt"]


def llm_int8_threshold(model: nn.Module, layers: list[nn.Module] | None = None) -> float:
    """The largest LLM.int8 outlier threshold among the model's bitsandbytes int8 layers (`layers`, when the caller
    already has them; 0: none splits outliers, and so none asks the GPU from the host whether it found any)."""
    layers = llm_int8_layers(model) if layers is None else layers
    return max((float(getattr(getattr(m, "state", None), "threshold", 0.0) or 0.0) for m in layers), default=0.0)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The float32 weight a bitsandbytes module computes with (int8: CB * SCB / 127; 4-bit: dequantize_4bit)."""
    bnb = _bnb()
    weight = module.weight
    if type(module).__name__ == "Linear8bitLt":
        scb = getattr(weight, "SCB", None)
        if scb is None:
            scb = getattr(module.state, "SCB", None)
        cb = weight.data if weight.dtype == torch.int8 else getattr(module.state, "CB", None)
        if cb is None or scb is None:
            raise RuntimeError(f"{type(module).__name__}: int8 weights not quantized yet (no CB/SCB)")
        return cb.to(torch.float32) * scb.to(torch.float32)[:, None] / 127.0
    state = getattr(weight, "quant_state", None)
    if state is None:
        raise RuntimeError(f"{type(module).__name__}: 4-bit weights carry no quant_state")
    return bnb.functional.dequantize_4bit(weight.data, state).to(torch.float32)
