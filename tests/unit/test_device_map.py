"""Models larger than one device: --device-map / --max-memory through accelerate (here on a CPU, with disk offload
forced by a tiny budget) give the perplexities and verdicts of the plain single-device run; bad values are usage
errors naming the flag; --reference-dtype keeps a bf16 checkpoint in bf16 and the report says so."""
import json
import math
import subprocess
import sys

import pytest

from qcheck.errors import ConfigError
from qcheck.options import RunOptions

VARIANTS = "fp16,int8,w4g64"
CHECKS = "perplexity_finite or quantization_applied or plan_followed or precision_differs or perplexity_order " \
         "or device_placement or robust_le_clean"


@pytest.mark.parametrize(("kw", "flag", "says"), [
    ({"device_map": "everywhere"}, "--device-map", "auto, balanced"),
    ({"device_map": "auto", "max_memory": "0=lots"}, "--max-memory", "20GiB"),
    ({"device_map": "auto", "max_memory": "gpu0=2GiB"}, "--max-memory", "DEVICE=SIZE"),
    ({"device_map": "auto", "max_memory": "cpu=1GiB,cpu=2GiB"}, "--max-memory", "twice"),
    ({"max_memory": "cpu=1GiB"}, "--max-memory", "--device-map auto"),
    ({"offload_folder": "/tmp/x"}, "--offload-folder", "--device-map auto"),
    ({"device_map": "cpu", "max_memory": "cpu=1GiB"}, "--max-memory", "spreads"),
    ({"device_map": "auto", "max_memory": "0=1GiB", "device": "cpu"}, "--device-map", "--device cpu"),
    ({"device_map": "auto", "workers": 2}, "--workers", "one of the two"),
    ({"reference_dtype": "fp8"}, "--reference-dtype", "fp32, bf16, fp16, auto"),
])
def test_bad_placement_values_name_the_flag_and_what_to_pass(kw, flag, says):
    with pytest.raises(ConfigError) as info:
        RunOptions(**kw)
    assert info.value.field == flag and says in str(info.value)


def test_placement_values_parse():
    placement = RunOptions(device_map="auto", max_memory="0=20GiB, cpu=1.5GB").placement()
    assert placement.max_memory_dict() == {0: 20 * 2**30, "cpu": 1_500_000_000}
    assert RunOptions(device_map="cuda:1").placement().one_device() == "cuda:1"


@pytest.mark.parametrize("args", [["--device-map", "everywhere"], ["--device-map", "auto", "--max-memory", "0=x"],
                                  ["--max-memory", "cpu=1GiB"]])
def test_cli_refuses_bad_placement_with_exit_2(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qcheck.cli", "run", *args, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert args[-2] in proc.stdout + proc.stderr


def _run(pytester, folder, out, *extra):
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", f"--qcheck-model={folder}",
        f"--qcheck-variants={VARIANTS}", "--qcheck-device=cpu", "--qcheck-tokens=512", "--qcheck-context=128",
        f"--qcheck-report={out}", "-k", CHECKS, *extra)
    assert result.ret in (0, 1), result.stdout.str()[-3000:]
    return json.loads((out / "qcheck-report.json").read_text())


def _perplexities(report):
    return {r["variant"]: r["data"]["perplexity"] for r in report["records"]["records"]
            if r["measurement"] == "perplexity" and r["status"] == "ok"}


def _verdicts(report):
    return {(c["name"], c.get("variant")): c["status"] for c in report["checks"]}


