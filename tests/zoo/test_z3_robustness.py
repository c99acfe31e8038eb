"""Z3 (seed 000): robust accuracy 41.07% above clean 40.87%. Each planted pipeline bug is caught with its cause
named; qcheck's own evaluation and a correct user pipeline pass.

Planted: robust accuracy on a different random subset; FGSM with the model's own predictions as labels that
counts every sample; a model that re-draws its precision on every forward; model.train() left on.
"""
from __future__ import annotations

import random

import pytest
import torch

from qcheck.errors import DataError, InvariantViolation
from qcheck.formats import integer
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.robustness import CAUSES, assert_robust_le_clean
from qcheck.measure.robustness import (
    AttackConfig,
    arc_easy_items,
    evaluate_robustness,
    fgsm_delta,
    items_from_rows,
    prompt_radius,
    score_choices,
)
from qcheck.results import Status

EPS = 0.5


def random_items(n: int, vocab: int = 512, seed: int = 3):
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(1, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return items_from_rows((f"q{i}", ids(5, 12), [ids(1, 4) for _ in range(4)], i % 4) for i in range(n))


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config(), seed=0)


@pytest.fixture(scope="module")
def items():
    return random_items(24)


@pytest.fixture(scope="module")
def arc_items(smollm2):
    try:
        items, _ = arc_easy_items(smollm2.tokenizer, 6, max_tokens=48)
    except DataError as exc:
        pytest.skip(f"ARC-Easy not available: {exc}")
    return items


# --------------------------------------------------------------------------- a user's pipeline, with switches

def predictions(model, items):
    with torch.no_grad():
        return [int(s.argmax()) for s in score_choices(model, items)]


def user_fgsm(model, items, labels, epsilon=EPS):
    """A user's FGSM on prompt embeddings against `labels`; returns the predictions after the attack."""
    radius = prompt_radius(model, items, epsilon)
    delta = torch.zeros(radius.shape + (model.config.hidden_size,), requires_grad=True)
    scores = score_choices(model, items, delta)
    loss = sum(torch.nn.functional.cross_entropy(s[None], torch.tensor([y])) for s, y in zip(scores, labels))
    loss.backward()
    adv = fgsm_delta(delta.grad, radius, radius > 0)
    with torch.no_grad():
        return [int(s.argmax()) for s in score_choices(model, items, adv)]


def correct_pipeline(model, items):
    """Clean pass; attack the clean-correct questions with true labels; robust = clean-correct and stays correct."""
    clean = [p == it.label for p, it in zip(predictions(model, items), items)]
    targets = [it for it, ok in zip(items, clean) if ok]
    after = dict(zip([it.id for it in targets], user_fgsm(model, targets, [it.label for it in targets]))) \
        if targets else {}
    robust = [ok and after[it.id] == it.label for it, ok in zip(items, clean)]
    return clean, robust


# --------------------------------------------------------------------------- the correct pipelines pass

def test_builtin_evaluation_on_smollm2_passes(smollm2, arc_items):
    model, tok = smollm2
    ev = evaluate_robustness(model, arc_items, AttackConfig(epsilon=0.1, pgd_steps=2), pad_id=tok.pad_token_id,
                             batch_size=6, variant="fp32")
    result = assert_robust_le_clean(ev)
    assert result.status == Status.PASS
    assert ev.clean_correct >= 2, "SmolLM2 should answer some easy ARC questions"
    assert ev.robust_correct <= ev.clean_correct and ev.gradient_counts() == {"ok": ev.attacked}
    assert not ev.randomization.randomized and ev.randomization.repeat_max_abs_diff == 0.0
    assert [r["id"] for r in result.evidence["records"]] == [it.id for it in arc_items]


def test_correct_user_pipeline_passes(tiny, items):
    clean, robust = correct_pipeline(tiny, items)
    assert sum(robust) <= sum(clean)
    result = assert_robust_le_clean(clean, robust, clean_ids=[i.id for i in items],
                                    robust_ids=[i.id for i in items], model=tiny)
    assert result.status == Status.PASS


# --------------------------------------------------------------------------- planted bugs

def test_robust_on_a_different_random_subset_is_caught(tiny, items):
    clean = [p == it.label for p, it in zip(predictions(tiny, items), items)]
    subset = random.Random(7).sample(items, 12)                 # the bug: a fresh random subset for robust
    after = user_fgsm(tiny, subset, [it.label for it in subset])
    robust = [p == it.label for p, it in zip(after, subset)]
    with pytest.raises(InvariantViolation) as info:
        assert_robust_le_clean(clean, robust, clean_ids=[i.id for i in items], robust_ids=[i.id for i in subset])
    result = info.value.result
    assert result.message.startswith("clean and robust were measured on different samples")
    assert "(1) " + CAUSES["different_samples"] in result.message
    assert len(result.evidence["only_in_clean"]) == 12
    # the same bug reported as two accuracies over different n
    with pytest.raises(InvariantViolation, match="not the same samples"):
        assert_robust_le_clean(sum(clean), sum(robust), n=len(items), n_robust=len(subset))


