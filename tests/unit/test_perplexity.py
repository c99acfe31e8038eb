"""Strided perplexity against an independent one-window-at-a-time computation (tiny random Llama, so fast)."""
import math

import numpy as np
import pytest
import torch

from qcheck.errors import DataError
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.measure.perplexity import PerplexityResult, perplexity_of_ids, scored_positions, windows


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config(), seed=3)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(1, 512, (700,), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def straightforward(model, ids, context, stride):
    """exp(sum NLL / n), one unpadded window at a time: each window scores the tokens after both its own first
    token and the last token an earlier window scored."""
    total, count, done = 0.0, 0, 1
    begin = 0
    while done < len(ids):
        end = min(begin + context, len(ids))
        logits = model(ids[begin:end].unsqueeze(0)).logits[0].double()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp.gather(-1, ids[begin + 1:end].unsqueeze(-1)).squeeze(-1)
        fresh = end - max(done, begin + 1)
        if fresh > 0:
            total += float(nll[-fresh:].sum())
            count += fresh
        done = max(done, end)
        begin += stride
    return math.exp(total / count), count


@pytest.mark.parametrize("context,stride,batch", [(128, 128, 4), (128, 64, 3), (100, 30, 8), (256, 256, 1)])
def test_matches_independent_loop(tiny, ids, context, stride, batch):
    result = perplexity_of_ids(tiny, ids, context=context, stride=stride, batch_size=batch)
    expected, count = straightforward(tiny, ids, context, stride)
    assert result.n_tokens == count
    assert count == len(ids) - 1 if stride < context else count == len(ids) - math.ceil(len(ids) / context)
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert (result.context, result.stride) == (context, stride)


def test_batch_size_and_padding_do_not_change_the_figure(tiny, ids):
    # 700 tokens at context 128: the last window is short, so batches carry right padding
    figures = {b: perplexity_of_ids(tiny, ids, context=128, batch_size=b, pad_id=p).perplexity
               for b, p in [(1, 0), (2, 0), (6, 0), (6, 511)]}
    assert max(figures.values()) / min(figures.values()) - 1 < 1e-5


def test_token_nll_is_kept_at_the_scored_positions(tiny, ids):
    short = perplexity_of_ids(tiny, ids, context=64)
    strided = perplexity_of_ids(tiny, ids, context=128, stride=32)
    for r in (short, strided):
        positions = scored_positions(r.n_ids, r.context, r.stride)
        assert len(r.token_nll) == len(positions) == r.n_tokens
        assert float(np.sum(r.token_nll)) == pytest.approx(r.nll_sum, rel=1e-12)
        assert sum(r.window_tokens) == r.n_tokens and len(r.window_nll) == r.n_windows
    assert short.n_tokens == len(ids) - math.ceil(len(ids) / 64) and strided.n_tokens == len(ids) - 1
    # tokens 1..63 see the same context at both settings
    assert np.allclose(short.token_nll[:63], strided.token_nll[:63], rtol=1e-4)


def test_windows_score_each_token_at_most_once():
    for n, ctx, stride in [(10, 4, 4), (10, 4, 1), (1000, 128, 100), (5, 8, 8), (257, 128, 128)]:
        spans = windows(n, ctx, stride)
        positions = scored_positions(n, ctx, stride)
        assert len(set(positions.tolist())) == len(positions) == sum(k for _, _, k in spans)
        assert all(0 < k <= e - b - 1 for b, e, k in spans)
        unscored = set(range(n)) - set(positions.tolist())
        expected = {0} if stride < ctx else {b for b in range(0, n, ctx)}
        assert unscored == expected


def test_bad_inputs_are_refused(tiny):
    with pytest.raises(DataError, match="at least 2 tokens"):
        perplexity_of_ids(tiny, [5])
    with pytest.raises(DataError, match="stride must be"):
        perplexity_of_ids(tiny, list(range(1, 50)), context=16, stride=32)
    with pytest.raises(DataError, match="batch_size"):
        perplexity_of_ids(tiny, list(range(1, 50)), batch_size=0)


def test_word_and_byte_units_are_named():
    r = PerplexityResult(perplexity=math.exp(2.0), nll_sum=200.0, n_tokens=100, context=8, stride=8, n_windows=13,
                         n_words=50, n_bytes=400)
    units = r.per_unit()
    assert units["token"] == pytest.approx(math.exp(2.0))
    assert units["word"] == pytest.approx(math.exp(4.0))
    assert units["byte"] == pytest.approx(math.exp(0.5))
    assert set(r.to_dict()["units"]) == {"token", "word", "byte"}