def test_disk_offloaded_run_matches_the_single_device_run(pytester, tmp_path, tiny_folder):
    plain = _run(pytester, tiny_folder, tmp_path / "plain")
    offloaded = _run(pytester, tiny_folder, tmp_path / "offload", "--qcheck-device-map=auto",
                     "--qcheck-max-memory=cpu=1MB", f"--qcheck-offload-folder={tmp_path / 'off'}")
    placement = offloaded["meta"]["placement"]
    assert "disk" in placement["devices"] and placement["offloaded"]
    assert placement["devices"]["disk"]["layers"] >= 1
    want, got = _perplexities(plain), _perplexities(offloaded)
    assert set(want) == set(got) == {"fp32", *VARIANTS.split(",")}
    for name in want:
        assert math.isclose(got[name], want[name], rel_tol=1e-5), (name, want[name], got[name])
    assert _verdicts(offloaded) == _verdicts(plain)
    assert any(status == "PASS" for (name, _), status in _verdicts(offloaded).items() if name == "device_placement")
    text = (tmp_path / "offload" / "qcheck-report.md").read_text()
    assert "placement: device map auto:" in text and "disk" in text
    left = [f.name for f in (tmp_path / "off").iterdir()]  # a variant's offload folder goes with the variant;
    assert len(left) == 1 and left[0].startswith("qcheck-offload-reference-")  # the reference's at process exit


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory, tiny_folder):
    """The tiny model saved in bf16 (its config says torch_dtype bfloat16), as 8B-70B checkpoints ship."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bf16")
    AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_folder).save_pretrained(folder)
    return folder


def test_reference_dtype_auto_keeps_a_bf16_checkpoint_in_bf16(pytester, tmp_path, bf16_folder):
    import torch

    from qcheck.engine import open_run

    ctx = open_run(RunOptions(model=str(bf16_folder), variants=("int8",), device="cpu", tokens=256, context=128,
                              reference_dtype="auto"))
    assert {p.dtype for p in ctx.reference_model.parameters()} == {torch.bfloat16}
    assert ctx.reference_dtype == "bf16" and ctx.variants.get("int8").dtype_name == "bf16"
    int8 = ctx.variants.get("int8").model
    layer = int8.model.layers[0].self_attn.q_proj
    assert layer.weight.dtype == torch.float32  # grid values kept in fp32 inside the bf16 model
    assert int8(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16  # the layer's output is cast back
    report = _run(pytester, bf16_folder, tmp_path / "bf16", "--qcheck-reference-dtype=auto")
    assert report["meta"]["precision"]["reference_dtype"] == "bf16"
    text = (tmp_path / "bf16" / "qcheck-report.md").read_text()
    assert "reference dtype: bf16 (--reference-dtype auto)" in text
    assert "each quantized layer computes in fp32" in text
    # stored in bf16, int8 and w4g64 grid values left their grids: these checks FAILed honest variants
    grid = {k: v for k, v in _verdicts(report).items() if k[0] in ("quantization_applied", "plan_followed")}
    assert grid and set(grid.values()) == {"PASS"}, grid


def test_a_16bit_reference_leaves_out_the_cast_to_its_own_dtype(bf16_folder):
    """With a bf16 reference the default "bf16" variant would be the reference itself (a second copy, nothing
    quantized, a bf16 < fp16 KL ordering inverted by construction): it is left out and the report says so."""
    from qcheck.engine import builtin_names, open_run, variant_names
    from qcheck.variants import DEFAULT_VARIANTS

    assert builtin_names(RunOptions(), "fp32") == list(DEFAULT_VARIANTS)
    assert builtin_names(RunOptions(), "bf16") == [n for n in DEFAULT_VARIANTS if n != "bf16"]
    assert builtin_names(RunOptions(), "fp16") == [n for n in DEFAULT_VARIANTS if n != "fp16"]
    auto = RunOptions(model=str(bf16_folder), reference_dtype="auto")
    assert "bf16" not in variant_names(auto) and "fp16" in variant_names(auto)
    assert builtin_names(RunOptions(variants=("fp16", "bf16"), reference_dtype="fp32")) == ["fp16", "bf16"]
    ctx = open_run(RunOptions(model=str(bf16_folder), variants=("fp16",), device="cpu", tokens=256, context=128,
                              reference_dtype="auto"))
    assert ctx.variants.names == ["fp16"]
    assert "would be the reference itself" not in ctx.store.meta["precision"]["note"]  # --variants was given
    assert "the latency order of fp16/bf16/autocast against fp32" in ctx.store.meta["precision"]["note"]


@pytest.mark.parametrize("dtype_args", [["--reference-dtype", "bf16"], ["--reference-dtype", "auto"]])
def test_naming_the_references_own_dtype_as_a_variant_is_exit_2(dtype_args, bf16_folder, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qcheck.cli", "run", "--model", str(bf16_folder), "--device", "cpu",
                           "--variants", "int8,bf16", *dtype_args, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "--variants names bf16, the reference's own dtype" in out and "Drop bf16 from --variants" in out
    assert "Traceback" not in out and not (tmp_path / "qcheck-report.json").exists()


def test_the_plugin_refuses_the_references_own_dtype_as_a_variant_as_a_usage_error(pytester):
    result = pytester.runpytest_inprocess("--pyargs", "qcheck.suite", "-p", "no:cacheprovider",
                                          "--qcheck-reference-dtype=bf16", "--qcheck-variants=int8,bf16",
                                          "--qcheck-device=cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = "*--qcheck-variants names bf16, the reference's own dtype (--qcheck-reference-dtype bf16)*"
    result.stderr.fnmatch_lines([expected])  # pytest's spelling of the flags


def test_default_reference_stays_fp32_and_says_so(tiny_folder):
    from qcheck.engine import open_run

    ctx = open_run(RunOptions(model=str(tiny_folder), variants=("int8",), device="cpu", tokens=256, context=128))
    assert ctx.reference_dtype == "fp32" and ctx.store.meta["precision"]["note"] is None
    assert ctx.variants.reload is None  # one device: variants are deep copies, as before


def test_memory_refusal_names_the_budget_or_the_options():
    from qcheck.inputs.fit import GiB, memory_need

    plain = memory_need(70 * 10**9, {"int8": "fp32"}, vocab_size=128256, context=1024, batch=8, device="cuda",
                        available=80 * GiB, reference_dtype="bf16")
    assert not plain.fits and "--device-map auto --max-memory" in plain.message()
    assert "the reference in bf16" in plain.message() and plain.variant_bytes == 70 * 10**9 * 2
    budgeted = memory_need(70 * 10**9, {"int8": "fp32"}, vocab_size=128256, context=1024, batch=8, device="cuda",
                           available=80 * GiB, reference_dtype="bf16", budget=60 * GiB)
    assert budgeted.total_bytes == 120 * GiB + budgeted.working_bytes
    assert "Lower --max-memory for cuda" in budgeted.message()


# --------------------------------------------------------------------------- batches sized per device

def _llama_70b_on_meta():
    """A Llama-3-70B-shaped model on the meta device (no weights): batch sizing reads only its config and dtype."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    with torch.device("meta"):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def test_layers_by_device_follows_accelerates_execution_devices(tmp_path):
    """Where a layer runs: its hook's execution device (an offloaded layer's hook sits on its submodules), else its
    parameters' device."""
    from types import SimpleNamespace

    import torch
    from accelerate import dispatch_model

    from qcheck.inputs.models import random_init_like, tiny_llama_config
    from qcheck.inputs.placement import layers_by_device

    model = random_init_like(tiny_llama_config(num_hidden_layers=6), seed=0)
    assert layers_by_device(model) == {torch.device("cpu"): 6}
    for i, layer in enumerate(model.model.layers):
        if i < 2:
            layer._hf_hook = SimpleNamespace(execution_device=0)
        elif i < 5:
            layer._hf_hook = SimpleNamespace(hooks=[SimpleNamespace(execution_device="cuda:1")])
        else:
            layer.self_attn.q_proj._hf_hook = SimpleNamespace(execution_device=torch.device("cuda", 0))
    assert layers_by_device(model) == {torch.device("cuda:0"): 3, torch.device("cuda:1"): 3}
    small = random_init_like(tiny_llama_config(num_hidden_layers=2), seed=0)
    placement = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                 "model.rotary_emb": "cpu", "lm_head": "cpu"}
    assert layers_by_device(dispatch_model(small, device_map=placement, offload_dir=str(tmp_path))) == {
        torch.device("cpu"): 2}


