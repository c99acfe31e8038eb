"""Loading result tables: CSV, JSON layouts, JSONL, cell parsing and clear errors."""
from __future__ import annotations

import json
import math

import pytest

from qcheck.errors import DataError, QCheckError
from qcheck.lint.tables import load_tables, parse_cell, significant_digits, table_from_csv_text, tables_from_json


def test_csv_pads_short_rows_and_renames_duplicate_headers() -> None:
    table = table_from_csv_text("config,ppl,ppl\nfp32,10.5,1\nint4\n", "t.csv")
    assert list(table.columns) == ["config", "ppl", "ppl_2"]
    assert table.n_rows == 2
    assert table.columns["ppl"].missing.tolist() == [False, True]


def test_csv_row_longer_than_header_is_an_error() -> None:
    with pytest.raises(DataError, match="data row 1 has 3 cells but the header has 2"):
        table_from_csv_text("a,b\n1,2,3\n", "t.csv")


def test_semicolon_csv_is_sniffed() -> None:
    table = table_from_csv_text("config;accuracy\nfp32;0.5\nint8;0.4\n", "t.csv")
    assert table.columns["accuracy"].values.tolist() == [0.5, 0.4]


@pytest.mark.parametrize("cell, value, missing, text", [
    ("171.96", 171.96, False, False), ("NaN", math.nan, True, False), ("None", math.nan, True, False),
    ("", math.nan, True, False), (None, math.nan, True, False), ("40.87%", 40.87, False, False),
    ("21,522", 21522.0, False, False), ("11.7ms", 11.7, False, False), ("~0.001s", 0.001, False, False),
    ("inf", math.inf, False, False), ("broken", math.nan, False, True), (3, 3.0, False, False),
])
def test_parse_cell(cell: object, value: float, missing: bool, text: bool) -> None:
    got = parse_cell(cell)
    assert (got[1], got[2]) == (missing, text)
    assert (math.isnan(got[0]) and math.isnan(value)) or got[0] == value


@pytest.mark.parametrize("text, digits", [("171.96", 5), ("0.05", 1), ("217", 3), ("0.0500", 3), ("0.0", 0),
                                          ("171.9603271484375", 16), ("1.5e3", 2), ("abc", 0)])
def test_significant_digits(text: str, digits: int) -> None:
    assert significant_digits(text) == digits


def test_json_layouts() -> None:
    records = tables_from_json([{"config": "fp32", "ppl": 10}], "a.json")
    configs = tables_from_json({"fp32": {"ppl": 10}, "int4": {"ppl": 11}}, "b.json")
    several = tables_from_json({"quant": [{"config": "fp32", "ppl": 1}], "speed": [{"config": "fp32", "latency": 2}]},
                               "c.json")
    wrapped = tables_from_json({"meta": "x", "rows": [{"config": "fp32", "ppl": 1}]}, "d.json")
    assert records[0].columns["ppl"].values.tolist() == [10.0]
    assert configs[0].columns["config"].raw == ("fp32", "int4")
    assert [t.name for t in several] == ["quant", "speed"]
    assert wrapped[0].n_rows == 1


def test_nested_records_are_flattened() -> None:
    table = tables_from_json([{"config": "fp32", "metrics": {"ppl": 10.0, "acc": 0.5}}], "n.json")[0]
    assert list(table.columns) == ["config", "metrics.ppl", "metrics.acc"]


def test_unknown_json_layout_lists_the_keys() -> None:
    with pytest.raises(DataError, match="unknown JSON layout: top-level keys a, b"):
        tables_from_json({"a": 1, "b": [1]}, "x.json")
    with pytest.raises(DataError, match="unknown JSON layout"):
        tables_from_json(3, "x.json")


