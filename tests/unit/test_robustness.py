"""Robustness evaluation mechanics (tiny random models) and assert_robust_le_clean on counts, rates and flags."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from qcheck.errors import ConfigError, DataError, InvariantViolation
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.robustness import assert_robust_le_clean, model_state, newcombe_difference
from qcheck.measure.robustness import (
    AttackConfig,
    ChoiceItem,
    arc_easy_items,
    evaluate_robustness,
    fgsm_delta,
    float32_weights,
    gradient_weights,
    items_from_rows,
    pgd_step,
)
from qcheck.quant.apply import quantize
from qcheck.results import Status


def random_items(n: int, vocab: int = 512, seed: int = 1) -> list[ChoiceItem]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> list[int]:
        length = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(1, vocab, (length,), generator=g).tolist()

    return items_from_rows((f"q{i}", ids(5, 12), [ids(1, 4) for _ in range(4)], i % 4) for i in range(n))


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config(), seed=0)


@pytest.fixture(scope="module")
def items():
    return random_items(16)


@pytest.fixture(scope="module")
def evaluation(tiny, items):
    return evaluate_robustness(tiny, items, AttackConfig(epsilon=0.5, pgd_steps=2), variant="tiny", batch_size=16)


# --------------------------------------------------------------------------- configuration and data

@pytest.mark.parametrize("kwargs, field", [({"epsilon": 0}, "epsilon"), ({"epsilon": float("nan")}, "epsilon"),
                                           ({"pgd_steps": 0}, "pgd_steps"), ({"attacks": ("cw",)}, "attacks"),
                                           ({"attacks": ()}, "attacks"), ({"step_size": -1.0}, "step_size")])
def test_attack_config_rejects_bad_settings(kwargs, field):
    with pytest.raises(ConfigError) as info:
        AttackConfig(**kwargs)
    assert info.value.field == field


def test_attack_config_records_units_and_default_step():
    cfg = AttackConfig(epsilon=0.2, pgd_steps=5)
    assert cfg.pgd_step_size == pytest.approx(0.1)
    d = cfg.to_dict()
    assert d["epsilon"] == 0.2 and d["pgd_steps"] == 5 and "embedding" in d["norm"]
    assert "never the model's prediction" in d["loss"]


def test_choice_item_validation():
    with pytest.raises(DataError, match="answer index"):
        ChoiceItem("x", (1, 2), ((3,), (4,)), 2)
    with pytest.raises(DataError, match="non-empty"):
        ChoiceItem("x", (1, 2), ((3,), ()), 0)


def test_arc_easy_items_reads_slice_and_skips_long(tmp_path):
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    rows = [{"id": "a", "prompt": "short one", "choices": ["x", "y", "z", "w"], "answer_idx": 1},
            {"id": "b", "prompt": " ".join(["long"] * 100), "choices": ["x", "y"], "answer_idx": 0},
            {"id": "c", "prompt": "another", "choices": ["p q", "r"], "answer_idx": 0}]
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items, info = arc_easy_items(Tok(), 5, path=path, max_tokens=20)
    assert [it.id for it in items] == ["a", "c"]
    assert items[0].label == 1 and len(items[0].choice_ids) == 4
    assert info["skipped_too_long"] == 1 and info["questions"] == 2 and len(info["sha256"]) == 64
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    with pytest.raises(DataError, match="not an ARC-Easy row"):
        arc_easy_items(Tok(), 1, path=bad)


# --------------------------------------------------------------------------- attack geometry

def test_fgsm_reaches_the_ball_edge_per_token_and_pgd_stays_inside():
    torch.manual_seed(0)
    grad = torch.randn(2, 5, 8)
    grad[1, 3] = 0.0
    radius = torch.rand(2, 5) + 0.1
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 4] = False
    radius = radius * mask
    delta = fgsm_delta(grad, radius, mask)
    norms = delta.norm(dim=-1)
    expected = radius.clone()
    expected[1, 3] = 0.0                      # zero gradient: no step
    assert torch.allclose(norms, expected, atol=1e-6)
    for _ in range(5):
        delta = pgd_step(delta, torch.randn(2, 5, 8), radius, mask, step_size=0.3, epsilon=0.1)
        assert bool((delta.norm(dim=-1) <= radius + 1e-6).all())
        assert float(delta[0, 4].abs().max()) == 0.0


# --------------------------------------------------------------------------- the evaluation

def test_only_clean_correct_attacked_and_robust_implies_clean(evaluation, items):
    recs = evaluation.records
    assert [r.id for r in recs] == [it.id for it in items]
    for r in recs:
        assert r.attacked == r.clean_correct
        assert not r.robust or r.clean_correct
        assert r.robust == (r.clean_correct and all(p == r.label for p in r.attack_preds.values()))
        if r.attacked:
            assert r.gradient == "ok" and "fgsm" in r.attack_preds
            # cascade: PGD runs only on the questions FGSM left correct
            assert ("pgd" in r.attack_preds) == (r.attack_preds["fgsm"] == r.label)
        else:
            assert r.attack_preds == {} and "clean-wrong" in r.gradient
    assert evaluation.robust_correct <= evaluation.clean_correct
    assert evaluation.attacked == evaluation.clean_correct > 0
    assert 0 <= evaluation.gap_metric()["value"] == pytest.approx(evaluation.gap)


def test_attacks_leave_no_weight_gradients_behind(tiny, evaluation):
    """Only the perturbation's gradient is computed: no `.grad` on any weight (one more copy of the model: 32 GB
    at 8B in fp32), and the user's model is left as it was given."""
    assert evaluation.attacked > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_builtin_evaluation_passes_exactly(evaluation):
    result = assert_robust_le_clean(evaluation)
    assert result.status == Status.PASS and result.n == 16
    assert "by construction" in result.message
    assert len(result.evidence["records"]) == 16
    assert result.evidence["attack"]["epsilon"] == 0.5 and result.evidence["attack"]["pgd_steps"] == 2
    assert result.evidence["randomization"]["randomized"] is False
    metric = evaluation.metric("clean_accuracy")
    assert metric["interval"]["low"] <= metric["value"] <= metric["interval"]["high"] and metric["n"] == 16


