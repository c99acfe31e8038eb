"""The static-cache greedy decoder (`qcheck.measure.decode`): the same tokens as transformers' generate, the
fallback to generate where a model cannot take the path (with the reason recorded), and on a GPU the CUDA graph."""
from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.measure.decode import Unsupported, decode_greedy
from qcheck.measure.generation import FewShotPrompt, GenerationSettings, generate

QUESTIONS = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
             "A train goes 60 km in one hour. How far does it go in 3 hours?", "What is 12 times 7?"]


def left_padded(tokenizer, texts: list[str], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, width - len(e):] = torch.tensor(e)
        mask[row, width - len(e):] = 1
    return ids.to(device), mask.to(device)


def rendered_questions(tokenizer) -> list[str]:
    """QUESTIONS in the packaged direct GSM8K prompt, as the generation checks render them."""
    prompt = FewShotPrompt.load("gsm8k_3shot_direct")
    return [prompt.render(tokenizer, q) for q in QUESTIONS]


def generated(model, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, eos: int, pad: int) -> torch.Tensor:
    """transformers' greedy `generate` on the batch: the new tokens only."""
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=[eos])
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1]:]


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


def test_static_decoder_gives_generates_tokens_on_the_embedded_model(smollm2):
    """SmolLM2-135M-Instruct answering real GSM8K-style questions with the packaged direct prompt: the rows stop at
    their own end-of-turn after different numbers of tokens, so the masks of rows that stopped and of left padding
    are both exercised; every row's tokens up to its end equal generate's."""
    model, tok = smollm2.model, smollm2.tokenizer
    ids, mask = left_padded(tok, rendered_questions(tok))
    eos = tok.eos_token_id
    expected = generated(model, ids, mask, 40, eos, tok.pad_token_id)
    got = decode_greedy(model, ids, mask, 40, [eos], tok.pad_token_id)
    assert got.method == "static cache, eager steps"
    lengths = set()
    for want, have in zip(expected.tolist(), got.tokens.tolist()):
        assert until_eos(have, eos) == until_eos(want, eos)
        assert eos in have
        lengths.add(len(until_eos(have, eos)))
    assert len(lengths) > 1, "the rows should stop at different steps"


