"""Fidelity metrics and invariants: streamed KL equals a direct full-logits computation, windows match
perplexity's, answer flips count both ways, and each assert_* decides on the stated thresholds."""
import copy
import json

import numpy as np
import pytest
import torch

from qcheck.errors import DataError, InvariantViolation
from qcheck.inputs.models import random_init_like, smollm2_config, tiny_llama_config
from qcheck.invariants.fidelity import (
    DECIDED_REFERENCE_P,
    KL_BOUNDS,
    MIN_BLOCKS,
    assert_flips_consistent,
    assert_kl_between,
    assert_kl_ordering,
    assert_kl_sane,
    kl_difference_interval,
)
from qcheck.measure import fidelity as fidelity_module
from qcheck.measure.fidelity import (
    FULL_PATH,
    HEAD_PATH,
    FidelityResult,
    FlipResult,
    _kl_from_logit_difference,
    answer_flips,
    fidelity,
    fidelity_from_record,
    fidelity_many,
    fidelity_of_ids,
    fidelity_to_record,
)
from qcheck.measure.half_cpu import half_matmul
from qcheck.measure.perplexity import perplexity_of_ids
from qcheck.quant.apply import quantize
from qcheck.results import Status

W4 = {"default": {"format": "int", "bits": 4, "group_size": 32}}
W8 = {"default": {"format": "int", "bits": 8}}


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config(), seed=5)


@pytest.fixture(scope="module")
def tiny_w4(tiny):
    return quantize(tiny, W4)[0]


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 512, (300,), generator=torch.Generator().manual_seed(0))


def direct_kl(reference, variant, ids):
    """KL(ref || variant) per position of one window from full logits, in float64 (the ground truth)."""
    with torch.no_grad():
        ref = torch.log_softmax(reference(input_ids=ids[None]).logits[0, :-1].double(), -1)
        var = torch.log_softmax(variant(input_ids=ids[None]).logits[0, :-1].double(), -1)
    return (ref.exp() * (ref - var)).sum(-1), ref.argmax(-1) == var.argmax(-1)


def test_streamed_kl_equals_direct_full_logits_computation(tiny, tiny_w4, ids):
    result = fidelity_of_ids(tiny, tiny_w4, ids[:200], context=200, chunk=17)
    kl, top1 = direct_kl(tiny, tiny_w4, ids[:200])
    assert result.paths == {"reference": HEAD_PATH, "variant": HEAD_PATH}
    assert result.n_tokens == 199 and result.n_windows == 1
    np.testing.assert_allclose(result.token_kl, kl.numpy(), rtol=2e-3)
    assert np.array_equal(result.token_top1, top1.numpy())
    assert result.kl_mean > 0 and 0 < result.top1_agreement <= 1 and result.top_dp_mean > 0
    assert result.identical_tokens == 0 and result.max_abs_logit_diff > 0 and not result.same_object
    with torch.no_grad():
        ref_p = torch.softmax(tiny(input_ids=ids[None, :200]).logits[0, :-1].double(), -1).max(-1).values
    np.testing.assert_allclose(result.token_ref_p_top, ref_p.numpy(), rtol=1e-4)
    again = fidelity_from_record(json.loads(json.dumps(fidelity_to_record(result))))
    np.testing.assert_allclose(again.token_ref_p_top, result.token_ref_p_top, rtol=1e-6)
    assert again.ref_top1_p_median == pytest.approx(result.ref_top1_p_median, rel=1e-6)
    older = {k: v for k, v in fidelity_to_record(result).items() if k != "token_ref_p_top"}
    assert fidelity_from_record(older).token_ref_p_top is None  # a record written before the field existed


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1.0, 60.0])
def test_fp32_kl_is_accurate_from_tiny_to_huge_differences(scale):
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(8, 49152, generator=gen, dtype=torch.float64) * 4
    var = ref + torch.randn(8, 49152, generator=gen, dtype=torch.float64) * scale
    ref, var = ref.float().double(), var.float().double()  # the truth for the fp32 inputs
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(var, -1)
    truth = (lp.exp() * (lp - lq)).sum(-1)
    ref32 = ref.float()
    logp = torch.log_softmax(ref32, -1)
    kl = _kl_from_logit_difference(ref32, ref32.logsumexp(-1), logp.exp(), ref32 - var.float())
    np.testing.assert_allclose(kl.double().numpy(), truth.numpy(), rtol=5e-3 if scale < 1e-3 else 1e-3)
    if scale == 1e-4:  # the textbook fp32 formula is off by orders of magnitude more here
        naive = (logp.exp() * (logp - torch.log_softmax(var.float(), -1))).sum(-1).double()
        assert (naive - truth).abs().max() > 10 * (kl.double() - truth).abs().max()