def test_large_epsilon_breaks_more_than_tiny_epsilon(tiny, items):
    weak = evaluate_robustness(tiny, items, AttackConfig(epsilon=1e-4, pgd_steps=1), batch_size=16)
    strong = evaluate_robustness(tiny, items, AttackConfig(epsilon=2.0, pgd_steps=2), batch_size=16)
    assert weak.clean_correct == strong.clean_correct
    assert strong.robust_correct <= weak.robust_correct
    assert strong.robust_correct < strong.clean_correct


def test_tampered_records_are_caught(evaluation):
    import dataclasses

    recs = list(evaluation.records)
    wrong = next(i for i, r in enumerate(recs) if not r.clean_correct)
    recs[wrong] = dataclasses.replace(recs[wrong], robust=True)
    bad = dataclasses.replace(evaluation, records=recs)
    with pytest.raises(InvariantViolation, match="robust but not clean-correct"):
        assert_robust_le_clean(bad)


def test_some_zero_gradients_warn_that_robust_is_an_upper_bound(evaluation):
    import dataclasses

    recs = list(evaluation.records)
    hit = next(i for i, r in enumerate(recs) if r.attacked)
    recs[hit] = dataclasses.replace(recs[hit], gradient="zero")
    result = assert_robust_le_clean(dataclasses.replace(evaluation, records=recs))
    assert result.status == Status.WARN and "upper bounds" in result.message


def test_rounded_inputs_without_ste_report_zero_gradient(items):
    model = random_init_like(tiny_llama_config(), seed=0)
    model.model.layers[0].register_forward_pre_hook(
        lambda mod, args, kwargs: ((torch.round(args[0] * 50) / 50,) + args[1:], kwargs) if args else
        (args, {**kwargs, "hidden_states": torch.round(kwargs["hidden_states"] * 50) / 50}), with_kwargs=True)
    ev = evaluate_robustness(model, items, AttackConfig(epsilon=0.5, pgd_steps=1), batch_size=16)
    assert ev.attacked > 0 and ev.gradient_counts() == {"zero": ev.attacked}
    with pytest.raises(InvariantViolation, match="no gradient") as info:
        assert_robust_le_clean(ev)
    assert info.value.result.evidence["gradients"] == {"zero": ev.attacked}


def test_detached_inputs_report_missing_gradient(items):
    model = random_init_like(tiny_llama_config(), seed=0)

    def detach(mod, args, kwargs):
        if args:
            return (args[0].detach(),) + args[1:], kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}

    model.model.layers[0].register_forward_pre_hook(detach, with_kwargs=True)
    ev = evaluate_robustness(model, items, AttackConfig(epsilon=0.5, pgd_steps=1), batch_size=16)
    assert ev.attacked > 0 and ev.gradient_counts() == {"missing": ev.attacked}
    with pytest.raises(InvariantViolation, match="no gradient"):
        assert_robust_le_clean(ev)