def test_generate_records_the_decoding_and_falls_back_with_the_reason(smollm2):
    tok = smollm2.tokenizer
    config = tiny_llama_config(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = random_init_like(config, seed=1)
    prompts = ["Question: what is 2+2?\nAnswer:", "Hello", "x " * 20]
    dynamic = generate(model, tok, prompts, GenerationSettings(max_new_tokens=16, batch_size=0))
    graph = generate(model, tok, prompts, GenerationSettings(max_new_tokens=16, batch_size=0, cache="graph"))
    assert dynamic.extra["decoding"] == ["generate, dynamic cache"]
    assert graph.extra["decoding"] == ["static cache, eager steps"]
    assert graph.texts == dynamic.texts
    model.config._attn_implementation = "eager"
    refused = generate(model, tok, prompts, GenerationSettings(max_new_tokens=16, batch_size=0, cache="graph"))
    (method,) = refused.extra["decoding"]
    assert method.startswith("generate, dynamic cache (the static path refused: attention implementation 'eager'")
    assert refused.texts == dynamic.texts


def test_a_sliding_window_shorter_than_the_run_is_refused():
    model = random_init_like(tiny_llama_config(), seed=0)
    model.config.sliding_window = 8
    ids = torch.ones(1, 6, dtype=torch.long)
    with pytest.raises(Unsupported, match="sliding window"):
        decode_greedy(model, ids, torch.ones_like(ids), 4, [1], 0)


@pytest.mark.parametrize("table, waits", [({"format": "bnb-int8"}, True),
                                           ({"format": "bnb-int8", "threshold": 0.0}, False),
                                           ({"format": "bnb-nf4"}, False)])
def test_llm_int8_with_an_outlier_threshold_is_refused_a_graph_and_decodes_in_eager_steps(table, waits):
    """bitsandbytes' LLM.int8 asks `if outliers.any():` from the host in every int8 matmul, which no CUDA graph can
    capture (on an H100 the failed attempt cost a prefill and a capture before generate ran: RESULTS.md session 11), so
    a graph is refused up front for a model with such a layer; without outlier splitting (threshold 0) and in nf4 it
    is not. Either way the static cache's eager steps take the model, and give generate's tokens here (one batch, the
    prompt in one prefill chunk, so LLM.int8 sees the same rows as in generate)."""
    from qcheck.measure.decode import host_waits, refusal
    from qcheck.quant.apply import quantize

    pytest.importorskip("bitsandbytes")
    model = random_init_like(tiny_llama_config(), seed=0)
    quantized, _ = quantize(model, {"default": table})
    ids = torch.randint(1, 512, (2, 6), generator=torch.Generator().manual_seed(0))
    assert bool(host_waits(quantized)) == waits
    if waits:
        with pytest.raises(Unsupported, match=r"LLM.int8 with outlier threshold 6.0"):
            decode_greedy(quantized, ids, torch.ones_like(ids), 4, [1], 0, graph=True)
    assert refusal(quantized, 10) is None
    got = decode_greedy(quantized, ids, torch.ones_like(ids), 4, [1], 0)
    assert got.tokens.shape == (2, 4) and got.method == "static cache, eager steps"
    assert got.tokens.tolist() == generated(quantized, ids, torch.ones_like(ids), 4, 1, 0).tolist()


@pytest.mark.parametrize(("implementation", "dtype", "waits"), [
    ("grouped_mm", torch.bfloat16, None), ("grouped_mm", torch.float32, "grouped_mm"), ("eager", torch.float32, "eager"),
    ("batched_mm", torch.float32, None)])
def test_a_moe_model_decodes_generates_tokens_and_experts_no_graph_captures_are_refused_one(implementation, dtype,
                                                                                            waits):
    """What an H100 showed (session 26): transformers' eager experts forward loops on the host over the experts its
    tokens reached, and torch's grouped_mm copies from the host outside bf16 (the capture failed: "Cannot copy between
    CPU and CUDA tensors during CUDA graph capture"), so a graph is refused up front for either; grouped_mm in bf16 and
    batched_mm captured. The static cache's steps give generate's tokens in each case, with a w4g64 variant's fp32
    experts too (in a bf16 model they refuse grouped_mm's graph)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from qcheck.measure.decode import host_waits
    from qcheck.quant.apply import quantize

    config = AutoConfig.for_model("mixtral", vocab_size=512, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  num_local_experts=4, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, experts_implementation=implementation).to(dtype).eval()
    assert model.config._experts_implementation == implementation
    ids = torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(0))
    variant = quantize(model, {"default": {"format": "int", "bits": 4, "group_size": 64}})[0]
    for subject, expected in ((model, waits), (variant, "grouped_mm" if implementation == "grouped_mm" else waits)):
        reason = host_waits(subject)
        assert (reason is None) == (expected is None) and (expected is None or expected in reason)
        if reason:
            with pytest.raises(Unsupported, match="mixture-of-experts"):
                decode_greedy(subject, ids, torch.ones_like(ids), 4, [2], 0, graph=True)
        got = decode_greedy(subject, ids, torch.ones_like(ids), 4, [2], 0)
        assert got.tokens.tolist() == generated(subject, ids, torch.ones_like(ids), 4, 2, 0).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("chunked", [False, True])
def test_cuda_graph_decoding_gives_generates_tokens_in_fp32(chunked, monkeypatch):
    """Issue 20: one CUDA graph per decoding step, and in fp32 on the GPU the greedy tokens are generate's: random
    weights (4 layers, SmolLM2's vocabulary size), 12 left-padded prompts of 5-60 random tokens, 48 new tokens. The
    end token is the one the model emits most often, so rows stop at different steps and padding after a row's end
    is exercised too. Also with the prompts prefilled in chunks of 8 positions."""
    config = tiny_llama_config(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                               max_position_embeddings=512)
    model = random_init_like(config, seed=2, device="cuda")
    g = torch.Generator().manual_seed(0)
    lengths = [5 + 5 * i for i in range(12)]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, -n:] = torch.randint(1, 49152, (n,), generator=g)
        mask[row, -n:] = 1
    ids, mask = ids.cuda(), mask.cuda()

    def expected(eos: int) -> torch.Tensor:
        config = GenerationConfig(max_new_tokens=48, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=[eos])
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1]:]

    free = expected(49151)
    eos = int(torch.mode(free[:, :24].flatten()).values)
    want = expected(eos)
    if chunked:  # the prompts prefilled 8 positions at a time
        from qcheck.measure import decode

        monkeypatch.setattr(decode, "PREFILL_BYTES", len(lengths) * decode.token_bytes(config, ids.shape[1] + 48) * 8)
    got = decode_greedy(model, ids, mask, 48, [eos], 0)
    assert got.method == "static cache, one CUDA graph per step"
    assert got.prefill_chunk == (8 if chunked else ids.shape[1])
    stops = set()
    for w, h in zip(want.tolist(), got.tokens.tolist()):
        assert until_eos(h, eos) == until_eos(w, eos)
        stops.add(len(until_eos(h, eos)))
    assert len(stops) > 1


@pytest.mark.parametrize("decoding, gpu, cache", [("auto", True, "graph"), ("auto", False, "dynamic"),
                                                   ("graph", False, "graph"), ("generate", True, "dynamic")])
def test_auto_decoding_is_the_graph_on_a_gpu_and_generate_elsewhere(decoding, gpu, cache):
    from qcheck.measure.generation import decoding_cache
    from qcheck.options import RunOptions

    assert RunOptions().decoding == "auto"
    assert decoding_cache(decoding, gpu=gpu) == cache


def test_decoding_option_reaches_the_generation_record(pytester, tmp_path, tiny_folder):
    """`--qcheck-decoding graph` runs the generation checks on the static decoder (eager steps on a CPU) and the
    record says so; a bad value is a usage error naming the flag."""
    import json

    from qcheck.errors import ConfigError
    from qcheck.options import RunOptions

    with pytest.raises(ConfigError) as info:
        RunOptions(decoding="beam")
    assert info.value.field == "--decoding"
    out = tmp_path / "graph"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", f"--qcheck-model={tiny_folder}",
        "--qcheck-variants=w4g64", "--qcheck-device=cpu", "--qcheck-prompts=2", "--qcheck-decoding=graph",
        "--qcheck-new-tokens=7", f"--qcheck-report={out}", "-k", "boxed_format", "-rs")
    assert result.ret in (0, 1), result.stdout.str()[-3000:]
    records = json.loads((out / "qcheck-report.json").read_text())["records"]["records"]
    generations = [r for r in records if r["measurement"] == "generation" and r["status"] == "ok"]
    assert {r["variant"] for r in generations} == {"fp32", "w4g64"}
    for record in generations:
        assert record["data"]["run"]["settings"]["cache"] == "graph"
        assert record["data"]["run"]["settings"]["max_new_tokens"] == 7
        assert max(o["n_new_tokens"] for o in record["data"]["run"]["outputs"]) <= 7
        method = "static cache, eager steps, the 231-token shared prefix prefilled once and kept once"  # the 3-shot examples
        assert record["data"]["run"]["extra"]["decoding"] == [method]
    assert f"- generation decoding: {method} (fp32, w4g64)" in (out / "qcheck-report.md").read_text()
    assert "generation decoding" in (out / "qcheck-report.html").read_text()


def test_the_cache_is_passed_and_read_by_the_name_the_installed_transformers_uses():
    """transformers 5.2x renamed `past_key_values` to `cache` (the old name goes in 5.40): the forward's signature
    decides the keyword, and an empty cache (falsy: it has a length) is still found in an output."""
    from types import SimpleNamespace

    from transformers import DynamicCache

    from qcheck.measure.kv_cache import cache_argument, cache_of

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None):
            return input_ids

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    empty = DynamicCache()
    assert cache_argument(New(), empty) == {"cache": empty}
    assert cache_argument(Old(), empty) == {"past_key_values": empty}
    assert cache_of(SimpleNamespace(cache=empty)) is empty
    assert cache_of(SimpleNamespace(past_key_values=empty)) is empty
    assert cache_of(SimpleNamespace(logits=None)) is None


def test_a_generation_config_with_logits_processors_is_left_to_generate(smollm2):
    """generate fills unset fields from the model's own generation config: a checkpoint shipping, say, a ban on
    repeated tokens changes greedy picks there, so the static path refuses it and generate's tokens are kept."""
    tok = smollm2.tokenizer
    config = tiny_llama_config(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = random_init_like(config, seed=1)
    model.generation_config.no_repeat_ngram_size = 1
    prompts = ["Question: what is 2+2?\nAnswer:", "Hello"]
    plain = generate(model, tok, prompts, GenerationSettings(max_new_tokens=16, batch_size=0))
    graph = generate(model, tok, prompts, GenerationSettings(max_new_tokens=16, batch_size=0, cache="graph"))
    (method,) = graph.extra["decoding"]
    assert "no_repeat_ngram_size=1" in method and method.startswith("generate, dynamic cache")
    assert graph.texts == plain.texts
    model.generation_config.no_repeat_ngram_size = 0
    unpenalized = generate(model, tok, prompts, GenerationSettings(max_new_tokens=16, batch_size=0, cache="graph"))
    assert unpenalized.extra["decoding"] == ["static cache, eager steps"]
    assert unpenalized.texts != plain.texts, "the ban should change a random model's greedy tokens"


@pytest.mark.parametrize("queries, additive", [(1, False), (13, False), (13, True)])
def test_grouped_query_decoding_attends_like_sdpa_with_copied_heads(queries, additive):
    """Queries of a grouped-query layer (9 query heads over 3 key/value heads, SmolLM2-135M's layout): one token, or
    13 under a mask shared by the heads (a prefill chunk, the choice rows of scoring and attacks), left padding and a
    causal part masked, boolean or additive: attending to the key/value heads as they are gives what sdpa gives on
    heads copied per query head (transformers' repeat_kv), to fp32 rounding. Without a mask a multi-token query is
    left to transformers."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import repeat_kv

    from qcheck.measure.attention import sdpa_gqa_decoding

    gen = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, length, dim = 4, 9, 3, 37, 64
    query = torch.randn(rows, heads, queries, dim, generator=gen)
    key = torch.randn(rows, kv_heads, length, dim, generator=gen)
    value = torch.randn(rows, kv_heads, length, dim, generator=gen)
    mask = torch.ones(rows, 1, queries, length, dtype=torch.bool)
    mask[1, ..., :5] = False
    mask[3, ..., :20] = False
    mask[..., length - queries:] &= torch.ones(queries, queries, dtype=torch.bool).tril()
    if additive:
        mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    got, _ = sdpa_gqa_decoding(module, query, key, value, mask, scaling=dim ** -0.5)
    want = torch.nn.functional.scaled_dot_product_attention(query, repeat_kv(key, 3), repeat_kv(value, 3),
                                                            attn_mask=mask, scale=dim ** -0.5).transpose(1, 2)
    assert got.shape == (rows, queries, heads, dim)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    first = torch.randn(rows, heads, 5, dim, generator=gen)
    prefill, _ = sdpa_gqa_decoding(module, first, key[:, :, :5], value[:, :, :5], None, scaling=dim ** -0.5)
    causal = torch.nn.functional.scaled_dot_product_attention(first, repeat_kv(key[:, :, :5], 3),
                                                              repeat_kv(value[:, :, :5], 3), is_causal=True,
                                                              scale=dim ** -0.5).transpose(1, 2)
    torch.testing.assert_close(prefill, causal, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("queries, dtype, additive", [(1, torch.float32, False), (1, torch.float32, True),
                                                      (5, torch.float32, False), (1, torch.bfloat16, False),
                                                      (5, torch.bfloat16, True)])
def test_attention_over_one_copy_of_a_shared_prefix_is_attention_over_it_copied_per_row(queries, dtype, additive):
    """The rows' own keys (left padding masked, a causal block for a prefill chunk) after a prefix kept once: the
    result is sdpa's over the prefix copied into every row's cache and heads copied per query head, to the dtype's
    rounding. One fp32 query token is the matrix-product path of the decoding steps; the rest concatenate."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from qcheck.measure.attention import attend_with_prefix

    gen = torch.Generator().manual_seed(1)
    rows, heads, kv_heads, shared, own, dim = 4, 9, 3, 23, 17, 64
    query, key, value = (torch.randn(rows, h, n, dim, generator=gen).to(dtype)
                         for h, n in ((heads, queries), (kv_heads, own), (kv_heads, own)))
    prefix_key, prefix_value = (torch.randn(1, kv_heads, shared, dim, generator=gen).to(dtype) for _ in range(2))
    mask = torch.ones(rows, 1, queries, own, dtype=torch.bool)
    mask[1, ..., :5] = False
    mask[3, ..., :9] = False
    if queries > 1:
        mask[..., own - queries:] &= torch.ones(queries, queries, dtype=torch.bool).tril()
    given = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min) if additive else mask
    got = attend_with_prefix(query, key, value, given, prefix_key, prefix_value, dim ** -0.5)
    full = torch.cat([torch.ones(rows, 1, queries, shared, dtype=torch.bool), mask], -1)
    keys = repeat_kv(torch.cat([prefix_key.expand(rows, -1, -1, -1), key], 2), 3)
    values = repeat_kv(torch.cat([prefix_value.expand(rows, -1, -1, -1), value], 2), 3)
    want = torch.nn.functional.scaled_dot_product_attention(query.float(), keys.float(), values.float(),
                                                            attn_mask=full, scale=dim ** -0.5).transpose(1, 2)
    assert got.shape == (rows, queries, heads, dim) and got.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_fp32_cache_holds_the_shared_prefix_once_and_a_16_bit_one_in_every_row(dtype):
    """Issue 20's memory: with a shared prefix, each row of an fp32 static cache is as long as the row's own positions
    and the new tokens, and the prefix's keys and values are held once (one row per layer), not once per row. A
    16-bit cache holds the prefix in every row (`keeps_prefix_once`), and nothing is attended to apart."""
    from qcheck.measure import attention
    from qcheck.measure.attention import gqa_decoding
    from qcheck.measure.decode import _Decoder, _layer_states
    from qcheck.measure.generation import batch_layout

    model = random_init_like(tiny_llama_config(), seed=0, dtype=dtype)
    rows = [list(range(1, 41)) + [50 + i] * (2 + i) for i in range(4)]
    ids, mask = batch_layout(rows, 0, 40)
    with torch.no_grad(), gqa_decoding(model) as prefixes:
        dec = _Decoder(model, ids, mask, 6, [0], 0, 40, prefixes)
        layers = _layer_states(dec.cache)
        once = dtype == torch.float32
        assert dec.kept_once == once and {k.dtype for k, _ in layers} == {dtype}
        assert len(prefixes) == (len(layers) if once else 0) and len(layers) == model.config.num_hidden_layers
        assert {tuple(k.shape[:3]) for k, _ in prefixes.values()} == ({(1, 2, 40)} if once else set())
        assert {tuple(k.shape[:3]) for k, _ in layers} == {(4, 2, ids.shape[1] - (40 if once else 0) + 6)}
    assert attention._SHARED_PREFIX.get() is None, "the prefix is attended to only inside the decoding block"


def test_host_bound_steps_copy_the_prefix_into_every_row_even_in_fp32():
    """Eager steps on a GPU (a model whose forward waits for the GPU, LLM.int8) are host-bound, and attending to a
    prefix kept apart costs ~40 more operators per layer each step: there the fp32 cache holds the prefix in every
    row, as a 16-bit one does, and nothing is attended to apart."""
    from qcheck.measure.attention import gqa_decoding
    from qcheck.measure.decode import _Decoder, _layer_states, keeps_prefix_once
    from qcheck.measure.generation import batch_layout

    assert keeps_prefix_once(torch.float32) and not keeps_prefix_once(torch.float32, host_bound=True)
    assert not keeps_prefix_once(torch.bfloat16)
    model = random_init_like(tiny_llama_config(), seed=0)
    rows = [list(range(1, 41)) + [50 + i] * (2 + i) for i in range(4)]
    ids, mask = batch_layout(rows, 0, 40)
    with torch.no_grad(), gqa_decoding(model) as prefixes:
        dec = _Decoder(model, ids, mask, 6, [0], 0, 40, prefixes, host_bound=True)
        assert not dec.kept_once and not prefixes
        assert {tuple(k.shape[:3]) for k, _ in _layer_states(dec.cache)} == {(4, 2, ids.shape[1] + 6)}


def test_grouped_query_decoding_restores_the_models_attention_also_on_error():
    from qcheck.measure.attention import GQA_DECODING, gqa_decoding

    model = random_init_like(tiny_llama_config(), seed=0)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"), gqa_decoding(model):
        assert model.config._attn_implementation == GQA_DECODING
        model(input_ids=torch.ones(1, 3, dtype=torch.long))
        raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with gqa_decoding(model):
        assert model.config._attn_implementation == "eager"


def test_a_prefill_in_chunks_of_positions_gives_generates_tokens(smollm2, monkeypatch):
    """The prompt prefilled a few positions at a time (PREFILL_BYTES shrunk so a chunk is 7 positions of the
    three rows) writes the cache one pass would: the real model's tokens up to each row's end are generate's."""
    from qcheck.measure import decode

    model, tok = smollm2.model, smollm2.tokenizer
    ids, mask = left_padded(tok, rendered_questions(tok))
    eos = tok.eos_token_id
    expected = generated(model, ids, mask, 40, eos, tok.pad_token_id)
    per_row = decode.token_bytes(model.config, ids.shape[1] + 40)
    monkeypatch.setattr(decode, "PREFILL_BYTES", 3 * per_row * 7)
    got = decode_greedy(model, ids, mask, 40, [eos], tok.pad_token_id)
    assert got.prefill_chunk == 7 and ids.shape[1] > 7 * 10, (got.prefill_chunk, ids.shape)
    for want, have in zip(expected.tolist(), got.tokens.tolist()):
        assert until_eos(have, eos) == until_eos(want, eos)


def test_a_graph_path_failing_late_falls_back_to_generate_in_slices_that_fit_it(smollm2, monkeypatch):
    """A batch sized for the static decoder (its prefill chunked) may be too large for generate's one-pass prefill:
    when the static path fails after the batch was planned, generate runs it in slices of its own size, and the
    texts are those of one generate call."""
    from qcheck.measure import decode, generation

    tok = smollm2.tokenizer
    config = tiny_llama_config(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = random_init_like(config, seed=1)
    prompts = ["Question: what is 2+2?\nAnswer:", "Hello", "x " * 20, "The capital of France is"]
    plain = generate(model, tok, prompts, GenerationSettings(max_new_tokens=12, batch_size=4))

    def late_failure(*args, **kwargs):
        raise decode.Unsupported("RuntimeError: a capture failure nobody predicted")

    sizes = []

    def planned(model, lengths, new_tokens, *, static=False, shared=0):
        sizes.append(static)
        return 4 if static else 1

    monkeypatch.setattr(decode, "decode_greedy", late_failure)
    monkeypatch.setattr(generation, "memory_batch_size", planned)
    monkeypatch.setattr(generation, "_static_path", lambda *a: True)
    run = generate(model, tok, prompts, GenerationSettings(max_new_tokens=12, batch_size=0, cache="graph"))
    assert sizes == [True, False] and run.extra["batch_size"] == 4
    (method,) = run.extra["decoding"]
    assert "a capture failure nobody predicted" in method
    assert run.texts == plain.texts


@pytest.mark.parametrize("kept_once", [True, False])
def test_the_few_shot_prefix_is_prefilled_once_and_the_tokens_are_generates(smollm2, monkeypatch, kept_once):
    """Rendered GSM8K prompts share their few-shot examples: laid out with the shared prefix first and each row's
    padding after it, the prefix is prefilled once (one row) and kept once, outside the rows' cache (an fp32 cache),
    or copied into every row (a 16-bit cache's way, forced here on the fp32 model). Each row's tokens up to its end
    equal generate's on the usual left-padded batch; the prefix's one-row pass is asserted."""
    from qcheck.measure import decode
    from qcheck.measure.generation import batch_layout, shared_prefix

    model, tok = smollm2.model, smollm2.tokenizer
    rows = [tok(text, add_special_tokens=False)["input_ids"] for text in rendered_questions(tok)]
    prefix = shared_prefix(rows)
    assert prefix > 100, prefix
    eos = tok.eos_token_id
    ids, mask = batch_layout(rows, tok.pad_token_id)
    expected = generated(model, ids, mask, 40, eos, tok.pad_token_id)
    shared_ids, shared_mask = batch_layout(rows, tok.pad_token_id, prefix)
    assert bool(shared_mask[:, :prefix].all()) and int(shared_mask.sum()) == int(mask.sum())
    calls = []
    original = decode._Decoder._prefill_shared
    monkeypatch.setattr(decode, "keeps_prefix_once", lambda dtype, **_: kept_once)
    monkeypatch.setattr(decode._Decoder, "_prefill_shared", lambda self, t: (calls.append(tuple(t.shape)),
                                                                             original(self, t))[1])
    got = decode_greedy(model, shared_ids, shared_mask, 40, [eos], tok.pad_token_id, prefix=prefix)
    assert calls == [(1, prefix)]
    way = "kept once" if kept_once else "copied into every row"
    assert got.method == f"static cache, eager steps, the {prefix}-token shared prefix prefilled once and {way}"
    for want, have in zip(expected.tolist(), got.tokens.tolist()):
        assert until_eos(have, eos) == until_eos(want, eos)


def test_shared_prefix_and_layout_rules():
    from qcheck.measure.generation import SHARED_PREFIX_MIN, batch_layout, shared_prefix

    head = list(range(1, SHARED_PREFIX_MIN + 1))
    assert shared_prefix([head + [7, 8], head + [9]]) == SHARED_PREFIX_MIN
    assert shared_prefix([head[:-1] + [7], head[:-1] + [8]]) == 0  # too short to be worth a pass of its own
    assert shared_prefix([head + [5], head + [5]]) == SHARED_PREFIX_MIN  # every row keeps one token of its own
    assert shared_prefix([head + [5]]) == 0
    ids, mask = batch_layout([[1, 2, 3, 4], [1, 2, 5]], pad=0, prefix=2)
    assert ids.tolist() == [[1, 2, 3, 4], [1, 2, 0, 5]] and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 1]]
    ids, mask = batch_layout([[1, 2, 3, 4], [1, 2, 5]], pad=0)
    assert ids.tolist() == [[1, 2, 3, 4], [0, 1, 2, 5]] and mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    with pytest.raises(ValueError, match="same 2 real tokens"):
        decode_greedy(None, ids, mask, 4, [0], 0, prefix=2)


@pytest.mark.gpu
def test_cuda_graph_decoding_with_a_shared_prefix_gives_generates_tokens_in_fp32():
    """On the GPU, 12 rows that share 40 random leading tokens, then 5-60 of their own: the prefix prefilled once,
    the steps replayed as a CUDA graph, and the tokens up to each row's end are generate's on left-padded rows."""
    from qcheck.measure.generation import batch_layout, shared_prefix

    config = tiny_llama_config(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                               max_position_embeddings=512)
    model = random_init_like(config, seed=3, device="cuda")
    g = torch.Generator().manual_seed(1)
    head = torch.randint(1, 49152, (40,), generator=g).tolist()
    rows = [head + torch.randint(1, 49152, (5 + 5 * i,), generator=g).tolist() for i in range(12)]
    assert shared_prefix(rows) == 40
    ids, mask = (t.cuda() for t in batch_layout(rows, 0))
    config = GenerationConfig(max_new_tokens=48, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=[49151])
    free = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1]:]
    eos = int(torch.mode(free[:, :24].flatten()).values)
    config.eos_token_id = [eos]
    want = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1]:]
    shared_ids, shared_mask = (t.cuda() for t in batch_layout(rows, 0, 40))
    got = decode_greedy(model, shared_ids, shared_mask, 48, [eos], 0, prefix=40)
    assert got.method == "static cache, one CUDA graph per step, the 40-token shared prefix prefilled once and kept once"
    stops = set()
    for w, h in zip(want.tolist(), got.tokens.tolist()):
        assert until_eos(h, eos) == until_eos(w, eos)
        stops.add(len(until_eos(h, eos)))
    assert len(stops) > 1


