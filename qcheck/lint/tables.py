"""Load result tables (CSV, JSON, JSONL) into column-oriented `Table`s of parsed cells."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from qcheck.errors import DataError, QCheckError

MISSING_TOKENS = frozenset({"", "nan", "none", "null", "n/a", "na", "-", "--", "?"})
NUMBER_WITH_UNIT = re.compile(
    r"^\s*~?\s*([-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.?\d+)(?:[eE][-+]?\d+)?)\s*([%a-zA-Z/µ]*)\s*$")


@dataclass(frozen=True)
class Column:
    """One column: raw cell text, parsed floats (NaN where not a number), and which cells are missing."""

    name: str
    raw: tuple[str, ...]
    values: np.ndarray
    missing: np.ndarray
    text: np.ndarray
    numeric: bool

    @property
    def kind(self) -> str:
        """'numeric', 'text' or 'empty' (every cell missing)."""
        if bool(self.missing.all()):
            return "empty"
        return "numeric" if self.numeric else "text"

    def significant_digits(self, row: int) -> int:
        """Significant digits the cell was written with ('171.96' -> 5, '0.05' -> 1, '217' -> 3)."""
        return significant_digits(self.raw[row])


@dataclass(frozen=True)
class Table:
    """A parsed table: `source` is the file, `name` the table inside it (JSON with several tables)."""

    source: str
    name: str | None
    columns: dict[str, Column]
    n_rows: int

    @property
    def location(self) -> str:
        """'file[:table]' for messages."""
        return self.source + (f":{self.name}" if self.name else "")


def significant_digits(text: str) -> int:
    """Count the significant digits of a number as written; 0 for zero or non-numbers."""
    match = NUMBER_WITH_UNIT.match(text)
    if not match:
        return 0
    try:
        number = Decimal(match.group(1).replace(",", ""))
    except InvalidOperation:
        return 0
    if number.is_zero():
        return 0
    return len(number.as_tuple().digits)


def parse_cell(cell: Any) -> tuple[float, bool, bool]:
    """Parse one cell into (value, missing, text): NaN/None/empty are missing, words are text."""
    if cell is None:
        return math.nan, True, False
    if isinstance(cell, bool):
        return float(cell), False, False
    if isinstance(cell, (int, float)):
        value = float(cell)
        return value, math.isnan(value), False
    text = str(cell).strip()
    if text.lower() in MISSING_TOKENS:
        return math.nan, True, False
    try:
        value = float(text)
        return value, math.isnan(value), False
    except ValueError:
        pass
    match = NUMBER_WITH_UNIT.match(text)
    if match:
        return float(match.group(1).replace(",", "")), False, False
    return math.nan, False, True


def _raw_text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float):
        return repr(cell)
    return str(cell)


def _parse_cells(cells: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse cells, each distinct cell once (label columns repeat a few values many times)."""
    keys = [(type(c), c) if isinstance(c, (str, int, float)) or c is None else (id(c), i) for i, c in enumerate(cells)]
    index: dict[Any, int] = {}
    parsed: list[tuple[float, bool, bool]] = []
    for key, cell in zip(keys, cells):
        if key not in index:
            index[key] = len(parsed)
            parsed.append(parse_cell(cell))
    return _expand(parsed, np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=len(keys)))