@pytest.mark.parametrize("context,stride,batch_size", [(64, None, 1), (64, 32, 3), (100, 50, 2), (300, None, 1)])
def test_scored_tokens_and_windows_match_perplexity(tiny, tiny_w4, ids, context, stride, batch_size):
    ppl = perplexity_of_ids(tiny, ids, context=context, stride=stride, batch_size=batch_size)
    result = fidelity_of_ids(tiny, tiny_w4, ids, context=context, stride=stride, batch_size=batch_size)
    assert result.n_tokens == ppl.n_tokens and result.n_windows == ppl.n_windows
    assert np.bincount(result.token_window).tolist() == ppl.window_tokens


def test_batching_and_chunking_do_not_change_the_values(tiny, tiny_w4, ids):
    a = fidelity_of_ids(tiny, tiny_w4, ids, context=64, stride=32, batch_size=1, chunk=128)
    b = fidelity_of_ids(tiny, tiny_w4, ids, context=64, stride=32, batch_size=4, chunk=5)
    np.testing.assert_allclose(a.token_kl, b.token_kl, rtol=1e-4, atol=1e-7)
    assert np.array_equal(a.token_top1, b.token_top1) and np.array_equal(a.token_window, b.token_window)


def test_the_default_chunk_gives_the_same_values_and_tallies_as_small_chunks(tiny, tiny_w4, ids, monkeypatch):
    """The default chunk is sized by bytes; lowered so a batch spans several chunks, every per-token value and the
    device-side tallies (identical rows, largest difference, clamped negatives) equal those of 5-position chunks."""
    monkeypatch.setattr(fidelity_module, "CHUNK_POSITIONS", 3)
    monkeypatch.setattr(fidelity_module, "CHUNK_BYTES", 4 * tiny.config.vocab_size * 40)
    assert fidelity_module.chunk_positions(4 * 64, tiny.config.vocab_size) == 40
    a = fidelity_of_ids(tiny, tiny_w4, ids, context=64, batch_size=4)
    b = fidelity_of_ids(tiny, tiny_w4, ids, context=64, batch_size=4, chunk=5)
    np.testing.assert_allclose(a.token_kl, b.token_kl, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(a.token_dp, b.token_dp, rtol=1e-3, atol=1e-8)  # the head's GEMM rounds by shape
    assert np.array_equal(a.token_top1, b.token_top1) and a.identical_tokens == b.identical_tokens == 0
    assert a.max_abs_logit_diff == pytest.approx(b.max_abs_logit_diff, rel=1e-4) and a.max_abs_logit_diff > 0
    assert a.negative_kl_clamped == b.negative_kl_clamped
    same = fidelity_of_ids(tiny, tiny, ids, context=64, batch_size=4)
    assert same.identical and same.max_abs_logit_diff == 0.0


def test_chunk_positions_follow_the_byte_budget_and_the_batch():
    vocab = 49_152
    assert fidelity_module.chunk_positions(64 * 1024, vocab) == fidelity_module.CHUNK_BYTES // (4 * vocab) == 1024
    assert fidelity_module.chunk_positions(1024, vocab) == 256  # a quarter of one window: near one forward's logits
    assert fidelity_module.chunk_positions(100, vocab) == fidelity_module.CHUNK_POSITIONS
    assert fidelity_module.chunk_positions(64 * 1024, 128_256) == 392
    assert fidelity_module.chunk_positions(64 * 1024, 0) == fidelity_module.CHUNK_POSITIONS  # vocabulary unknown


def test_kept_reference_states_give_the_same_values_and_skip_the_reference_pass(tiny, tiny_w4, ids):
    """A variant-major run keeps the reference's states across variants: the second variant reads them back."""
    plain = fidelity_many(tiny, {"w4": tiny_w4}, ids, context=64, stride=64, batch_size=2)["w4"]
    cache: dict = {}
    first = fidelity_many(tiny, {"w4": tiny_w4}, ids, context=64, stride=64, batch_size=2, reference_cache=cache)["w4"]
    assert len(cache) == 3  # 5 windows of 64 in batches of 2
    calls = []
    hook = tiny.model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape[1]),
                                            with_kwargs=True)
    try:
        second = fidelity_many(tiny, {"w4": tiny_w4}, ids, context=64, stride=64, batch_size=2,
                               reference_cache=cache)["w4"]
    finally:
        hook.remove()
    assert max(calls) <= 16  # only the 16-token probe that picks the head path; no window of the text
    for result in (first, second):
        assert np.array_equal(result.token_kl, plain.token_kl) and np.array_equal(result.token_top1, plain.token_top1)
    other = fidelity_many(tiny, {"w4": tiny_w4}, ids[:200], context=64, stride=64, batch_size=2,
                          reference_cache=cache)["w4"]
    fresh = fidelity_many(tiny, {"w4": tiny_w4}, ids[:200], context=64, stride=64, batch_size=2)["w4"]
    assert len(cache) == 5 and np.array_equal(other.token_kl, fresh.token_kl)  # other ids: never another text's states



