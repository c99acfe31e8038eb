"""Real published tables: `qcheck lint` reads every one with no column hints and raises no false alarm; the same tables
with one planted bug are caught. Sources and the reason for each remaining finding: fixtures/results/published/SOURCES.md.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from qcheck.lint import LintConfig, lint_paths, lint_tables, table_from_csv_text
from qcheck.lint.loader import load_all, normalize_layout
from qcheck.lint.view import build_view

RESULTS = Path(__file__).resolve().parents[2] / "fixtures" / "results"
PUBLISHED = RESULTS / "published"
ECOSYSTEM = RESULTS / "ecosystem"

# file -> {(rule id, severity, rows (1-based, of the long form where the table was reshaped), columns)}
EXPECTED: dict[str, set[tuple[str, str, tuple[int, ...], tuple[str, ...]]]] = {
    "autoawq_benchmarks_rtx4090.csv": set(),
    "autogptq_inference_speed.csv": {("Q002-missing-value", "info", (7, 13, 15), ("result",))},
    "exllamav2_performance.csv": set(),
    "gptq_for_llama_llama7b.csv": {("Q002-missing-value", "info", (2, 5), ("memory(MiB)",)),
                                   ("Q002-missing-value", "info", (2, 5), ("checkpoint size(GB)",))},
    "gptq_for_llama_vs_bnb_llama13b.csv": {("Q002-missing-value", "info", (1,), ("memory(MiB)",)),
                                           ("Q002-missing-value", "info", (1,), ("c4(ppl)",))},
    "gptq_for_llama_vs_bnb_llama7b.csv": set(),
    "hf_bnb_int8_bloom176b_lm_eval.csv": {("Q009-difference-within-noise", "info", (5,), ("acc",))},
    "hf_bnb_int8_generation_speed.csv": {
        ("Q002-missing-value", "info", (4,), ("Time per token in milliseconds for Batch Size 32",))},
    "hf_bnb_int8_opt175b_lm_eval.csv": set(),
    "hf_overview_gptq_bnb_prefill_bs1.csv": set(),
    "hf_overview_open_llm_leaderboard_7b.csv": set(),
    "llamacpp_llama2_70b_scoreboard.csv": {("Q002-missing-value", "info", (13,), ("Delta to fp16",))},
    "llamacpp_llama3_8b_scoreboard.csv": set(),
    "llamacpp_llama3_bf16_vs_fp16.csv": set(),
    "llamacpp_quantize_measures.csv": {("Q002-missing-value", "info", (7,), ("ms/tok @ 4th",)),
                                       ("Q002-missing-value", "info", (7,), ("ms/tok @ 8th",))},
    "smoothquant_w8a8_perplexity.csv": set(),
    "tinychat_deepseek_r1_distill_llama8b.csv": set(),
    "tinychat_deepseek_r1_distill_qwen7b.csv": set(),
    "tinychat_rtx4090_decoding.csv": {("Q002-missing-value", "info", (5, 11), ("latency (ms)",))},
    "tinychat_vila15_3b_accuracy.csv": set(),
    "torchao_llama_a100.csv": {("Q016-quantized-much-slower", "warning", (2, 9), ("Tokens/Second",))},
}
CORPUS = sorted(p.name for p in PUBLISHED.glob("*.csv"))


def _found(paths: list[Path]) -> set[tuple[str, str, tuple[int, ...], tuple[str, ...]]]:
    return {(f.rule, f.severity.value, f.rows, f.columns) for f in lint_paths([str(p) for p in paths])}


def test_corpus_has_at_least_twelve_tables_each_with_a_source() -> None:
    assert len(CORPUS) >= 12 and set(CORPUS) == set(EXPECTED)
    sources = (PUBLISHED / "SOURCES.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([^`]+\.csv)` \| (https://\S+|same \w+)", sources, re.MULTILINE))
    assert set(listed) == set(CORPUS)
    assert len({url for url in listed.values() if url.startswith("https://")}) >= 8   # distinct published sources


@pytest.mark.parametrize("name", CORPUS)
def test_published_table_is_read_without_hints_and_raises_no_false_alarm(name: str) -> None:
    found = _found([PUBLISHED / name])
    assert found == EXPECTED[name]
    assert not [f for f in found if f[1] == "error"]


@pytest.mark.parametrize("name", CORPUS)
def test_every_measured_column_gets_a_meaningful_role(name: str) -> None:
    """No numeric column of a published table is left as an unnamed generic 'metric' (melted values excepted)."""
    for table in load_all([str(PUBLISHED / name)]):
        view = build_view(table, LintConfig())
        generic = [c for c, r in view.roles.items() if r == "metric" and table.hints.get(c) != "metric"]
        assert generic == [], (name, view.roles)


def test_roles_of_the_false_alarm_classes() -> None:
    """The issue's classes of misread columns, each in the real table where it was seen."""
    def roles(name: str) -> dict[str, str]:
        return build_view(load_all([str(PUBLISHED / name)])[0], LintConfig()).roles

    assert roles("torchao_llama_a100.csv")["Tokens/Second"] == "throughput"
    assert roles("torchao_llama_a100.csv")["Technique"] == "config"
    assert roles("autoawq_benchmarks_rtx4090.csv")["Version"] == "config"
    assert roles("autoawq_benchmarks_rtx4090.csv")["Prefill tokens/s"] == "throughput"
    assert roles("autoawq_benchmarks_rtx4090.csv")["Batch Size"] == "batch"
    assert roles("llamacpp_quantize_measures.csv")["ms/tok @ 4th"] == "latency"
    assert roles("hf_bnb_int8_generation_speed.csv")["Time per token in milliseconds for Batch Size 1"] == "latency"
    assert roles("hf_bnb_int8_generation_speed.csv")["Hardware"] == "condition"
    assert roles("exllamav2_performance.csv")["4090"] == "throughput"
    assert roles("exllamav2_performance.csv")["grpsz"] == "qparam"
    assert roles("gptq_for_llama_llama7b.csv")["Wikitext2"] == "ppl"
    assert roles("gptq_for_llama_llama7b.csv")["group-size"] == "qparam"
    assert roles("gptq_for_llama_vs_bnb_llama7b.csv")["c4(ppl)"] == "ppl"
    assert roles("smoothquant_w8a8_perplexity.csv")["Method"] == "config"
    assert roles("autogptq_inference_speed.csv")["num_beams"] == "condition"
    assert roles("autogptq_inference_speed.csv")["GPU"] == "condition"
    vila = roles("tinychat_vila15_3b_accuracy.csv")
    assert vila["ScienceQA"] == vila["TextVQA"] == vila["SEED"] == "score"


