"""Published layouts brought to one row per config: measure-per-row tables pivoted, precision-per-column tables
melted, stderr columns attached to their values."""
from __future__ import annotations

import pytest

from qcheck.lint import LintConfig, table_from_csv_text, table_from_records
from qcheck.lint.reshape import attach_uncertainties, melt_configs, normalize_layout, pivot_measures
from qcheck.lint.view import build_view


def test_measure_rows_become_columns() -> None:
    table = table_from_csv_text("Model,Measure,F16,Q4_0\n7B,perplexity,5.9066,6.1565\n7B,ms/tok @ 4th,127,55\n"
                                "13B,perplexity,5.2543,5.3860\n13B,ms/tok @ 4th,-,103\n", "q.csv")
    long = pivot_measures(table)
    assert long is not None and long.n_rows == 4
    assert list(long.columns) == ["Model", "config", "perplexity", "ms/tok @ 4th"]
    assert long.columns["config"].raw == ("F16", "Q4_0", "F16", "Q4_0")
    assert long.columns["ms/tok @ 4th"].is_state("not_run").tolist() == [False, False, True, False]
    view = build_view(long, LintConfig())
    assert view.roles["ms/tok @ 4th"] == "latency" and len(view.groups) == 2


def test_value_columns_with_stderr_and_a_derived_column() -> None:
    table = table_from_csv_text("name,metric,value - int8,value - fp16,std err - fp16,difference\n"
                                "hellaswag,acc_norm,0.7849,0.7849,0.0041,0\nlambada,ppl,3.0142,3.0152,0.0552,0.001\n",
                                "b.csv")
    long = pivot_measures(table)
    assert long.columns["config"].raw == ("int8", "fp16", "int8", "fp16")
    assert long.columns["acc_norm"].errors[1] == pytest.approx(0.0041)
    assert long.columns["ppl"].is_state("absent").tolist() == [True, True, False, False]
    assert "difference" not in long.columns and "derived columns left out: difference" in long.note


def test_precision_named_columns_become_rows() -> None:
    table = table_from_csv_text("Model,FP16 latency (ms),INT4 latency (ms),Speedup\nLLaMA-2-7B,15.50,5.28,2.94x\n"
                                "LLaMA-2-13B,OOM,9.19,--\n", "t.csv")
    long = melt_configs(table)
    assert long.n_rows == 4 and list(long.columns) == ["Model", "config", "latency (ms)"]
    assert long.columns["config"].raw == ("FP16", "INT4", "FP16", "INT4")
    assert long.columns["latency (ms)"].is_state("failed").tolist() == [False, False, True, False]
    assert "Speedup" in long.note
    bare = melt_configs(table_from_csv_text("model,num_beams,fp16,gptq-int4\nllama-7b,1,18.87,25.53\n", "a.csv"))
    assert list(bare.columns) == ["model", "num_beams", "config", "result"] and bare.hints["result"] == "metric"


def test_tables_that_are_already_long_are_left_alone() -> None:
    table = table_from_csv_text("config,bits,perplexity\nFP32,32,171.96\n16-bit,16,171.96\n", "s.csv")
    assert pivot_measures(table) is None and melt_configs(table) is None and normalize_layout(table) is table
    f1 = table_from_csv_text("model,accuracy,f1,squad_f1\na,0.4,0.38,50.0\n", "f.csv")
    assert melt_configs(f1) is None        # 'f1' names a metric, not a 1-bit format


def test_stderr_columns_attach_to_their_values() -> None:
    table = attach_uncertainties(table_from_records(
        [{"config": "fp16", "acc": 0.71, "acc_stderr": 0.012}, {"config": "int4", "acc": 0.69, "acc_stderr": None}],
        "s.json"))
    assert table.columns["acc"].errors[0] == pytest.approx(0.012)


def test_tidy_long_format_is_pivoted_without_an_extra_config() -> None:
    table = table_from_csv_text("model,config,metric,value\ngpt2,fp32,ppl,29.4\ngpt2,fp32,acc,0.41\n"
                                "gpt2,int4,ppl,34.1\ngpt2,int4,acc,0.38\n", "tidy.csv")
    wide = pivot_measures(table)
    assert list(wide.columns) == ["model", "config", "ppl", "acc"] and wide.n_rows == 2
    assert wide.columns["acc"].values.tolist() == [0.41, 0.38]
