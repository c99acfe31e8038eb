"""Z11 zoo, fixed point: planted buggy quantizers that assert_same_as_reference must catch with a minimal
counterexample (config, input, ours vs theirs); the correct implementation passes. Seed 003's sweep collapsed at
frac_width = 2 and its Optuna fix clamped `frac = width // 2 if frac >= width` silently."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st

from qcheck.formats import fixed_point_range
from qcheck.quant.spec import FixedSpec, IntSpec
from qcheck.strategies import assert_same_as_reference, fixed_point_specs, load_profile

load_profile("ci")

ROOT = Path(__file__).resolve().parents[2]


def _bounds(width: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (width - 1)), 2 ** (width - 1) - 1) if signed else (0, 2**width - 1)


def correct(x: torch.Tensor, width: int, frac_width: int, signed: bool = True) -> torch.Tensor:
    """A user's fixed-point quantizer done right: round half to even, saturate."""
    scale = 2.0**frac_width
    lo, hi = _bounds(width, signed)
    return (torch.round(x.double() * scale).clamp(lo, hi) / scale).to(x.dtype)


def truncating(x: torch.Tensor, width: int, frac_width: int, signed: bool = True) -> torch.Tensor:
    """Bug: truncates toward zero instead of rounding."""
    scale = 2.0**frac_width
    lo, hi = _bounds(width, signed)
    return (torch.trunc(x.double() * scale).clamp(lo, hi) / scale).to(x.dtype)


def wrapping(x: torch.Tensor, width: int, frac_width: int, signed: bool = True) -> torch.Tensor:
    """Bug: integer overflow wraps around (two's complement) instead of saturating."""
    scale = 2.0**frac_width
    lo, _ = _bounds(width, signed)
    k = torch.round(x.double() * scale)
    return ((torch.remainder(k - lo, 2**width) + lo) / scale).to(x.dtype)


def negatives_ignore_frac(x: torch.Tensor, width: int, frac_width: int, signed: bool = True) -> torch.Tensor:
    """Bug: negative values are rounded to integers, their fractional bits dropped."""
    lo, _hi = _bounds(width, signed)
    scale = 2.0**frac_width
    neg = torch.round(x.double()).clamp(lo / scale, 0.0)
    return torch.where(x < 0, neg, correct(x.double(), width, frac_width, signed)).to(x.dtype)


def seed003_clamp(x: torch.Tensor, width: int, frac_width: int, signed: bool = True) -> torch.Tensor:
    """Bug (seed 003): `if frac >= width: frac = width // 2`, a silent "fix" of a valid config."""
    if frac_width >= width:
        frac_width = width // 2
    return correct(x, width, frac_width, signed)


def as_spec_fn(fn: Callable[..., torch.Tensor]) -> Callable[[torch.Tensor, FixedSpec], torch.Tensor]:
    """Adapt a (x, width, frac_width, signed) quantizer to assert_same_as_reference's (x, spec)."""

    def call(x: torch.Tensor, spec: FixedSpec) -> torch.Tensor:
        return fn(x, spec.width, spec.frac_width, spec.signed)

    call.__name__ = fn.__name__
    return call


def caught(fn: Callable[..., torch.Tensor], **kwargs) -> tuple[str, FixedSpec]:
    """Run the differential check on a planted bug; return its AssertionError message and the counterexample spec."""
    with pytest.raises(AssertionError) as err:
        assert_same_as_reference(as_spec_fn(fn), fixed_point_specs(max_width=16), **kwargs)
    msg = str(err.value)
    assert f"{fn.__name__} differs from qcheck's reference" in msg
    for part in ("config: FixedSpec(", "input:  [", "ours (qcheck reference): [", f"theirs ({fn.__name__}): [",
                 "first mismatch at index"):
        assert part in msg, f"{part!r} missing from:\n{msg}"
    m = re.search(r"FixedSpec\(width=(\d+), frac_width=(-?\d+), signed=(True|False)", msg)
    assert m, msg
    spec = FixedSpec(int(m[1]), int(m[2]), m[3] == "True")
    first = re.search(r"x = (\S+), ours = (\S+), theirs = (\S+) ", msg)
    assert first and first[2] != first[3], msg
    return msg, spec


