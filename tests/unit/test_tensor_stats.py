"""The per-layer weight measurements are exactly what the straightforward computations give: distinct values per
group (sorted by numpy on a CPU instead of torch.sort) and rel_change / SQNR from one shared pair of float64 norms
(instead of each computing both), on ordinary, quantized and awkward tensors (NaN, +-inf, -0.0, ties, one-wide
groups, per-tensor, 1-D, every float dtype)."""
import math

import pytest
import torch

from qcheck.formats import fixed_point, integer
from qcheck.quant.tensor_stats import distinct_per_group, rel_change, rel_change_and_sqnr_db, sqnr_db


def torch_sort_distinct(w, group_size=None, per_tensor=False):
    """The torch.sort computation distinct_per_group used before (the definition it must keep)."""
    if w.numel() == 0:
        return 0
    if per_tensor or w.dim() < 2 and group_size is None:
        flat = torch.sort(w.detach().flatten()).values
        return int((flat[1:] != flat[:-1]).sum().item()) + 1
    rows = w.detach().reshape(-1, group_size if group_size else w.shape[-1])
    sorted_rows, _ = torch.sort(rows, dim=1)
    return int(((sorted_rows[:, 1:] != sorted_rows[:, :-1]).sum(dim=1) + 1).max().item())


def torch_norms(reference, other):
    """rel_change and sqnr_db as each computed them before, on its own float64 copies."""
    x, y = reference.double().flatten(), other.double().flatten()
    num, denom = torch.linalg.vector_norm(x - y).item(), torch.linalg.vector_norm(x).item()
    rel = num / denom if denom else (0.0 if num == 0 else math.inf)
    sqnr = math.inf if num == 0.0 else (-math.inf if denom == 0.0 else 20.0 * math.log10(denom / num))
    return rel, sqnr


def awkward(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 128, generator=g)
    w[0, :5] = torch.tensor([0.0, -0.0, 0.0, -0.0, 1.0])
    w[1, 3:9] = float("nan")
    w[2, :4] = torch.tensor([float("inf"), -float("inf"), float("inf"), float("nan")])
    w[3] = 0.25  # one value only
    w[4, ::2] = -0.0
    w[4, 1::2] = 0.0
    return w


CASES = {
    "randn": lambda: torch.randn(64, 192, generator=torch.Generator().manual_seed(1)),
    "awkward": lambda: awkward(2),
    "int8-rows": lambda: integer(awkward(3), 8),
    "int4-g64": lambda: integer(awkward(4), 4, group_size=64),
    "int3-asym-g32": lambda: integer(awkward(5), 3, group_size=32, symmetric=False),
    "int2-per-tensor": lambda: integer(awkward(6), 2, per_tensor=True),
    "fixed8.4": lambda: fixed_point(awkward(7), 8, 4),
    "float64": lambda: awkward(8).double(),
    "fp16": lambda: awkward(9).half(),
    "bf16": lambda: awkward(10).bfloat16(),
    "column": lambda: awkward(11)[:, :1],
    "one-d": lambda: awkward(12)[5],
    "non-contiguous": lambda: awkward(13).t(),
    "parameter": lambda: torch.nn.Parameter(integer(awkward(14), 4, group_size=16)),
    "empty": lambda: torch.empty(0, 8),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("group_size", "per_tensor"), [(None, False), (16, False), (None, True)])
def test_distinct_per_group_is_the_torch_sort_count(case, group_size, per_tensor):
    w = CASES[case]()
    if group_size is not None and w.dim() and w.shape[-1] % group_size:
        group_size = 1
    assert distinct_per_group(w, group_size, per_tensor) == torch_sort_distinct(w, group_size, per_tensor)


def test_distinct_counts_of_known_groups():
    w = torch.tensor([[0.0, -0.0, 1.0, 1.0], [float("nan"), float("nan"), 2.0, float("inf")]])
    assert distinct_per_group(w) == 4  # NaN never equals itself: each one counts, as with torch.sort
    assert distinct_per_group(w[:1]) == 2  # -0.0 == 0.0
    assert distinct_per_group(w, 2) == 2 and distinct_per_group(w, per_tensor=True) == 6


@pytest.mark.parametrize("case", sorted(set(CASES) - {"empty", "one-d", "column"}))
def test_rel_change_and_sqnr_from_one_pass_are_the_separate_figures(case):
    ref = awkward(20)
    ref = torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref))
    other = CASES[case]()
    other = other.reshape(-1)[: ref.numel()].reshape(ref.shape) if other.numel() >= ref.numel() else ref.half()
    both = rel_change_and_sqnr_db(ref, other)
    assert same(both, (rel_change(ref, other), sqnr_db(ref, other)))
    assert same(both, torch_norms(ref, other))


def same(a, b):
    """Equal floats, NaN equal to NaN (a NaN weight makes both figures NaN)."""
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def test_rel_change_and_sqnr_edge_values():
    zero, one = torch.zeros(8), torch.ones(8)
    assert rel_change_and_sqnr_db(one, one) == (0.0, math.inf)
    assert rel_change_and_sqnr_db(zero, zero) == (0.0, math.inf)
    assert rel_change_and_sqnr_db(zero, one) == (math.inf, -math.inf)
    assert rel_change_and_sqnr_db(one, zero) == (1.0, 0.0)


@pytest.mark.parametrize("case", sorted(set(CASES) - {"empty"}))
@pytest.mark.parametrize("chunk", [5, 200])
def test_measurements_a_piece_at_a_time_are_the_whole_tensors(monkeypatch, case, chunk):
    """With pieces smaller than a group and pieces of several rows that do not divide the tensor: the same distinct
    counts, masks counted to the same number (and rate), and float64 norms within 1e-12 of the whole tensor's."""
    from qcheck.formats import _chunks
    from qcheck.quant.tensor_stats import count_true, fraction

    w = CASES[case]()
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(21))
    finite = torch.where(torch.isfinite(w.float()), w.float(), torch.zeros(()))
    ref = torch.where(noise > 0.5, finite, noise)  # equal to w in places, zero where w is
    groupings = [(None, False), (None, True)] + ([(16, False)] if w.dim() and w.shape[-1] % 16 == 0 else [])
    whole = {g: distinct_per_group(w, *g) for g in groupings}
    other = torch.where(torch.isinf(w), torch.zeros_like(w), w)  # NaN kept (a NaN norm); inf has no SQNR
    norms = rel_change_and_sqnr_db(ref, other)
    mask = (w.float() != ref) & (ref != 0)
    monkeypatch.setattr(_chunks, "CHUNK_ELEMENTS", chunk)
    assert {g: distinct_per_group(w, *g) for g in groupings} == whole
    count = count_true(lambda a, b: (a.float() != b) & (b != 0), w, ref)
    assert count == int(mask.sum()) and fraction(count, w.numel()) == float(mask.float().mean())
    for a, b in zip(rel_change_and_sqnr_db(ref, other), norms, strict=True):
        assert a == b or (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=0)


def test_a_cast_that_overflows_to_inf_has_an_sqnr_of_minus_infinity_not_a_math_error():
    """An fp16 cast of a weight past 65,504 holds inf: the noise norm is infinite, the SQNR -inf and the relative
    change inf (this raised "math domain error" from log10(0) while building the variant)."""
    ref = torch.tensor([1.0, -2.0, 7.0e4])
    rel, sqnr = rel_change_and_sqnr_db(ref, ref.to(torch.float16))
    assert rel == math.inf and sqnr == -math.inf and sqnr_db(ref, ref.half()) == -math.inf
    assert math.isnan(sqnr_db(torch.tensor([float("nan"), 1.0]), torch.ones(2)))
