"""The seeds' published tables: `qcheck lint` reports exactly these findings, and none on the corrected tables."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from qcheck.lint import lint_paths

RESULTS = Path(__file__).resolve().parents[2] / "fixtures" / "results"

# file -> {(rule id, rows (1-based), columns)}
EXPECTED: dict[str, set[tuple[str, tuple[int, ...], tuple[str, ...]]]] = {
    "seed000_quantization.csv": {
        ("Q001-identical-across-precision", (1, 2), ("perplexity",)),           # Z1: FP32 == 16-bit
        ("Q011-ppl-improves-with-fewer-bits", (3,), ("perplexity",)),          # 4-bit below FP32, no interval
        ("Q012-mixed-outside-uniform-bounds", (4,), ("perplexity",)),          # Z2: Mixed 1298
    },
    "seed000_robustness.csv": {
        ("Q006-robust-above-clean", (2,), ("clean_acc", "robust_acc")),        # Z3: Dynamic
    },
    "seed000_throughput.csv": {
        ("Q014-speed-flat-across-precision", (1, 2, 3), ("throughput_tok_s",)),  # Z4: 1.6% across 32/16/4
    },
    "seed001_gpt2_formats.csv": {
        ("Q013-ppl-implausible", (1, 2, 3), ("perplexity", "context_length")),   # Z6: 217 at 128 tokens
        ("Q017-reduced-precision-slower", (3,), ("energy_mj", "latency_ms", "throughput_samples_s")),  # Z5
    },
    "seed002_metrics_summary.csv": {
        ("Q002-missing-value", (4, 5, 6, 7, 8, 9, 10), ("avg_abs_diff",)),     # Z8: NaN
        ("Q003-aggregate-inconsistent", (11,), ("avg_abs_diff",)),             # Z8: mean skips NaN
        ("Q004-zero-score-across-models", (4, 5, 6, 7, 8, 9, 10), ("accuracy",)),  # Z7
        ("Q004-zero-score-across-models", (4, 5, 6, 7, 8, 9, 10), ("f1",)),
        ("Q005-constant-across-models", tuple(range(1, 11)), ("squad_f1",)),   # Z8: 50.0 everywhere
        ("Q016-quantized-much-slower", (4, 5, 6, 7, 8, 9, 10), ("sec_per_sample",)),  # Z9: ~10x slower
    },
    "seed002_debug_records.jsonl": {
        ("Q021-empty-outputs", (1, 2, 3, 4, 5), ("response",)),                # Z7: every reply empty
    },
    "seed003_ptq_qat.csv": {
        ("Q007-at-chance", (2, 9), ("accuracy",)),                              # Z11: 4-bit 0.5 on binary
        ("Q010-compressed-beats-baseline", (10, 11, 12, 13, 14, 15), ("accuracy",)),  # QAT > FP32
    },
    "seed003_pruning.csv": {
        ("Q007-at-chance", (7, 8, 9, 10), ("accuracy",)),                       # random 60-90%
        ("Q009-difference-within-noise", (11,), ("accuracy",)),                 # L1 10% > baseline, in noise
    },
    "seed003_mixed_precision_trials.csv": {
        ("Q019-sentinel-values", (1 + t for t in range(20) if t not in (0, 1, 3, 7, 12, 16)), ("value",)),  # Z10
    },
    "seed003_nas_samplers.csv": set(),                                          # identical bests are legitimate
    "seed004_accuracy.csv": {
        ("Q001-identical-across-precision", (1, 2), ("accuracy",)),            # Z1: 4-bit == 2-bit (ARC)
        ("Q001-identical-across-precision", (3, 4), ("accuracy",)),            # Z1: 4-bit == 2-bit (SVAMP)
        ("Q007-at-chance", (1, 2), ("accuracy",)),                              # Z11: 1/20 on 4-way
        ("Q008-underpowered", (1, 2, 3, 4), ("n",)),                            # Z11: n = 20
        ("Q014-speed-flat-across-precision", (1, 2), ("processing_time_s",)),
        ("Q014-speed-flat-across-precision", (3, 4), ("processing_time_s",)),
        ("Q015-implausible-speed", (1, 2, 3, 4), ("processing_time_s",)),      # Z12: 0.001 s for 20 samples
    },
}
EXPECTED = {k: {(r, tuple(rows), cols) for r, rows, cols in v} for k, v in EXPECTED.items()}
# the three tables of seed 000 again, as one JSON file holding a dict of tables
EXPECTED["seed000_tables.json"] = (EXPECTED["seed000_quantization.csv"] | EXPECTED["seed000_robustness.csv"]
                                   | EXPECTED["seed000_throughput.csv"])

SEVERITIES = {
    "Q001-identical-across-precision": {"seed000_quantization.csv": "error", "seed004_accuracy.csv": "warning"},
}

CORRECTED = sorted(p.name for p in RESULTS.glob("*_fixed.*"))


def _found(path: Path) -> set[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    return {(f.rule, f.rows, f.columns) for f in lint_paths([str(path)])}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_table_findings_are_exact(name: str) -> None:
    assert _found(RESULTS / name) == EXPECTED[name]


def test_every_seed_table_is_covered() -> None:
    seeds = {p.name for p in RESULTS.iterdir() if p.name.startswith("seed") and "_fixed" not in p.name}
    assert seeds == set(EXPECTED)
    assert {name.replace("_fixed", "") for name in CORRECTED} <= set(EXPECTED)


@pytest.mark.parametrize("name", CORRECTED)
def test_corrected_tables_are_clean(name: str) -> None:
    assert lint_paths([str(RESULTS / name)]) == []


def test_json_bundle_names_its_tables() -> None:
    findings = lint_paths([str(RESULTS / "seed000_tables.json")])
    assert {(f.table, f.rule) for f in findings} == {
        ("quantization", "Q001-identical-across-precision"), ("quantization", "Q011-ppl-improves-with-fewer-bits"),
        ("quantization", "Q012-mixed-outside-uniform-bounds"), ("robustness", "Q006-robust-above-clean"),
        ("throughput", "Q014-speed-flat-across-precision")}
    assert findings[0].location.endswith("seed000_tables.json:quantization")


def test_severities_follow_the_evidence() -> None:
    quant = {f.rule: f.severity.value for f in lint_paths([str(RESULTS / "seed000_quantization.csv")])}
    assert quant == {"Q001-identical-across-precision": "error", "Q011-ppl-improves-with-fewer-bits": "info",
                     "Q012-mixed-outside-uniform-bounds": "error"}
    z004 = {(f.rule, f.severity.value) for f in lint_paths([str(RESULTS / "seed004_accuracy.csv")])}
    assert ("Q001-identical-across-precision", "warning") in z004
    assert ("Q015-implausible-speed", "error") in z004


def test_summary_is_checked_against_per_sample_records() -> None:
    findings = lint_paths([str(RESULTS / "seed002_metrics_summary.csv"), str(RESULTS / "seed002_debug_records.jsonl")])
    q020 = [f for f in findings if f.rule == "Q020-summary-not-reproduced"]
    assert [(f.rows, f.columns, os.path.basename(f.source)) for f in q020] == \
        [((4,), ("squad_f1",), "seed002_metrics_summary.csv")]
    assert q020[0].evidence["mismatches"]["4"]["records_mean"] == 0.0
    fixed = lint_paths([str(RESULTS / "seed002_metrics_summary_fixed.csv"),
                        str(RESULTS / "seed002_debug_records_fixed.jsonl")])
    assert fixed == []


def test_statistics_are_stated() -> None:
    ptq = {f.rule: f for f in lint_paths([str(RESULTS / "seed003_ptq_qat.csv")])}
    chance = ptq["Q007-at-chance"]
    assert "binomial" in chance.message and chance.evidence["rows_detail"]["2"]["n"] == 25000
    assert chance.evidence["rows_detail"]["2"]["p_greater"] > 0.05
    qat = ptq["Q010-compressed-beats-baseline"]
    first = qat.evidence["comparisons"][0]
    assert first["row"] == 10 and first["baseline_row"] == 1 and first["low"] > 0
    pruning = {f.rule: f for f in lint_paths([str(RESULTS / "seed003_pruning.csv")])}
    l1 = pruning["Q009-difference-within-noise"].evidence["comparisons"][0]
    assert l1["low"] < 0 < l1["high"] and l1["difference"] == pytest.approx(0.00586, abs=1e-4)
    z004 = {f.rule: f for f in lint_paths([str(RESULTS / "seed004_accuracy.csv")])}
    under = z004["Q008-underpowered"].evidence["rows_detail"]["1"]
    assert under["n"] == 20 and under["wilson_low"] == pytest.approx(0.00888, abs=1e-4)
    assert "n < 30" in z004["Q008-underpowered"].message


def test_messages_name_rows_and_columns() -> None:
    findings = {f.rule: f for f in lint_paths([str(RESULTS / "seed000_quantization.csv")])}
    message = findings["Q001-identical-across-precision"].message
    assert "rows 1 (FP32), 2 (16-bit)" in message and "perplexity" in message
    z001 = {f.rule: f for f in lint_paths([str(RESULTS / "seed001_gpt2_formats.csv")])}
    assert "context length is 128" in z001["Q013-ppl-implausible"].message
    assert "compute capability" in z001["Q017-reduced-precision-slower"].message


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_tables_are_read_as_written(name: str) -> None:
    """The layout rules for published tables (pivot, melt, header merge) leave the seed tables as they are."""
    from qcheck.lint.loader import load_all

    for table in load_all([str(RESULTS / name)]):
        assert table.note is None and not table.hints


def test_seed_bugs_are_still_caught_when_written_like_published_tables(tmp_path: Path) -> None:
    """Seed 000 and 004 as a README would print them: uncertainties, a unit in the cells, an OOM row."""
    quant = tmp_path / "seed000_readme.csv"
    quant.write_text("config,bits,perplexity\nFP32,32,171.9603271484375 ± 0.21\n16-bit,16,171.9603271484375 ± 0.21\n"
                     "4-bit,4,169.29 ± 0.20\nMixed,,1298.09 ± 1.9\n8-bit,8,OOM\n")
    found = {(f.rule, f.severity.value, f.rows) for f in lint_paths([str(quant)])}
    assert ("Q001-identical-across-precision", "error", (1, 2)) in found
    assert ("Q012-mixed-outside-uniform-bounds", "error", (4,)) in found
    assert ("Q002-missing-value", "info", (5,)) in found
    z004 = tmp_path / "seed004_readme.csv"
    z004.write_text("dataset,model,bits,accuracy,n,num_classes,processing_time\n"
                    "ARC-Easy,7B-class (32 layers),4,5.0%,20,4,1 ms\nARC-Easy,7B-class (32 layers),2,5.0%,20,4,1 ms\n")
    rules = {(f.rule, f.severity.value) for f in lint_paths([str(z004)])}
    assert {("Q001-identical-across-precision", "warning"), ("Q007-at-chance", "warning"),
            ("Q008-underpowered", "warning")} <= rules
