"""`qcheck lint` from the command line: formats, options, pyproject settings and exit codes 0/1/2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcheck.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "fixtures" / "results"
QUANT = str(RESULTS / "seed000_quantization.csv")
FIXED = str(RESULTS / "seed000_quantization_fixed.csv")
THROUGHPUT = str(RESULTS / "seed000_throughput.csv")


def test_exit_codes_and_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", QUANT]) == 1
    out = capsys.readouterr().out
    assert "error Q001-identical-across-precision" in out and "rows 1 (FP32), 2 (16-bit)" in out
    assert out.rstrip().endswith("1 file(s), 3 finding(s): 2 error(s), 0 warning(s), 1 info")
    assert main(["lint", FIXED]) == 0
    assert main(["lint", THROUGHPUT]) == 0   # a warning alone does not fail


def test_json_output_is_strict_and_complete(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", QUANT, THROUGHPUT, "--format", "json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["summary"] == {"error": 2, "warning": 1, "info": 1}
    rules = [f["rule"] for f in payload["findings"]]
    assert rules == ["Q001-identical-across-precision", "Q012-mixed-outside-uniform-bounds",
                     "Q011-ppl-improves-with-fewer-bits", "Q014-speed-flat-across-precision"]
    first = payload["findings"][0]
    assert first["rows"] == [1, 2] and first["row_labels"] == ["FP32", "16-bit"] and first["columns"] == ["perplexity"]
    assert first["evidence"]["significant_digits"] == 16


def test_markdown_output(capsys: pytest.CaptureFixture[str]) -> None:
    main(["lint", QUANT, "--format", "markdown"])
    out = capsys.readouterr().out
    assert "| severity | rule | where | rows | message |" in out
    assert "| error | `Q012-mixed-outside-uniform-bounds` |" in out


def test_baseline_reports_only_new_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = tmp_path / "baseline.json"
    assert main(["lint", QUANT, "--format", "json", "--output", str(baseline)]) == 1
    assert main(["lint", QUANT, THROUGHPUT, "--baseline", str(baseline), "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [f["rule"] for f in payload["findings"]] == ["Q014-speed-flat-across-precision"]
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["lint", QUANT, "--baseline", str(bad)]) == 2
    assert "not a `qcheck lint --format json` report" in capsys.readouterr().err


def test_column_option_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "odd.csv"
    table.write_text("setting,score,n_eval\nfp32,0.25,20\n")
    assert main(["lint", str(table)]) == 2
    assert "unknown layout" in capsys.readouterr().err
    assert main(["lint", str(table), "--column", "accuracy=score", "--num-classes", "4"]) == 0
    out = capsys.readouterr().out
    assert "Q007-at-chance" in out and "Q008-underpowered" in out
    assert main(["lint", str(table), "--column", "speed=score"]) == 2
    assert "unknown column role 'speed'" in capsys.readouterr().err
    assert main(["lint", str(table), "--column", "score"]) == 2
    assert "--column expects ROLE=COLUMN" in capsys.readouterr().err


def test_pyproject_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "odd.csv"
    table.write_text("setting,score,n_eval\nfp32,0.25,20\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.qcheck.lint]\ncolumns = { accuracy = "score" }\nnum_classes = 4\ndisable = ["Q008"]\n')
    monkeypatch.chdir(tmp_path)
    assert main(["lint", str(table), "--format", "json"]) == 0
    assert [f["rule"] for f in json.loads(capsys.readouterr().out)["findings"]] == ["Q007-at-chance"]
    (tmp_path / "pyproject.toml").write_text("[tool.qcheck.lint]\nchance = 4\n")
    assert main(["lint", str(table)]) == 2
    assert "unknown key 'chance'" in capsys.readouterr().err


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    root = str(RESULTS.parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "qcheck.cli", "lint", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=root, env=env)


def test_subprocess_exit_codes(tmp_path: Path) -> None:
    assert _run(FIXED).returncode == 0
    failing = _run(QUANT)
    assert failing.returncode == 1 and "Q012-mixed-outside-uniform-bounds" in failing.stdout
    missing = _run(str(tmp_path / "nope.csv"))
    assert missing.returncode == 2
    assert "qcheck lint: error:" in missing.stderr and "nope.csv: no such file" in missing.stderr
    layout = tmp_path / "layout.json"
    layout.write_text('{"a": 1}')
    unknown = _run(str(layout))
    assert unknown.returncode == 2 and "unknown JSON layout: top-level keys a" in unknown.stderr


def test_documented_settings_parse() -> None:
    import re

    import tomllib

    from qcheck.lint.config import config_from_mapping

    docs = (Path(__file__).resolve().parents[2] / "docs" / "lint.md").read_text()
    block = re.search(r"```toml\n(\[tool\.qcheck\.lint\].*?)```", docs, re.DOTALL).group(1)
    config = config_from_mapping(tomllib.loads(block)["tool"]["qcheck"]["lint"])
    assert config.num_classes == 4 and config.params == 7e9 and config.enabled("Q001") and not config.enabled("Q008")


def test_documented_example_output_is_current(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(RESULTS)
    assert main(["lint", "seed000_quantization.csv"]) == 1
    out = capsys.readouterr().out
    docs = (Path(__file__).resolve().parents[2] / "docs" / "lint.md").read_text()
    assert out.strip() in docs


def test_every_rule_is_documented() -> None:
    from qcheck.lint import RULES

    docs = (Path(__file__).resolve().parents[2] / "docs" / "lint.md").read_text()
    for spec in RULES:
        assert f"| `{spec.id}` | {spec.severities.replace('|', ' / ')} |" in docs, spec.id


def test_impossible_accuracy_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, values in (("fraction.csv", "0.71,0.70,-0.2"), ("percent.csv", "71.2,70.9,170.5")):
        table = tmp_path / name
        table.write_text("config,accuracy\n" + "".join(f"{c},{v}\n" for c, v in zip(["fp32", "int8", "int4"],
                                                                                     values.split(","))))
        assert main(["lint", str(table)]) == 1
        out = capsys.readouterr().out
        assert "error Q022-impossible-value" in out and "row 3 (int4)" in out


def test_bad_output_and_baseline_are_one_line_usage_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "baseline.json"
    garbage.write_bytes(bytes(range(256)) * 8)
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"findings": [{"rule": "Q001"}]}')
    cases = [(["-o", str(tmp_path)], "is a directory"), (["--baseline", str(garbage)], "binary data"),
             (["--baseline", str(not_a_report)], "'fingerprint'"), (["-o", QUANT], "is one of the files being linted")]
    for extra, message in cases:
        result = _run(QUANT, *extra)
        assert result.returncode == 2, (extra, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and message in result.stderr


def test_output_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "reports" / "lint.json"
    assert main(["lint", QUANT, "--format", "json", "-o", str(target)]) == 1
    assert json.loads(target.read_text())["summary"]["error"] == 2
    assert [p.name for p in target.parent.iterdir()] == ["lint.json"]      # no temporary file left behind
    import qcheck.report

    def fail(path: object, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(qcheck.report, "atomic_write_text", fail)
    assert main(["lint", QUANT, "-o", str(target)]) == 2
    assert json.loads(target.read_text())["summary"]["error"] == 2         # the old report is intact


def test_published_and_ecosystem_files_lint_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    published = sorted(str(p) for p in (RESULTS / "published").glob("*.csv"))
    assert main(["lint", *published, "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["summary"]["error"] == 0 and len(payload["files"]) == len(published)
    lm_eval = sorted(str(p) for p in (RESULTS / "ecosystem" / "lm-eval").glob("*.json"))
    assert main(["lint", *lm_eval]) == 0
    assert "warning Q008-underpowered" in capsys.readouterr().out   # one comparison of the two files
