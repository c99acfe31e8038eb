"""Readers of what the ecosystem writes: lm-evaluation-harness results, optimum-benchmark reports, pytest-benchmark
JSON. Inputs are files those tools wrote (fixtures/results/ecosystem, or pytest-benchmark run here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcheck.lint import LintConfig, lint_paths
from qcheck.lint.loader import load_all, load_tables
from qcheck.lint.readers import lm_eval
from qcheck.lint.view import build_view

ECOSYSTEM = Path(__file__).resolve().parents[2] / "fixtures" / "results" / "ecosystem"
LM_EVAL = sorted((ECOSYSTEM / "lm-eval").glob("*.json"))
OPTIMUM = sorted((ECOSYSTEM / "optimum-benchmark").glob("*/benchmark.json"))


def test_lm_eval_file_becomes_one_row_per_task() -> None:
    (table,) = load_tables(str(LM_EVAL[0]))
    data = json.loads(LM_EVAL[0].read_text())
    task = next(iter(data["results"]))
    assert table.name == task and table.n_rows == 1 and table.meta["family"] == "lm-eval"
    assert table.columns["n"].values[0] == data["n-samples"][task]["effective"]
    assert table.columns["acc"].errors[0] == pytest.approx(data["results"][task]["acc_stderr,none"])
    assert table.meta["scales"] == {"acc": 1.0, "acc_norm": 1.0}


@pytest.mark.parametrize("args, label", [
    ("pretrained=/m/tiny,dtype=float16", "dtype=float16"),
    ("pretrained=meta-llama/Llama-2-7b-hf,load_in_4bit=True,trust_remote_code=True", "load_in_4bit=True"),
    ("pretrained=TheBloke/Llama-2-13B-GPTQ,revision=gptq-4bit-128g-actorder_True",
     "revision=gptq-4bit-128g-actorder_True"),
    ({"pretrained": "m", "dtype": "bfloat16"}, "dtype=bfloat16"),
])
def test_lm_eval_variant_comes_from_model_args(args: object, label: str) -> None:
    model, got = lm_eval.variant({"config": {"model": "hf", "model_args": args}}, "r.json")
    assert got == label and "/" not in model


def test_lm_eval_metrics_with_filters_and_na_stderr(tmp_path: Path) -> None:
    data = json.loads(LM_EVAL[0].read_text())
    data["results"]["wikitext"] = {"alias": "wikitext", "word_perplexity,none": 17.25,
                                   "word_perplexity_stderr,none": "N/A", "byte_perplexity,none": 1.7,
                                   "byte_perplexity_stderr,none": "N/A", "bits_per_byte,none": 0.77,
                                   "bits_per_byte_stderr,none": "N/A"}
    data["results"]["gsm8k"] = {"alias": "gsm8k", "exact_match,strict-match": 0.25,
                                "exact_match_stderr,strict-match": 0.012, "exact_match,flexible-extract": 0.27,
                                "exact_match_stderr,flexible-extract": 0.012}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    tables = {t.name: t for t in load_tables(str(path))}
    wiki = build_view(tables["wikitext"], LintConfig())
    assert wiki.roles["word_perplexity"] == "ppl" and wiki.roles["bits_per_byte"] == "measure"
    gsm = tables["gsm8k"]
    assert gsm.columns["exact_match,strict-match"].errors[0] == pytest.approx(0.012)
    assert build_view(gsm, LintConfig()).roles["exact_match,flexible-extract"] == "em"
    assert not [f for f in lint_paths([str(path)]) if f.severity.value == "error"]   # bits_per_byte < 1 is fine


def test_optimum_benchmark_json_rows_per_stage() -> None:
    (table,) = load_tables(str(OPTIMUM[0]))
    report = json.loads(OPTIMUM[0].read_text())["report"]
    assert table.columns["stage"].raw == tuple(report)
    prefill = table.columns["stage"].raw.index("prefill")
    latency = report["prefill"]["latency"]
    assert table.columns["latency mean (s)"].values[prefill] == pytest.approx(latency["mean"])
    assert table.columns["latency mean (s)"].errors[prefill] == pytest.approx(latency["stdev"])
    assert table.columns["load time (s)"].values[table.columns["stage"].raw.index("load_model")] == \
        pytest.approx(report["load_model"]["latency"]["mean"])


def test_optimum_benchmark_report_alone_takes_its_run_folder_as_the_label(tmp_path: Path) -> None:
    folder = tmp_path / "llama_gptq_2bit"
    folder.mkdir()
    (folder / "benchmark_report.json").write_text(json.dumps(json.loads(OPTIMUM[2].read_text())["report"]))
    (table,) = load_tables(str(folder / "benchmark_report.json"))
    assert set(table.columns["config"].raw) == {"llama_gptq_2bit"}


BENCH = '''
import pytest

@pytest.mark.parametrize("config", ["fp32", "int8"])
def test_forward(benchmark, config):
    data = list(range(2000))
    benchmark.extra_info["bits"] = 32 if config == "fp32" else 8
    benchmark(sorted, data)
'''


@pytest.fixture(scope="module")
def pytest_benchmark_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --benchmark-json file written by pytest-benchmark itself."""
    pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")
    root = tmp_path_factory.mktemp("bench")
    (root / "test_bench.py").write_text(BENCH)
    out = root / "bench.json"
    # pytest-benchmark disables itself in a pytest-xdist worker's environment (`pytest -n 2`): not this inner run's
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"} | {"PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:qcheck",
                           "-o", "addopts=", "--benchmark-json", str(out), "--benchmark-min-rounds=5",
                           "--benchmark-max-time=0.05", str(root / "test_bench.py")],
                          cwd=root, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_pytest_benchmark_json_is_read(pytest_benchmark_json: Path) -> None:
    data = json.loads(pytest_benchmark_json.read_text())
    (table,) = load_all([str(pytest_benchmark_json)])
    view = build_view(table, LintConfig())
    assert table.columns["config"].raw == ("fp32", "int8")
    assert view.roles["mean time per call (s)"] == "latency" and view.roles["benchmark"] == "task"
    assert [k.bits for k in view.kinds] == [32, 8]
    for row, bench in enumerate(data["benchmarks"]):
        assert table.columns["mean time per call (s)"].values[row] == pytest.approx(bench["stats"]["mean"])
        assert table.columns["mean time per call (s)"].errors[row] == pytest.approx(bench["stats"]["stddev"])
    assert not [f for f in lint_paths([str(pytest_benchmark_json)]) if f.severity.value == "error"]