def test_activation_fake_quant_is_straight_through(tiny, items):
    plan = {"default": {"format": "int", "bits": 8, "activations": {"format": "int", "bits": 8}}}
    quantized, _ = quantize(tiny, plan)
    ev = evaluate_robustness(quantized, items, AttackConfig(epsilon=0.5, pgd_steps=1), batch_size=16)
    assert set(ev.gradient_counts()) == {"ok"}
    assert "float32 weights" in ev.gradient_source


def test_bf16_variant_takes_gradients_in_fp32_weights_restored_exactly(tiny, items):
    """A bf16 variant's gradients are taken in fp32 weights upcast in place, not a copy: the attack gives the same
    records as one that takes them from an fp32 deep copy (the old way), and the variant is left bit for bit as it
    was, its fp32 buffers (rotary frequencies) untouched."""
    import copy

    quantized, _ = quantize(tiny, {"dtype": "bf16", "default": {"format": "bf16"}})
    before = {k: v.clone() for k, v in quantized.state_dict().items()}
    buffers = {k: b.dtype for k, b in quantized.named_buffers()}
    scope, source = gradient_weights(quantized)
    assert "float32 weights" in source and "in place" in source
    with scope() as upcast:
        assert upcast is quantized and {p.dtype for p in quantized.parameters()} == {torch.float32}
    assert {p.dtype for p in quantized.parameters()} == {torch.bfloat16}
    config = AttackConfig(epsilon=0.5, pgd_steps=2)
    ev = evaluate_robustness(quantized, items[:8], config, batch_size=8)
    assert "float32 weights" in ev.gradient_source and ev.robust_correct <= ev.clean_correct
    old = evaluate_robustness(quantized, items[:8], config, batch_size=8,
                              gradient_model=copy.deepcopy(quantized).float())
    assert [asdict(r) for r in ev.records] == [asdict(r) for r in old.records]
    assert all(torch.equal(before[k], v) and before[k].dtype == v.dtype for k, v in quantized.state_dict().items())
    assert {k: b.dtype for k, b in quantized.named_buffers()} == buffers


def test_fp32_weights_are_restored_when_the_block_raises():
    half = random_init_like(tiny_llama_config(), seed=0).to(torch.float16)
    before = {k: v.clone() for k, v in half.state_dict().items()}
    with pytest.raises(RuntimeError, match="mid-attack"), float32_weights(half):
        raise RuntimeError("mid-attack")
    assert all(torch.equal(before[k], v) and before[k].dtype == v.dtype for k, v in half.state_dict().items())


def test_train_mode_with_dropout_is_detected_and_refused(items):
    model = random_init_like(tiny_llama_config(attention_dropout=0.5), seed=0).train()
    ev = evaluate_robustness(model, items[:8], batch_size=8)
    rnd = ev.randomization
    assert rnd.train_mode and rnd.randomized and rnd.refused and ev.attacked == 0 and ev.robust_correct == 0
    assert any("attention_dropout" in d for d in rnd.dropout_modules)
    with pytest.raises(InvariantViolation, match="eval mode off") as info:
        assert_robust_le_clean(ev)
    assert info.value.result.evidence["randomization"]["train_mode"] is True


def test_bad_policy_and_duplicates_rejected(tiny, items):
    with pytest.raises(ConfigError):
        evaluate_robustness(tiny, items, randomized="ignore")
    for bad in ({"batch_size": 0}, {"draws": 1}, {"repeats": 1}):
        with pytest.raises(ConfigError):
            evaluate_robustness(tiny, items, **bad)
    with pytest.raises(DataError, match="unique"):
        evaluate_robustness(tiny, [items[0], items[0]])


def test_model_state_probe(tiny):
    state = model_state(tiny)
    assert state == {**state, "train_mode": False, "randomized": False}
    dropout = random_init_like(tiny_llama_config(attention_dropout=0.5), seed=0).train()
    state = model_state(dropout)
    assert state["train_mode"] and state["randomized"] and state["repeat_max_abs_diff"] > 0


# --------------------------------------------------------------------------- counts, rates and flags

