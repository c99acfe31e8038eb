"""`qcheck run` and model loading: clear errors with exit code 2 and nothing written; a real bounded run."""
import json
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
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "qcheck-report.json").read_text())
    assert report["status"] == "PASS"
    assert {c["name"] for c in report["checks"]} == {"quantization_applied", "plan_followed"}
    assert "qcheck run: PASS" in proc.stdout
