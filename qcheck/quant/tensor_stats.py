"""Small measurements on weight tensors shared by the manifest and the evidence checks."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from qcheck.formats._chunks import flat_pieces, row_blocks


def _norms(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(||x||, ||x - y||) in float64, x the reference and y the other tensor (on x's device), a piece at a time: the
    float64 copies are those of one piece, never of the whole weight. The pieces' norms are combined by math.hypot,
    so a tensor of one piece gives exactly the unchunked figures; a larger one differs only in rounding, and is the
    closer to the exact norm (torch's vector_norm of a 235M-element float64 vector is off by ~4e-11, of 16M ~5e-12)."""
    signal: list[float] = []
    noise: list[float] = []
    for x, y in flat_pieces(reference.detach(), other.detach()):
        x = x.to(torch.float64)
        y = y.to(device=x.device, dtype=torch.float64)
        noise.append(torch.linalg.vector_norm(x - y).item())
        signal.append(torch.linalg.vector_norm(x).item())
    return _hypot(signal), _hypot(noise)


def _hypot(norms: list[float]) -> float:
    """The norm of the concatenation of vectors with these norms; NaN if any is NaN (as one sum of squares with a
    NaN is, where math.hypot would let an inf win)."""
    return math.nan if any(math.isnan(n) for n in norms) else math.hypot(*norms)


def count_true(predicate: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> int:
    """How many elements an elementwise `predicate` of same-sized tensors marks True, counted a piece at a time (the
    mask of one piece at a time, never of the whole weight); predicate gets matching 1-D pieces of each tensor."""
    return sum(int(predicate(*p).sum().item()) for p in flat_pieces(*tensors))


def fraction(count: int, numel: int) -> float:
    """count / numel as the float32 mean of a 0/1 mask of numel elements gives it (the rates the manifest and the
    evidence reported as mask.float().mean() before masks were counted a piece at a time); NaN when numel is 0."""
    return float(np.float32(count) / np.float32(numel)) if numel else math.nan


def _sqnr_from(signal: float, noise: float) -> float:
    """20 log10(signal / noise): +inf for no noise, -inf where the ratio is 0 (no signal, or infinite noise: a 16-bit
    cast of a weight past the dtype's range), NaN where either norm is NaN."""
    if noise == 0.0:
        return math.inf
    ratio = signal / noise
    if ratio == 0.0:
        return -math.inf
    return 20.0 * math.log10(ratio) if math.isfinite(ratio) else math.nan


def _rel_from(signal: float, noise: float) -> float:
    return noise / signal if signal else (0.0 if noise == 0 else math.inf)


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio as torchao defines it: 20*log10(|x| / |x - y|), x the reference.

    +inf when identical; computed in float64 so that tiny differences are not lost.
    """
    return _sqnr_from(*_norms(reference, other))


def rel_change(reference: torch.Tensor, other: torch.Tensor) -> float:
    """||y - x|| / ||x|| in float64 (0 when identical)."""
    return _rel_from(*_norms(reference, other))


def rel_change_and_sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(rel_change, sqnr_db) from one pass: the same two float64 norms both are made of, computed once."""
    signal, noise = _norms(reference, other)
    return _rel_from(signal, noise), _sqnr_from(signal, noise)


_NUMPY_SORTED = (torch.float32, torch.float64)
"""Dtypes whose CPU rows are sorted by numpy: its SIMD sort is several times faster than torch.sort on a CPU (the
quantizers' per-layer evidence was dominated by it), and the count of distinct values does not depend on which
sort put the row in order (both put NaN last; -0.0 == 0.0 either way)."""


def distinct_per_group(w: torch.Tensor, group_size: int | None = None, per_tensor: bool = False) -> int:
    """The largest number of distinct values in any group (row when group_size is None; whole tensor if per_tensor).

    Groups are sorted whole groups at a time, about CHUNK_ELEMENTS elements per sort, so the sorted copy is that of a
    few groups, not of the weight (one group spanning the tensor, per tensor, is sorted whole)."""
    if w.numel() == 0:
        return 0
    if per_tensor or w.dim() < 2 and group_size is None:
        rows = w.detach().reshape(1, -1)
    else:
        rows = w.detach().reshape(-1, group_size if group_size else w.shape[-1])
    return max(_distinct_in_rows(rows[block]) for block in row_blocks(*rows.shape))


def _distinct_in_rows(rows: torch.Tensor) -> int:
    """The largest number of distinct values in any row of a 2-D tensor."""
    if rows.device.type == "cpu" and rows.dtype in _NUMPY_SORTED and type(rows) is torch.Tensor:
        ordered = np.sort(rows.numpy(), axis=1)
        return int(((ordered[:, 1:] != ordered[:, :-1]).sum(axis=1) + 1).max())
    sorted_rows, _ = torch.sort(rows, dim=1)
    changes = (sorted_rows[:, 1:] != sorted_rows[:, :-1]).sum(dim=1) + 1
    return int(changes.max().item())


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor occupies as stored. A wrapper subclass (torchao's quantized weights) counts its inner tensors
    (int8/int4 data, scales), not the logical float size its numel() and dtype report."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        inner = [getattr(t, n) for n in names]
        return sum(stored_bytes(x) for x in inner if isinstance(x, torch.Tensor))
    return t.numel() * t.element_size()


def model_stored_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers as stored (packed and tensor-subclass weights as stored; a tied
    weight once)."""
    return sum(stored_bytes(t) for t in (*model.parameters(), *model.buffers()))


def weight_fingerprint(model: torch.nn.Module) -> str:
    """A cheap fingerprint of every parameter and buffer (integer sums of their bit patterns, plus shapes and
    dtypes); offloaded weights are read from where accelerate keeps them, one module at a time. Integer sums do not
    depend on the order of the additions, so the fingerprint is the same whatever the thread count or device (a
    float64 sum differed between one and two CPU threads)."""
    import hashlib

    from qcheck.quant.offload import is_dispatched, named_tensors

    h = hashlib.sha256()
    tensors = named_tensors(model) if is_dispatched(model) else (
        list(model.named_parameters()) + list(model.named_buffers()))
    with torch.no_grad():
        for name, t in tensors:
            h.update(name.encode())
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            if t.numel():
                h.update(repr(_bit_sums(t.detach())).encode())
    return h.hexdigest()[:16]


_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bit_sums(t: torch.Tensor) -> tuple[int, int]:
    """The sum of a tensor's elements' bit patterns as integers, and of their squares modulo 2**64 (integer
    additions wrap the same way in any order), in chunks of 2**24 elements (an int64 copy of one chunk at a time)."""
    flat = t.reshape(-1)
    ints = flat.view(_INT_OF_WIDTH[flat.element_size()]) if flat.dtype.is_floating_point else flat
    total = squares = 0
    for chunk in ints.split(1 << 24):
        wide = chunk.to(torch.int64)
        total += int(wide.sum())
        squares += int((wide * wide).sum())
    return total, squares % 2**64