@pytest.mark.gpu
def test_llm_int8_decodes_on_the_gpu_in_eager_steps_on_the_static_cache():
    """On the GPU an LLM.int8 model (random weights, 4 layers, outlier threshold 6) takes the static cache's eager
    steps, not a CUDA graph, and not generate: 12 rows sharing a 40-token prefix (copied into every row: host-bound
    steps, `keeps_prefix_once`), 32 new tokens, the method naming why no graph; two calls give the same tokens."""
    pytest.importorskip("bitsandbytes")
    from qcheck.measure.generation import batch_layout
    from qcheck.quant.apply import quantize

    config = tiny_llama_config(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                               max_position_embeddings=512)
    model, _ = quantize(random_init_like(config, seed=5, device="cuda"), {"default": {"format": "bnb-int8"}})
    g = torch.Generator().manual_seed(3)
    head = torch.randint(1, 49152, (40,), generator=g).tolist()
    rows = [head + torch.randint(1, 49152, (5 + 5 * i,), generator=g).tolist() for i in range(12)]
    ids, mask = (t.cuda() for t in batch_layout(rows, 0, 40))
    got = decode_greedy(model, ids, mask, 32, [49151], 0, prefix=40)
    assert got.method.startswith("static cache, eager steps, the 40-token shared prefix prefilled once and copied into "
                                 "every row (not a CUDA graph: bitsandbytes LLM.int8 with outlier threshold 6.0")
    assert got.tokens.shape == (12, 32)
    assert decode_greedy(model, ids, mask, 32, [49151], 0, prefix=40).tokens.tolist() == got.tokens.tolist()


@pytest.mark.gpu
def test_repeated_graph_decoding_leaves_no_memory_behind():
    """Every variant's generation captures a CUDA graph after warm-up steps on a side stream. cuBLAS keeps a workspace
    (32 MiB on an H100) for every stream it has run on, so a new stream per capture left that much behind each time
    (a 1.2B run's step peaks rose by 32.0 MiB per variant). With one side stream for the process, three more decodes
    after the first leave the allocated memory where the first left it, and the side stream is that one stream."""
    import gc

    from qcheck.measure.side_stream import side_stream

    config = tiny_llama_config(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                               max_position_embeddings=512)
    model = random_init_like(config, seed=2, device="cuda")
    ids = torch.randint(1, 49152, (6, 20), generator=torch.Generator().manual_seed(0)).cuda()
    mask = torch.ones_like(ids)

    def settled() -> int:
        gc.collect()
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    assert decode_greedy(model, ids, mask, 16, [49151], 0).method == "static cache, one CUDA graph per step"
    before = settled()
    for _ in range(3):
        decode_greedy(model, ids, mask, 16, [49151], 0)
    assert settled() - before < 2**20
    assert side_stream() is side_stream("cuda:0") is side_stream(0)
