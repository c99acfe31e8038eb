"""Proof that quantization took effect: grid membership, weight deltas, and output divergence (SQNR).

These functions read models and return plain data; invariants.py decides what passes.
A GGUF-loaded model is dequantized float: dtype or module-class checks say nothing about it, only
comparisons with the reference weights and outputs do.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from qcheck.quant.spec import (
    BnbSpec,
    CastSpec,
    IntSpec,
    KeepSpec,
    PruneSpec,
    Spec,
    spec_from_dict,
)
from qcheck.quant.tensor_stats import distinct_per_group, rel_change, sqnr_db

SQNR_FLOORS_DB: dict[str, float] = {
    "int8": 20.0, "int6": 14.0, "int5": 10.0, "int4": 8.0, "fp16": 40.0, "bf16": 30.0, "bnb-int8": 20.0,
    "bnb-nf4": 8.0, "bnb-fp4": 6.0, "e4m3": 15.0, "e5m2": 12.0,
}
"""Weight SQNR below which a layer counts as destroyed, per format (torchao's tests expect >= 20 dB for int8
and 14-18 dB for int4 g128 on a Linear's output; weight SQNR of SmolLM2 is measured in RESULTS.md). Formats
without an entry (fixed point, 2-3 bit int) have no floor: their saturation/underflow rates are reported."""


def floor_for(spec: Spec) -> float | None:
    """The 'not destroyed' SQNR floor for a spec, or None where none is established."""
    if isinstance(spec, IntSpec):
        return SQNR_FLOORS_DB.get(f"int{spec.bits}")
    return SQNR_FLOORS_DB.get(getattr(spec, "label", ""), None)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The float32 weight a layer computes with (bitsandbytes modules are dequantized)."""
    from qcheck.quant.bnb import dequantized_weight, is_bnb_module

    if is_bnb_module(module):
        return dequantized_weight(module)
    return module.weight.detach().to(torch.float32)


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Effective float32 weights of every nn.Linear (incl. bitsandbytes modules), by module name."""
    return {n: effective_weight(m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}


@dataclass(frozen=True)
class GridEvidence:
    """Whether a weight lies on a spec's grid, with the numbers that decide it."""

    on_grid: bool
    reason: str
    max_distinct_per_group: int | None = None
    allowed_distinct: int | None = None
    off_grid_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_evidence(module: nn.Module, spec: Spec, reference: torch.Tensor | None = None) -> GridEvidence:
    """Check that `module`'s weights are representable in `spec` (idempotence plus a distinct-value bound)."""
    from qcheck.quant.bnb import is_bnb_module

    if isinstance(spec, BnbSpec):
        if not is_bnb_module(module):
            return GridEvidence(False, f"expected a bitsandbytes module, found {type(module).__name__}")
        w = effective_weight(module)
        group = spec.blocksize if spec.bits == 4 else None
        distinct = distinct_per_group(w, group)
        allowed = 16 if spec.bits == 4 else 255
        return GridEvidence(distinct <= allowed, f"{distinct} distinct values per block (<= {allowed} allowed)",
                            distinct, allowed)
    w = effective_weight(module)
    if isinstance(spec, KeepSpec):
        if reference is None:
            return GridEvidence(True, "kept; no reference to compare")
        same = torch.equal(w, reference.to(module.weight.dtype).to(torch.float32))
        return GridEvidence(same, "kept layer is bit-identical to the reference (in the model's dtype)" if same
                            else "layer marked 'keep' differs from the reference")
    if isinstance(spec, CastSpec):
        ok = module.weight.dtype == spec.dtype
        return GridEvidence(ok, f"weight dtype {module.weight.dtype} (expected {spec.dtype})")
    if isinstance(spec, PruneSpec):
        zeros = int((w == 0).sum().item())
        need = int(round(float(spec.sparsity) * w.numel()))
        return GridEvidence(zeros >= need - 1, f"{zeros} zeros of {w.numel()} (requested {need}, +-1)")
    requant = spec.quantize(w)
    diff = (requant - w).abs()
    if isinstance(spec, IntSpec):
        from qcheck.formats import integer_params

        params = integer_params(w, spec.bits, spec.group_size, spec.symmetric, spec.per_tensor)
        step = params.scale.expand(-1, diff.numel() // params.scale.shape[0]).reshape(w.shape)
        off = diff > 1e-3 * step
        distinct = distinct_per_group(w, spec.group_size, spec.per_tensor)
        allowed = 2**spec.bits - (1 if spec.symmetric else 0)
        frac = float(off.float().mean().item())
        group_len = w.numel() if spec.per_tensor else (spec.group_size or w.shape[-1])
        underused = group_len >= 2 ** (spec.bits + 1) and distinct <= 2 ** (spec.bits - 1) - 1
        ok = frac == 0.0 and distinct <= allowed and not underused
        reason = (f"{frac:.2%} of weights off the {spec.label} grid; at most {distinct} distinct values per group "
                  f"(<= {allowed} allowed)")
        if underused:
            reason += (f"; no group of {group_len} uses more than {distinct} values: effectively at most "
                       f"{spec.bits - 1} bits, not {spec.bits}")
        return GridEvidence(ok, reason, distinct, allowed, frac)
    frac = float((diff > 0).float().mean().item())
    return GridEvidence(frac == 0.0, f"{frac:.2%} of weights off the {spec.label} grid (a value on the grid "
                        "maps to itself; the grid has at most 2^bits values)", None, 2**spec.bits, frac)


def probe_input_ids(vocab_size: int, batch: int = 2, length: int = 32, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids to compare outputs on when no evaluation text is given."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=gen)


@torch.no_grad()
def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits on the model's own device."""
    device = next(model.parameters()).device
    return model(input_ids=input_ids.to(device)).logits.detach().to(torch.float32).cpu()


@torch.no_grad()
def output_divergence(reference: nn.Module, quantized: nn.Module, input_ids: torch.Tensor) -> dict[str, Any]:
    """Compare logits on the same tokens: bit-identical?, SQNR (dB), max |diff|, top-1 agreement."""
    ref = logits_of(reference, input_ids)
    out = logits_of(quantized, input_ids)
    finite = bool(torch.isfinite(out).all())
    return {
        "identical": bool(torch.equal(ref, out)),
        "sqnr_db": sqnr_db(ref, out) if finite else -math.inf,
        "max_abs_diff": float((ref - out).abs().max().item()) if finite else math.inf,
        "top1_agreement": float((ref.argmax(-1) == out.argmax(-1)).float().mean().item()),
        "finite": finite,
        "tokens": int(input_ids.numel()),
    }


def weight_deltas(reference: nn.Module, quantized: nn.Module) -> dict[str, dict[str, Any]]:
    """Per nn.Linear: fraction of weights changed, relative change, SQNR and dtypes, by name."""
    ref_w = linear_weights(reference)
    q_modules = {n: m for n, m in quantized.named_modules() if isinstance(m, nn.Linear) and n}
    out: dict[str, dict[str, Any]] = {}
    for name, rw in ref_w.items():
        if name not in q_modules:
            out[name] = {"missing": True}
            continue
        qw = effective_weight(q_modules[name]).to(rw.device)
        if qw.shape != rw.shape:
            out[name] = {"shape_mismatch": [list(rw.shape), list(qw.shape)]}
            continue
        out[name] = {"changed_fraction": float((qw != rw).float().mean().item()), "rel_change": rel_change(rw, qw),
                     "sqnr_db": sqnr_db(rw, qw), "dtype": str(q_modules[name].weight.dtype),
                     "module_class": type(q_modules[name]).__name__}
    return out


def spec_of_record(record: Any) -> Spec:
    """The spec a manifest record claims (bnb records carry an extra threshold key)."""
    data = {k: v for k, v in record.spec.items() if k != "llm_int8_threshold"}
    return spec_from_dict(data, where=f"manifest layer {record.name}")
