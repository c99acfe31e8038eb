"""Bring published layouts to one row per (model, config, conditions): the form every rule reads.

Three layouts are common in READMEs and blog posts:
- a second header row (Markdown tables whose first header row is a group label: `benchmarks | - | - | ...`);
- one row per measure (`Model | Measure | F16 | Q4_0 | ...`, llama.cpp): pivoted, measures become columns;
- one column per precision (`model | GPU | fp16 | gptq-int4`, `FP16 latency (ms) | INT4 latency (ms)`): melted,
  each precision becomes a row with a `config` cell.
A column holding the standard error of another (`acc_stderr`, `std err - fp16`) becomes that column's uncertainty.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from qcheck.lint.cells import VALUE, parse
from qcheck.lint.precision import names_precision
from qcheck.lint.roles import infer_role, normalize
from qcheck.lint.tables import Column, Table, table_from_records

_PLACEHOLDERS = frozenset({"", "-", "--", "---", "\u2013", "\u2014"})
_MEASURE_HEADERS = frozenset({"metric", "metrics", "measure", "measures", "measurement", "measurements", "statistic",
                              "stat", "quantity"})
_KEY_ROLES = frozenset({"config", "model", "task", "params", "batch", "condition", "context_length", "qparam", "bits",
                        "sparsity", "seed", "n", "num_classes", "tokens_per_sample"})
_UNCERTAINTY = re.compile(r"(^|[\s_\-(])(std\.?\s*err(or)?|stderr|s\.?e\.?m?|\u00b1)([\s_\-)]|$)", re.IGNORECASE)
_DERIVED = re.compile(r"(^|[\s_\-(])(diff(erence)?|delta|\u0394|speed-?up|ratio|gain|change)([\s_\-)]|$)",
                      re.IGNORECASE)
_VALUE_WORD = re.compile(r"(^|[\s_\-(])(value|values|result|results|score)([\s_\-)]|$)", re.IGNORECASE)
_STDERR_SUFFIX = re.compile(r"^(?P<base>.+?)[\s_\-]*(?:stderr|std[\s_\-]?err(?:or)?|sem)(?P<rest>,.*)?$",
                            re.IGNORECASE)


def merge_header_rows(header: Sequence[str], body: Sequence[Sequence[str]]) -> tuple[list[str], list[Sequence[str]],
                                                                                       str | None]:
    """Merge a second header row into the first when the first is mostly placeholders and the second has no
    number (Markdown's `benchmarks | - | - |` over `name | metric | value - int8 |`)."""
    header = list(header)
    if not body or len(header) < 2:
        return header, list(body), None
    blanks = sum(cell.strip() in _PLACEHOLDERS for cell in header)
    second = body[0]
    if blanks * 2 < len(header) or any(parse(cell).state == VALUE for cell in second) or \
            all(cell.strip() in _PLACEHOLDERS for cell in second):
        return header, list(body), None
    merged = [(low if low.strip() not in _PLACEHOLDERS else high)
              for high, low in zip(header, list(second) + [""] * (len(header) - len(second)))]
    return merged, [list(row) for row in body[1:]], "two header rows merged into one; data rows are numbered from the row after them"


def _config_part(name: str) -> tuple[str, str]:
    """Split a column name into (precision label, the rest): 'FP16 latency (ms)' -> ('FP16', 'latency (ms)')."""
    words = name.split()
    picked = [w for w in words if names_precision(w.strip("()[],:;"))]
    if not picked:
        return "", name
    rest = " ".join(w for w in words if w not in picked)
    rest = re.sub(r"^[\s\-_:/|]+|[\s\-_:/|]+$", "", rest)
    return " ".join(picked), rest


def _strip_value_word(text: str) -> str:
    return re.sub(r"^[\s\-_:/|]+|[\s\-_:/|]+$", "", _VALUE_WORD.sub(" ", text)).strip()


def _with_error(cell: str, error: str | None) -> str:
    if error is None or parse(error).state != VALUE or parse(cell).state != VALUE or "\u00b1" in cell:
        return cell
    return f"{cell} \u00b1 {error}"


def _is_key(name: str, column: Column) -> bool:
    return infer_role(name, column.kind) in _KEY_ROLES or column.kind == "text"


def pivot_measures(table: Table) -> Table | None:
    """`Model | Measure | F16 | Q4_0`: one row per (keys, config), one column per measure; None if not that layout."""
    names = list(table.columns)
    measure = next((n for n in names if normalize(n) in _MEASURE_HEADERS and table.columns[n].kind == "text"), None)
    if measure is None:
        return None
    keys = [n for n in names if n != measure and _is_key(n, table.columns[n])]
    values = [n for n in names if n != measure and n not in keys]
    if not values:
        return None
    errors: dict[str, str] = {}
    configs: dict[str, str] = {}
    dropped: list[str] = []
    for name in values:
        if _UNCERTAINTY.search(name):
            errors[_strip_value_word(_UNCERTAINTY.sub(" ", name)) or name] = name
        elif _DERIVED.search(name) and not _config_part(name)[0]:
            dropped.append(name)
        else:
            configs[name] = _strip_value_word(name) or name
    if not configs:
        return None
    single = len(configs) == 1 and not _strip_value_word(next(iter(configs)))   # tidy `config | metric | value`
    records: dict[tuple, dict[str, str]] = {}
    measure_raw = table.columns[measure].raw
    for row in range(table.n_rows):
        metric = measure_raw[row].strip()
        if not metric:
            continue
        key = tuple(table.columns[k].raw[row] for k in keys)
        for name, label in configs.items():
            record = records.setdefault(key + (label,), dict(zip(keys, key)) if single else
                                        {**dict(zip(keys, key)), "config": label})
            column = metric
            suffix = 2
            while column in record:
                column, suffix = f"{metric} ({suffix})", suffix + 1
            error = errors.get(label)
            record[column] = _with_error(table.columns[name].raw[row],
                                         table.columns[error].raw[row] if error else None)
    config_name = "config" if "config" not in keys else "config (from columns)"
    rows = [{(config_name if k == "config" and not single else k): v for k, v in r.items()}
            for r in records.values()]
    note = (f"pivoted: each '{measure}' row became a column" + ("" if single else
                                                                f" and each of {', '.join(configs)} a row")
            + (f"; derived columns left out: {', '.join(dropped)}" if dropped else ""))
    hints = dict(table.hints) if single else {config_name: "config", **table.hints}
    return table_from_records(rows, table.source, table.name, hints=hints,
                              note=_join_notes(table.note, note), meta=table.meta, absent_is_marker=True)


def melt_configs(table: Table) -> Table | None:
    """`model | GPU | fp16 | gptq-int4` or `FP16 latency (ms) | INT4 latency (ms)`: one row per precision; None when
    fewer than two numeric columns are named for a precision or the table already has a config column."""
    names = list(table.columns)
    kinds = {n: table.columns[n].kind for n in names}
    if any(infer_role(n, kinds[n]) == "config" and kinds[n] == "text" for n in names):
        return None
    parts = {n: _config_part(n) for n in names if kinds[n] != "text" and infer_role(n, kinds[n]) not in _KEY_ROLES}
    precision = {n: p for n, p in parts.items() if p[0] and not _UNCERTAINTY.search(n)}
    if len({label for label, _ in precision.values()}) < 2:
        return None
    errors = {(_config_part(n)[0], _strip_value_word(_UNCERTAINTY.sub(" ", _config_part(n)[1]))): n
              for n in parts if parts[n][0] and _UNCERTAINTY.search(n)}
    keys = [n for n in names if n not in parts]
    dropped = [n for n in parts if n not in precision and (parts[n][0] == "" or not _UNCERTAINTY.search(n))]
    rows = []
    for row in range(table.n_rows):
        by_label: dict[str, dict[str, str]] = {}
        for name, (label, rest) in precision.items():
            metric = _strip_value_word(rest) or "result"
            record = by_label.setdefault(label, {**{k: table.columns[k].raw[row] for k in keys}, "config": label})
            error = errors.get((label, _strip_value_word(rest)))
            record[metric] = _with_error(table.columns[name].raw[row],
                                         table.columns[error].raw[row] if error else None)
        rows.extend(by_label.values())
    hints = {"config": "config", **table.hints}
    if any(_strip_value_word(rest) == "" for _, rest in precision.values()):
        hints["result"] = "metric"
    note = (f"melted: columns {', '.join(precision)} became one row per precision"
            + (f"; columns left out (not per precision): {', '.join(dropped)}" if dropped else ""))
    return table_from_records(rows, table.source, table.name, hints=hints, note=_join_notes(table.note, note),
                              meta=table.meta, absent_is_marker=True)


def attach_uncertainties(table: Table) -> Table:
    """Give `acc` the uncertainties of an `acc_stderr` (or `acc_stderr,none`) column beside it."""
    columns = dict(table.columns)
    changed = False
    for name in table.columns:
        match = _STDERR_SUFFIX.match(name)
        if not match:
            continue
        base = match.group("base").rstrip(" _-") + (match.group("rest") or "")
        if base in columns and base != name:
            errors = table.columns[name].values
            columns[base] = columns[base].with_errors(np.where(np.isfinite(errors), np.abs(errors), np.nan))
            changed = True
    if not changed:
        return table
    return Table(table.source, table.name, columns, table.n_rows, table.hints, table.note, table.meta)


def _join_notes(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def normalize_layout(table: Table) -> Table:
    """Pivot or melt a published layout (if it is one) and attach stderr columns to their values."""
    reshaped = pivot_measures(table) or melt_configs(table) or table
    return attach_uncertainties(reshaped)
