"""Greedy generation (left padding, fixed budget, chat template), few-shot prompt files, log-likelihood multiple
choice and task slices, on a tiny random Llama with a small real byte-level BPE tokenizer (fast)."""
import json

import pytest
import torch

from qcheck.errors import ConfigError, DataError
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.inputs.tasks import MCQuestion, gold_after_hashes, load_arc_easy, load_gsm8k
from qcheck.measure.choice import choice_loglikelihoods, score_multiple_choice
from qcheck.measure.generation import (
    PLAIN_STOP,
    FewShotPrompt,
    GenerationSettings,
    boxed_records,
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
    return random_init_like(tiny_llama_config(eos_token_id=tokenizer.eos_token_id, max_position_embeddings=2048,
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


def test_a_budget_past_the_models_positions_is_refused_naming_what_fits(tokenizer):
    """A model of 32 positions: prompt plus budget past them would use positions the model never learned (rotary:
    extrapolated; learned tables: IndexError inside torch), so it is refused with the budget that fits, and that
    budget runs; a prompt longer than the model's positions is refused naming the prompt."""
    short = random_init_like(tiny_llama_config(eos_token_id=tokenizer.eos_token_id, max_position_embeddings=32,
                                               pad_token_id=tokenizer.pad_token_id), seed=1)
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS)
    fits = 32 - longest
    with pytest.raises(ConfigError, match=f"pass --new-tokens {fits} or less, or a shorter --prompt"):
        generate(short, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=fits + 1, batch_size=4))
    run = generate(short, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=fits, batch_size=4))
    assert max(g.n_prompt_tokens + g.n_new_tokens for g in run.outputs) <= 32
    with pytest.raises(ConfigError, match="; pass a shorter --prompt$"):
        generate(short, tokenizer, [" apples" * 40], GenerationSettings(max_new_tokens=1))


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


def test_a_plain_prompt_stops_at_the_next_question_and_a_file_adds_its_own(tmp_path):
    prompt = FewShotPrompt.load("gsm8k_3shot")
    assert prompt.stop_strings(chat=False) == PLAIN_STOP == ("Question:",)
    assert prompt.stop_strings(chat=True) == ()
    path = tmp_path / "p.json"
    path.write_text('{"name": "p", "shots": [{"question": "q", "answer": "a"}], "stop": ["###"]}')
    own = FewShotPrompt.load(path)
    assert own.stop_strings(chat=True) == ("###",) and own.stop_strings(chat=False) == ("###", "Question:")
    for bad in ("###", [""], [3], 3):
        path.write_text(json.dumps({"name": "p", "shots": [{"question": "q", "answer": "a"}], "stop": bad}))
        with pytest.raises(ConfigError, match="stop must be a list of non-empty strings"):
            FewShotPrompt.load(path)


def stop_strings_cut_as_the_uncut_text(model, tokenizer, caches):
    """Each row's text with a stop string equals its text without one, cut before the string's first occurrence,
    on every decoding path in `caches`, with the same token counts and stop reasons. The stop string is two tokens
    from the middle of the most varied row's continuation, so at least one row meets it after text of its own."""
    prompts = [p * k for p in PROMPTS for k in (1, 2)]
    uncut = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=40, batch_size=0))
    row = max(uncut.outputs, key=lambda g: len(set(tokenizer(g.text, add_special_tokens=False)["input_ids"])))
    ids = tokenizer(row.text, add_special_tokens=False)["input_ids"]
    stop = tokenizer.decode(ids[len(ids) // 3: len(ids) // 3 + 2])
    assert stop.strip() and any(t.find(stop) > 0 for t in uncut.texts), f"no row meets {stop!r} after its start"
    runs = [generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=40, batch_size=0, cache=cache),
                     stop_strings=(stop,)) for cache in caches]
    for run in runs:
        assert run.extra["stop_strings"] == [stop]
        assert [g.text for g in run.outputs] == [t[:t.find(stop)] if stop in t else t for t in uncut.texts]
        assert [g.stop for g in run.outputs] == ["stop_string" if stop in t else g.stop
                                                 for t, g in zip(uncut.texts, uncut.outputs)]
        assert [g.n_new_tokens for g in run.outputs] == [g.n_new_tokens for g in runs[0].outputs]
        assert any(g.stop == "stop_string" for g in run.outputs)
    return runs


def test_stop_strings_cut_each_row_as_its_uncut_text_on_generate_and_the_static_decoder(tiny, tokenizer):
    """generate (qcheck's stop criterion on the new text) and the static decoder (its periodic checks, eager on a
    CPU) stop the rows that meet a stop string, and both give each row's uncut text cut before the string."""
    stop_strings_cut_as_the_uncut_text(tiny, tokenizer, ("dynamic", "graph"))


def test_a_stop_string_begun_in_the_prompt_does_not_stop_the_row(tiny, tokenizer):
    """transformers' own stop-string criterion matches across the prompt's end: "Question: how many" stopped at its
    first new token " many" for the stop " many many", and the row was then recorded as run to the budget. Only the
    new text counts: the row stops when its own text holds the string (" many many", two tokens)."""
    settings = GenerationSettings(max_new_tokens=6, batch_size=1)
    assert generate(tiny, tokenizer, ["Question: how many"], settings).texts[0].startswith(" many many")
    run = generate(tiny, tokenizer, ["Question: how many"], settings, stop_strings=(" many many",))
    assert (run.texts[0], run.outputs[0].n_new_tokens, run.outputs[0].stop) == ("", 2, "stop_string")