def test_reshaped_layouts_keep_every_number() -> None:
    quantize = load_all([str(PUBLISHED / "llamacpp_quantize_measures.csv")])[0]
    assert quantize.n_rows == 12 and "pivoted" in (quantize.note or "")
    assert quantize.columns["perplexity"].values.tolist()[:6] == [5.9066, 6.1565, 6.0912, 5.9862, 5.9481, 5.9070]
    opt = load_all([str(PUBLISHED / "hf_bnb_int8_opt175b_lm_eval.csv")])[0]
    fp16 = opt.columns["config"].raw.index("fp16")
    assert opt.columns["acc_norm"].values[fp16] == 0.7849 and opt.columns["acc_norm"].errors[fp16] == 0.0041
    speed = load_all([str(PUBLISHED / "autogptq_inference_speed.csv")])[0]
    assert speed.n_rows == 16 and int(speed.columns["result"].is_state("failed").sum()) == 3


def _planted(name: str, row: int, column: str, text: str) -> str:
    rows = list(csv.reader(io.StringIO((PUBLISHED / name).read_text(encoding="utf-8"))))
    rows[row][rows[0].index(column)] = text
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


@pytest.mark.parametrize("name, row, column, text, rule, severity", [
    # a 3-bit RTN perplexity copied from FP16, every other column of the row unmeasured: Z1
    ("gptq_for_llama_llama7b.csv", 5, "Wikitext2", "5.68", "Q001-identical-across-precision", "warning"),
    # ARC as 170.5 among scores near 50: impossible on the percent scale the column shows
    ("hf_overview_open_llm_leaderboard_7b.csv", 2, "ARC", "170.5", "Q022-impossible-value", "error"),
    # a perplexity below 1
    ("llamacpp_llama3_8b_scoreboard.csv", 3, "PPL", "0.953382 ±   0.038078", "Q022-impossible-value", "error"),
    # fp16 reported slower than the int8 rows of the same table: the reference for the 8-bit rows becomes 10x faster
    ("torchao_llama_a100.csv", 3, "Tokens/Second", "17.083", "Q016-quantized-much-slower", "warning"),
])
def test_published_table_with_a_planted_bug_is_caught(name: str, row: int, column: str, text: str, rule: str,
                                                      severity: str) -> None:
    table = normalize_layout(table_from_csv_text(_planted(name, row, column, text), name))
    found = {(f.rule, f.severity.value) for f in lint_tables([table])}
    assert (rule, severity) in found


def test_optimum_benchmark_reports_are_compared_as_one_table() -> None:
    paths = sorted(ECOSYSTEM.glob("optimum-benchmark/*/benchmark.json"))
    assert len(paths) == 3
    tables = load_all([str(p) for p in paths])
    assert len(tables) == 1 and tables[0].n_rows == 12
    view = build_view(tables[0], LintConfig())
    assert view.roles["stage"] == "condition" and view.roles["latency mean (s)"] == "latency"
    assert view.roles["throughput (tokens/s)"] == "throughput" and view.roles["max_allocated (MB)"] == "memory"
    assert sorted(set(tables[0].columns["config"].raw)) == ["bfloat16", "gptq bits=2", "gptq bits=4 group_size=128"]
    found = _found(paths)
    assert found == {("Q016-quantized-much-slower", "warning", (10,), ("latency mean (s)",)),
                     ("Q016-quantized-much-slower", "warning", (10,), ("throughput (samples/s)",))}


def test_lm_eval_files_written_by_lm_eval_are_compared() -> None:
    paths = sorted(ECOSYSTEM.glob("lm-eval/*.json"))
    assert len(paths) == 2
    table = load_all([str(p) for p in paths])[0]
    assert sorted(table.columns["config"].raw) == ["dtype=bfloat16", "dtype=float32"]
    assert _found(paths) == {("Q008-underpowered", "warning", (1, 2), ("n",))}