def test_variant_states_from_perplexity_give_the_same_values_and_skip_its_decoder_pass(tiny, tiny_w4, ids):
    """The engine's subject keeps the decoder states perplexity computed; fidelity of the first windows (same
    tokens, context, batching) reads them instead of running the variant's decoder again."""
    from qcheck.measure.head import StatesCache

    plain_ppl = perplexity_of_ids(tiny_w4, ids, context=64, batch_size=2)
    plain = fidelity_many(tiny, {"w4": tiny_w4}, ids[:200], context=64, batch_size=2)["w4"]
    cache = StatesCache()
    ppl = perplexity_of_ids(tiny_w4, ids, context=64, batch_size=2, states_cache=cache)
    assert ppl.perplexity == plain_ppl.perplexity and len(cache.kept) == 3 and cache.hits == 0
    calls = []
    hook = tiny_w4.model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape[1]),
                                               with_kwargs=True)
    try:
        reused = fidelity_many(tiny, {"w4": tiny_w4}, ids[:200], context=64, batch_size=2, states_cache=cache)["w4"]
    finally:
        hook.remove()
    # ids[:200] in windows of 64: batches (0-64, 64-128) and (128-192, 192-200); perplexity's second batch was
    # (128-192, 192-256), so only the first batch is read back and the last one runs
    assert cache.hits == 1 and sorted(calls) == [16, 16, 64]  # the head-path probe (two ways), the batch not kept
    assert np.array_equal(reused.token_kl, plain.token_kl) and np.array_equal(reused.token_top1, plain.token_top1)
    small = StatesCache(max_bytes=0)  # nothing fits: computed, not kept
    perplexity_of_ids(tiny_w4, ids, context=64, batch_size=2, states_cache=small)
    assert not small.kept and small.bytes == 0

def test_reference_and_deep_copy_give_exactly_zero_kl(tiny, ids):
    results = fidelity_many(tiny, {"itself": tiny, "copy": copy.deepcopy(tiny)}, ids, context=64)
    for r in results.values():
        assert r.identical and r.zero_kl and r.kl_max == 0.0 and r.top1_agreement == 1.0 and r.top_dp_mean == 0.0
        assert r.negative_kl_clamped == 0 and r.max_abs_logit_diff == 0.0
    assert results["itself"].same_object and not results["copy"].same_object