def test_seed_000_rates_are_inconclusive_with_samples_needed():
    result = assert_robust_le_clean(0.4087, 0.4107, n=200, variant="dynamic")
    assert result.status == Status.INCONCLUSIVE
    ev = result.evidence
    assert ev["interval"]["low"] < 0 < ev["interval"]["high"]
    assert ev["samples_needed"] > 100_000
    assert "interval" in result.message and f"{ev['samples_needed']:,}" in result.message
    assert any("averaged" in note for note in ev["notes"])


def test_counts_pass_fail_and_different_n():
    assert assert_robust_le_clean(80, 60, n=200).status == Status.PASS
    with pytest.raises(InvariantViolation, match="beyond noise"):
        assert_robust_le_clean(80, 120, n=200)
    with pytest.raises(InvariantViolation, match="different sample sets|not the same samples"):
        assert_robust_le_clean(80, 45, n=200, n_robust=100)


@pytest.mark.parametrize("clean, robust, kwargs", [(0.5, 1.5, {"n": 10}), (5, 20, {"n": 10}), (0.5, 0.4, {}),
                                                   (True, 0.4, {"n": 10})])
def test_counts_reject_bad_input(clean, robust, kwargs):
    with pytest.raises(ConfigError):
        assert_robust_le_clean(clean, robust, **kwargs)


def test_flags_exact_and_paired():
    clean = [True, True, False, False] * 10
    robust = [True, False, False, False] * 10
    assert assert_robust_le_clean(clean, robust).status == Status.PASS
    pushed = [False, False, True, True] * 10
    with pytest.raises(InvariantViolation, match="a bug, not noise") as info:
        assert_robust_le_clean([True, False, False, False] * 10, [True, False, True, True] * 10)
    assert "model-predicted labels" in info.value.result.message.split("likely causes")[1][:120]
    assert info.value.result.evidence["mcnemar"]["only_a"] == 20
    with pytest.raises(InvariantViolation, match="within noise"):
        assert_robust_le_clean(clean, [True, False, True, False] + robust[4:])
    with pytest.raises(InvariantViolation, match="not the same sample set"):
        assert_robust_le_clean(clean, pushed[:20])


def test_flags_with_ids_match_by_id_and_catch_other_samples():
    ids = [f"q{i}" for i in range(6)]
    clean = [True, True, True, False, False, False]
    robust = list(reversed([True, False, False, False, False, False]))
    assert assert_robust_le_clean(clean, robust, clean_ids=ids, robust_ids=list(reversed(ids))).status == Status.PASS
    with pytest.raises(InvariantViolation, match="different samples") as info:
        assert_robust_le_clean(clean, robust, clean_ids=ids, robust_ids=ids[:3] + ["x", "y", "z"])
    assert info.value.result.evidence["only_in_robust"] == ["x", "y", "z"]
    with pytest.raises(ConfigError):
        assert_robust_le_clean(clean, robust, clean_ids=ids)


def test_newcombe_matches_published_example():
    # Newcombe (1998), method 10: 56/70 vs 48/80 -> (0.0524, 0.3339)
    low, high = newcombe_difference(56 / 70, 70, 48 / 80, 80)
    assert low == pytest.approx(0.0524, abs=1e-4) and high == pytest.approx(0.3339, abs=1e-4)


# --------------------------------------------------------------------------- batched scoring

def test_a_question_scores_the_same_alone_and_in_any_batch(tiny):
    """Two forwards score a whole batch (prompts right-padded, each choice reading its own question's cached prompt
    at the positions that continue it): padding, other questions and uneven choice counts change nothing beyond
    float noise, scores and their gradients alike."""
    from qcheck.measure.robustness import score_choices

    items = items_from_rows((f"u{i}", list(range(3, 3 + n)), [[7], [8, 9], [10, 11, 12], [13]][:k], 0)
                            for i, (n, k) in enumerate([(5, 4), (11, 2), (7, 3), (9, 4)]))
    together = score_choices(tiny, items)
    for item, batched in zip(items, together):
        (alone,) = score_choices(tiny, [item])
        assert batched.shape == (len(item.choice_ids),)
        assert torch.allclose(batched, alone, atol=1e-5, rtol=0)
    hidden = tiny.config.hidden_size
    delta = (0.01 * torch.randn(len(items), 11, hidden, generator=torch.Generator().manual_seed(0))
             ).requires_grad_(True)
    sum(s.sum() for s in score_choices(tiny, items, delta)).backward()
    for i, item in enumerate(items):
        one = delta[i:i + 1, :len(item.prompt_ids)].detach().clone().requires_grad_(True)
        score_choices(tiny, [item], one)[0].sum().backward()
        assert torch.allclose(delta.grad[i, :len(item.prompt_ids)], one.grad[0], atol=1e-5, rtol=1e-4)
        if len(item.prompt_ids) < delta.shape[1]:      # padding past a prompt gets no gradient
            assert float(delta.grad[i, len(item.prompt_ids):].abs().max()) == 0.0


