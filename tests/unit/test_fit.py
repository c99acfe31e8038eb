"""The memory pre-check: a run whose lower bound exceeds the free memory is refused before the reference loads
(exit 2, the figures and what to pass, nothing written); the embedded default's bound lies below what it used."""
from __future__ import annotations

import pytest
import torch

from qcheck.cli import main
from qcheck.inputs.fit import GiB, MemoryNeed, available_bytes, memory_need, model_size, stored_bytes


def _llama70b_folder(path):
    """A Llama-3-70B-shaped config alone: the run must be refused before any weight is looked for."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192).save_pretrained(path)
    return path


def test_a_70b_model_on_this_machine_is_refused_before_loading(tmp_path, capsys):
    folder = _llama70b_folder(tmp_path / "llama-70b")
    params, vocab = model_size(folder)
    assert 70.5e9 < params < 70.6e9 and vocab == 128256  # Llama-3-70B: 70.6B parameters
    assert main(["run", "--model", str(folder), "--device", "cpu", "--variants", "fp16,int8,bnb-nf4",
                 "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "needs at least 526.2 GiB of cpu memory" in err and "GiB is available" in err
    assert "70.55B parameters, 262.8 GiB" in err and "the largest, int8: 262.8 GiB" in err
    assert "not counted: bnb-nf4 (bitsandbytes storage)" in err and "--variants fp16,bf16" in err
    assert "Traceback" not in err and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_a_variants_bytes_are_those_it_holds_once_built(dtype, tied):
    """The pre-check's figure for each default variant without bitsandbytes is what the built variant holds, byte
    for byte: a 16-bit model's fake-quantized layers hold fp32 (grid values would round off in 16 bits), so its int8
    variant is larger than the model, which the plan's dtype alone undercounted (an 8B bf16 model's int8 variant:
    28 GiB, counted as 15). Tied embeddings count once."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from qcheck.quant.apply import quantize
    from qcheck.variants import DEFAULT_VARIANTS, builtin_plan

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    own = sum(p.numel() * p.element_size() for p in model.parameters())
    plans = [builtin_plan(n) for n in DEFAULT_VARIANTS if not builtin_plan(n).uses_bitsandbytes]
    assert {p.name for p in plans} >= {"fp16", "bf16", "int8", "w4g64", "fixed8.4", "mixed"}
    for plan in plans:
        built, _ = quantize(model, plan)
        held = sum(p.numel() * p.element_size() for p in built.parameters())
        assert stored_bytes(meta, plan, dtype) == held, plan.name
        if plan.name == "int8":
            assert held > own if dtype == "bf16" else held == own


