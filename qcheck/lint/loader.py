"""Load result files: read each one (CSV, TSV, JSON, JSONL, or a known tool's JSON), bring its layout to one row
per config, and combine files of one tool into one comparison."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable

from qcheck.errors import DataError, QCheckError
from qcheck.lint.readers import combine, read_known_json
from qcheck.lint.reshape import normalize_layout
from qcheck.lint.tables import Table, table_from_csv_text, tables_from_json, tables_from_jsonl

EXTENSIONS = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson")


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise QCheckError(f"{path}: no such file")
    if os.path.isdir(path):
        raise QCheckError(f"{path}: is a directory; pass result files (CSV, JSON, JSONL)")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); expected CSV, JSON or JSONL") from exc
    except OSError as exc:
        raise QCheckError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if "\x00" in text:
        raise DataError(f"{path}: binary data (NUL bytes); expected CSV, JSON or JSONL text")
    return text


def load_tables(path: str) -> list[Table]:
    """Load every table in one file; raise QCheckError (exit 2) naming the problem."""
    ext = os.path.splitext(path)[1].lower()
    if os.path.isfile(path) and ext not in EXTENSIONS + ("",):
        raise QCheckError(f"{path}: unknown file type '{ext}'; qcheck lint reads .csv, .tsv, .json and .jsonl")
    text = _read_text(path)
    if ext in (".jsonl", ".ndjson"):
        tables = tables_from_jsonl(text, path)
    elif ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        known = read_known_json(data, path)
        tables = known if known is not None else tables_from_json(data, path)
        if known is not None and not known:
            raise DataError(f"{path}: a results file with no measured values")
    else:
        try:
            tables = [table_from_csv_text(text, path)]
        except csv.Error as exc:
            raise DataError(f"{path}: not a readable CSV/TSV table ({exc})") from exc
    return [normalize_layout(table) for table in tables]


def load_all(paths: Iterable[str]) -> list[Table]:
    """Load every table from every path, in order; files of one tool are combined per task or stage."""
    tables: list[Table] = []
    for path in paths:
        tables.extend(load_tables(path))
    return combine(tables)
