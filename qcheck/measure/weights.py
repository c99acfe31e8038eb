"""Proof that quantization took effect: grid membership, weight deltas, and output divergence (SQNR).

These functions read models and return plain data (stored as records); qcheck.invariants.applied judges it.
A GGUF-loaded model is dequantized float: dtype or module-class checks say nothing about it, only
comparisons with the reference weights and outputs do.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from qcheck.formats._chunks import flat_pieces, pieces, row_blocks
from qcheck.quant.experts import ExpertMatrix, class_name, expert_layers, layer_at, owner_of, per_expert_view
from qcheck.quant.offload import input_device, onloaded
from qcheck.quant.spec import (
    BnbSpec,
    CastSpec,
    FixedSpec,
    IntSpec,
    KeepSpec,
    MinifloatSpec,
    PruneSpec,
    Spec,
    spec_from_dict,
)
from qcheck.quant.tensor_stats import count_true, distinct_per_group, fraction, rel_change_and_sqnr_db, sqnr_db

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


def effective_weight(module: nn.Module | ExpertMatrix) -> torch.Tensor:
    """The float32 weight a layer computes with (bitsandbytes modules are dequantized)."""
    from qcheck.quant.bnb import dequantized_weight, is_bnb_module

    if is_bnb_module(module):
        return dequantized_weight(module)
    return module.weight.detach().to(torch.float32)


def _weight_of(module: nn.Module | ExpertMatrix) -> torch.Tensor:
    """effective_weight of a layer wherever accelerate keeps its weight (offloaded ones are read in for the call)."""
    with onloaded(owner_of(module)):
        return effective_weight(module)


def _layers(model: nn.Module) -> dict[str, nn.Module | ExpertMatrix]:
    """Every module by name, and every fused experts weight by its layer name (`qcheck.quant.experts`)."""
    return {**dict(model.named_modules()), **expert_layers(model)}


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


def grid_evidence(module: nn.Module | ExpertMatrix, spec: Spec, reference: torch.Tensor | None = None) -> GridEvidence:
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
    if isinstance(spec, CastSpec):
        ok = module.weight.dtype == spec.dtype
        return GridEvidence(ok, f"weight dtype {module.weight.dtype} (expected {spec.dtype})")
    w = effective_weight(module)
    if isinstance(spec, KeepSpec):
        if reference is None:
            return GridEvidence(True, "kept; no reference to compare")
        dtype = module.weight.dtype
        same = w.shape == reference.shape and all(
            torch.equal(a, b.to(dtype).to(torch.float32)) for a, b in flat_pieces(w, reference))
        return GridEvidence(same, "kept layer is bit-identical to the reference (in the model's dtype)" if same
                            else "layer marked 'keep' differs from the reference")
    if isinstance(spec, PruneSpec):
        zeros = count_true(lambda p: p == 0, w)
        need = round(float(spec.sparsity) * w.numel())
        return GridEvidence(zeros >= need - 1, f"{zeros} zeros of {w.numel()} (requested {need}, +-1)")
    if isinstance(spec, IntSpec):
        label = spec.label
        w, spec = per_expert_view(module, spec, w)  # fused experts: a per-tensor scale is one per expert
        off = sum(_off_integer_grid(block, spec) for block in _blocks(w, spec))
        distinct = distinct_per_group(w, spec.group_size, spec.per_tensor)
        allowed = 2**spec.bits - (1 if spec.symmetric else 0)
        frac = fraction(off, w.numel())
        group_len = w.numel() if spec.per_tensor else (spec.group_size or w.shape[-1])
        underused = group_len >= 2 ** (spec.bits + 1) and distinct <= 2 ** (spec.bits - 1) - 1
        ok = frac == 0.0 and distinct <= allowed and not underused
        reason = (f"{frac:.2%} of weights off the {label} grid; at most {distinct} distinct values per group "
                  f"(<= {allowed} allowed)")
        if underused:
            reason += (f"; no group of {group_len} uses more than {distinct} values: effectively at most "
                       f"{spec.bits - 1} bits, not {spec.bits}")
        return GridEvidence(ok, reason, distinct, allowed, frac)
    off = sum(count_true(lambda a, b: (a - b).abs() > 0, spec.quantize(block), block) for block in _blocks(w, spec))
    frac = fraction(off, w.numel())
    return GridEvidence(frac == 0.0, f"{frac:.2%} of weights off the {spec.label} grid (a value on the grid "
                        "maps to itself; the grid has at most 2^bits values)", None, 2**spec.bits, frac)


def _off_integer_grid(block: torch.Tensor, spec: IntSpec) -> int:
    """How many weights of `block` requantizing moves by more than 1e-3 of their group's step (a piece at a time: no
    mask or broadcast step of the block's size)."""
    from qcheck.formats import integer_params

    requant = spec.quantize(block)
    scale = integer_params(block, spec.bits, spec.group_size, spec.symmetric, spec.per_tensor).scale
    grouped, regrouped = block.reshape(scale.shape[0], -1), requant.reshape(scale.shape[0], -1)
    off = 0
    for rows, cols in pieces(*grouped.shape):
        diff = (regrouped[rows, cols] - grouped[rows, cols]).abs()
        off += int((diff > 1e-3 * scale[rows]).sum().item())
    return off


