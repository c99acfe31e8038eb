"""`qcheck run` and model loading: clear errors with exit code 2 and nothing written; a real bounded run."""
import json
import re
import subprocess
import sys

import pytest

from qcheck.cli import main
from qcheck.errors import ModelLoadError
from qcheck.inputs.models import load_model, resolve_source


def test_missing_model_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["run", "--model", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "model source not found" in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_gguf_and_folder_without_config(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        resolve_source(bad)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "folder")
    txt = tmp_path / "weights.bin"
    txt.write_text("x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_model(txt)


def test_bad_plan_and_typo_glob_exit_2_before_running(tmp_path, capsys):
    out = tmp_path / "rep"
    bad = tmp_path / "bad.toml"
    bad.write_text('[default]\nformat = "int"\nbits = 12\n')
    assert main(["run", "--plan", str(bad), "--out", str(out)]) == 2
    assert "bits must be in 2..8" in capsys.readouterr().err
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "typo"\n[default]\nformat = "int"\nbits = 4\ngroup_size = 64\n'
                    '[[override]]\nmatch = "model.layers.*.self_atn.*"\nformat = "int"\nbits = 8\n')
    assert main(["run", "--plan", str(typo), "--variants", "none", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'model.layers.*.self_atn.*' matches no layer" in err and "model.layers.0.self_attn" in err
    assert not out.exists()


def test_run_subprocess_on_embedded_default_exit_0(tmp_path):
    out = tmp_path / "rep"
    proc = subprocess.run(
        [sys.executable, "-m", "qcheck.cli", "run", "--variants", "w4g64", "--tokens", "256", "--context", "128",
         "--out", str(out), "-k", "test_precision_applied and (quantization_applied or plan_followed)"],
        check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "qcheck-report.json").read_text())
    assert report["status"] == "PASS"
    assert {c["name"] for c in report["checks"]} == {"quantization_applied", "plan_followed"}
    assert "qcheck run: PASS" in proc.stdout
    # where the wall time went (qcheck.timeline): every mark of the run, in order, in the records and the report's
    # meta; the reports' own writing time on the terminal line
    marks = report["records"]["meta"]["timeline"]
    assert list(marks) == ["imported", "memory_checked", "loaded", "validated", "collected", "opened", "measured",
                           "judged"]
    assert 0 <= marks["imported"] < 5 and list(marks.values()) == sorted(marks.values())
    assert report["meta"]["timeline"] == marks
    assert "time by phase: start-up and imports" in (out / "qcheck-report.md").read_text()
    assert re.search(r"qcheck: PASS; report written in \d+\.\d s", proc.stdout), proc.stdout[-2000:]


def test_run_with_workers_through_the_cli(tiny_folder, tmp_path):
    """`qcheck run --workers 2` on a CPU: the plugin spreads the variants over two processes, the latency checks
    judge timings the parent took alone afterwards, and the report's Run section says both."""
    out = tmp_path / "rep"
    proc = subprocess.run(
        [sys.executable, "-m", "qcheck.cli", "run", "--model", str(tiny_folder), "--device", "cpu", "--variants",
         "int8,w4g64", "--tokens", "256", "--context", "128", "--workers", "2", "--out", str(out),
         "-k", "perplexity_finite or latency_plausible"],
        check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "qcheck-report.json").read_text())
    meta = report["records"]["meta"]
    assert meta["workers"] == 2 and meta["timed_after_workers"]["measurements"] == ["latency"]
    assert sorted(n for names in meta["workers_measured"].values() for n in names) == ["fp32", "int8", "w4g64"]
    checks = {(c["name"], c.get("variant")): c["status"] for c in report["checks"]}
    assert checks[("perplexity_finite", "int8")] == "PASS" and checks[("plausible_speed", "int8")] != "ERROR"
    assert "workers: 2 processes measured the variants; 2 workers shared the CPU" in \
        (out / "qcheck-report.md").read_text()


# ---------------------------------------------------------------- bad input: exit 2 before anything runs (issue 17)

def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_checkpoint_names_the_file(tiny_folder, tmp_path, capsys):
    model = _copy_model(tiny_folder, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["run", "--model", str(model), "--device", "cpu", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "rep").exists()


def test_a_context_past_the_models_positions_is_refused_before_anything_runs(tmp_path, smollm2_tokenizer, capsys):
    """An OPT-style model with learned positions for 512 tokens and the default --context 1024: every perplexity and
    fidelity step raised IndexError inside torch (5 ERRORs, RESULTS.md session 29); now exit 2 naming what to pass.
    With --context 512 the same model runs."""
    from transformers import AutoModelForCausalLM, OPTConfig

    config = OPTConfig(vocab_size=len(smollm2_tokenizer), max_position_embeddings=512, hidden_size=64, ffn_dim=128,
                       num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64, bos_token_id=1,
                       eos_token_id=2, pad_token_id=2)
    model = tmp_path / "opt512"
    AutoModelForCausalLM.from_config(config).save_pretrained(model)
    smollm2_tokenizer.save_pretrained(model)
    argv = ["run", "--model", str(model), "--device", "cpu", "--variants", "int8", "-k", "perplexity_finite"]
    assert main([*argv, "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "--context 1024 is longer than the 512 positions" in err and "pass --context 512 or less" in err
    assert "Traceback" not in err and not (tmp_path / "rep").exists()
    assert main([*argv, "--context", "512", "--tokens", "1024", "--out", str(tmp_path / "ok")]) == 0


@pytest.mark.parametrize("rope, expected", [
    (None, 4096),
    ({"rope_type": "linear", "factor": 4.0}, 16384),  # a linearly scaled fine-tune: the config keeps the original
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}, 16384),  # Qwen2.5's yarn
    ({"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 1024}, 4096),  # DeepSeek-V3's style
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0}, 4096),  # Llama-3.1: max_position_embeddings already counts it
])
def test_trained_context_reads_rotary_scaling(rope, expected):
    from transformers import LlamaConfig

    from qcheck.inputs.models import trained_context

    kwargs = {"rope_scaling": rope} if rope else {}
    assert trained_context(LlamaConfig(max_position_embeddings=4096, **kwargs)) == expected
    assert trained_context(object()) is None  # a config that does not say: nothing refused


def test_checkpoint_missing_a_tensor_names_it(tiny_folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = _copy_model(tiny_folder, tmp_path / "model")
    state = load_file(model / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    assert main(["run", "--model", str(model), "--device", "cpu", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "missing from the checkpoint" in err and "model.layers.0.mlp.up_proj.weight" in err


def test_nan_in_the_reference_is_blamed_on_the_reference(tiny_folder, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    model = _copy_model(tiny_folder, tmp_path / "model")
    state = load_file(model / "model.safetensors")
    state["model.layers.1.self_attn.o_proj.weight"][0, :3] = torch.nan
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    assert main(["run", "--model", str(model), "--device", "cpu", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "reference model's own weights hold NaN/inf" in err and "model.layers.1.self_attn.o_proj.weight" in err


@pytest.mark.parametrize("case", ["out-is-a-file", "empty-text", "binary-text", "three-tokens", "context-1",
                                  "no-variants", "junk-ptq", "slice-past-the-end", "new-tokens-0", "unknown-prompt",
                                  "malformed-prompt", "chat-template-on-without-one"])
def test_bad_options_exit_2_before_anything_runs(case, tiny_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rep"
    args = ["run", "--model", str(tiny_folder), "--device", "cpu", "--variants", "int8", "--out", str(out)]
    expected = {"out-is-a-file": "a file is in the way", "empty-text": "holds no text",
                "binary-text": "not UTF-8 text", "three-tokens": "a run needs at least 256",
                "context-1": "--context must be an integer >= 2", "no-variants": "no variant to check",
                "junk-ptq": "junk", "slice-past-the-end": "lower --slice",
                "new-tokens-0": "--new-tokens must be an integer >= 1",
                "unknown-prompt": "--prompt gsm8k_9shot: no prompt file 'gsm8k_9shot'",
                "malformed-prompt": "stop must be a list of non-empty strings",
                "chat-template-on-without-one": "has no chat template; pass --chat-template off"}[case]
    if case == "out-is-a-file":
        out.write_text("not a folder")
    elif case in ("empty-text", "binary-text", "three-tokens"):
        text = tmp_path / "text.txt"
        {"empty-text": lambda: text.write_text("  \n"), "binary-text": lambda: text.write_bytes(b"\x89PNG\xff\xfe\x00"),
         "three-tokens": lambda: text.write_text("three tokens here")}[case]()
        args += ["--text", str(text)]
    elif case == "context-1":
        args += ["--context", "1"]
    elif case == "no-variants":
        args[args.index("int8")] = "none"
    elif case == "junk-ptq":
        monkeypatch.setenv("QCHECK_PTQ", "junk")
    elif case == "slice-past-the-end":
        args += ["--slice", "5000"]
    elif case == "new-tokens-0":
        args += ["--new-tokens", "0"]
    elif case == "unknown-prompt":
        args += ["--prompt", "gsm8k_9shot"]
    elif case == "malformed-prompt":
        prompt = tmp_path / "p.json"
        prompt.write_text('{"name": "p", "shots": [{"question": "q", "answer": "a"}], "stop": "Q:"}')
        args += ["--prompt", str(prompt)]
    elif case == "chat-template-on-without-one":
        model = _copy_model(tiny_folder, tmp_path / "model")
        config = json.loads((model / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (model / "tokenizer_config.json").write_text(json.dumps(config))
        (model / "chat_template.jinja").unlink(missing_ok=True)
        args[args.index(str(tiny_folder))] = str(model)
        args += ["--chat-template", "on"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert out.is_file() if case == "out-is-a-file" else not out.exists()


def test_plan_errors_name_the_file(tmp_path, capsys, tiny_folder):
    bad = tmp_path / "my_plan.toml"
    bad.write_text('[default]\nformat = "int"\nbits = 4\ngroup_size = 60\n')
    assert main(["run", "--model", str(tiny_folder), "--device", "cpu", "--plan", str(bad), "--variants", "none",
                 "--out", str(tmp_path / "rep")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_a_k_expression_selecting_nothing_exits_2_and_writes_no_report(tiny_folder, tmp_path):
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "qcheck.cli", "run", "--model", str(tiny_folder), "--device", "cpu",
                           "--variants", "int8", "--out", str(out), "-k", "no_such_check"],
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no check selected by -k 'no_such_check'" in proc.stderr
    assert not (out / "qcheck-report.json").exists()


def test_a_model_without_linear_layers_exits_2_naming_them_and_writes_nothing(tmp_path, smollm2_tokenizer, capsys):
    """A random-init GPT-2 saved as a folder: its projections are transformers' Conv1D, which no plan addresses, so
    every quantizing variant would have reported its weights as quantized while leaving them as they were."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", vocab_size=len(smollm2_tokenizer), n_embd=64, n_layer=2, n_head=4,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
    folder = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    assert main(["run", "--model", str(folder), "--device", "cpu", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "Conv1D.weight" in err and "outside nn.Linear" in err and "Traceback" not in err
    assert not (tmp_path / "rep").exists()


def test_a_moe_model_runs_its_experts_and_skips_bitsandbytes_saying_why(tmp_path, smollm2_tokenizer):
    """A random-init Mixtral saved as a folder: int8 reaches its fused experts (judged by quantization_applied and
    plan_followed), and bitsandbytes, which stores nn.Linear layers only, is skipped naming the experts."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mixtral", vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  num_local_experts=4, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=2)
    folder = tmp_path / "mixtral"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    out = tmp_path / "rep"
    code = main(["run", "--model", str(folder), "--device", "cpu", "--out", str(out), "--variants", "int8,bnb-int8",
                 "-k", "quantization_applied or plan_followed"])
    assert code == 0
    checks = json.loads((out / "qcheck-report.json").read_text())["checks"]
    by = {(c["name"], c["variant"]): c for c in checks}
    applied = by[("quantization_applied", "int8")]
    assert applied["status"] == "PASS" and "model.layers.1.mlp.experts.down_proj" in applied["evidence"]["layers"]
    assert by[("plan_followed", "int8")]["status"] == "PASS"
    skipped = by[("quantization_applied", "bnb-int8")]
    assert skipped["status"] == "SKIPPED" and "bitsandbytes stores nn.Linear layers only" in skipped["message"]


