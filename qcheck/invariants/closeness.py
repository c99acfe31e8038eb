"""Near-lossless variants stay close to the reference (Z1's other half): a 16-bit cast or an 8-bit quantization
differs from fp32 (identical to 10 decimals means the format never reached the computation) yet lies within a
relative perplexity bound, judged on the paired block-bootstrap interval of the change, never on a point estimate.

Each bound says where its value comes from (docs/thresholds.md): a property of the format, and the largest change
measured on disjoint WikiText-2 slices (benchmarks/closeness_margins.py) with the margin between them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qcheck.invariants.quality import _paired_nll_difference
from qcheck.measure.perplexity import PerplexityResult
from qcheck.results import CheckResult, Status, raise_if_failed


@dataclass(frozen=True)
class Bound:
    """A relative perplexity bound and where its value comes from."""

    relative: float
    basis: str


CLOSE_TO_REFERENCE: dict[str, Bound] = {
    "fp16": Bound(0.01, "fp16 rounds weights by <= 2^-11; the default run on SmolLM2 slices 0 and 8-10 measured "
                        "changes inside [-0.03%, +0.07%] (docs/thresholds.md)"),
    "bf16": Bound(0.01, "bf16 rounds weights by <= 2^-8; the default run on SmolLM2 slices 0 and 8-10 measured "
                        "changes inside [-0.21%, +0.18%] (docs/thresholds.md)"),
    "int8": Bound(0.02, "per-channel int8 RTN keeps 255 levels per channel; the default run on SmolLM2 slices 0 and "
                        "8-10 measured changes inside [-0.19%, +0.71%] (docs/thresholds.md)"),
    "bnb-int8": Bound(0.05, "LLM.int8 costs most at small scale (+0.7% at 125M in its paper); the default run on "
                            "SmolLM2 slices 0 and 8-10 measured changes inside [+0.89%, +2.77%] "
                            "(docs/thresholds.md)"),
}
"""Built-in near-lossless variants and their bounds (see the module docstring)."""



def relative_change_interval(reference: PerplexityResult, result: PerplexityResult, level: float = 0.95) -> Any:
    """Interval of the perplexity ratio minus one (result / reference - 1) on the tokens both scored: the paired
    block-bootstrap interval of the NLL/token difference, exponentiated (a monotone map keeps the coverage)."""
    from qcheck.stats import Interval

    interval, units, unit = _paired_nll_difference(reference, result, level)
    return Interval(math.expm1(interval.estimate), math.expm1(interval.low), math.expm1(interval.high), level,
                    f"{interval.method}; {units} {unit}")


def assert_close_to_reference(reference: PerplexityResult, result: PerplexityResult, *, variant: str, bound: float,
                              basis: str, reference_name: str = "fp32", level: float = 0.95) -> CheckResult:
    """A near-lossless variant's perplexity differs from the reference's (identical to 10 decimals means the format
    never reached the computation, Z1) yet stays within `bound` (relative) of it, judged on the paired interval:
    FAIL only when the whole interval lies beyond the bound; a point estimate beyond it inside noise is a WARN."""
    interval = relative_change_interval(reference, result, level)
    identical = round(result.perplexity, 10) == round(reference.perplexity, 10)
    evidence = {"reference_ppl": reference.perplexity, "ppl": result.perplexity,
                "relative_change": interval.to_dict(), "bound": bound, "bound_basis": basis,
                "n_tokens": result.n_tokens, "context": result.context}
    head = (f"perplexity {result.perplexity:.4f} vs {reference_name} {reference.perplexity:.4f}: "
            f"{interval.estimate:+.3%} ({level:.0%} interval [{interval.low:+.3%}, {interval.high:+.3%}])")
    if identical:
        status, message = Status.FAIL, (f"perplexity {result.perplexity:.10f} is identical to {reference_name}'s to "
                                         "10 decimals: quantization was not applied")
    elif not math.isfinite(result.perplexity):
        status, message = Status.FAIL, f"perplexity is {result.perplexity}: the variant's computation broke"
    elif interval.low > bound or interval.high < -bound:
        status, message = Status.FAIL, (f"{head}: the whole interval lies beyond the +/-{bound:.1%} a {variant} "
                                         f"model stays within ({basis})")
    elif abs(interval.estimate) > bound:
        status, message = Status.WARN, (f"{head}: the estimate is beyond +/-{bound:.1%} but the interval reaches "
                                         "inside it; use more tokens to decide")
    else:
        status, message = Status.PASS, f"{head}: differs from {reference_name}, within +/-{bound:.1%}"
    return raise_if_failed(CheckResult(
        name="precision_differs_from_fp32", status=status, message=message, variant=variant, n=result.n_tokens,
        compared=f"{variant} vs {reference_name} perplexity on the same tokens",
        test=f"identity to 10 decimals; paired block bootstrap of NLL/token differences ({level:.0%} interval)",
        threshold={"identical_decimals": 10, "max_relative_change": bound, "fail_when": "interval beyond the bound",
                   "basis": basis}, evidence=evidence))