def test_a_16_bit_70b_models_int8_variant_is_counted_in_fp32(tmp_path, capsys):
    """The CLI's pre-check on a Llama-3-70B config with --reference-dtype bf16: the reference counts 131.4 GiB and
    its int8 variant 258.9 GiB (its 68.4B linear weights in fp32, embeddings and lm_head in bf16), not 131.4."""
    folder = _llama70b_folder(tmp_path / "llama-70b")
    assert main(["run", "--model", str(folder), "--device", "cpu", "--reference-dtype", "bf16", "--variants",
                 "fp16,int8", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "the reference in bf16 (70.55B parameters, 131.4 GiB)" in err
    assert "the largest, int8: 258.9 GiB" in err and "Traceback" not in err and not (tmp_path / "rep").exists()
    # the advice fits the run: its reference is already bf16, and bf16 is no variant of a bf16 reference
    assert "--reference-dtype bf16" not in err and "--variants fp16 keeps one half-precision copy" in err
    assert main(["run", "--model", str(folder), "--device", "cpu", "--reference-dtype", "bf16", "--variants",
                 "fp16", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "the largest, fp16: 131.4 GiB" in err and "--variants" not in err.split("Run it")[1]


def test_half_precision_variants_count_at_two_bytes():
    need = memory_need(10**9, {"fp16": "fp16", "bf16": "bf16"}, vocab_size=1000, context=100, batch=2,
                       device=torch.device("cpu"), available=None)
    assert (need.reference_bytes, need.variant_bytes, need.working_bytes) == (4 * 10**9, 2 * 10**9, 800_000)
    assert need.fits  # unknown free memory never refuses
    short = MemoryNeed("cpu", 10**9, 4 * 10**9, "fp16", 2 * 10**9, 0, 5 * 10**9)
    assert not short.fits and "needs at least 5.6 GiB of cpu memory and 4.7 GiB is available" in short.message()
    tight = MemoryNeed("cpu", 10**9, 4 * 10**9, "fp16", 2 * 10**9, 0, 6 * 10**9 - 2**22)
    assert not tight.fits and "5.59 GiB of cpu memory and 5.58 GiB is available" in tight.message()


def test_the_embedded_default_lies_below_what_it_used(smollm2):
    """The bound is a lower bound: the default CPU run's measured peak RSS was 2,580-2,698 MiB (RESULTS.md)."""
    count = sum(p.numel() for p in smollm2.model.parameters())
    need = memory_need(count, {"int8": "fp32", "bf16": "bf16"}, vocab_size=49152, context=1024, batch=1,
                       device=torch.device("cpu"), available=available_bytes(torch.device("cpu")))
    assert 134e6 < count < 135e6 and need.fits
    assert need.total_bytes / GiB < 2580 / 1024


def test_qcheck_run_loads_the_reference_once(tiny_folder, tmp_path, monkeypatch):
    """`qcheck run` validates with the run's options, report folder included, and the plugin measures with the same
    options: one context, one reference load. Until session 9 they were two contexts: the second validated every
    variant again, and its memory pre-check counted the first one's reference as used, so an 8B fp32 run on an
    80 GB H100 refused itself (56.5 GiB needed, 48.3 GiB free of 78.7 before the run)."""
    from qcheck import engine
    from qcheck.inputs import models

    loads: list[str] = []
    real = models.load_model

    def counting(*args, **kwargs):
        loads.append(str(args[0] if args else kwargs.get("source")))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    monkeypatch.setattr(engine, "_OPENED", {})
    assert main(["run", "--model", str(tiny_folder), "--device", "cpu", "--variants", "int8", "-k",
                 "perplexity_finite", "--out", str(tmp_path / "rep")]) == 0
    assert loads == [str(tiny_folder)]
    assert len(engine._OPENED) == 1  # the plugin's options are the CLI's, report folder included


@pytest.mark.gpu
def test_cached_allocator_blocks_count_as_available_on_a_gpu():
    """A batch sized while an earlier step's blocks sit in torch's cache may use them: they count as available, on top
    of what the driver reports free."""
    device = torch.device("cuda")
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    del block  # 256 MiB now cached by torch's allocator, not free for the driver
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    assert cached >= 256 * 2**20
    free = torch.cuda.mem_get_info(device)[0]
    assert available_bytes(device) >= free + 256 * 2**20
    torch.cuda.empty_cache()


def test_workers_sharing_a_device_each_need_the_whole_run():
    """--workers above the GPU count puts several workers on one device, each holding the reference, a variant and
    a batch: the pre-check counts every copy and names --workers in what to do."""
    one = memory_need(10**9, {"int8": "fp32"}, vocab_size=1000, context=100, batch=2, device="cuda",
                      available=10 * GiB)
    three = memory_need(10**9, {"int8": "fp32"}, vocab_size=1000, context=100, batch=2, device="cuda",
                        available=10 * GiB, copies=3)
    assert one.fits and three.total_bytes == 3 * one.total_bytes and not three.fits
    message = three.message()
    assert "each of the 3 --workers processes that share this device" in message
    assert "Pass fewer --workers" in message and ", or run it where that much memory is free" in message


def test_too_many_workers_for_the_memory_are_refused_before_loading(tmp_path, capsys):
    """The CLI's pre-check with --workers on a CPU run (every worker shares the host): exit 2, the copies counted."""
    folder = _llama70b_folder(tmp_path / "llama-70b")
    assert main(["run", "--model", str(folder), "--device", "cpu", "--variants", "int8", "--workers", "4",
                 "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "each of the 4 --workers processes that share this device" in err and "Pass fewer --workers" in err
    assert "Traceback" not in err and not (tmp_path / "rep").exists()


@pytest.mark.gpu
def test_a_worker_sharing_its_gpu_sizes_batches_within_its_share():
    """Workers that share a GPU size their batches at the same time: each counts only its share of the device (less
    what it holds), never the whole free memory."""
    from qcheck.inputs import fit

    device = torch.device("cuda")
    held = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    whole = available_bytes(device)
    total = torch.cuda.get_device_properties(device).total_memory
    fit.share_device(4)
    try:
        shared = available_bytes(device)
    finally:
        fit.share_device(1)
    assert shared <= total // 4 - held.numel() < whole
    assert abs(available_bytes(device) - whole) < 64 * 2**20  # back to the whole device
