"""ARC scoring on CUDA (run on the device machine): the GPU default, several questions' contexts in one left-padded
batch with their choices on the repeated KV cache, against the (context, choice) pairs path on real ARC-Easy
questions: the same predictions, log-likelihoods within 1e-4."""
import pytest
import torch

from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.measure.choice import score_multiple_choice

pytestmark = pytest.mark.gpu


def test_batched_shared_contexts_equal_the_pairs_on_cuda(smollm2):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from qcheck.inputs.tasks import load_arc_easy

    try:
        questions = load_arc_easy(24).items
    except Exception as exc:  # noqa: BLE001 - the shared data folder is absent on some machines
        pytest.skip(f"ARC-Easy data not available: {exc}")
    tok = smollm2.tokenizer
    config = tiny_llama_config(vocab_size=len(tok), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model = random_init_like(config, seed=0, device="cuda")
    together = score_multiple_choice(model, tok, questions, batch_size=16)
    assert together.extra["path"] == "shared-context-batched"
    pairs = score_multiple_choice(model, tok, questions, batch_size=16, shared_context=False)
    for x, y in zip(together.records, pairs.records):
        assert x.scores == pytest.approx(y.scores, rel=1e-4) and x.pred == y.pred
