"""Make the tiny compressed-tensors GPTQ fixture: a 2-layer random Llama (tiny_llama_config, seed 0) and its
GPTQ W4 group-32 `pack-quantized` checkpoint. Run in the llm-compressor environment (docs/ptq.md):
    python tests/zoo/ptq_fixtures/make_fixtures.py tests/zoo/ptq_fixtures
"""
import sys
from pathlib import Path

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from transformers import AutoModelForCausalLM

from qcheck.inputs.models import random_init_like, tiny_llama_config

out = Path(sys.argv[1])
ref = random_init_like(tiny_llama_config(), seed=0)
ref.save_pretrained(out / "tiny-float")
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(512)}, unk_token="t0"))
tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t0", eos_token="t1")
tok.save_pretrained(out / "tiny-float")
work = AutoModelForCausalLM.from_pretrained(out / "tiny-float")
g = torch.Generator().manual_seed(0)
ids = torch.randint(1, 512, (16, 64), generator=g).tolist()
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 64] * 16})
weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
oneshot(model=work, dataset=ds, recipe=[GPTQModifier(config_groups={"g": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"])],
        max_seq_length=64, processor=tok, num_calibration_samples=16)
work.save_pretrained(out / "tiny-gptq-w4g32", save_compressed=True)
tok.save_pretrained(out / "tiny-gptq-w4g32")