def test_fallback_to_full_logits_when_logits_are_not_head_of_decoder(tiny, tiny_w4, ids):
    scaled = copy.deepcopy(tiny_w4)
    scaled.register_forward_hook(lambda mod, args, out: out.__class__(logits=out.logits * 0.5))
    result = fidelity_of_ids(tiny, scaled, ids[:120], context=120)
    assert result.paths == {"reference": HEAD_PATH, "variant": FULL_PATH}
    assert "full logits per window" in result.extra["notes"][0]
    np.testing.assert_allclose(result.token_kl, direct_kl(tiny, scaled, ids[:120])[0].numpy(), rtol=2e-3)


def test_text_entry_point_tokenizes_without_special_tokens(tiny, tiny_w4):
    class Tok:
        pad_token_id = None

        def __call__(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return {"input_ids": [ord(c) % 512 for c in text]}

    out = fidelity(tiny, {"w4": tiny_w4}, Tok(), "a short text of characters " * 8, max_tokens=100, context=50)
    assert out["w4"].n_tokens == 98 and out["w4"].n_windows == 2


def test_too_few_tokens_and_bad_chunk_are_refused(tiny):
    with pytest.raises(DataError, match="at least 2 tokens"):
        fidelity_of_ids(tiny, tiny, [5])
    with pytest.raises(ValueError, match="chunk"):
        fidelity_of_ids(tiny, tiny, [5, 6, 7], chunk=0)


def synthetic(name, kl, top1=None, windows=None, block=16, ref_p_top=None):
    """A FidelityResult from per-token values (for deciding-logic tests; the metric itself is tested above)."""
    kl = np.asarray(kl, dtype=np.float64)
    top1 = np.ones(len(kl), dtype=bool) if top1 is None else np.asarray(top1, dtype=bool)
    windows = np.repeat(np.arange(2), len(kl) // 2) if windows is None else windows
    return FidelityResult(variant=name, token_kl=kl, token_top1=top1, token_dp=kl / 10, token_window=windows,
                          context=512, stride=512, n_windows=2, identical_tokens=int(np.sum(kl == 0)),
                          max_abs_logit_diff=float(kl.max()), negative_kl_clamped=0,
                          paths={"reference": HEAD_PATH, "variant": HEAD_PATH}, block_tokens=block,
                          token_ref_p_top=ref_p_top)


def noisy(scale, n=512, seed=0):
    return np.random.default_rng(seed).exponential(scale, n)


def test_blocks_never_cross_windows_and_intervals_cover_the_point():
    r = synthetic("x", noisy(0.01, 100), windows=np.repeat([0, 1], [37, 63]), block=16)
    ids = r.block_ids()
    assert r.n_blocks == 3 + 4 and np.bincount(ids).tolist() == [16, 16, 5, 16, 16, 16, 15]
    for key in ("kl_mean", "top1_agreement", "top_dp_mean"):
        iv = r.interval(key)
        assert iv.low <= iv.estimate <= iv.high
    metric = r.metric("kl_mean")
    assert metric["value"] == pytest.approx(r.kl_mean) and metric["interval"]["low"] <= r.kl_mean
    assert "blocks of <= 16 tokens" in metric["interval"]["method"]


def test_kl_sane_fails_on_exact_zero_and_non_finite():
    with pytest.raises(InvariantViolation) as err:
        assert_kl_sane(synthetic("bf16", np.zeros(256)))
    assert "exactly 0 at all 256 tokens" in err.value.result.message
    assert "bit-identical" in err.value.result.message
    bad = noisy(0.001, 256)
    bad[7] = np.nan
    with pytest.raises(InvariantViolation, match="not finite at 1 of 256 tokens"):
        assert_kl_sane(synthetic("bf16", bad))


def test_kl_sane_bounds_pass_warn_fail_and_inconclusive():
    ok = assert_kl_sane(synthetic("bf16", noisy(0.001)))
    assert ok.status == Status.PASS and ok.threshold["max_kl_mean"] == 5e-3 and "mean KL" in ok.message
    with pytest.raises(InvariantViolation) as err:
        assert_kl_sane(synthetic("bf16", noisy(0.05)))
    assert "above the 0.005 bound for bf16 beyond noise" in err.value.result.message
    top1 = np.random.default_rng(1).random(512) < 0.80
    with pytest.raises(InvariantViolation, match="top-1 agreement 8.*below the 94% bf16 must keep"):
        assert_kl_sane(synthetic("bf16", noisy(0.001), top1=top1))
    edge = assert_kl_sane(synthetic("custom", noisy(0.0097, seed=3)), max_kl_mean=0.01)
    assert edge.status == Status.WARN and "within noise" in edge.message
    short = assert_kl_sane(synthetic("bf16", noisy(0.001, 64)))
    assert short.status == Status.INCONCLUSIVE and f"(< {MIN_BLOCKS})" in short.message
    unbounded = assert_kl_sane(synthetic("w4g64", noisy(0.3)))
    assert unbounded.status == Status.PASS and unbounded.threshold["max_kl_mean"] is None


def test_kl_sane_judges_top1_agreement_only_where_the_reference_decides():
    """Top-1 agreement below the bf16 bound FAILs where the reference's median top-1 probability is >= 1% (or was not
    recorded: records of earlier runs); where the reference is near-uniform, top-1 is not judged, saying why, and the
    KL bound still decides."""
    top1 = np.random.default_rng(1).random(512) < 0.80
    flat = assert_kl_sane(synthetic("bf16", noisy(0.001), top1=top1, ref_p_top=np.full(512, 6e-4)))
    assert flat.status == Status.PASS and "top-1 agreement not judged" in flat.message
    assert "median top-1 probability is 0.0006 (< 1%)" in flat.message
    assert flat.evidence["top1_not_judged"] == {"ref_top1_p_median": pytest.approx(6e-4),
                                                "threshold": DECIDED_REFERENCE_P}
    for decided in (np.full(512, 0.3), None):
        with pytest.raises(InvariantViolation, match="top-1 agreement 8.*below the 94% bf16 must keep"):
            assert_kl_sane(synthetic("bf16", noisy(0.001), top1=top1, ref_p_top=decided))
    with pytest.raises(InvariantViolation, match="above the 0.005 bound for bf16 beyond noise"):
        assert_kl_sane(synthetic("bf16", noisy(0.05), top1=top1, ref_p_top=np.full(512, 6e-4)))


def test_bf16_of_a_near_uniform_random_model_is_no_false_alarm():
    """A random-init model as wide as the Llama 1.2B shape (2,048, two layers; SmolLM2's vocabulary) spreads its
    next-token probability almost evenly: bf16 rounding flips its top-1 at about one token in ten while the KL stays
    well inside the bf16 bound. Such a run FAILed kl_sane on the random 1.2B shape (session 12); the top-1 bound is
    now not applied to a reference whose median top-1 probability is under 1%. The bf16 products run as the engine
    runs them on a CPU (`half_matmul("fast")`: the same arithmetic as a GPU's bf16 GEMM, 4x faster than torch's CPU
    kernel)."""
    config = smollm2_config(hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=16,
                            num_key_value_heads=4)
    reference = random_init_like(config, seed=0)
    bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    ids = torch.randint(0, config.vocab_size, (1024,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), half_matmul("fast"):
        result = fidelity_of_ids(reference, bf16, ids, name="bf16", context=512)
    assert result.ref_top1_p_median < DECIDED_REFERENCE_P
    assert result.top1_agreement < KL_BOUNDS["bf16"]["min_top1"] and result.kl_mean < KL_BOUNDS["bf16"]["max_kl_mean"]
    check = assert_kl_sane(result, variant="bf16")
    assert check.status == Status.PASS and "top-1 agreement not judged" in check.message


def test_kl_ordering_pass_reversed_identical_and_tie():
    int8, w4 = synthetic("int8", noisy(0.004, seed=1)), synthetic("w4g64", noisy(0.2, seed=2))
    ok = assert_kl_ordering({"int8": int8, "w4g64": w4}, family="int")
    assert ok.status == Status.PASS and ok.variant == "int" and "KL grows as bits go down" in ok.message
    with pytest.raises(InvariantViolation, match="KL goes down as bits go down beyond noise"):
        assert_kl_ordering([w4, int8])
    fake = synthetic("w4g64", int8.token_kl.copy())
    with pytest.raises(InvariantViolation) as err:
        assert_kl_ordering([int8, fake], family="int")
    assert "w4g64 gives exactly the same KL as int8 at all 512 tokens" in err.value.result.message
    tie = assert_kl_ordering([int8, synthetic("w4g64", noisy(0.004, seed=9))])
    assert tie.status == Status.INCONCLUSIVE and "does not grow beyond noise" in tie.message
    with pytest.raises(ValueError, match="same tokens"):
        kl_difference_interval(int8, synthetic("other", noisy(0.1, 256)))


def test_kl_between_bounds():
    bounds = {"int8": synthetic("int8", noisy(0.004, seed=1)), "w4g64": synthetic("w4g64", noisy(0.2, seed=2))}
    assert assert_kl_between(synthetic("mixed", noisy(0.1, seed=3)), bounds).status == Status.PASS
    with pytest.raises(InvariantViolation, match="above its worst uniform bound w4g64"):
        assert_kl_between(synthetic("mixed", noisy(1.3, seed=3)), bounds)
    with pytest.raises(InvariantViolation, match="below its best uniform bound int8"):
        assert_kl_between(synthetic("mixed", noisy(0.0005, seed=3)), bounds)


def test_answer_flips_counts_both_ways():
    ref = [True, True, False, False, True, 1, 0]
    var = [True, False, True, False, False, 1, 1]
    flips = answer_flips(ref, var)
    assert (flips.n, flips.correct_to_wrong, flips.wrong_to_correct, flips.flips) == (7, 2, 2, 4)
    assert flips.accuracy_difference == 0.0 and flips.flip_rate == pytest.approx(4 / 7)
    data = flips.to_dict()
    assert data["value"] == pytest.approx(4 / 7) and data["interval"]["low"] < 4 / 7 < data["interval"]["high"]
    assert data["mcnemar_pvalue"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="paired flags: 2 reference vs 1"):
        answer_flips([True, False], [True])
    with pytest.raises(DataError, match="flag #1 is NaN"):
        answer_flips([True, float("nan")], [True, True])
    with pytest.raises(ValueError, match="variant_correct must equal"):
        FlipResult(10, 5, 5, 1, 0)


def test_flips_warn_when_accuracy_unchanged_but_many_answers_flip():
    ref = [i % 2 == 0 for i in range(200)]
    var = list(ref)
    for i in range(0, 24, 2):  # 12 correct→wrong
        var[i] = False
    for i in range(1, 23, 2):  # 11 wrong→correct
        var[i] = True
    warn = assert_flips_consistent(answer_flips(ref, var), variant="w4g64", task="ARC-Easy")
    assert warn.status == Status.WARN
    assert "23 of 200 answers flipped (12 correct→wrong, 11 wrong→correct" in warn.message
    assert "ARC-Easy accuracy 50.0% → 49.5%" in warn.message and warn.evidence["flips"] == 23
    calm = assert_flips_consistent(answer_flips(ref, ref[:2] + [not ref[2]] + ref[3:]), variant="int8")
    assert calm.status == Status.PASS and "1 of 200 answers flipped" in calm.message
    dropped = assert_flips_consistent(answer_flips(ref, [False] * 200), variant="fixed8.4")
    assert dropped.status == Status.PASS and "Δ -50.0%" in dropped.message
    few = assert_flips_consistent(answer_flips(ref[:20], var[:20]), variant="w4g64")
    assert few.status == Status.INCONCLUSIVE and "only 20 paired" in few.message
