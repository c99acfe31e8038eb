"""Greedy generation (left padding, fixed budget, chat template), few-shot prompt files, log-likelihood multiple
choice and task slices, on a tiny random Llama with a small real byte-level BPE tokenizer (fast)."""
import pytest
import torch

from qcheck.errors import ConfigError, DataError
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.inputs.tasks import MCQuestion, gold_after_hashes, load_arc_easy, load_gsm8k
from qcheck.measure.choice import choice_loglikelihoods, score_multiple_choice
from qcheck.measure.generation import (
    FewShotPrompt,
    GenerationSettings,
    generate,
    generate_answers,
    has_chat_template,
    packaged_prompts,
)

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Question: how many apples are left? Answer: 3 + 4 = 7. The final answer is \\boxed{7}."] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT
    return fast


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return random_init_like(tiny_llama_config(eos_token_id=tokenizer.eos_token_id,
                                              pad_token_id=tokenizer.pad_token_id), seed=1)


PROMPTS = ["Question: how many", "Question: how many apples are left? Answer:", "The final", "apples"]


def test_batched_left_padded_generation_equals_one_at_a_time(tiny, tokenizer):
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    batched = generate(tiny, tokenizer, PROMPTS, settings)
    single = generate(tiny, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=12, batch_size=1))
    assert batched.texts == single.texts
    assert [g.id for g in batched.outputs] == ["0", "1", "2", "3"]
    for g, p in zip(batched.outputs, PROMPTS):
        assert g.n_prompt_tokens == len(tokenizer(p, add_special_tokens=False)["input_ids"])
        assert (g.stop == "budget") == (g.n_new_tokens == 12)
        assert 0 <= g.n_new_tokens <= 12


def test_generation_is_greedy_and_deterministic(tiny, tokenizer):
    a = generate(tiny, tokenizer, PROMPTS[:2], GenerationSettings(max_new_tokens=8))
    torch.manual_seed(123)
    b = generate(tiny, tokenizer, PROMPTS[:2], GenerationSettings(max_new_tokens=8))
    assert a.texts == b.texts


def test_settings_refuse_a_zero_budget():
    with pytest.raises(ConfigError, match="0 new tokens can only produce empty outputs"):
        GenerationSettings(max_new_tokens=0)
    assert GenerationSettings().to_dict()["decoding"] == "greedy"


def test_packaged_gsm8k_prompt_has_three_boxed_shots():
    prompt = FewShotPrompt.load("gsm8k_3shot")
    assert {"gsm8k_3shot", "gsm8k_3shot_direct"} <= set(packaged_prompts())
    for name in ("gsm8k_3shot", "gsm8k_3shot_direct"):
        prompt = FewShotPrompt.load(name)
        assert len(prompt.shots) == 3
        assert all(a.endswith(f"The final answer is \\boxed{{{n}}}.") for (_, a), n in zip(prompt.shots, (72, 10, 5)))
    with pytest.raises(ConfigError, match="no prompt file"):
        FewShotPrompt.load("nope")


def test_prompt_uses_chat_template_when_the_tokenizer_has_one(tokenizer, tmp_path):
    prompt = FewShotPrompt("t", (("1+1?", "\\boxed{2}"),), system="Be brief.")
    text = prompt.render(tokenizer, "2+2?")
    assert has_chat_template(tokenizer)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.render(tokenizer, "2+2?", chat=False).endswith("Question: 2+2?\nAnswer:")
    path = tmp_path / "p.json"
    path.write_text('{"name": "p", "shots": [{"question": "q", "answer": "a"}]}')
    assert FewShotPrompt.load(path).shots == (("q", "a"),)
    path.write_text('{"name": "p", "shots": [{"question": "q"}]}')
    with pytest.raises(ConfigError, match="malformed"):
        FewShotPrompt.load(path)


def test_generate_answers_records_prompt_and_template(tiny, tokenizer):
    run = generate_answers(tiny, tokenizer, ["1+1?", "2+2?"], GenerationSettings(max_new_tokens=4), ids=["a", "b"])
    assert [g.id for g in run.outputs] == ["a", "b"]
    assert run.extra["chat_template"] is True and run.extra["prompt"] == "gsm8k-3shot-boxed"