def _blocks(w: torch.Tensor, spec: Spec) -> Iterator[torch.Tensor]:
    """Pieces of `w`, about CHUNK_ELEMENTS each, that `spec` quantizes exactly as it quantizes them inside `w`, so
    requantizing is checked without a weight-sized copy: any flat piece for an elementwise format (fixed point,
    minifloat, cast); whole rows (dim 0) for integer groups and channels, which never span a row; `w` whole where one
    group spans it (per tensor, a 1-D weight) or for any other spec."""
    if isinstance(spec, (FixedSpec, MinifloatSpec, CastSpec)):
        yield from (piece for (piece,) in flat_pieces(w))
    elif isinstance(spec, IntSpec) and not spec.per_tensor and w.dim() >= 2:
        yield from (w[block] for block in row_blocks(w.shape[0], w[0].numel()))
    else:
        yield w


def probe_input_ids(vocab_size: int, batch: int = 2, length: int = 32, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids to compare outputs on when no evaluation text is given."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=gen)


@torch.no_grad()
def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits on the model's own device."""
    device = input_device(model)
    return model(input_ids=input_ids.to(device)).logits.detach().to(torch.float32).cpu()


@torch.no_grad()
def output_divergence(reference: nn.Module, quantized: nn.Module, input_ids: torch.Tensor) -> dict[str, Any]:
    """Compare logits on the same tokens: bit-identical?, SQNR (dB), max |diff|, top-1 agreement."""
    return _divergence(logits_of(reference, input_ids), logits_of(quantized, input_ids), input_ids)


def layer_delta(reference: torch.Tensor, quantized: nn.Module | ExpertMatrix) -> dict[str, Any]:
    """One nn.Linear against its reference weight: fraction changed, relative change, SQNR, dtype and class."""
    qw = effective_weight(quantized).to(reference.device)
    if qw.shape != reference.shape:
        return {"shape_mismatch": [list(reference.shape), list(qw.shape)]}
    rel, sqnr = rel_change_and_sqnr_db(reference, qw)
    changed = fraction(count_true(torch.ne, qw, reference), qw.numel())
    return {"changed_fraction": changed, "rel_change": rel, "sqnr_db": sqnr,
            "dtype": str(quantized.weight.dtype), "module_class": class_name(quantized)}


def weight_deltas(reference: nn.Module, quantized: nn.Module) -> dict[str, dict[str, Any]]:
    """Per nn.Linear and fused experts weight: fraction of weights changed, relative change, SQNR and dtypes, by name
    (one layer's float32 copy at a time, so a large model is never held twice in float32)."""
    kinds = (nn.Linear, ExpertMatrix)
    q_layers = {n: m for n, m in _layers(quantized).items() if isinstance(m, kinds) and n}
    out: dict[str, dict[str, Any]] = {}
    for name, layer in _layers(reference).items():
        if not name or not isinstance(layer, kinds):
            continue
        if name not in q_layers:
            out[name] = {"missing": True}
            continue
        with onloaded(owner_of(q_layers[name])):
            out[name] = layer_delta(_weight_of(layer), q_layers[name])
    return out


def already_in_format(reference: torch.Tensor, spec: Spec) -> bool:
    """Whether the reference's weight already holds only values of `spec` (a bf16 checkpoint loaded in fp32 is
    bf16-exact): quantizing it to that format cannot change it, and an unchanged layer is then no evidence of a
    quantization that was never applied."""
    if isinstance(spec, CastSpec):
        return all(torch.equal(p.to(spec.dtype).to(p.dtype), p) for p in _blocks(reference, spec))
    if isinstance(spec, (BnbSpec, PruneSpec, KeepSpec)):
        return isinstance(spec, KeepSpec)
    return all(torch.equal(spec.quantize(block.to(torch.float32)).to(block.dtype), block)
               for block in _blocks(reference, spec))


def probe_view(reference_logits: torch.Tensor, input_ids: torch.Tensor) -> dict[str, Any]:
    """Whether the probe can show a weight change: distinct token ids fed, and whether the reference's logits vary
    over the probe's positions (all-padding or all-one-token inputs give constant rows, whatever the weights)."""
    distinct = int(torch.unique(input_ids).numel())
    flat = reference_logits.reshape(-1, reference_logits.shape[-1])
    varies = bool(flat.shape[0] > 1 and (flat != flat[:1]).any())
    blind = None
    if not varies:
        blind = (f"the reference's logits are the same at every one of the probe's {flat.shape[0]} positions "
                 f"({distinct} distinct token ids fed): the probe cannot show whether the weights changed (a "
                 "tokenizer mapping the text to one id, or inputs the model zeroes out)")
    elif distinct < 8:
        blind = (f"the probe holds only {distinct} distinct token ids: too few to exercise the weights (a broken or "
                 "mismatched tokenizer)")
    return {"distinct_ids": distinct, "reference_logits_vary": varies, "blind": blind}


@torch.no_grad()
def quantization_evidence(reference: nn.Module, quantized: nn.Module, report: Any = None, *,
                          input_ids: torch.Tensor | None = None,
                          grids: dict[tuple[str, str], GridEvidence] | None = None) -> dict[str, Any]:
    """What `assert_quantization_applied` judges, as data: per claimed layer (every nn.Linear without a manifest)
    its grid membership, change, dtype and SQNR against the reference and its format's floor; the logits on a
    probe and whether the probe can see the weights at all. `grids`, when given, collects each layer's grid result
    by (layer, spec) for `plan_evidence` to reuse."""
    report = report if report is not None else getattr(quantized, "qcheck_report", None)
    q_modules = _layers(quantized)
    ref_modules = _layers(reference)
    layers: dict[str, dict[str, Any]] = {}
    if report is not None:
        for rec in report.layers:
            if not rec.applied:
                continue
            spec = spec_of_record(rec)
            module = q_modules.get(rec.name)
            if module is None:
                layers[rec.name] = {"format": spec.label, "missing": True}
                continue
            ref_w = _weight_of(ref_modules[rec.name]) if rec.name in ref_modules else None
            with onloaded(owner_of(module)):
                grid = grid_evidence(module, spec, ref_w)
                delta = layer_delta(ref_w, module) if ref_w is not None else {}
            if grids is not None:
                grids[(rec.name, repr(spec))] = grid
            layers[rec.name] = {"format": spec.label, "cast": isinstance(spec, CastSpec), "on_grid": grid.on_grid,
                                "grid": grid.reason, "changed_fraction": delta.get("changed_fraction"),
                                "sqnr_db": delta.get("sqnr_db"), "dtype": delta.get("dtype"),
                                "sqnr_floor_db": floor_for(spec)}
            if delta.get("changed_fraction") == 0.0:
                layers[rec.name]["reference_in_format"] = already_in_format(*per_expert_view(module, spec, ref_w))
    else:
        layers = weight_deltas(reference, quantized)
    if input_ids is None:
        input_ids = probe_input_ids(getattr(getattr(reference, "config", None), "vocab_size", 256))
    ref_logits = logits_of(reference, input_ids)
    out = _divergence(ref_logits, logits_of(quantized, input_ids), input_ids)
    return {"manifest": report is not None, "layers": layers, "logits": out,
            "probe": probe_view(ref_logits, input_ids)}


def _divergence(ref: torch.Tensor, out: torch.Tensor, input_ids: torch.Tensor) -> dict[str, Any]:
    finite = bool(torch.isfinite(out).all())
    return {
        "identical": bool(torch.equal(ref, out)),
        "sqnr_db": sqnr_db(ref, out) if finite else -math.inf,
        "max_abs_diff": float((ref - out).abs().max().item()) if finite else math.inf,
        "top1_agreement": float((ref.argmax(-1) == out.argmax(-1)).float().mean().item()),
        "finite": finite,
        "reference_finite": bool(torch.isfinite(ref).all()),
        "tokens": int(input_ids.numel()),
    }


@torch.no_grad()
def plan_evidence(quantized: nn.Module, plan: Any, reference: nn.Module | None = None, *,
                  grids: dict[tuple[str, str], GridEvidence] | None = None) -> dict[str, Any]:
    """What `assert_plan_followed` judges: each layer the plan assigns, checked against that spec's grid on the
    weights alone (no manifest), with the reason where it is off. A grid already computed for the same layer and
    spec (`grids`, from `quantization_evidence`) is reused: the same weights against the same spec."""
    from qcheck.quant.plan import Plan

    plan = Plan.load(plan)
    ref_modules = _layers(reference) if reference is not None else {}
    mismatched: dict[str, str] = {}
    checked = 0
    for a in plan.resolve(quantized):
        spec = a.rule.spec
        if isinstance(spec, KeepSpec) and a.layer not in ref_modules:
            continue
        grid = (grids or {}).get((a.layer, repr(spec)))
        if grid is None:
            ref_w = _weight_of(ref_modules[a.layer]) if a.layer in ref_modules else None
            layer = layer_at(quantized, a.layer)
            with onloaded(owner_of(layer)):
                grid = grid_evidence(layer, spec, ref_w)
        checked += 1
        if not grid.on_grid:
            mismatched[a.layer] = f"plan says {spec.label} ({a.rule.label}); {grid.reason}"
    return {"plan": plan.to_dict(), "checked": checked, "mismatched": mismatched}


def spec_of_record(record: Any) -> Spec:
    """The spec a manifest record claims (bnb records carry an extra threshold key)."""
    data = {k: v for k, v in record.spec.items() if k != "llm_int8_threshold"}
    return spec_from_dict(data, where=f"manifest layer {record.name}")
