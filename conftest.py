"""The project's shared test configuration: offline hub, deterministic threads, the hypothesis `ci` profile by
default, where the evaluation data lives, and the models the tests share (the embedded SmolLM2, loaded once per
process, its quantized variants, built once per process for every module that asks for the same plan, and a tiny
random-init Llama folder with SmolLM2's tokenizer for tests where the weights do not matter)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist workers (`pytest -n 2`) share the cores: one intra-op thread each, for torch here and for the
    # subprocesses tests start, instead of every worker's thread pool spinning on every core
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from qcheck.strategies import load_profile

load_profile("ci")

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data"
"""../shared/data: WikiText-2, GSM8K and ARC-Easy (tests that need them skip with the reason when absent)."""


def pytest_configure(config):
    """Import bitsandbytes up front where it is installed: its first import registers torch operators, and pytester's
    in-process runs drop the modules they imported, so a first import inside one (a suite run with a bnb variant)
    was repeated by a later test and failed ("Tried to register an operator ... multiple times"). Seen when the
    order of test files changed; under pytest-xdist the files a worker gets vary from run to run."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:  # not installed: the tests that need it skip
        import bitsandbytes  # noqa: F401


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct reference (fp32), loaded once per process."""
    from qcheck.errors import ModelLoadError
    from qcheck.inputs.models import load_model

    try:
        return load_model(cache=True)
    except ModelLoadError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2):
    """`quantize(smollm2.model, plan)` -> (model, report), computed once per process for each plan (same plan: same
    name, options and layer rules) and shared by every module that needs that variant of the real model: quantizing
    SmolLM2 on a CPU takes seconds to tens of seconds a plan. The models are shared, so tests only read them; a
    test that plants a bug in one changes a deep copy."""
    import json

    from qcheck.quant.apply import quantize
    from qcheck.quant.plan import Plan

    built: dict[str, tuple] = {}

    def get(plan):
        plan = Plan.load(plan)
        key = json.dumps(plan.to_dict(), sort_keys=True, default=repr)
        if key not in built:
            built[key] = quantize(smollm2.model, plan)
        return built[key]

    return get


@pytest.fixture(scope="session")
def wikitext_slice():
    """The first 12,000 characters of WikiText-2 test."""
    from qcheck.errors import DataError
    from qcheck.inputs.data import wikitext_test

    try:
        text, _ = wikitext_test(max_chars=12000)
    except DataError as exc:
        pytest.skip(f"WikiText-2 not available: {exc}")
    return text


@pytest.fixture(scope="session")
def smollm2_tokenizer(request):
    """SmolLM2's tokenizer: the embedded model's, else a saved copy named by $QCHECK_TOKENIZER (the device machine
    has the folder `benchmarks/device_prepare.sh` saves, not the model's package)."""
    import os

    saved = os.environ.get("QCHECK_TOKENIZER")
    if saved:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    return request.getfixturevalue("smollm2").tokenizer


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny random-init 2-layer Llama (hidden 64) saved as an HF folder with SmolLM2's tokenizer: a real model a
    user could pass with --model, small enough to build in a second (weights' values do not matter here)."""
    from qcheck.inputs.models import random_init_like, tiny_llama_config

    tokenizer = smollm2_tokenizer
    folder = tmp_path_factory.mktemp("tiny-smollm")
    config = tiny_llama_config(vocab_size=len(tokenizer), max_position_embeddings=2048,
                               pad_token_id=tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2)
    random_init_like(config, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