def test_batch_size_does_not_change_the_records(tiny, items, evaluation):
    again = evaluate_robustness(tiny, items, AttackConfig(epsilon=0.5, pgd_steps=2), variant="tiny", batch_size=3)
    assert [asdict(r) for r in again.records] == [asdict(r) for r in evaluation.records]


def test_attack_batches_are_four_questions_on_a_cpu(tiny):
    from qcheck.measure.robustness import attack_batch_size

    assert attack_batch_size(tiny, 64) == 4


@pytest.mark.gpu
def test_attack_batches_on_a_gpu_are_sized_by_free_memory():
    """A small model gets the cap; a model whose kept activations would not fit gets one question at a time."""
    from qcheck.measure.robustness import ATTACK_BATCH_LIMIT, attack_batch_size

    model = random_init_like(tiny_llama_config(), seed=0).to("cuda")
    assert attack_batch_size(model, 64) == ATTACK_BATCH_LIMIT
    free, _ = torch.cuda.mem_get_info()
    layers = len(model.model.layers)  # the layers that run on the GPU, not the config's count
    too_long = int(free // (2 * layers * model.config.hidden_size * 68)) + 1
    assert attack_batch_size(model, too_long) == 1


def test_the_fp32_gradient_weights_are_counted_before_the_attack_batch_is_sized():
    """A 16-bit variant's attacks take gradients in its weights upcast to fp32 in place, after the batch is sized:
    the bytes that adds (fp32 less 16-bit, tied weights once) are taken off the free memory first. An fp32 variant
    is its own gradient model: nothing counted."""
    from qcheck.measure.robustness import attack_weight_bytes, needs_fp32_upcast

    model = random_init_like(tiny_llama_config(), seed=0)
    assert not needs_fp32_upcast(model) and attack_weight_bytes(model) == 0
    half = model.to(torch.float16)
    unique = {id(t): t.numel() for t in list(half.parameters()) + list(half.buffers()) if t.dtype == torch.float16}
    assert needs_fp32_upcast(half) and attack_weight_bytes(half) == 2 * sum(unique.values())
    held = sum(t.numel() * t.element_size() for t in {id(t): t for t in half.parameters()}.values())
    with float32_weights(half):
        upcast = sum(t.numel() * t.element_size() for t in {id(t): t for t in half.parameters()}.values())
    assert upcast - held == 2 * sum(p.numel() for p in {id(p): p for p in half.parameters()}.values())

PLACEMENT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
             "model.rotary_emb": "cpu", "lm_head": "cpu"}


TIED_SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "cpu",
              "model.rotary_emb": "cpu", "lm_head": "disk"}
"""The embeddings resident and the head they are tied to offloaded (a tied pair split by the placement)."""


