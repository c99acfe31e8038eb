"""Fidelity invariants: a variant's next-token distributions differ from the reference's (KL > 0) yet stay
within stated bounds; KL grows as bits go down within a family and a mixed plan's KL lies between its uniform
bounds; an "unchanged" accuracy with many answer flips is flagged.

Each assert_* returns a CheckResult when the invariant holds (PASS, WARN or INCONCLUSIVE) and raises
InvariantViolation carrying the result on FAIL. Inputs are qcheck.measure.fidelity results.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from qcheck.formats.casts import MANTISSA_BITS
from qcheck.measure.fidelity import FidelityResult, FlipResult
from qcheck.results import CheckResult, Status, raise_if_failed
from qcheck.stats import MIN_SAMPLES, Interval, bootstrap_interval

MIN_BLOCKS = 8
"""Fewer bootstrap blocks than this cannot support an interval: bound and ordering checks are inconclusive."""

KL_BOUNDS: dict[str, dict[str, float]] = {
    "fp16": {"max_kl_mean": 2e-4, "min_top1": 0.98},
    "bf16": {"max_kl_mean": 5e-3, "min_top1": 0.94},
}
"""Stated bounds for 16-bit casts of a float reference: mean KL(ref || variant) in nats per token below
max_kl_mean, top-1 agreement above min_top1. bf16 measured on SmolLM2-135M, WikiText-2, 2,046 tokens: mean KL
1.07e-3 [0.97e-3, 1.17e-3], top-1 97.7% [97.0, 98.4] (bounds: ~5x and 3.7 points of margin). fp16 keeps 3 more
mantissa bits (logit noise ~8x smaller, KL ~64x smaller: ~2e-5 expected); its bound keeps ~10x margin on that
estimate (benchmarks/RESULTS.md, Fidelity). Cross-checked at 8B against a published table (LLaMA 3 8B, FP16 against
its BF16 release: mean KL 2.5e-5, llama.cpp pull request 7150; docs/fidelity.md)."""


def cast_bounds(variant: str, reference_dtype: str = "fp32") -> tuple[str | None, dict[str, float]]:
    """The KL_BOUNDS entry a 16-bit cast is judged by, and its key: the coarser of the variant's dtype and the
    reference's. Against a bf16 reference an fp16 cast's logits differ by the reference's own bf16 noise, not by
    fp16's: KL(bf16 || fp16) is KL(fp32 || bf16)'s size (SmolLM2-135M, WikiText-2 slice 0, 2,046 tokens: 1.0e-3
    against fp32 || bf16's 1.07e-3; benchmarks/RESULTS.md, session 24), 5x inside bf16's bound and 5x above fp16's."""
    if variant not in KL_BOUNDS:
        return None, {}
    key = min((variant, reference_dtype), key=lambda d: MANTISSA_BITS.get(d, 23))
    return key, KL_BOUNDS.get(key, {})


DECIDED_REFERENCE_P = 0.01
"""Top-1 agreement is judged only where the reference's median top-1 probability is at least this. A token's top-1
agreement asks whether the variant keeps the reference's choice; where the reference spreads its probability almost
evenly, its top-1 is a near-tie that any rounding flips, and the figure measures the ties, not the variant. Measured
on WikiText-2, 512 tokens at three offsets: SmolLM2-135M's real weights have a median top-1 probability of 0.30-0.31
(10th percentile 0.098, every token >= 1%); random-init models of the 135M and 1.2B Llama shapes have 1.2e-4 and
6.2e-4 (no token >= 1%; uniform over 49,152 tokens is 2.0e-5). 1% sits 30x below the real model and 16x above the
random ones. On the random 1.2B shape bf16's top-1 agreement was 87.7% [84.7, 90.4] with a mean KL of 1.6e-3, inside
its KL bound: a FAIL of the 94% top-1 bound there was a false alarm (benchmarks/RESULTS.md, session 12)."""


def _g(x: float) -> str:
    return f"{x:.3g}"


def assert_kl_sane(result: FidelityResult, *, variant: str | None = None, max_kl_mean: float | None = None,
                   min_top1: float | None = None, level: float = 0.95, reference_dtype: str = "fp32") -> CheckResult:
    """KL(ref || variant) > 0 somewhere (exactly 0 everywhere: the variant is the reference, Z1), finite, and,
    where bounds are given or known for the variant (KL_BOUNDS, through `cast_bounds` for a 16-bit reference),
    mean KL below max_kl_mean and top-1 agreement above min_top1 beyond bootstrap noise."""
    name = variant or result.variant
    bound_key, known = cast_bounds(name, reference_dtype)
    bound_of = name if bound_key in (None, name) else f"{name} against a {reference_dtype} reference ({bound_key}'s)"
    max_kl_mean = known.get("max_kl_mean") if max_kl_mean is None else max_kl_mean
    min_top1 = known.get("min_top1") if min_top1 is None else min_top1
    summary = result.to_dict()
    evidence: dict[str, Any] = {"fidelity": summary}
    threshold = {"kl": "> 0 at some token", "max_kl_mean": max_kl_mean, "min_top1": min_top1,
                 "min_top1_applies_from_ref_top1_p_median": DECIDED_REFERENCE_P,
                 **({"bounds_of": bound_key, "reference_dtype": reference_dtype} if bound_key else {})}
    basis = {"name": "kl_sane", "variant": name, "n": result.n_tokens, "threshold": threshold,
             "compared": f"{name} vs reference next-token distributions on the same {result.n_tokens} tokens "
                         f"({result.n_windows} windows of context {result.context})",
             "test": f"KL(ref || variant) per token in fp32; token-weighted bootstrap over {result.n_blocks} "
                     f"blocks of <= {result.block_tokens} tokens ({level:.0%} interval)"}
    if not result.finite:
        return raise_if_failed(CheckResult(status=Status.FAIL, evidence=evidence, **basis, message=(
            f"KL is not finite at {result.nonfinite_tokens} of {result.n_tokens} tokens: the variant's logits "
            "contain NaN/inf")))
    if result.identical or result.zero_kl:
        why = ("the variant is the reference object itself" if result.same_object else
               "its logits are bit-identical to the reference's" if result.identical else
               "every next-token distribution is unchanged")
        return raise_if_failed(CheckResult(status=Status.FAIL, evidence=evidence, **basis, message=(
            f"KL(ref || {name}) is exactly 0 at all {result.n_tokens} tokens ({why}): quantization was not "
            "applied, the variant is the reference (Z1)")))
    kl_iv = result.interval("kl_mean", level)
    top_iv = result.interval("top1_agreement", level)
    evidence["kl_mean_interval"] = kl_iv.to_dict()
    evidence["top1_interval"] = top_iv.to_dict()
    digest = (f"mean KL {_g(result.kl_mean)} nats/token [{_g(kl_iv.low)}, {_g(kl_iv.high)}] (median "
              f"{_g(result.kl_median)}, p99 {_g(result.kl_p99)}, max {_g(result.kl_max)}), top-1 agreement "
              f"{result.top1_agreement:.2%} [{top_iv.low:.2%}, {top_iv.high:.2%}]")
    if max_kl_mean is None and min_top1 is None:
        return raise_if_failed(CheckResult(status=Status.PASS, evidence=evidence, **basis,
                                   message=f"distributions differ from the reference (KL > 0): {digest}"))
    if result.n_blocks < MIN_BLOCKS:
        return raise_if_failed(CheckResult(status=Status.INCONCLUSIVE, evidence=evidence, **basis, message=(
            f"KL > 0, but {result.n_tokens} tokens make only {result.n_blocks} bootstrap blocks (< {MIN_BLOCKS}): "
            f"too few to test the bounds; {digest}")))
    fails, warns = [], []
    decided = result.ref_top1_p_median
    if min_top1 is not None and decided is not None and decided < DECIDED_REFERENCE_P:
        evidence["top1_not_judged"] = {"ref_top1_p_median": decided, "threshold": DECIDED_REFERENCE_P}
        digest += (f"; top-1 agreement not judged: the reference's median top-1 probability is {_g(decided)} "
                   f"(< {DECIDED_REFERENCE_P:.0%}), so its choices are near-ties that rounding flips (a near-uniform "
                   "reference, such as random weights)")
        min_top1 = None
    if max_kl_mean is not None:
        if kl_iv.low > max_kl_mean:
            fails.append(f"mean KL {_g(result.kl_mean)} [{_g(kl_iv.low)}, {_g(kl_iv.high)}] is above the "
                         f"{_g(max_kl_mean)} bound for {bound_of} beyond noise")
        elif result.kl_mean > max_kl_mean:
            warns.append(f"mean KL {_g(result.kl_mean)} is above the {_g(max_kl_mean)} bound, within noise")
    if min_top1 is not None:
        if top_iv.high < min_top1:
            fails.append(f"top-1 agreement {result.top1_agreement:.2%} [{top_iv.low:.2%}, {top_iv.high:.2%}] is "
                         f"below the {min_top1:.0%} {bound_of} must keep beyond noise")
        elif result.top1_agreement < min_top1:
            warns.append(f"top-1 agreement {result.top1_agreement:.2%} is below {min_top1:.0%}, within noise")
    if fails:
        status, message = Status.FAIL, "; ".join(fails + warns)
    elif warns:
        status, message = Status.WARN, "; ".join(warns) + f"; {digest}"
    else:
        status, message = Status.PASS, (f"distributions differ from the reference (KL > 0) and stay within the "
                                         f"bounds: {digest}")
    return raise_if_failed(CheckResult(status=status, message=message, evidence=evidence, **basis))


def kl_difference_interval(a: FidelityResult, b: FidelityResult, level: float = 0.95, seed: int = 0) -> Interval:
    """Paired, token-weighted bootstrap interval over blocks of mean KL(b) - mean KL(a) on the same tokens."""
    if a.n_tokens != b.n_tokens or not np.array_equal(a.token_window, b.token_window):
        raise ValueError(f"{a.variant} and {b.variant} were not measured on the same tokens and windows")
    sums, counts = a.block_sums(b.token_kl - a.token_kl)
    return bootstrap_interval(sums / counts, level=level, seed=seed, weights=counts)


def _pair_verdict(more: FidelityResult, fewer: FidelityResult, level: float) -> tuple[Status, str, dict[str, Any]]:
    iv = kl_difference_interval(more, fewer, level)
    ev = {"more_bits": more.variant, "fewer_bits": fewer.variant, "kl_more": more.kl_mean, "kl_fewer": fewer.kl_mean,
          "kl_fewer_minus_more": iv.to_dict()}
    pair = (f"{fewer.variant} KL {_g(fewer.kl_mean)} vs {more.variant} KL {_g(more.kl_mean)} "
            f"(difference {_g(iv.estimate)} [{_g(iv.low)}, {_g(iv.high)}])")
    if np.array_equal(more.token_kl, fewer.token_kl):
        return Status.FAIL, (f"{fewer.variant} gives exactly the same KL as {more.variant} at all {more.n_tokens} "
                             f"tokens: the fewer-bit variant is the same model as the more-bit one (Z1)"), ev
    if iv.high < 0:
        return Status.FAIL, f"KL goes down as bits go down beyond noise: {pair}", ev
    if more.n_blocks < MIN_BLOCKS:
        return Status.INCONCLUSIVE, f"only {more.n_blocks} bootstrap blocks (< {MIN_BLOCKS}): {pair}", ev
    if iv.low <= 0:
        return Status.INCONCLUSIVE, f"KL does not grow beyond noise: {pair}", ev
    return Status.PASS, pair, ev


def assert_kl_ordering(results: Sequence[FidelityResult] | Mapping[str, FidelityResult], *,
                       family: str | None = None, level: float = 0.95) -> CheckResult:
    """Within a family ordered from more to fewer bits, KL(ref || variant) grows at every step beyond bootstrap
    noise; a step where KL falls beyond noise, or where two levels give identical KL, fails (Z1)."""
    chain = list(results.values()) if isinstance(results, Mapping) else list(results)
    if len(chain) < 2:
        raise ValueError("KL ordering needs at least two variants, ordered from more to fewer bits")
    names = [r.variant for r in chain]
    verdicts = [_pair_verdict(a, b, level) for a, b in pairwise(chain)]
    evidence = {"order": names, "kl_mean": {r.variant: r.kl_mean for r in chain}, "steps": [v[2] for v in verdicts]}
    statuses = [v[0] for v in verdicts]
    if Status.FAIL in statuses:
        status = Status.FAIL
        message = "; ".join(m for s, m, _ in verdicts if s == Status.FAIL)
    elif Status.INCONCLUSIVE in statuses:
        status = Status.INCONCLUSIVE
        message = "; ".join(m for s, m, _ in verdicts if s == Status.INCONCLUSIVE)
    else:
        status = Status.PASS
        message = "KL grows as bits go down: " + "; ".join(m for _, m, _ in verdicts)
    label = f"family {family!r}" if family else "variants"
    return raise_if_failed(CheckResult(
        name="kl_ordering", status=status, message=message, variant=family or names[-1], n=chain[0].n_tokens,
        compared=f"KL(ref || variant) of {label} {' > '.join(names)} (more to fewer bits) on the same tokens",
        test=f"paired token-weighted bootstrap over {chain[0].n_blocks} blocks of per-token KL differences "
             f"({level:.0%} interval)",
        threshold="each step's interval of KL(fewer) - KL(more) lies above 0; identical KL fails",
        evidence=evidence))


def assert_kl_between(mixed: FidelityResult, bounds: Mapping[str, FidelityResult], *, variant: str | None = None,
                      level: float = 0.95) -> CheckResult:
    """A mixed plan's KL(ref || mixed) lies between the KLs of the uniform plans it mixes, within noise (Z2)."""
    if len(bounds) < 2:
        raise ValueError("assert_kl_between needs the two uniform bounds the mixed plan mixes")
    name = variant or mixed.variant
    ordered = sorted(bounds.items(), key=lambda kv: kv[1].kl_mean)
    (low_name, low), (high_name, high) = ordered[0], ordered[-1]
    above = kl_difference_interval(high, mixed, level)
    below = kl_difference_interval(low, mixed, level)
    evidence = {"kl_mean": {name: mixed.kl_mean, **{k: v.kl_mean for k, v in bounds.items()}},
                "mixed_minus_upper": above.to_dict(), "mixed_minus_lower": below.to_dict(),
                "top1_agreement": {name: mixed.top1_agreement, **{k: v.top1_agreement for k, v in bounds.items()}}}
    messages = []
    if above.low > 0:
        messages.append(f"{name} KL {_g(mixed.kl_mean)} is above its worst uniform bound {high_name} "
                        f"({_g(high.kl_mean)}) beyond noise ({mixed.kl_mean / high.kl_mean:.2f}x)")
    if below.high < 0:
        messages.append(f"{name} KL {_g(mixed.kl_mean)} is below its best uniform bound {low_name} "
                        f"({_g(low.kl_mean)}) beyond noise")
    if messages:
        status, message = Status.FAIL, "; ".join(messages)
    elif mixed.n_blocks < MIN_BLOCKS:
        status, message = Status.INCONCLUSIVE, (f"only {mixed.n_blocks} bootstrap blocks (< {MIN_BLOCKS}) to place "
                                                f"{name} KL {_g(mixed.kl_mean)} between its bounds")
    else:
        status, message = Status.PASS, (f"{name} KL {_g(mixed.kl_mean)} lies within [{_g(low.kl_mean)} "
                                        f"({low_name}), {_g(high.kl_mean)} ({high_name})] within noise")
    return raise_if_failed(CheckResult(
        name="kl_between_uniform", status=status, message=message, variant=name, n=mixed.n_tokens,
        compared=f"KL(ref || {name}) vs uniform bounds {list(bounds)} on the same tokens",
        test=f"paired token-weighted bootstrap over {mixed.n_blocks} blocks of per-token KL differences "
             f"({level:.0%} interval)",
        threshold="interval of KL(mixed) - KL(bound) must not exclude 0 on the wrong side", evidence=evidence))


def assert_flips_consistent(flips: FlipResult, *, variant: str, task: str = "task",
                            accuracy_tolerance: float = 0.02, max_flip_rate: float = 0.05) -> CheckResult:
    """An accuracy that looks unchanged (|Δ| <= accuracy_tolerance) with a flip rate above max_flip_rate is a
    WARN naming the flip counts: the variant answers differently, it is not the same model (Dutta et al. 2024)."""
    evidence = flips.to_dict()
    basis = {"name": "answer_flips", "variant": variant, "n": flips.n, "evidence": evidence,
             "compared": f"{variant} vs reference per-question correctness on the same {flips.n} {task} questions",
             "test": "flip counts with a Wilson interval on the flip rate; exact McNemar on the accuracy change",
             "threshold": {"accuracy_unchanged_within": accuracy_tolerance, "max_flip_rate": max_flip_rate}}
    iv = flips.flip_rate_interval()
    counts = (f"{flips.flips} of {flips.n} answers flipped ({flips.correct_to_wrong} correct→wrong, "
              f"{flips.wrong_to_correct} wrong→correct; flip rate {flips.flip_rate:.1%} "
              f"[{iv.low:.1%}, {iv.high:.1%}])")
    accuracy = (f"accuracy {flips.reference_accuracy:.1%} → {flips.variant_accuracy:.1%} "
                f"(Δ {flips.accuracy_difference:+.1%}, McNemar p={flips.mcnemar_pvalue:.3g})")
    if flips.n < MIN_SAMPLES:
        return raise_if_failed(CheckResult(status=Status.INCONCLUSIVE, **basis, message=(
            f"only {flips.n} paired {task} answers (< {MIN_SAMPLES}): too few to judge flips; {accuracy}; {counts}")))
    unchanged = abs(flips.accuracy_difference) <= accuracy_tolerance
    if unchanged and flips.flip_rate > max_flip_rate:
        return raise_if_failed(CheckResult(status=Status.WARN, **basis, message=(
            f"{task} {accuracy} looks unchanged, but {counts}: the variant answers differently from the "
            "reference")))
    return raise_if_failed(CheckResult(status=Status.PASS, **basis, message=f"{task} {accuracy}; {counts}"))
