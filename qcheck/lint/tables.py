"""Result tables (CSV, JSON, JSONL) as column-oriented `Table`s of parsed cells."""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcheck.errors import DataError
from qcheck.lint.cells import (
    ABSENT,
    FAILED,
    MISSING,
    NOT_RUN,
    NUMBER_WITH_UNIT,
    TEXT,
    VALUE,
    Cell,
    parse,
    significant_digits,
)

__all__ = [
    "NUMBER_WITH_UNIT",
    "Column",
    "Table",
    "load_tables",
    "make_column",
    "parse_cell",
    "significant_digits",
    "table_from_csv_text",
    "table_from_records",
    "tables_from_json",
    "tables_from_jsonl",
]

STATES = (VALUE, MISSING, TEXT, FAILED, NOT_RUN, ABSENT)
_CODE = {state: code for code, state in enumerate(STATES)}


@dataclass(frozen=True)
class Column:
    """One column: raw cell text, parsed floats (NaN where not a number), uncertainties, unit and cell states."""

    name: str
    raw: tuple[str, ...]
    values: np.ndarray
    state: np.ndarray
    errors: np.ndarray
    unit: str = ""

    @property
    def missing(self) -> np.ndarray:
        """Computed missing values: NaN, None, null, empty."""
        return self.state == _CODE[MISSING]

    @property
    def text(self) -> np.ndarray:
        """Cells that are neither numbers nor a known marker."""
        return self.state == _CODE[TEXT]

    @property
    def marker(self) -> np.ndarray:
        """Cells the author marked as a failure (OOM) or a run not taken (-, N/A), or a reader left absent."""
        return self.state >= _CODE[FAILED]

    def is_state(self, state: str) -> np.ndarray:
        """Mask of the cells in `state` (cells.VALUE, MISSING, TEXT, FAILED, NOT_RUN, ABSENT)."""
        return self.state == _CODE[state]

    @property
    def numeric(self) -> bool:
        """At least as many number cells as text cells."""
        return int((self.state == 0).sum()) >= int(self.text.sum())

    @property
    def kind(self) -> str:
        """'numeric', 'text' or 'empty' (no number and no text: every cell missing or a marker)."""
        if not bool(((self.state == 0) | self.text).any()):
            return "empty"
        return "numeric" if self.numeric else "text"

    def significant_digits(self, row: int) -> int:
        """Significant digits the cell was written with ('171.96' -> 5, '0.05' -> 1, '217' -> 3)."""
        return significant_digits(self.raw[row])

    def with_errors(self, errors: np.ndarray) -> Column:
        """The same column with uncertainties taken from another column where its own cells carry none."""
        merged = np.where(np.isfinite(self.errors), self.errors, errors)
        return Column(self.name, self.raw, self.values, self.state, merged, self.unit)


@dataclass(frozen=True)
class Table:
    """A parsed table: `source` is the file, `name` the table inside it; `hints` are roles a reader knows for sure
    (below `--column`), `note` says how the layout was reshaped, `meta` carries facts a reader found (model, n)."""

    source: str
    name: str | None
    columns: dict[str, Column]
    n_rows: int
    hints: Mapping[str, str] = field(default_factory=dict)
    note: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """'file[:table]' for messages."""
        return self.source + (f":{self.name}" if self.name else "")


def parse_cell(cell: Any) -> tuple[float, bool, bool]:
    """(value, missing, text) of one cell; see qcheck.lint.cells.parse for the full reading."""
    parsed = parse(cell)
    return parsed.value, parsed.state == MISSING, parsed.state == TEXT


def _raw_text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float):
        return repr(cell)
    return str(cell)


def _unit(parsed: Sequence[Cell], counts: Sequence[int]) -> str:
    units: Counter[str] = Counter()
    for cell, count in zip(parsed, counts):
        if cell.state == VALUE and cell.unit:
            units[cell.unit] += count
    return units.most_common(1)[0][0] if units else ""