@pytest.mark.parametrize("placement", [PLACEMENT, TIED_SPLIT], ids=["layer-offloaded", "tied-head-offloaded"])
def test_a_dispatched_16_bit_variant_is_upcast_in_place_and_given_back_its_dtypes(items, tmp_path, placement):
    """accelerate's hooks put a new parameter object in place at each forward of an offloaded layer, in the dtype of
    the one they replace. Upcast in place and restored by name, a dispatched bf16 model's attack gives the records of
    the same model undispatched, and afterwards every tensor, the offloaded ones included, is bf16 again and the
    logits are the same bits (restoring the objects first seen left the offloaded layers in fp32: session 15's dtype
    mismatch, and the deep copy that replaced it until session 27)."""
    from accelerate import dispatch_model

    model = random_init_like(tiny_llama_config(num_hidden_layers=2), seed=0).to(torch.bfloat16).eval()
    plain = evaluate_robustness(model, items[:8], AttackConfig(epsilon=0.5, pgd_steps=2), batch_size=8)
    dispatched = dispatch_model(model, device_map=placement, offload_dir=str(tmp_path))
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = dispatched(input_ids=ids).logits
    _, source = gradient_weights(dispatched)
    assert "upcast in place" in source and "offloaded layers loaded in fp32" in source
    for _ in range(2):  # a second attack starts from what the first left
        ev = evaluate_robustness(dispatched, items[:8], AttackConfig(epsilon=0.5, pgd_steps=2), batch_size=8)
        assert ev.attacked > 0 and [asdict(r) for r in ev.records] == [asdict(r) for r in plain.records]
    assert {p.dtype for p in dispatched.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        again = dispatched(input_ids=ids).logits
    assert again.dtype == torch.bfloat16 and torch.equal(again, logits)


def test_a_tied_weight_accelerate_knows_by_address_is_given_back_its_storage(tmp_path):
    """accelerate's hooks know tied weights by storage address (`tied_params_map`) and hand the cached tied weight
    to any tensor they load at that address. Upcast in place, a tied embedding's 16-bit storage was freed and
    reallocated elsewhere on restore: the address stayed a key, and an offloaded layer later loaded there was given
    the 512 x 64 embeddings (a flaky shape error in session 27's test runs). It keeps its storage now, and is back at
    its address after the scope."""
    from accelerate import dispatch_model

    from qcheck.quant.offload import tied_pointers

    model = random_init_like(tiny_llama_config(num_hidden_layers=2), seed=0).to(torch.bfloat16).eval()
    dispatched = dispatch_model(model, device_map=PLACEMENT, offload_dir=str(tmp_path))
    embeddings = dispatched.model.embed_tokens.weight
    keys = tied_pointers(dispatched)
    assert keys == {embeddings.data_ptr()}
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with float32_weights(dispatched):
        assert embeddings.dtype == torch.float32
        dispatched(input_ids=ids)
    assert embeddings.dtype == torch.bfloat16 and embeddings.data_ptr() in keys
    assert dispatched.lm_head.weight.data_ptr() in keys


def test_inside_the_gradient_scope_every_layer_computes_in_fp32_offloaded_ones_included(tmp_path, monkeypatch):
    """The premise of the in-place upcast on a dispatched model, seen at the matmuls: inside `float32_weights` every
    linear layer, those the hooks load from disk at each forward included, gets fp32 weights; outside it, its own."""
    from accelerate import dispatch_model

    model = random_init_like(tiny_llama_config(num_hidden_layers=2), seed=0).to(torch.bfloat16).eval()
    dispatched = dispatch_model(model, device_map=PLACEMENT, offload_dir=str(tmp_path))
    seen: list[torch.dtype] = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: (seen.append(w.dtype), linear(x, w, b))[1])
    ids = torch.randint(3, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    with float32_weights(dispatched), torch.no_grad():
        dispatched(input_ids=ids)
    inside, seen[:] = list(seen), []
    with torch.no_grad():
        dispatched(input_ids=ids)
    layers = 2 * 7 + 1  # seven projections a layer, and the head
    assert inside == [torch.float32] * layers and seen == [torch.bfloat16] * layers


@pytest.mark.gpu
def test_a_dispatched_16_bit_model_on_a_gpu_is_attacked_in_place_with_its_offloaded_layers_counted(items):
    """On a GPU, with CPU offload (the hooks load layer 1 and the head onto GPU 0 at each forward): the attack gives
    the undispatched model's records, the plan counts the offloaded tensors in fp32 on GPU 0 beside the resident
    upcast, and the logits after the attack are bf16 and the same bits as before (the head untied from the
    embeddings, as in Llama-3-70B)."""
    from accelerate import dispatch_model

    from qcheck.measure.robustness import attack_weight_bytes_by_device

    config = tiny_llama_config(num_hidden_layers=2, tie_word_embeddings=False)
    model = random_init_like(config, seed=0).to(torch.bfloat16).eval()
    attack = AttackConfig(epsilon=0.5, pgd_steps=2)
    plain = evaluate_robustness(model.to("cuda"), items[:8], attack, batch_size=8)
    bf16 = {id(t): (n, t.numel()) for n, t in [*model.named_parameters(), *model.named_buffers()]
            if t.dtype == torch.bfloat16}
    offloaded = sum(k for n, k in bf16.values() if n.startswith(("model.layers.1.", "model.norm.", "lm_head.")))
    resident = sum(k for _, k in bf16.values()) - offloaded
    placement = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": "cpu",
                 "model.rotary_emb": 0, "lm_head": "cpu"}
    dispatched = dispatch_model(model.to("cpu"), device_map=placement, main_device=0)
    assert attack_weight_bytes_by_device(dispatched) == {torch.device("cuda", 0): 2 * resident + 4 * offloaded}
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(0)).to("cuda")
    with torch.no_grad():
        logits = dispatched(input_ids=ids).logits
    ev = evaluate_robustness(dispatched, items[:8], attack, batch_size=8)
    assert ev.attacked > 0 and [r.robust for r in ev.records] == [r.robust for r in plain.records]
    assert [r.attack_preds for r in ev.records] == [r.attack_preds for r in plain.records]
    with torch.no_grad():
        again = dispatched(input_ids=ids).logits
    assert again.dtype == torch.bfloat16 and torch.equal(again, logits)