def test_fgsm_with_predicted_labels_counting_all_samples_is_caught(smollm2, arc_items):
    model = smollm2.model
    clean_pred = predictions(model, arc_items)
    clean = [p == it.label for p, it in zip(clean_pred, arc_items)]
    after = user_fgsm(model, arc_items, clean_pred, epsilon=1.0)   # the bug: labels = the model's predictions
    robust = [p == it.label for p, it in zip(after, arc_items)]    # ... and every sample counted
    pushed_right = [it.id for it, c, r in zip(arc_items, clean, robust) if r and not c]
    if not pushed_right:
        pytest.skip("on this slice the predicted-label FGSM pushed no wrong answer right (nothing to catch)")
    with pytest.raises(InvariantViolation) as info:
        assert_robust_le_clean(clean, robust, clean_ids=[i.id for i in arc_items],
                               robust_ids=[i.id for i in arc_items], model=model)
    result = info.value.result
    assert result.evidence["robust_but_clean_wrong"] == pushed_right
    assert "(1) " + CAUSES["predicted_labels"] in result.message
    assert not result.evidence["model_state"]["randomized"] and not result.evidence["model_state"]["train_mode"]


def test_predicted_label_bug_on_tiny_model_is_a_bug_not_noise(tiny):
    many = random_items(48, seed=11)
    clean_pred = predictions(tiny, many)
    clean = [p == it.label for p, it in zip(clean_pred, many)]
    robust = [p == it.label for p, it in zip(user_fgsm(tiny, many, clean_pred, epsilon=2.0), many)]
    assert sum(robust) > 0 and any(r and not c for c, r in zip(clean, robust))
    with pytest.raises(InvariantViolation) as info:
        assert_robust_le_clean(clean, robust, model=tiny)
    assert "(1) " + CAUSES["predicted_labels"] in info.value.result.message


class RandomPrecision:
    """Planted: re-draws the weight precision (int4 or int8 RTN of the fp32 master) before every forward."""

    def __init__(self, model):
        self.linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self.master = [m.weight.detach().clone() for m in self.linears]
        model.register_forward_pre_hook(self.redraw)

    def redraw(self, module, args):
        bits = (4, 8)[int(torch.randint(0, 2, (1,)))]
        with torch.no_grad():
            for lin, w in zip(self.linears, self.master):
                lin.weight.data = integer(w, bits)


@pytest.fixture(scope="module")
def random_precision_model():
    model = random_init_like(tiny_llama_config(), seed=0)
    RandomPrecision(model)
    return model


def test_precision_redrawn_every_forward_is_refused(random_precision_model, items):
    ev = evaluate_robustness(random_precision_model, items[:12], AttackConfig(epsilon=EPS, pgd_steps=1),
                             batch_size=12)
    assert ev.randomization.randomized and not ev.randomization.train_mode and ev.randomization.refused
    with pytest.raises(InvariantViolation) as info:
        assert_robust_le_clean(ev)
    message = info.value.result.message
    assert message.startswith("randomized model: two identical clean passes differ")
    assert CAUSES["randomized"] in message


def test_precision_redrawn_every_forward_with_expectation_is_reported(random_precision_model, items):
    ev = evaluate_robustness(random_precision_model, items[:12], AttackConfig(epsilon=EPS, pgd_steps=1),
                             randomized="expectation", draws=3, batch_size=12)
    result = assert_robust_le_clean(ev)
    assert result.status == Status.WARN
    assert "randomized model" in result.message and "expectation over 3 draws" in result.message
    assert ev.robust_correct <= ev.clean_correct and result.evidence["randomization"]["randomized"] is True


def test_user_numbers_from_randomized_model_name_randomized_first(random_precision_model, items):
    for seed in range(20):                                       # two passes that drew different precisions
        torch.manual_seed(seed)
        clean = [p == it.label for p, it in zip(predictions(random_precision_model, items), items)]
        robust = [p == it.label for p, it in zip(predictions(random_precision_model, items), items)]
        if any(r and not c for c, r in zip(clean, robust)):
            break
    else:
        pytest.fail("no two draws of the randomized model disagreed on a clean-wrong question")
    with pytest.raises(InvariantViolation) as info:
        assert_robust_le_clean(clean, robust, model=random_precision_model)
    result = info.value.result
    assert result.evidence["model_state"]["randomized"] is True
    assert "likely causes: (1) " + CAUSES["randomized"] in result.message


def test_train_mode_left_on_is_caught(items):
    model = random_init_like(tiny_llama_config(attention_dropout=0.3), seed=0).train()   # the bug
    ev = evaluate_robustness(model, items[:12], AttackConfig(epsilon=EPS, pgd_steps=1), batch_size=12)
    with pytest.raises(InvariantViolation) as info:
        assert_robust_le_clean(ev)
    message = info.value.result.message
    assert message.startswith("eval mode off:") and CAUSES["train_mode"] in message
    assert info.value.result.evidence["randomization"]["train_mode"] is True
    clean, robust = correct_pipeline(model, items)
    if any(r and not c for c, r in zip(clean, robust)):
        with pytest.raises(InvariantViolation, match=r"likely causes: \(1\) eval mode off"):
            assert_robust_le_clean(clean, robust, model=model)
    model.eval()
    fixed = evaluate_robustness(model, items[:12], AttackConfig(epsilon=EPS, pgd_steps=1), batch_size=12)
    assert assert_robust_le_clean(fixed).status == Status.PASS


def test_seed_000_numbers_are_inconclusive():
    result = assert_robust_le_clean(0.4087, 0.4107, n=200, variant="dynamic")
    assert result.status == Status.INCONCLUSIVE
    assert result.evidence["samples_needed"] > 100_000 and "interval" in result.message