@pytest.mark.gpu
def test_stop_strings_cut_each_row_as_its_uncut_text_in_the_cuda_graph_decoder(tokenizer):
    model = random_init_like(tiny_llama_config(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id), seed=1, device="cuda")
    runs = stop_strings_cut_as_the_uncut_text(model, tokenizer, ("dynamic", "graph"))
    assert any("CUDA graph" in m for m in runs[1].extra["decoding"])


def test_a_base_model_pattern_is_cut_at_the_next_question_so_its_own_answer_is_read(smollm2):
    """The real SmolLM2 on the plain 3-shot prompt (no chat template, as for a base model) answers GSM8K test
    question 300 with \\boxed{39}, then makes up the next "Question: ...": read to the budget, the last \\boxed{}
    was the made-up question's (10 in session 16's run of 256 tokens). Cut at the stop string, the answer is the
    model's own."""
    try:
        problems = load_gsm8k(1, offset=300)
    except DataError as exc:
        pytest.skip(f"GSM8K not available: {exc}")
    question, gold = problems.items[0].question, problems.items[0].gold
    settings = GenerationSettings(max_new_tokens=48, batch_size=1, chat_template=False)
    cut = generate_answers(smollm2.model, smollm2.tokenizer, [question], settings)
    record = boxed_records(cut, [gold])["records"][0]
    assert cut.extra["stop_strings"] == ["Question:"]
    assert record["stop"] == "stop_string" and record["answer"] == "39" and "Question:" not in record["output"]
    assert record["new_tokens"] < 48
    text = FewShotPrompt.load("gsm8k_3shot").render(smollm2.tokenizer, question, chat=False)
    uncut = generate(smollm2.model, smollm2.tokenizer, [text], settings)
    assert uncut.outputs[0].stop == "budget" and "\nQuestion:" in uncut.texts[0]
    assert uncut.texts[0].startswith(cut.texts[0])


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


def test_choice_loglikelihood_runs_the_head_only_on_the_continuations(tiny, tokenizer, monkeypatch):
    """Scale: a batch's full-vocabulary logits at every position never exist (3.5 GB at 70B for 64 rows of 215
    tokens): the head sees the continuations' positions only, and a model whose logits are not head(decoder(x))
    reads the logits of the batch's last positions, with the same sums."""
    pairs = [("Question: how many apples are left in the basket", " three"), ("apples", " 7 of them"),
             ("Question: which is heavier", " iron")]
    conts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for _, t in pairs]
    widths = []
    hook = tiny.get_output_embeddings().register_forward_hook(lambda m, a, o: widths.append(tuple(a[0].shape)))
    try:
        split = choice_loglikelihoods(tiny, tokenizer, pairs, batch_size=2)
    finally:
        hook.remove()
    scored = [w for w in widths if len(w) == 2]  # the probe's forwards pass [1, tokens, hidden]
    assert sum(w[0] for w in scored) == sum(conts) and len(scored) == 2
    from qcheck.measure import head

    monkeypatch.setattr(head, "split_head", lambda *a, **k: None)
    own = choice_loglikelihoods(tiny, tokenizer, pairs, batch_size=2)
    assert own == pytest.approx(split, rel=1e-5)
    for (ctx, cont), value in zip(pairs, own):
        ids = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
        c = len(tokenizer(ctx, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(tiny(torch.tensor([ids])).logits[0].double(), -1)
        assert value == pytest.approx(sum(float(logp[i - 1, ids[i]]) for i in range(c, len(ids))), rel=1e-5)


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


def test_prompt_and_chat_template_reach_the_generation_step(tiny_folder, tmp_path):
    """--prompt replaces the device's default prompt and --chat-template off renders it as plain text, which ends at
    the next "Question:"; the generation records say both."""
    from qcheck.engine import measure_run, open_run
    from qcheck.measure.budget import CPU_PROMPT, Budget
    from qcheck.options import RunOptions

    assert Budget(False, 50, 8, 4096).prompt == CPU_PROMPT
    assert Budget(False, 50, 8, 4096, None, "gsm8k_3shot").prompt == "gsm8k_3shot"
    # a stored run is judged again where its prompt file may be gone: the file is checked where a run is opened
    assert RunOptions(prompt=str(tmp_path / "gone.json")).prompt.endswith("gone.json")
    options = RunOptions(model=str(tiny_folder), device="cpu", variants=("int8",), samples=4, prompts=2,
                         new_tokens=6, prompt="gsm8k_3shot", chat_template="off", report_dir=str(tmp_path))
    store = measure_run(open_run(options), {"fp32": {"generation"}})
    run = store.find("fp32", "generation").data["run"]
    assert run["settings"]["prompt"] == "gsm8k_3shot" and run["settings"]["chat_template"] is False
    assert run["extra"]["chat_template"] is False and run["extra"]["stop_strings"] == ["Question:"]