def test_a_dispatched_model_whose_gradient_weights_cannot_fit_is_not_attacked(tmp_path):
    """A dispatched 16-bit model's gradient passes hold its resident 16-bit tensors in fp32 (2 more bytes each; 4
    for a tied weight whose storage is kept) and its offloaded tensors in fp32 on the device that runs them (4 bytes
    each: autograd keeps them until the backward pass); where a device lacks that much free the step says so (the bytes, the device, what to pass) instead of
    running out of memory after the clean pass. Where it fits, or for an undispatched model, nothing is refused."""
    from accelerate import dispatch_model

    from qcheck.measure.robustness import attack_memory_refusal

    model = random_init_like(tiny_llama_config(num_hidden_layers=2), seed=0).to(torch.bfloat16).eval()
    assert attack_memory_refusal(model, available=lambda device: 0) is None
    held = {id(t): (n, t.numel()) for n, t in [*model.named_parameters(), *model.named_buffers()]
            if t.dtype == torch.bfloat16}
    offloaded = sum(k for n, k in held.values() if n.startswith("model.layers.1."))  # layer 1 goes to disk
    tied = model.model.embed_tokens.weight.numel()  # tied to the head: its bf16 storage stays beside the fp32 one
    need = 2 * sum(k for _, k in held.values()) - 2 * offloaded + 4 * offloaded + 2 * tied
    dispatched = dispatch_model(model, device_map=PLACEMENT, offload_dir=str(tmp_path))
    assert attack_memory_refusal(dispatched) is None
    assert attack_memory_refusal(dispatched, available=lambda device: need) is None
    reason = attack_memory_refusal(dispatched, available=lambda device: need - 1)
    assert reason is not None and f"{need / 2**30:.1f} GiB on cpu, where" in reason
    assert "lower --max-memory" in reason and "Not attacked rather than run out of memory" in reason


def test_a_dispatched_variants_gradient_weights_count_its_offloaded_fp32_layers(tmp_path):
    """A fake-quantized variant of a 16-bit reference holds its grid layers in fp32 beside 16-bit embeddings and
    norms. Its gradient passes add 2 bytes to each resident 16-bit element and hold each offloaded element in fp32 on
    its execution device, its fp32 layers included. Session 26's plan counted a deep copy's 16-bit tensors alone and
    no offloaded layer: the int8 variant of a bf16 70B slice ran out of GPU memory."""
    from accelerate import dispatch_model

    from qcheck.measure.robustness import attack_weight_bytes_by_device

    model = random_init_like(tiny_llama_config(num_hidden_layers=2), seed=0).to(torch.bfloat16).eval()
    variant, _ = quantize(model, {"default": {"format": "int", "bits": 8}})
    assert {p.dtype for p in variant.parameters()} == {torch.bfloat16, torch.float32}
    tensors = {id(t): (n, t) for n, t in [*variant.named_parameters(), *variant.named_buffers()]
               if t.is_floating_point()}
    offloaded = sum(t.numel() for n, t in tensors.values() if n.startswith("model.layers.1."))
    resident_16 = sum(t.numel() for n, t in tensors.values()
                      if not n.startswith("model.layers.1.") and t.dtype == torch.bfloat16)
    dispatched = dispatch_model(variant, device_map=PLACEMENT, offload_dir=str(tmp_path))
    fp32_offloaded = sum(p.numel() for n, p in dispatched.named_parameters()
                         if n.startswith("model.layers.1.") and p.dtype == torch.float32)
    assert fp32_offloaded > 0
    tied = dispatched.model.embed_tokens.weight.numel()  # its bf16 storage is kept while upcast
    assert attack_weight_bytes_by_device(dispatched) == {torch.device("cpu"): 2 * resident_16 + 4 * offloaded
                                                         + 2 * tied}


