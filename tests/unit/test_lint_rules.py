"""Each lint rule on small in-memory tables: what fires, on which rows and columns, and what does not."""
from __future__ import annotations

from typing import Any

import pytest

from qcheck.errors import ConfigError, DataError
from qcheck.lint import LintConfig, filter_baseline, lint_tables, table_from_records
from qcheck.lint.findings import Finding, Severity


def lint(records: list[dict[str, Any]], **config: Any) -> list[Finding]:
    return lint_tables([table_from_records(records, "mem.json")], LintConfig(**config))


def hits(records: list[dict[str, Any]], **config: Any) -> set[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    return {(f.rule, f.rows, f.columns) for f in lint(records, **config)}


def only(rule: str, records: list[dict[str, Any]], **config: Any) -> list[Finding]:
    return [f for f in lint(records, **config) if f.rule == rule]


def test_q001_tie_severity_depends_on_digits_and_bits() -> None:
    rule = "Q001-identical-across-precision"
    exact = only(rule, [{"config": "fp32", "ppl": 12.345678}, {"config": "fp16", "ppl": 12.345678}])
    assert [(f.severity, f.rows) for f in exact] == [(Severity.ERROR, (1, 2))]
    low_bits = only(rule, [{"config": "int4", "acc": 0.61}, {"config": "int2", "acc": 0.61}])
    assert [f.severity for f in low_bits] == [Severity.WARNING]
    coarse_high = only(rule, [{"config": "fp32", "ppl": 217}, {"config": "fp16", "ppl": 217}])
    assert coarse_high == []
    same_bits = only(rule, [{"config": "PTQ", "bits": 4, "acc": 0.61234}, {"config": "QAT", "bits": 4, "acc": 0.61234}])
    assert same_bits == []


def test_q002_reports_nan_none_empty_inf_and_text() -> None:
    found = only("Q002-missing-value", [{"config": "a", "acc": None}, {"config": "b", "acc": "NaN"},
                                        {"config": "c", "acc": float("inf")}, {"config": "d", "acc": "oops"},
                                        {"config": "e", "acc": 0.5}])
    assert [(f.rows, f.columns, f.severity) for f in found] == [((1, 2, 3, 4), ("acc",), Severity.ERROR)]


def test_q003_recomputes_mean_within_printed_resolution() -> None:
    rows = [{"config": "a", "acc": 0.5}, {"config": "b", "acc": 0.7}]
    assert only("Q003-aggregate-inconsistent", rows + [{"config": "mean", "acc": "0.6"}]) == []
    bad = only("Q003-aggregate-inconsistent", rows + [{"config": "mean", "acc": "0.65"}])
    assert [(f.rows, f.evidence["recomputed"]) for f in bad] == [((3,), pytest.approx(0.6))]
    total = only("Q003-aggregate-inconsistent", rows + [{"config": "total", "acc": "1.2"}])
    assert total == []


def test_q004_and_q005_need_distinct_models() -> None:
    zeros = [{"model": f"m{i}", "f1": 0.0} for i in range(3)] + [{"model": "ref", "f1": 0.4}]
    assert hits(zeros) == {("Q004-zero-score-across-models", (1, 2, 3), ("f1",))}
    assert only("Q004-zero-score-across-models", zeros[1:]) == []
    constant = [{"model": f"m{i}", "f1": 50.0} for i in range(4)]
    assert hits(constant) == {("Q005-constant-across-models", (1, 2, 3, 4), ("f1",))}
    assert only("Q005-constant-across-models", constant[:3]) == []


def test_q006_robust_above_clean_handles_percent() -> None:
    found = hits([{"config": "a", "clean_acc": 40.4, "robust_acc": 40.2}, {"config": "b", "clean_acc": 40.9,
                                                                           "robust_acc": 41.1}])
    assert found == {("Q006-robust-above-clean", (2,), ("clean_acc", "robust_acc"))}


def test_q007_binomial_test_and_margin_without_n() -> None:
    rows = [{"config": "a", "acc": 0.30, "n": 100, "num_classes": 4},   # 30/100 vs 0.25: p ~ 0.15 -> at chance
            {"config": "b", "acc": 0.40, "n": 100, "num_classes": 4},   # p < 0.001 -> above chance
            {"config": "c", "acc": 0.51, "num_classes": 2},             # no n: within 0.02 of 1/2
            {"config": "d", "acc": 0.60, "num_classes": 2}]
    found = only("Q007-at-chance", rows)
    assert [f.rows for f in found] == [(1, 3)]
    detail = found[0].evidence["rows_detail"]
    assert detail["1"]["p_greater"] == pytest.approx(0.1495, abs=1e-3) and detail["3"]["n"] is None
    assert only("Q007-at-chance", [{"config": "a", "acc": 0.5}]) == []
    assert [f.rows for f in only("Q007-at-chance", [{"config": "a", "acc": 0.5}], num_classes=2)] == [(1,)]


def test_q008_underpowered_threshold() -> None:
    rows = [{"config": "a", "acc": 0.5, "n": 29}, {"config": "b", "acc": 0.5, "n": 30}]
    assert hits(rows) == {("Q008-underpowered", (1,), ("n",))}


def test_q009_q010_compare_with_the_right_baseline() -> None:
    rows = [{"config": "fp32", "acc": 0.800, "n": 10000}, {"config": "int8", "acc": 0.803, "n": 10000},
            {"config": "int4", "acc": 0.810, "n": 10000}, {"config": "qat", "acc": 0.830, "n": 10000}]
    found = hits(rows)
    assert ("Q009-difference-within-noise", (3,), ("acc",)) in found    # +0.010, interval crosses 0
    assert ("Q010-compressed-beats-baseline", (4,), ("acc",)) in found  # +0.030, beyond noise
    assert not any(rows_ == (2,) for _, rows_, _ in found)              # +0.003 < min_effect: a tie


def test_q009_without_n_says_no_interval() -> None:
    found = only("Q009-difference-within-noise", [{"config": "fp32", "acc": 0.80}, {"config": "int4", "acc": 0.82}])
    assert len(found) == 1 and "n unknown" in found[0].message


def test_q011_warns_only_beyond_intervals() -> None:
    rows = [{"config": "fp32", "ppl": 20.0, "ppl_low": 19.5, "ppl_high": 20.5},
            {"config": "int4", "ppl": 18.0, "ppl_low": 17.5, "ppl_high": 18.5},
            {"config": "int8", "ppl": 19.6, "ppl_low": 19.1, "ppl_high": 20.1}]
    found = only("Q011-ppl-improves-with-fewer-bits", rows)
    assert [(f.severity, f.rows) for f in found] == [(Severity.WARNING, (2,))]


def test_q012_mixed_bounds_for_accuracy_and_tolerance() -> None:
    rows = [{"config": "fp32", "acc": 0.80}, {"config": "int4", "acc": 0.70}, {"config": "mixed", "acc": 0.30}]
    assert ("Q012-mixed-outside-uniform-bounds", (3,), ("acc",)) in hits(rows)
    rows[2]["acc"] = 0.65   # 0.65 >= 0.70 - 10%
    assert only("Q012-mixed-outside-uniform-bounds", rows) == []


def test_q013_without_context_length_asks_for_it() -> None:
    found = only("Q013-ppl-implausible", [{"config": "fp32", "model": "gpt2-medium", "dataset": "wikitext-2",
                                           "ppl": 90.0}])
    assert found[0].rows == (1,) and "does not state the context length" in found[0].message
    assert only("Q013-ppl-implausible", [{"config": "fp32", "ppl": 90.0}], model="gpt2", dataset="wikitext-2")
    assert only("Q013-ppl-implausible", [{"config": "fp32", "ppl": 60.0}], model="gpt2", dataset="wikitext-2") == []


def test_q014_needs_precisions_at_least_2x_apart() -> None:
    rows = [{"config": "int8", "latency_ms": 10.0}, {"config": "int6", "latency_ms": 10.1}]
    assert only("Q014-speed-flat-across-precision", rows) == []
    rows.append({"config": "int4", "latency_ms": 10.2})
    assert [f.rows for f in only("Q014-speed-flat-across-precision", rows)] == [(1, 2, 3)]


def test_q015_uses_params_and_tokens_columns() -> None:
    rows = [{"config": "fp16", "params": 1e9, "tokens_per_sample": 100, "sec_per_sample": 5e-5},
            {"config": "int4", "params": 1e9, "tokens_per_sample": 100, "sec_per_sample": 1e-3}]
    found = only("Q015-implausible-speed", rows)
    assert [(f.rows, f.evidence["floor_s"]["1"]) for f in found] == [((1,), pytest.approx(8e-5))]
    assert only("Q015-implausible-speed", [{"config": "x", "sec_per_sample": 1e-9}]) == []


def test_q016_inverts_throughput() -> None:
    rows = [{"config": "fp16", "tokens_per_s": 1000.0}, {"config": "int4", "tokens_per_s": 150.0},
            {"config": "int8", "tokens_per_s": 400.0}]
    assert [f.rows for f in only("Q016-quantized-much-slower", rows)] == [(2,)]


def test_q017_half_precision_slower() -> None:
    rows = [{"config": "fp32", "latency_ms": 10.0}, {"config": "bf16", "latency_ms": 10.4},
            {"config": "fp16", "latency_ms": 12.0}]
    assert [f.rows for f in only("Q017-reduced-precision-slower", rows)] == [(3,)]


def test_q018_energy_against_power_and_time() -> None:
    rows = [{"config": "a", "latency_ms": 10.0, "power_w": 100.0, "energy_mj": 2000.0},
            {"config": "b", "latency_ms": 12.0, "power_w": 120.0, "energy_mj": 1440.0}]
    found = only("Q018-energy-against-physics", rows)
    assert [(f.rows, f.evidence["pairs"]) for f in found] == [((1,), [[1, 2]])]
    rows[0]["energy_mj"] = 1000.0
    assert only("Q018-energy-against-physics", rows) == []


def test_q019_sentinels_only_when_separated() -> None:
    trials = [{"number": i, "value": 0.0 if i % 3 == 0 else 0.8 + i / 1000} for i in range(12)]
    assert [f.rows for f in only("Q019-sentinel-values", trials)] == [(1, 4, 7, 10)]
    spread = [{"number": i, "value": [0.0, 0.0, 0.1, 0.5, 0.9][i]} for i in range(5)]
    assert only("Q019-sentinel-values", spread) == []


def test_q020_compares_records_with_summary() -> None:
    summary = table_from_records([{"model": "a", "acc": 0.5}, {"model": "b", "acc": 0.75}], "summary.json")
    records = table_from_records([{"model": "a", "sample_id": i, "acc": v} for i, v in enumerate([1, 0])]
                                 + [{"model": "b", "sample_id": i, "acc": v} for i, v in enumerate([1, 0])],
                                 "records.jsonl")
    found = [f for f in lint_tables([summary, records]) if f.rule == "Q020-summary-not-reproduced"]
    assert [(f.source, f.rows) for f in found] == [("summary.json", (2,))]


def test_groups_keep_tasks_apart() -> None:
    rows = [{"task": "arc", "config": "int4", "acc": 0.61}, {"task": "gsm8k", "config": "int2", "acc": 0.61}]
    assert only("Q001-identical-across-precision", rows) == []


def test_disable_and_baseline() -> None:
    rows = [{"config": "a", "acc": 0.5, "n": 10}]
    assert hits(rows, disable=frozenset({"Q008"})) == set()
    findings = lint(rows)
    assert filter_baseline(findings, [f.fingerprint() for f in findings]) == []
    assert filter_baseline(findings, []) == findings


def test_unknown_layout_lists_columns() -> None:
    with pytest.raises(DataError, match=r"unknown layout.*Columns found: foo \(metric\), bar \(text\)"):
        lint([{"foo": 1, "bar": "x"}])
    with pytest.raises(ConfigError, match="no table has a column named 'nope'"):
        lint([{"config": "a", "acc": 0.5}], columns={"accuracy": "nope"})


def test_explicit_column_role() -> None:
    rows = [{"setting": "fp32", "score": 0.4, "score_clean": 0.2}]
    with pytest.raises(DataError):
        lint([{"score": 0.4}])
    found = hits(rows, columns={"robust_acc": "score", "clean_acc": "score_clean"})
    assert found == {("Q006-robust-above-clean", (1,), ("score_clean", "score"))}


def test_extreme_values_do_not_crash() -> None:
    rows = [{"config": "fp32", "acc": 1e308, "n": 1e308, "num_classes": float("inf"), "correct": float("inf"),
             "tokens_per_sample": float("inf"), "params": 1e308, "sec_per_sample": 1e-300},
            {"config": "int4", "acc": -1e308, "n": 3, "num_classes": 2, "correct": 7, "sec_per_sample": 0.0}]
    findings = lint(rows)
    assert not [f for f in findings if f.rule == "Q000-rule-crashed"]


def test_q021_empty_outputs_per_model() -> None:
    records = [{"model": "a", "sample_id": i, "response": "", "f1": 0.0} for i in range(3)] + \
              [{"model": "b", "sample_id": i, "response": "\\boxed{4}" if i else " ", "f1": 1.0} for i in range(3)]
    found = only("Q021-empty-outputs", records)
    assert [(f.rows, f.severity) for f in found] == [((1, 2, 3, 4), Severity.ERROR)]
    assert found[0].evidence["per_model"] == {"a": {"empty": 3, "total": 3}, "b": {"empty": 1, "total": 3}}
    some = only("Q021-empty-outputs", records[3:])
    assert [(f.rows, f.severity) for f in some] == [((1,), Severity.WARNING)]


def test_half_precision_row_is_the_baseline_when_there_is_no_fp32() -> None:
    rows = [{"config": "bf16", "acc": 0.70, "n": 5000}, {"config": "int4", "acc": 0.75, "n": 5000}]
    found = only("Q010-compressed-beats-baseline", rows)
    assert [(f.rows, f.evidence["comparisons"][0]["baseline_row"]) for f in found] == [((2,), 1)]


def test_q001_tie_explained_by_other_columns_uncertainty_or_8_bits() -> None:
    rule = "Q001-identical-across-precision"
    other_differs = [{"config": "fp16", "arc": 53.07, "mmlu": 46.87}, {"config": "int4", "arc": 53.07, "mmlu": 43.8}]
    assert only(rule, other_differs) == []
    nothing_differs = [{"config": "fp16", "arc": 53.07, "mmlu": 46.87}, {"config": "int4", "arc": 53.07, "mmlu": 46.87}]
    assert {(f.severity, f.columns) for f in only(rule, nothing_differs)} == {(Severity.WARNING, ("arc",)),
                                                                              (Severity.WARNING, ("mmlu",))}
    with_error = [{"config": "fp16", "acc": "0.7849 ± 0.0041"}, {"config": "int4", "acc": "0.7849"}]
    assert only(rule, with_error) == []
    eight_bit = [{"config": "fp16", "acc": 0.7048}, {"config": "int8", "acc": 0.7048}]
    assert only(rule, eight_bit) == []
    full_digits = [{"config": "fp32", "ppl": 171.9603271484375, "latency_ms": 11.7},
                   {"config": "fp16", "ppl": 171.9603271484375, "latency_ms": 10.4}]
    assert [f.severity for f in only(rule, full_digits)] == [Severity.ERROR]   # 16 digits: other columns don't matter


def test_q001_proportion_ties_are_judged_in_steps_of_one_over_n() -> None:
    rule = "Q001-identical-across-precision"
    lm_eval_like = [{"config": "fp32", "acc": 0.3333333333333333, "n": 12},
                    {"config": "bf16", "acc": 0.3333333333333333, "n": 12}]
    assert only(rule, lm_eval_like) == []            # 4/12 in both: one digit of evidence, not 16
    no_n = [{"config": "fp32", "acc": 1 / 3}, {"config": "bf16", "acc": 1 / 3}]
    assert only(rule, no_n) == []                   # an exact 1/3 printed to full precision
    assert [f.rows for f in only(rule, [{"config": "int4", "acc": 0.05, "n": 20},
                                        {"config": "int2", "acc": 0.05, "n": 20}])] == [(1, 2)]


def test_q002_markers_are_info_and_nan_stays_an_error() -> None:
    found = only("Q002-missing-value", [{"config": "fp16", "tok_s": "OOM", "ppl": 5.6},
                                        {"config": "int4", "tok_s": 25.5, "ppl": "-"},
                                        {"config": "int8", "tok_s": 20.1, "ppl": "NaN"}])
    assert {(f.severity, f.columns, f.rows) for f in found} == {
        (Severity.INFO, ("tok_s",), (1,)), (Severity.INFO, ("ppl",), (2,)), (Severity.ERROR, ("ppl",), (3,))}
    info = next(f for f in found if f.columns == ("tok_s",))
    assert info.evidence["failed"] == 1 and "OOM" in info.message


def test_q005_ignores_constant_columns_of_unknown_meaning() -> None:
    rows = [{"model": f"m{i}", "acc": 0.5 + i / 100, "Decode Length": 64, "eval_size": 1000} for i in range(5)]
    assert only("Q005-constant-across-models", rows) == []


def test_q022_impossible_values() -> None:
    rule = "Q022-impossible-value"
    fraction = [{"config": c, "acc": v} for c, v in [("fp32", 0.71), ("int8", 0.70), ("int4", -0.2), ("int2", 0.69)]]
    percent = [{"config": c, "acc": v} for c, v in [("fp32", 71.2), ("int8", 70.9), ("int4", 170.5), ("int2", 69.0)]]
    (neg,), (big,) = only(rule, fraction), only(rule, percent)
    assert (neg.rows, neg.severity, neg.evidence["scale"]) == ((3,), Severity.ERROR, 1.0)
    assert (big.rows, big.evidence["scale"]) == ((3,), 100.0) and "percentages, [0, 100]" in big.message
    assert only(rule, [{"config": "a", "acc": "104%"}, {"config": "b", "acc": "71%"}])[0].rows == (1,)
    assert only(rule, [{"config": "fp16", "ppl": 5.6}, {"config": "int4", "ppl": 0.93}])[0].rows == (2,)
    assert only(rule, [{"config": "fp16", "latency_ms": 12.0}, {"config": "int4", "latency_ms": -3.0}])[0].rows == (2,)
    assert only(rule, [{"config": "fp16", "correct": 21, "n": 20, "acc": 0.5}])[0].columns == ("correct", "n")
    fine = [{"config": "fp16", "acc": 0.0, "mme": 1442.4, "delta_ppl": -0.2, "kld": -0.00005, "ppl": 1.0},
            {"config": "int4", "acc": 1.0, "mme": 1437.3, "delta_ppl": 0.3, "kld": 0.01, "ppl": 6.2}]
    assert only(rule, fine) == []


def test_q009_uses_reported_standard_errors_without_n() -> None:
    rows = [{"task": "lambada", "config": "bf16", "acc": "0.6718 ± 0.0065"},
            {"task": "lambada", "config": "int8", "acc": "0.6808"}]
    (found,) = only("Q009-difference-within-noise", rows)
    comparison = found.evidence["comparisons"][0]
    assert comparison["low"] < 0 < comparison["high"] and "standard errors" in found.message
    far = [{"config": "bf16", "acc": "0.60 ± 0.005"}, {"config": "int8", "acc": "0.70 ± 0.005"}]
    assert [f.rows for f in only("Q010-compressed-beats-baseline", far)] == [(2,)]


def test_q011_uses_plus_minus_intervals() -> None:
    rule = "Q011-ppl-improves-with-fewer-bits"
    beyond = [{"config": "f16", "ppl": "6.23 ± 0.01"}, {"config": "q4_0", "ppl": "5.90 ± 0.01"}]
    assert [f.severity for f in only(rule, beyond)] == [Severity.WARNING]
    within = [{"config": "f16", "ppl": "6.23 ± 0.04"}, {"config": "q4_0", "ppl": "6.15 ± 0.04"}]
    assert only(rule, within) == []


def test_conditions_split_groups() -> None:
    rows = [{"config": "fp16", "batch_size": 1, "tokens_per_s": 1000.0},
            {"config": "int4", "batch_size": 16, "tokens_per_s": 150.0}]
    assert only("Q016-quantized-much-slower", rows) == []
    rows[1]["batch_size"] = 1
    assert [f.rows for f in only("Q016-quantized-much-slower", rows)] == [(2,)]


def test_gpu_named_column_without_unit_has_no_direction() -> None:
    rows = [{"config": "fp16", "A100": 100.0}, {"config": "int4", "A100": 10.0}]
    assert not [f for f in lint(rows) if f.rule in ("Q016-quantized-much-slower", "Q017-reduced-precision-slower")]


def test_elided_rows_are_not_data() -> None:
    table = table_from_records([{"config": "fp16", "acc": 0.7}, {"config": "...", "acc": "..."},
                                {"config": "int4", "acc": 0.69}], "mem.json")
    assert not lint_tables([table])