def test_correct_quantizer_passes_on_every_dtype_with_nan_and_inf() -> None:
    """The right implementation agrees with qcheck bit for bit on fp32 / fp16 / bf16, NaN and +-inf included."""
    assert_same_as_reference(as_spec_fn(correct), fixed_point_specs(max_width=16), dtypes=("fp32", "fp16", "bf16"),
                             allow_nan=True)


def test_truncation_is_caught() -> None:
    """Truncation differs from round-half-to-even on some x inside the range."""
    msg, spec = caught(truncating)
    x, ours, theirs = (float(v) for v in re.search(r"x = (\S+), ours = (\S+), theirs = (\S+) ", msg).groups())
    assert abs(theirs) < abs(ours) and abs(ours - x) <= 2.0**-spec.frac_width / 2


def test_wraparound_is_caught() -> None:
    """Wrapping sends an x beyond the range to the other end (or NaN for inf); qcheck saturates."""
    msg, spec = caught(wrapping)
    x, ours, theirs = (float(v) for v in re.search(r"x = (\S+), ours = (\S+), theirs = (\S+) ", msg).groups())
    r = fixed_point_range(spec.width, spec.frac_width, spec.signed)
    assert not (r.min - r.step / 2 < x < r.max + r.step / 2)
    assert ours in (r.min, r.max) and theirs != ours


def test_negatives_ignoring_frac_width_are_caught() -> None:
    """The counterexample is a negative input whose fractional bits matter."""
    msg, _ = caught(negatives_ignore_frac)
    x = float(re.search(r"x = (\S+),", msg)[1])
    assert x < 0


def test_seed003_silent_clamp_is_caught() -> None:
    """The counterexample config has frac_width >= width: exactly the configs the clamp rewrote."""
    _, spec = caught(seed003_clamp)
    assert spec.frac_width >= spec.width


def test_counterexample_is_shrunk_to_one_element() -> None:
    """Hypothesis shrinks the failing input to one element and a small width. Shrinking is heuristic: the ci
    profile's fixed seed reaches width 2; a thorough run at 10,000 examples stopped at width 5 (session 3)."""
    msg, spec = caught(truncating)
    assert "shape (1,)" in msg and spec.width <= 8, msg


def test_integer_off_by_one_qmax_is_caught_and_correct_rtn_passes() -> None:
    """A user RTN with qmax = 2^(b-1) (unrestricted range) differs from qcheck's symmetric int; the right one passes."""

    def rtn(x: torch.Tensor, spec: IntSpec, qmax_fn: Callable[[int], int]) -> torch.Tensor:
        g = x.float().reshape(-1, x.shape[-1]) if x.dim() > 1 else x.float().reshape(1, -1)
        qmax = qmax_fn(spec.bits)
        amax = torch.where(torch.isfinite(g), g, torch.zeros_like(g)).abs().amax(dim=1, keepdim=True)
        scale = amax / qmax  # test the scale, not amax: a subnormal amax / qmax underflows to 0 (then 0 / 0 = NaN)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        out = torch.round(g / scale).clamp(-qmax, qmax) * scale
        big = torch.finfo(x.dtype).max  # qmax * fl(amax / qmax) can round past the max: saturate, never inf
        return out.clamp(-big, big).reshape(x.shape).to(x.dtype)

    specs = st.integers(2, 8).map(IntSpec)
    assert_same_as_reference(lambda x, s: rtn(x, s, lambda b: 2 ** (b - 1) - 1), specs, label="rtn")
    with pytest.raises(AssertionError, match=r"config: IntSpec\(bits="):
        assert_same_as_reference(lambda x, s: rtn(x, s, lambda b: 2 ** (b - 1)), specs, label="rtn_off_by_one")


def test_docs_example_runs() -> None:
    """examples/fuzz_my_quantizer.py (shown in docs/fuzzing.md) passes under pytest as users would run it."""
    # As the docs run it: the example's own default profile (ci), also inside a thorough run of this suite, where
    # it would otherwise draw 50,000 examples for its five sweep configs (over 300 s on a busy 16-core machine).
    # The properties it shows run at 10,000 examples in this file's differential tests.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QCHECK_HYPOTHESIS_PROFILE": "ci"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "examples" / "fuzz_my_quantizer.py")],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout, proc.stdout