def test_an_attack_pass_keeps_no_weight_inputs_or_copied_heads_and_its_gradient_is_unchanged():
    """The attack's gradient pass freezes the weights (no layer input is kept for a weight gradient) and attends to a
    grouped-query layer's key/value heads without copying them per query head (SmolLM2-135M's 9 over 3, two layers,
    16 questions of ARC-like lengths): autograd keeps no copied key/value heads and less in all (23% less here, 38%
    with all 30 layers on 16 real ARC-Easy questions: 2,401 MiB to 1,483), the
    scores are those of transformers' sdpa, the gradient with respect to delta is the same to fp32 rounding, and
    every weight requires grad again afterwards."""
    import contextlib

    from qcheck.inputs.models import smollm2_config
    from qcheck.measure import robustness as R

    model = random_init_like(smollm2_config(num_hidden_layers=2), seed=0)
    g = torch.Generator().manual_seed(3)

    def ids(lo: int, hi: int) -> list[int]:
        return torch.randint(1, 49152, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    items = items_from_rows((f"q{i}", ids(30, 45), [ids(4, 13) for _ in range(4)], i % 4) for i in range(16))
    batch = R._make_batch(items, 0, torch.device("cpu"))
    base = R._base_embeddings(model, batch)
    delta = torch.randn(base.shape, generator=torch.Generator().manual_seed(0)) * 0.01
    rows, length = batch.choices.shape[0], batch.prompt_ids.shape[1] + batch.choices.shape[1]

    def kept() -> tuple[float, set[tuple[int, ...]], torch.Tensor, list[torch.Tensor]]:
        storages: dict[int, int] = {}
        shapes: set[tuple[int, ...]] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            shapes.add(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            grad, _ = R._loss_grad(model, base, delta, batch, 1)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        with torch.no_grad():
            scores = R._choice_scores(model, R._inputs(base, delta, batch), batch)
        return sum(n for k, n in storages.items() if k not in weights) / 2**20, shapes, grad, scores

    mib, shapes, grad, scores = kept()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "frozen_parameters", contextlib.nullcontext)
        mp.setattr(R, "packed_gqa_attention", lambda m: contextlib.nullcontext(False))
        mib_before, shapes_before, grad_before, scores_before = kept()
    copied = (rows, 9, length, 64)
    assert copied in shapes_before and copied not in shapes
    assert mib < 0.85 * mib_before, (mib, mib_before)  # two layers: the vocabulary's logits weigh more than in 30
    torch.testing.assert_close(grad, grad_before, rtol=1e-4, atol=1e-5)
    for a, b in zip(scores, scores_before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_parameters_restores_requires_grad_by_name_also_on_error(tiny):
    from qcheck.measure.robustness import frozen_parameters

    tiny.lm_head.weight.requires_grad_(False)
    try:
        with pytest.raises(RuntimeError, match="planted"), frozen_parameters(tiny) as m:
            assert not any(p.requires_grad for p in m.parameters())
            raise RuntimeError("planted")
        assert not tiny.lm_head.weight.requires_grad and sum(not p.requires_grad for p in tiny.parameters()) == 1
    finally:
        tiny.lm_head.weight.requires_grad_(True)


def test_an_attack_that_runs_out_of_memory_is_run_again_at_half_the_batch(tiny, items, evaluation):
    """Session 26's --device-map run of a bf16 70B slice ran its int8 variant's attack out of GPU memory, and the
    check ERRORed. The attack now runs again at half the batch while it runs out (the batch sizes are recorded);
    the records equal the planned batch's, and any other error, or running out at one question, is raised."""
    from qcheck.measure.robustness import with_smaller_batches

    calls = []

    def attack(batch):
        calls.append(batch)
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 896.00 MiB.")
        return evaluate_robustness(tiny, items, AttackConfig(epsilon=0.5, pgd_steps=2), variant="tiny",
                                   batch_size=batch)

    result, ran_out = with_smaller_batches(attack, 16)
    assert ran_out == [16, 8, 4] and calls == [16, 8, 4, 2]
    assert [asdict(r) for r in result.records] == [asdict(r) for r in evaluation.records]

    def always(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        with_smaller_batches(always, 4)
    with pytest.raises(ValueError, match="not memory"):
        with_smaller_batches(lambda batch: (_ for _ in ()).throw(ValueError("not memory")), 8)
