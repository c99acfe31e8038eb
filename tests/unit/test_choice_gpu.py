"""ARC scoring on CUDA (run on the device machine): the GPU default, several questions' contexts in one left-padded
batch with their choices on the repeated KV cache, against the (context, choice) pairs path on real ARC-Easy
questions: the same predictions, log-likelihoods within 1e-4. The weights are random (they do not decide whether two
paths agree); the tokenizer is SmolLM2's, from the embedded package or the copy benchmarks/device_prepare.sh makes
for the device machine, which lacks the package."""
from pathlib import Path

import pytest
import torch

from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.measure.choice import score_multiple_choice

pytestmark = pytest.mark.gpu
DEVICE_COPY = Path(__file__).resolve().parents[2] / ".device" / "smollm2-tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's tokenizer alone: the embedded package's, else the device machine's copy."""
    from transformers import AutoTokenizer

    from qcheck.errors import QCheckError
    from qcheck.inputs.models import load_tokenizer

    try:
        return load_tokenizer()
    except QCheckError as exc:
        if DEVICE_COPY.is_dir():
            return AutoTokenizer.from_pretrained(DEVICE_COPY, local_files_only=True)
        pytest.skip(f"no SmolLM2 tokenizer: {exc} (or run benchmarks/device_prepare.sh for {DEVICE_COPY})")


def test_batched_shared_contexts_equal_the_pairs_on_cuda(tokenizer):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from qcheck.inputs.tasks import load_arc_easy

    try:
        questions = load_arc_easy(24).items
    except Exception as exc:  # noqa: BLE001 - the shared data folder is absent on some machines
        pytest.skip(f"ARC-Easy data not available: {exc}")
    tok = tokenizer
    config = tiny_llama_config(vocab_size=len(tok), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model = random_init_like(config, seed=0, device="cuda")
    together = score_multiple_choice(model, tok, questions, batch_size=16)
    assert together.extra["path"] == "shared-context-batched"
    pairs = score_multiple_choice(model, tok, questions, batch_size=16, shared_context=False)
    for x, y in zip(together.records, pairs.records):
        assert x.scores == pytest.approx(y.scores, rel=1e-4) and x.pred == y.pred


def test_scoring_a_model_whose_last_layers_run_on_another_device(tokenizer):
    """A model spread so that its inputs go to the GPU and its last layer, norm and head run on the CPU (accelerate's
    dispatch with main_device="cpu", the one-GPU stand-in for a model spread over GPUs): the decoder's states come
    back on another device than the inputs, and perplexity and choice scoring (the pairs path a spread model takes)
    give the undispatched model's figures."""
    import copy

    from accelerate import dispatch_model

    from qcheck.measure.choice import choice_loglikelihoods
    from qcheck.measure.perplexity import perplexity_of_ids
    from qcheck.quant.offload import input_device

    model = random_init_like(tiny_llama_config(num_hidden_layers=2, vocab_size=len(tokenizer), tie_word_embeddings=False),
                             seed=0).eval()
    ids = torch.randint(0, len(tokenizer), (600,), generator=torch.Generator().manual_seed(0))
    pairs = [("Question: how many apples are left in the basket?\nAnswer:", " three"),
             ("Question: which is heavier?\nAnswer:", " a kilogram of iron"), ("apples", " 7 of them")]
    plain_ppl = perplexity_of_ids(model, ids, context=128, batch_size=3)
    plain_ll = choice_loglikelihoods(model, tokenizer, pairs, batch_size=2)
    placement = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": "cpu",
                 "model.norm": "cpu", "lm_head": "cpu"}
    spread = dispatch_model(copy.deepcopy(model), device_map=placement, main_device="cpu")
    assert input_device(spread).type == "cuda"
    assert spread.model.norm.weight.device.type == "cpu" and spread.model.layers[0].mlp.up_proj.weight.is_cuda
    spread_ppl = perplexity_of_ids(spread, ids, context=128, batch_size=3)
    spread_ll = choice_loglikelihoods(spread, tokenizer, pairs, batch_size=2)
    assert spread_ppl.nll_sum == pytest.approx(plain_ppl.nll_sum, rel=1e-4)
    assert spread_ll == pytest.approx(plain_ll, rel=1e-4)
