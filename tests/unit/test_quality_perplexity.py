"""Perplexity ordering, context sensitivity and claim checks on synthetic per-token NLLs."""
import math

import numpy as np
import pytest

from qcheck.errors import ConfigError, InvariantViolation
from qcheck.invariants.quality import assert_context_sensitivity, assert_perplexity_claim, assert_perplexity_order
from qcheck.measure.perplexity import PerplexityResult, scored_positions, windows

N_IDS = 4096


def result(token_nll, context=1024, stride=None):
    stride = stride or context
    spans = windows(N_IDS, context, stride)
    token_nll = np.asarray(token_nll, dtype=np.float64)
    assert len(token_nll) == len(scored_positions(N_IDS, context, stride))
    window_nll, window_tokens, k = [], [], 0
    for _, _, n in spans:
        window_nll.append(float(token_nll[k: k + n].sum()))
        window_tokens.append(n)
        k += n
    total = float(token_nll.sum())
    return PerplexityResult(math.exp(total / len(token_nll)), total, len(token_nll), context, stride, len(spans),
                            window_nll, window_tokens, token_nll=token_nll, n_ids=N_IDS)


def base(context=1024, shift=0.0, seed=0):
    n = len(scored_positions(N_IDS, context, context))
    return np.random.default_rng(seed).gamma(2.0, 1.5, n) + shift


def test_order_holds_within_noise():
    ref = base()
    noise = np.random.default_rng(1).normal(0, 0.05, len(ref))
    results = {"fp32": result(ref), "int8": result(ref + noise), "w4g64": result(ref + 0.3 + noise)}
    check = assert_perplexity_order(results, family="int")
    assert check.status.value == "PASS"
    assert check.evidence["pairs"]["int8 -> w4g64"]["unit"] == "blocks of 128 tokens"
    assert check.n == math.ceil(len(ref) / 128)


def test_fewer_bits_better_beyond_noise_fails():
    ref = base()
    results = {"fp32": result(ref), "w4": result(ref + 0.2), "w2": result(ref + 0.05)}
    with pytest.raises(InvariantViolation) as err:
        assert_perplexity_order(results, family="int")
    assert "w2 (" in err.value.result.message and "lower perplexity than w4" in err.value.result.message


def test_identical_perplexities_fail_as_not_applied():
    ref = base()
    with pytest.raises(InvariantViolation, match="identical perplexity"):
        assert_perplexity_order({"w4": result(ref + 0.1), "w2": result(ref + 0.1)})
    with pytest.raises(ConfigError):
        assert_perplexity_order({"w4": result(ref)})


def test_short_context_higher_passes_and_explains():
    full = base(1024)
    positions_full = scored_positions(N_IDS, 1024, 1024)
    positions_short = scored_positions(N_IDS, 128, 128)
    lookup = dict(zip(positions_full.tolist(), full))
    short = np.array([lookup.get(p, 3.0) + 0.8 for p in positions_short.tolist()])
    check = assert_context_sensitivity(result(short, 128), result(full, 1024))
    assert check.status.value == "PASS"
    assert "at context 128 vs" in check.message and "seed 001's 217" in check.message
    assert check.evidence["ratio"] > 2


def test_short_context_lower_fails():
    full = base(1024)
    positions_full = scored_positions(N_IDS, 1024, 1024)
    lookup = dict(zip(positions_full.tolist(), full))
    short = np.array([lookup.get(p, 0.0) - 0.5 for p in scored_positions(N_IDS, 128, 128).tolist()])
    with pytest.raises(InvariantViolation, match="does not use its context"):
        assert_context_sensitivity(result(short, 128), result(full, 1024))
    with pytest.raises(ConfigError):
        assert_context_sensitivity(result(full, 1024), result(full, 1024))


def test_claim_matching_pooled_passes_and_window_averaging_is_named():
    r = result(base() + np.repeat([0.0, 1.0, 2.0, 0.5], 1023))
    assert assert_perplexity_claim(r.perplexity, r).status.value == "PASS"
    averaged = float(np.mean([math.exp(n / t) for n, t in zip(r.window_nll, r.window_tokens)]))
    with pytest.raises(InvariantViolation) as err:
        assert_perplexity_claim(averaged, r)
    assert "averaging per-window perplexities instead of pooling NLL" in err.value.result.message
    with pytest.raises(InvariantViolation, match="measured at context 128"):
        assert_perplexity_claim(217.0, r, claimed_context=128)
    with pytest.raises(InvariantViolation, match="padding scored, labels not shifted"):
        assert_perplexity_claim(r.perplexity * 1.5, r)
    with pytest.raises(InvariantViolation, match="not a finite number"):
        assert_perplexity_claim(float("nan"), r)


def test_an_order_broken_on_a_reference_no_better_than_uniform_is_inconclusive():
    """Fewer bits beyond noise below more bits FAILs on a reference that predicts the text; on one whose perplexity
    is at or above its vocabulary size (no better than a uniform guess: random weights) the order is INCONCLUSIVE,
    naming why. Identical figures FAIL either way (a variant never quantized)."""
    ref = base()
    results = {"fp32": result(ref), "w4": result(ref + 0.2), "w2": result(ref + 0.05)}
    first = results["fp32"].perplexity
    with pytest.raises(InvariantViolation):
        assert_perplexity_order(results, family="int", vocab_size=int(first) + 1)
    check = assert_perplexity_order(results, family="int", vocab_size=int(first))
    assert check.status.value == "INCONCLUSIVE" and "lower perplexity than w4" in check.message
    assert "no better than chance" in check.message and check.evidence["vocab_size"] == int(first)
    with pytest.raises(InvariantViolation, match="identical perplexity"):
        assert_perplexity_order({"w4": result(ref + 0.1), "w2": result(ref + 0.1)}, vocab_size=1)
    assert assert_perplexity_order({"fp32": result(ref), "w4": result(ref + 0.2)}, vocab_size=1).status.value == "PASS"