def make_column(name: str, cells: Sequence[Any], strings: bool = False, absent: Sequence[bool] | None = None) -> Column:
    """Build a Column from raw cells (strings from CSV, JSON scalars); `absent` marks cells a reader left out."""
    raw = tuple(cells) if strings else tuple(_raw_text(c) for c in cells)
    n = len(raw)
    values = None
    if (strings or all(isinstance(c, str) for c in cells)) and absent is None:
        try:
            values = np.asarray(raw, dtype=np.float64) if raw else np.zeros(0)
        except ValueError:
            values = None
    if values is not None:
        state = np.where(np.isnan(values), _CODE[MISSING], _CODE[VALUE]).astype(np.int8)
        return Column(name, raw, values, state, np.full(n, math.nan))
    if strings:  # each distinct string parsed once; the per-cell loop stays in C
        index: dict[Any, int] = {cell: i for i, cell in enumerate(dict.fromkeys(cells))}
        parsed = [parse(cell) for cell in index]
        codes = np.fromiter(map(index.__getitem__, cells), dtype=np.int64, count=n)
    else:
        keys = [(type(c), c) if isinstance(c, (str, int, float)) or c is None else (id(c), i)
                for i, c in enumerate(cells)]
        index = {}
        parsed = []
        for key, cell in zip(keys, cells):
            if key not in index:
                index[key] = len(parsed)
                parsed.append(parse(cell))
        codes = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=n)
    counts = np.bincount(codes, minlength=len(parsed)) if n else np.zeros(len(parsed), dtype=np.int64)
    values = np.array([p.value for p in parsed], dtype=np.float64)[codes] if n else np.zeros(0)
    errors = np.array([p.error for p in parsed], dtype=np.float64)[codes] if n else np.zeros(0)
    state = np.array([_CODE[p.state] for p in parsed], dtype=np.int8)[codes] if n else np.zeros(0, dtype=np.int8)
    if absent is not None:
        state = np.where(np.asarray(absent, dtype=bool), _CODE[ABSENT], state).astype(np.int8)
    return Column(name, raw, values, state, errors, _unit(parsed, counts.tolist()))


def table_from_records(records: Sequence[dict[str, Any]], source: str, name: str | None = None,
                       hints: Mapping[str, str] | None = None, note: str | None = None,
                       meta: Mapping[str, Any] | None = None, absent_is_marker: bool = False) -> Table:
    """Build a Table from a list of flat or nested dicts (nested keys are joined with '.').

    With `absent_is_marker`, a key a record lacks is an ABSENT cell (the metric does not exist for that row) rather
    than a missing value.
    """
    flat = [_flatten(r, source) for r in records]
    order: dict[str, None] = {}
    for record in flat:
        for key in record:
            order.setdefault(key, None)
    columns = {}
    for key in order:
        absent = [key not in r for r in flat] if absent_is_marker and any(key not in r for r in flat) else None
        columns[key] = make_column(key, [r.get(key) for r in flat], absent=absent)
    return Table(source, name, columns, len(flat), dict(hints or {}), note, dict(meta or {}))


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


def csv_rows(text: str, source: str) -> list[list[str]]:
    """The non-blank rows of CSV/TSV text (delimiter sniffed among , ; tab |)."""
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|") if sample.strip() else csv.excel
    except csv.Error:
        dialect = csv.excel
    rows = [row for row in csv.reader(io.StringIO(text), dialect) if row and (len(row) > 1 or row[0].strip())]
    if not rows:
        raise DataError(f"{source}: empty file, no header row")
    return rows


def table_from_rows(header: Sequence[str], body: Sequence[Sequence[str]], source: str, note: str | None = None) -> Table:
    """A Table from a header and string rows; short rows are padded with missing cells."""
    header = _unique_header(header)
    width = len(header)
    if any(len(row) != width for row in body):
        for number, row in enumerate(body, start=1):
            if len(row) > width:
                raise DataError(f"{source}: data row {number} has {len(row)} cells but the header has {width} "
                                f"columns ({', '.join(header)})")
        body = [list(row) + [""] * (width - len(row)) for row in body]
    cells = list(zip(*body)) if body else [()] * width
    columns = {name: make_column(name, col, strings=True) for name, col in zip(header, cells)}
    return Table(source, None, columns, len(body), note=note)


def table_from_csv_text(text: str, source: str) -> Table:
    """Parse CSV text with a header row (a second header row, as Markdown tables split them, is merged in)."""
    from qcheck.lint.reshape import merge_header_rows

    rows = csv_rows(text, source)
    header, body, note = merge_header_rows(rows[0], rows[1:])
    return table_from_rows(header, body, source, note)


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
                        "of records, a dict of configs ({name: {metric: value}}), a dict of tables "
                        "({name: [records]}), an lm-evaluation-harness results file, an optimum-benchmark report or "
                        "a pytest-benchmark --benchmark-json file")
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
    """Load every table in one result file (see qcheck.lint.loader)."""
    from qcheck.lint.loader import load_tables as load

    return load(path)