def test_choice_loglikelihood_matches_a_direct_computation(tiny, tokenizer):
    ctx, cont = "Question: how many apples", " are left"
    c = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    t = tokenizer(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(tiny(torch.tensor([c + t])).logits[0].double(), -1)
    direct = sum(float(logp[len(c) - 1 + i, tok]) for i, tok in enumerate(t))
    batched = choice_loglikelihoods(tiny, tokenizer, [(ctx, cont), ("apples", " 7"), (ctx, cont)], batch_size=2)
    assert batched[0] == pytest.approx(direct, rel=1e-5) and batched[2] == pytest.approx(direct, rel=1e-5)


def test_multiple_choice_records(tiny, tokenizer):
    qs = [MCQuestion("a", "how many apples?", ("3", "4", "7", "left"), 2),
          MCQuestion("b", "the final answer?", ("7", "boxed"), 0)]
    result = score_multiple_choice(tiny, tokenizer, qs)
    assert result.n == 2 and result.chance == pytest.approx((0.25 + 0.5) / 2)
    for rec, q in zip(result.records, qs):
        assert len(rec.scores) == len(q.choices) and rec.pred == max(range(len(rec.scores)), key=rec.scores.__getitem__)
        assert rec.correct == (rec.pred == q.answer_idx)
    assert result.to_metric()["records"][0]["id"] == "a"
    assert result.extra["path"] == "shared-context"
    batched = score_multiple_choice(tiny, tokenizer, qs, shared_context=False)
    assert batched.extra["path"] == "batched"
    for x, y in zip(result.records, batched.records):
        assert x.scores == pytest.approx(y.scores, rel=1e-4) and x.pred == y.pred
    # the GPU default: contexts of several questions in one left-padded batch, grouped by their number of choices
    more = [*qs, MCQuestion("c", "which is heavier, a kilogram of iron or of feathers?", ("iron", "feathers",
                                                                                            "neither", "both"), 2)]
    one_by_one = score_multiple_choice(tiny, tokenizer, more)
    together = score_multiple_choice(tiny, tokenizer, more, context_batch=4)
    assert together.extra["path"] == "shared-context-batched"
    for x, y in zip(one_by_one.records, together.records):
        assert x.scores == pytest.approx(y.scores, rel=1e-4) and x.pred == y.pred
    with pytest.raises(ConfigError):
        score_multiple_choice(tiny, tokenizer, qs, normalization="bytes")
    with pytest.raises(DataError):
        MCQuestion("c", "?", ("x",), 0)


def test_task_slices_from_shared_data():
    try:
        gsm = load_gsm8k(3)
        arc = load_arc_easy(5, offset=2)
    except DataError as exc:
        pytest.skip(f"shared data not available: {exc}")
    assert gsm.items[0].gold == "18" and gsm.items[0].id == "gsm8k-test-0"
    assert len(arc) == 5 and arc.offset == 2 and all(len(q.choices) == 4 for q in arc.items)
    assert arc.describe()["sha256"] == arc.sha256 and len(arc.sha256) == 64


def test_gold_after_hashes_and_malformed_rows(tmp_path):
    assert gold_after_hashes("2 + 2 = 4\n#### 1,234") == "1234"
    with pytest.raises(DataError, match="no '####'"):
        gold_after_hashes("no marker")
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 3"}\n{"question": "q2"}\n')
    with pytest.raises(DataError, match="g.jsonl:2: malformed GSM8K row"):
        load_gsm8k(path=bad)
    bad.write_text('{"id": "x", "prompt": "p", "choices": ["a", "b"], "answer_idx": 5}\n')
    with pytest.raises(DataError, match="answer_idx 5"):
        load_arc_easy(path=bad)


def test_memory_sized_batches_give_the_same_greedy_tokens_as_one_prompt_at_a_time(smollm2):
    """Issue 20: the batch is sized by free memory (all prompts at once where they fit); on the same device in fp32
    the greedy tokens are the ones one-prompt-at-a-time generation gives (the real model: ties are rare, not forced)."""
    try:
        problems = load_gsm8k(6)
    except DataError as exc:
        pytest.skip(f"GSM8K not available: {exc}")
    questions, ids = [p.question for p in problems.items], [p.id for p in problems.items]
    one = generate_answers(smollm2.model, smollm2.tokenizer, questions,
                           GenerationSettings(max_new_tokens=16, batch_size=1, prompt="gsm8k_3shot_direct"), ids=ids)
    many = generate_answers(smollm2.model, smollm2.tokenizer, questions,
                            GenerationSettings(max_new_tokens=16, batch_size=0, prompt="gsm8k_3shot_direct"), ids=ids)
    assert many.extra["batch_size"] == 6 and one.extra["batch_size"] == 1
    assert [g.text for g in many.outputs] == [g.text for g in one.outputs]
    assert [g.n_new_tokens for g in many.outputs] == [g.n_new_tokens for g in one.outputs]


def test_generation_decodes_without_cudnn_attention(tiny, tokenizer):
    """cuDNN's attention builds a plan per new sequence length (one per decoding step: a fresh 16-bit model's first
    generate call took 2.6 s against 1.3 s on an H100), so generation leaves it out; the setting is restored after."""
    seen: list[tuple[bool, bool]] = []
    hook = tiny.register_forward_pre_hook(lambda module, args: seen.append(
        (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled())))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        generate(tiny, tokenizer, PROMPTS[:2], GenerationSettings(max_new_tokens=3, batch_size=2))
    finally:
        hook.remove()
    assert len(seen) == 3 and set(seen) == {(False, True)}
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_untimed_gpu_steps_leave_cudnn_attention_out_and_timings_keep_torchs_choice():
    from types import SimpleNamespace

    from qcheck.engine import _arithmetic

    ctx = SimpleNamespace(gpu=True, options=SimpleNamespace(cpu_half_matmul="fast"))
    with _arithmetic(ctx, SimpleNamespace(timed=False), torch.nn.Linear(2, 2)):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with _arithmetic(ctx, SimpleNamespace(timed=True), torch.nn.Linear(2, 2)):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_the_report_says_which_attention_ran_on_a_gpu():
    from qcheck.engine import precision_facts
    from qcheck.options import RunOptions
    from qcheck.report.markdown import placement_lines

    gpu = precision_facts(RunOptions(), "fp32", torch.device("cuda"))
    cpu = precision_facts(RunOptions(), "fp32", torch.device("cpu"))
    assert "not cuDNN's" in gpu["attention"] and cpu["attention"] is None
    lines = placement_lines({"precision": gpu})
    assert any(line.startswith("attention on the GPU: ") for line in lines)
    assert not any("attention" in line for line in placement_lines({"precision": cpu}))


@pytest.mark.gpu
def test_memory_sized_batches_on_a_gpu_give_the_tokens_of_one_prompt_at_a_time(tokenizer):
    """Issue 20: on a GPU the batch is sized by free memory (all prompts at once here), and in fp32 on that device
    the greedy tokens are the ones one-prompt-at-a-time generation gives, left padding and the attention kernels
    qcheck picks included (random weights, 400-token vocabulary: fp32 near-ties of 1e-6 are rare, not forced)."""
    model = random_init_like(tiny_llama_config(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id), seed=3, device="cuda")
    prompts = [p * k for p in PROMPTS for k in (1, 3)]
    one = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=24, batch_size=1))
    many = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=24, batch_size=0))
    assert many.extra["batch_size"] == len(prompts) and one.extra["batch_size"] == 1
    assert many.texts == one.texts
    assert [g.n_new_tokens for g in many.outputs] == [g.n_new_tokens for g in one.outputs]


def test_new_tokens_sets_the_generation_budget_on_either_device():
    """--new-tokens replaces the device's default budget (256 on a GPU, 24 on a CPU); unset, the defaults hold."""
    from qcheck.measure.budget import CPU_NEW_TOKENS, GPU_NEW_TOKENS, Budget
    from qcheck.options import RunOptions

    assert Budget(False, 50, 8, 4096).new_tokens == CPU_NEW_TOKENS
    assert Budget(True, 50, 50, 4096).new_tokens == GPU_NEW_TOKENS
    assert Budget(False, 50, 8, 4096, 40).new_tokens == Budget(True, 50, 50, 4096, 40).new_tokens == 40
    assert RunOptions(new_tokens=700).new_tokens == 700