def test_load_files(tmp_path) -> None:
    (tmp_path / "r.jsonl").write_text('{"config": "fp32", "ppl": 1}\n\n{"config": "int4", "ppl": 2}\n')
    (tmp_path / "r.json").write_text(json.dumps([{"config": "fp32", "ppl": 1}]))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "r.xlsx").write_text("x")
    (tmp_path / "empty.csv").write_text("")
    assert load_tables(str(tmp_path / "r.jsonl"))[0].n_rows == 2
    assert load_tables(str(tmp_path / "r.json"))[0].n_rows == 1
    with pytest.raises(DataError, match="line 2 is not JSON"):
        load_tables(str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="not valid JSON"):
        load_tables(str(tmp_path / "bad.json"))
    with pytest.raises(QCheckError, match="unknown file type '.xlsx'"):
        load_tables(str(tmp_path / "r.xlsx"))
    with pytest.raises(DataError, match="empty file"):
        load_tables(str(tmp_path / "empty.csv"))
    with pytest.raises(QCheckError, match="no such file"):
        load_tables(str(tmp_path / "missing.csv"))
    with pytest.raises(QCheckError, match="is a directory"):
        load_tables(str(tmp_path))


@pytest.mark.parametrize("cell, value, error, unit, state", [
    ("6.233160 ±   0.037828", 6.23316, 0.037828, "", "value"), ("-0.019 ± 0.003 %", -0.019, 0.003, "%", "value"),
    ("10.76 +/- 0.07", 10.76, 0.07, "", "value"), ("4.50 GB (19.05%)", 4.5, math.nan, "GB", "value"),
    ("**205** t/s", 205.0, math.nan, "t/s", "value"), ("13.0G", 13.0, math.nan, "G", "value"),
    ("2.69x", 2.69, math.nan, "x", "value"), ("06.83", 6.83, math.nan, "", "value"),
    ("OOM", math.nan, math.nan, "", "failed"), ("oom", math.nan, math.nan, "", "failed"),
    ("-", math.nan, math.nan, "", "not_run"), ("--", math.nan, math.nan, "", "not_run"),
    ("N/A", math.nan, math.nan, "", "not_run"), ("NA", math.nan, math.nan, "", "not_run"),
    ("...", math.nan, math.nan, "", "not_run"), ("TODO(https://github.com/pytorch/ao/issues/3549)", math.nan,
                                                  math.nan, "", "not_run"),
    ("NaN", math.nan, math.nan, "", "missing"), ("", math.nan, math.nan, "", "missing"),
    ("Base (bfloat16)", math.nan, math.nan, "", "text"),
])
def test_cells_as_published(cell: str, value: float, error: float, unit: str, state: str) -> None:
    from qcheck.lint.cells import parse

    got = parse(cell)
    assert got.state == state and got.unit == unit
    assert (math.isnan(got.value) and math.isnan(value)) or got.value == pytest.approx(value)
    assert (math.isnan(got.error) and math.isnan(error)) or got.error == pytest.approx(error)


def test_column_keeps_states_errors_and_unit() -> None:
    table = table_from_csv_text("config,ppl,mem\nfp16,6.23 ± 0.04,4.5 GB\nint4,OOM,-\nint2,NaN,3.1 GB\n", "t.csv")
    ppl, mem = table.columns["ppl"], table.columns["mem"]
    assert ppl.errors[0] == pytest.approx(0.04) and ppl.is_state("failed").tolist() == [False, True, False]
    assert ppl.missing.tolist() == [False, False, True] and ppl.marker.tolist() == [False, True, False]
    assert mem.unit == "GB" and mem.is_state("not_run").tolist() == [False, True, False]


def test_second_header_row_is_merged() -> None:
    text = ("benchmarks,-,-,-,difference\nname,metric,value - int8,value - fp16,-\n"
            "piqa,acc,0.7965,0.7959,0.0006\n")
    table = table_from_csv_text(text, "t.csv")
    assert list(table.columns) == ["name", "metric", "value - int8", "value - fp16", "difference"]
    assert table.n_rows == 1 and "two header rows" in table.note
    plain = table_from_csv_text("config,notes\nfp32,reference run\n", "t.csv")
    assert list(plain.columns) == ["config", "notes"] and plain.n_rows == 1


def test_binary_and_nul_files_are_clear_errors(tmp_path) -> None:
    (tmp_path / "nul.csv").write_bytes(b"config,ppl\nfp32,\x00\x01\n")
    (tmp_path / "bin.csv").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(DataError, match="binary data"):
        load_tables(str(tmp_path / "nul.csv"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_tables(str(tmp_path / "bin.csv"))
