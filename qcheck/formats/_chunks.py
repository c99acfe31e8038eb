"""Bounded work memory for computations over a whole weight: the tensor is processed a piece at a time.

The formats, the manifest's measurements and the evidence checks read every element of a weight. Done on the whole
tensor at once, each intermediate (a float64 copy, a mask, a broadcast step) is a weight-sized temporary: about ten
gigabytes in all for one 70B Llama MLP weight. Elementwise arithmetic and exact reductions (counts, max, min) give the
same values piece by piece, so the pieces change no result, only the memory they take.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

CHUNK_ELEMENTS = 1 << 24
"""Elements per piece (16M): one float64 work tensor of a piece is 128 MiB (64 MiB in float32), so the few an
operation holds at once stay well under a GiB whatever the weight's size (a 70B Llama MLP weight has 235M elements,
1.9 GB in float64), while a piece is large enough that the few Python calls per piece cost nothing measurable.
Read at call time, so tests can make it small."""


def row_blocks(rows: int, cols: int) -> Iterator[slice]:
    """Slices of whole rows of a rows x cols matrix, as many rows as fit in CHUNK_ELEMENTS (at least one)."""
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def pieces(rows: int, cols: int) -> Iterator[tuple[slice, slice]]:
    """(row, column) slices covering a rows x cols matrix in row-major order, each of at most CHUNK_ELEMENTS
    elements: whole rows together, or one row at a time in column pieces where a single row is longer."""
    chunk = CHUNK_ELEMENTS
    if cols <= chunk:
        yield from ((block, slice(0, cols)) for block in row_blocks(rows, cols))
        return
    for row in range(rows):
        for start in range(0, cols, chunk):
            yield slice(row, row + 1), slice(start, min(start + chunk, cols))


def flat_pieces(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Matching 1-D pieces of tensors with the same number of elements, in flatten() order, CHUNK_ELEMENTS at a time
    (views of a contiguous tensor; a non-contiguous one is copied whole in its own dtype first, as flatten() does)."""
    flats = [t.reshape(-1) for t in tensors]
    sizes = {f.numel() for f in flats}
    if len(sizes) > 1:
        raise ValueError(f"tensors of different sizes: {[tuple(t.shape) for t in tensors]}")
    chunk = CHUNK_ELEMENTS
    for start in range(0, sizes.pop() if sizes else 0, chunk):
        yield tuple(f[start:start + chunk] for f in flats)


def map_elementwise(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn(x) for an elementwise fn, computed one flat piece at a time into one output of x's shape: the same values,
    with fn's work tensors the size of a piece instead of x's (an x of at most one piece is passed to fn whole)."""
    chunk = CHUNK_ELEMENTS
    if x.numel() <= chunk:
        return fn(x)
    flat = x.reshape(-1)
    first = fn(flat[:chunk])
    out = torch.empty(x.shape, dtype=first.dtype, device=first.device)
    out_flat = out.view(-1)
    out_flat[:chunk] = first
    del first
    for start in range(chunk, flat.numel(), chunk):
        out_flat[start:start + chunk] = fn(flat[start:start + chunk])
    return out