@pytest.mark.parametrize("free_gib", [(12, 12, 12, 12), (12, 12, 3, 12)])
def test_generation_and_attack_batches_of_a_spread_70b_are_sized_per_device(monkeypatch, free_gib):
    """Issue 21: a 70B model spread over four GPUs keeps each layer's key/value cache and kept activations on the GPU
    that runs it. Its batches were sized with all 80 layers against the first GPU's free memory (one attacked question
    at a time here); now each GPU holds its 20 layers' share, and the tightest GPU decides."""
    import torch

    from qcheck.inputs import fit, placement
    from qcheck.measure.generation import GENERATION_MEMORY_SHARE, memory_batch_size
    from qcheck.measure.robustness import ATTACK_BATCH_LIMIT, ATTACK_MEMORY_SHARE, attack_batch_size

    model = _llama_70b_on_meta()
    gpus = [torch.device("cuda", i) for i in range(4)]
    free = dict(zip(gpus, (g * 2**30 for g in free_gib)))
    monkeypatch.setattr(placement, "layers_by_device", lambda m: dict.fromkeys(gpus, 20))
    monkeypatch.setattr(fit, "available_bytes", lambda d: free[d])
    lengths, new = [374] * 50, 256
    kv_layer = 2 * 8 * 128 * (374 + new) * 2  # K and V, 8 KV heads of 128, bf16
    prefill = 374 * (8192 * 4 + 28672 * 3) * 4
    tightest = min(free.values())
    assert memory_batch_size(model, lengths, new) == min(50, int(tightest * GENERATION_MEMORY_SHARE
                                                                 // (20 * kv_layer + prefill)))
    assert memory_batch_size(model, lengths, new) > int(free[gpus[0]] * GENERATION_MEMORY_SHARE
                                                        // (80 * kv_layer + prefill)) or tightest < free[gpus[0]]
    per_question = 2 * 64 * 20 * 8192 * 68
    expected = max(1, min(ATTACK_BATCH_LIMIT, int(tightest * ATTACK_MEMORY_SHARE // per_question)))
    assert attack_batch_size(model, 64) == expected
    whole = int(free[gpus[0]] * ATTACK_MEMORY_SHARE // (4 * per_question))  # all 80 layers against GPU 0
    if tightest == free[gpus[0]]:
        assert whole == 0 and expected == 2  # one question at a time before, two now
    else:
        assert expected == 1  # the GPU with 3 GiB free decides


def test_rows_on_every_device_takes_the_tightest_device():
    from qcheck.inputs.fit import rows_on_every_device

    layers = {"a": 10, "b": 30, "c": 0}
    room = {"a": 1000.0, "b": 2000.0, "c": 0.0}
    assert rows_on_every_device(layers, lambda n: n * 5.0, room.__getitem__) == 13  # b: 2000 // 150 (a: 20)
    assert rows_on_every_device(layers, lambda n: n * 5.0 + 100, room.__getitem__) == 6  # a: 1000 // 150 (b: 8)
    assert rows_on_every_device({}, lambda n: 1.0, room.__getitem__) == 0
    room["b"] = -5.0
    assert rows_on_every_device(layers, lambda n: n * 5.0, room.__getitem__) == 0


@pytest.mark.gpu
def test_a_bf16_reference_on_a_gpu_times_no_fp32_model_and_judges_against_its_own_timing(pytester, tmp_path,
                                                                                        bf16_folder):
    """On a GPU with a bf16 reference: no bf16 copy of the reference and no fp16 autocast are timed (the reference's
    own latency is its bf16 timing), the fp16/bf16/autocast < fp32 order checks skip (no fp32 model exists), a
    simulated variant is not bounded against it, and energy names the dtype it measured; nothing FAILs."""
    out = tmp_path / "gpu-bf16"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", "-rs", f"--qcheck-model={bf16_folder}",
        "--qcheck-variants=fp16,int8", "--qcheck-device=cuda", "--qcheck-reference-dtype=auto",
        "--qcheck-tokens=512", "--qcheck-context=128", f"--qcheck-report={out}",
        "-k", "latency or slowdown or energy or throughput or kl_sane")
    assert result.ret in (0, 1), result.stdout.str()[-3000:]
    report = json.loads((out / "qcheck-report.json").read_text())
    checks = {(c["name"], c.get("variant")): c for c in report["checks"]}
    bad = {k: c["message"] for k, c in checks.items() if c["status"] in ("FAIL", "ERROR")}
    assert not bad, bad
    records = {(r["variant"], r["measurement"]): r for r in report["records"]["records"]}
    casts = records[("fp32", "latency_casts")]["data"]
    assert set(casts["timings"]) == {"fp16"} and set(casts["not_timed"]) == {"bf16", "autocast"}
    assert records[("int8", "latency")]["data"]["dtype_name"] == "bf16"
    assert checks[("slowdown_bound", "int8")]["status"] == "SKIPPED"  # fp32 grid layers in a bf16 model
    energy = records[("fp32", "energy")]["data"]["energy"]
    assert energy["fp32"]["dtype"] == "bf16" and energy["fp16"]["dtype"] == "fp16"
    result.stdout.fnmatch_lines(["*needs an fp32 model, and the reference is bf16*"])


class _Records:
    """The suite's records as test_latency reads them, for a run with a 16-bit reference."""

    def __init__(self, reference_dtype, data):
        self.reference_dtype, self._data = reference_dtype, data

    def data(self, variant, measurement):
        return self._data[(variant, measurement)]


def _timing_dict(ms):
    from qcheck.measure.timing import Timing

    return Timing(samples_ms=(ms,) * 20, warmup_ms=(ms,) * 3, method="cuda-events", device="cuda:0", total_s=1.0,
                  stop_reason="reached 20 repeats and 1 s").to_dict()


def test_latency_checks_under_a_bf16_reference_judge_against_its_own_timing_and_skip_fp32_and_simulated():
    """The suite's latency judging with a bf16 reference (no GPU needed: records only): the reference's bf16 timing is
    its own latency record, an fp32 timing does not exist (skip, saying so), and a simulated variant, whose grid
    layers compute in fp32 inside the bf16 model, is not bounded against it (it would be a 3x+ false alarm)."""
    from qcheck.suite.test_latency import _reference_timing, test_latency_order, test_slowdown_bound

    records = _Records("bf16", {
        ("fp32", "latency"): {"timing": _timing_dict(10.0)},
        ("fp32", "latency_casts"): {"timings": {"fp16": _timing_dict(10.5)}, "not_timed": {"bf16": "own"}},
        ("int8", "latency"): {"timing": _timing_dict(60.0), "dtype_name": "bf16",
                              "kind": {"simulated": True, "bits": 8, "reason": "fake-quantized"}},
        ("bnb-nf4", "latency"): {"timing": _timing_dict(12.0), "dtype_name": "bf16",
                                 "kind": {"simulated": False, "bits": 4, "reason": "real"}}})
    assert _reference_timing(records, "bf16").median_ms == 10.0
    assert _reference_timing(records, "fp16").median_ms == 10.5
    with pytest.raises(pytest.skip.Exception, match="no fp32 model was timed: the reference is bf16"):
        _reference_timing(records, "fp32")
    with pytest.raises(pytest.skip.Exception, match="needs an fp32 model, and the reference is bf16"):
        test_latency_order("fp16", "fp32", "faster", records, lambda r: r)
    with pytest.raises(pytest.skip.Exception, match="int8 is simulated .fake-quant.: inside the bf16 model"):
        test_slowdown_bound("int8", records, lambda r: r)
    judged = []
    test_slowdown_bound("bnb-nf4", records, judged.append)
    assert judged[0].name == "slowdown_bound" and judged[0].status.value == "PASS"
    assert "vs bf16" in judged[0].message and "1.20x" in judged[0].message