def _parse_strings(cells: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_parse_cells` for columns of strings (CSV), with the per-cell loop in C."""
    index = {cell: i for i, cell in enumerate(dict.fromkeys(cells))}
    parsed = [parse_cell(cell) for cell in index]
    return _expand(parsed, np.fromiter(map(index.__getitem__, cells), dtype=np.int64, count=len(cells)))


def _expand(parsed: list[tuple[float, bool, bool]], codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.array([p[0] for p in parsed], dtype=np.float64)
    missing = np.array([p[1] for p in parsed], dtype=bool)
    text = np.array([p[2] for p in parsed], dtype=bool)
    return values[codes], missing[codes], text[codes]


def make_column(name: str, cells: Sequence[Any], strings: bool = False) -> Column:
    """Build a Column from raw cells (strings from CSV, JSON scalars); `strings` says every cell is a str."""
    raw = tuple(cells) if strings else tuple(_raw_text(c) for c in cells)
    values = None
    if strings or all(isinstance(c, str) for c in cells):
        try:
            values = np.asarray(raw, dtype=np.float64) if raw else np.zeros(0)
        except ValueError:
            values = None
    if values is not None:
        missing = np.isnan(values)
        text = np.zeros(len(raw), dtype=bool)
    else:
        values, missing, text = _parse_strings(raw) if strings else _parse_cells(cells)
    n_numeric = int(len(raw) - missing.sum() - text.sum())
    return Column(name, raw, values, missing, text, numeric=n_numeric >= int(text.sum()))


def table_from_records(records: Sequence[dict[str, Any]], source: str, name: str | None = None) -> Table:
    """Build a Table from a list of flat or nested dicts (nested keys are joined with '.')."""
    flat = [_flatten(r, source) for r in records]
    order: dict[str, None] = {}
    for record in flat:
        for key in record:
            order.setdefault(key, None)
    columns = {key: make_column(key, [r.get(key) for r in flat]) for key in order}
    return Table(source, name, columns, len(flat))


def _flatten(record: Any, source: str, prefix: str = "") -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"{source}: expected a record (JSON object), got {type(record).__name__}: {str(record)[:60]}")
    out: dict[str, Any] = {}
    for key, value in record.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, source, full + "."))
        elif isinstance(value, list):
            out[full] = json.dumps(value)
        else:
            out[full] = value
    return out


def table_from_csv_text(text: str, source: str) -> Table:
    """Parse CSV text with a header row; short rows are padded with missing cells."""
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|") if sample.strip() else csv.excel
    except csv.Error:
        dialect = csv.excel
    rows = [row for row in csv.reader(io.StringIO(text), dialect) if row and (len(row) > 1 or row[0].strip())]
    if not rows:
        raise DataError(f"{source}: empty file, no header row")
    header = _unique_header(rows[0])
    body = rows[1:]
    width = len(header)
    if any(len(row) != width for row in body):
        for number, row in enumerate(body, start=1):
            if len(row) > width:
                raise DataError(f"{source}: data row {number} has {len(row)} cells but the header has {width} "
                                f"columns ({', '.join(header)})")
        body = [row + [""] * (width - len(row)) for row in body]
    cells = list(zip(*body)) if body else [()] * width
    columns = {name: make_column(name, col, strings=True) for name, col in zip(header, cells)}
    return Table(source, None, columns, len(body))


def _unique_header(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for index, name in enumerate(names, start=1):
        name = name.strip() or f"column_{index}"
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 1
        out.append(name)
    return out


def tables_from_json(data: Any, source: str) -> list[Table]:
    """A list of records, a dict of configs ({name: {metric: value}}), or a dict of tables ({name: [records]})."""
    if isinstance(data, list):
        return [table_from_records(data, source)]
    if isinstance(data, dict) and data:
        values = list(data.values())
        if all(isinstance(v, list) for v in values):
            return [table_from_records(v, source, name=str(k)) for k, v in data.items()]
        if all(isinstance(v, dict) for v in values):
            return [table_from_records([{"config": k, **v} for k, v in data.items()], source)]
        for key in ("rows", "records", "results", "data"):
            if isinstance(data.get(key), list):
                return [table_from_records(data[key], source, name=None)]
        raise DataError(f"{source}: unknown JSON layout: top-level keys {', '.join(map(str, data))}; expected a list "
                        "of records, a dict of configs ({name: {metric: value}}) or a dict of tables "
                        "({name: [records]})")
    raise DataError(f"{source}: unknown JSON layout: expected a list of records or an object, got "
                    f"{type(data).__name__ if data != {} else 'an empty object'}")


def tables_from_jsonl(text: str, source: str) -> list[Table]:
    """One JSON object per line; blank lines are skipped."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: line {number} is not JSON: {exc.msg}") from exc
    if not records:
        raise DataError(f"{source}: no records")
    return [table_from_records(records, source)]


def load_tables(path: str) -> list[Table]:
    """Load every table in a CSV, TSV, JSON or JSONL file; raise QCheckError naming the problem."""
    if not os.path.exists(path):
        raise QCheckError(f"{path}: no such file")
    if os.path.isdir(path):
        raise QCheckError(f"{path}: is a directory; pass result files (CSV, JSON, JSONL)")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); expected CSV, JSON or JSONL") from exc
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson"):
        return tables_from_jsonl(text, path)
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        return tables_from_json(data, path)
    if ext in (".csv", ".tsv", ".txt", ""):
        return [table_from_csv_text(text, path)]
    raise QCheckError(f"{path}: unknown file type '{ext}'; qcheck lint reads .csv, .tsv, .json and .jsonl")


def load_all(paths: Iterable[str]) -> list[Table]:
    """Load every table from every path, in order."""
    tables: list[Table] = []
    for path in paths:
        tables.extend(load_tables(path))
    return tables
