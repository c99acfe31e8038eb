"""The GGUF conversion cache: a GGUF model is dequantized by transformers once and later loads read the converted
folder; the cached model and tokenizer are the direct conversion's, bit for bit, and a cache that cannot be written
costs only time."""
from __future__ import annotations

import pytest
import torch

from qcheck.errors import ModelLoadError
from qcheck.inputs import models
from qcheck.inputs.models import CACHE_ENV, load_model, load_tokenizer


@pytest.fixture
def fresh_caches(monkeypatch, tmp_path):
    """An empty conversion cache under tmp_path, and no in-process model/tokenizer objects."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_CACHE", {})
    monkeypatch.setattr(models, "_TOKENIZERS", {})
    return tmp_path / "cache"


def test_cached_conversion_equals_the_direct_one(fresh_caches, wikitext_slice):
    try:
        direct = load_model()
    except ModelLoadError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")
    folders = list((fresh_caches / "gguf").iterdir())
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file(), folders
    assert "float32-tf" in folders[0].name and not folders[0].name.startswith(".partial-")
    assert not any("read from the cache" in n for n in direct.notes)

    cached = load_model()
    assert any(f"read from the cache {folders[0]}" in n for n in cached.notes)
    ref, got = direct.model.state_dict(), cached.model.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert cached.model.lm_head.weight.data_ptr() == cached.model.model.embed_tokens.weight.data_ptr()  # still tied
    ids = direct.tokenizer(wikitext_slice)["input_ids"]
    assert cached.tokenizer(wikitext_slice)["input_ids"] == ids and len(ids) > 2000
    assert cached.tokenizer.chat_template == direct.tokenizer.chat_template
    assert (cached.tokenizer.bos_token_id, cached.tokenizer.eos_token_id, cached.tokenizer.pad_token_id) == \
        (direct.tokenizer.bos_token_id, direct.tokenizer.eos_token_id, direct.tokenizer.pad_token_id)
    with torch.no_grad():
        probe = torch.tensor([ids[:48]])
        assert torch.equal(cached.model(probe).logits, direct.model(probe).logits)
    assert load_tokenizer()(wikitext_slice)["input_ids"] == ids


def test_cache_off_and_unwritable_cache(monkeypatch, tmp_path, smollm2):
    path = models.embedded_model_path()
    monkeypatch.setenv(CACHE_ENV, "off")
    assert models._gguf_cache_folder(path, torch.float32) is None
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    folder = models._gguf_cache_folder(path, torch.float32)
    assert folder is not None and folder.parent == tmp_path / "gguf"
    assert models._gguf_cache_folder(path, torch.bfloat16) != folder  # keyed by dtype
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    models._save_conversion(smollm2.model, smollm2.tokenizer, blocker / "gguf" / "x")  # no error: only time lost
    assert blocker.is_file()
