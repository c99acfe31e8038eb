"""Readers for what the ecosystem writes: lm-evaluation-harness results, optimum-benchmark reports, pytest-benchmark
JSON. Each turns one file into tables with roles it knows (`Table.hints`); files of one tool given together are
combined into one comparison per task or stage."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from qcheck.lint.cells import ABSENT
from qcheck.lint.readers import lm_eval, optimum_benchmark, pytest_benchmark
from qcheck.lint.tables import Table, table_from_records

_READERS: tuple[tuple[str, Callable[[Any], bool], Callable[[Any, str], list[Table]]], ...] = (
    (lm_eval.FAMILY, lm_eval.detect, lm_eval.read),
    (optimum_benchmark.FAMILY, optimum_benchmark.detect, optimum_benchmark.read),
    (pytest_benchmark.FAMILY, pytest_benchmark.detect, pytest_benchmark.read),
)


def read_known_json(data: Any, source: str) -> list[Table] | None:
    """Tables from a file one of the known tools wrote, or None when `data` is none of their formats."""
    for _, detect, read in _READERS:
        if detect(data):
            return read(data, source)
    return None


def _records(table: Table) -> list[dict[str, str]]:
    absent = {name: column.is_state(ABSENT) for name, column in table.columns.items()}
    return [{name: column.raw[row] for name, column in table.columns.items() if not absent[name][row]}
            for row in range(table.n_rows)]


def _distinct_labels(tables: Sequence[Table]) -> list[list[dict[str, str]]]:
    """Records of each table; a config label that two files share gets its file name added."""
    records = [_records(t) for t in tables]
    seen: dict[tuple[str, str], int] = {}
    for rows in records:
        for key in {(row.get("model", ""), row.get("config", "")) for row in rows}:
            seen[key] = seen.get(key, 0) + 1
    for table, rows in zip(tables, records):
        for row in rows:
            if seen.get((row.get("model", ""), row.get("config", "")), 0) > 1:
                row["config"] = f"{row.get('config', '')} ({os.path.basename(table.source)})".strip()
    return records


def combine(tables: Sequence[Table]) -> list[Table]:
    """Merge tables that one tool wrote for the same task/stage in several files into one comparison each."""
    order: list[tuple[str, str | None] | int] = []
    families: dict[tuple[str, str | None], list[Table]] = {}
    for index, table in enumerate(tables):
        family = table.meta.get("family")
        if family is None:
            order.append(index)
            continue
        key = (str(family), table.name)
        if key not in families:
            order.append(key)
        families.setdefault(key, []).append(table)
    out: list[Table] = []
    for item in order:
        if isinstance(item, int):
            out.append(tables[item])
            continue
        group = families[item]
        if len(group) == 1:
            out.append(group[0])
            continue
        rows = [row for records in _distinct_labels(group) for row in records]
        hints: dict[str, str] = {}
        for table in group:
            hints.update(table.hints)
        sources = list(dict.fromkeys(t.source for t in group))
        out.append(table_from_records(rows, " + ".join(sources), item[1], hints=hints,
                                      note=f"{len(group)} {item[0]} files compared as one table",
                                      meta={**group[0].meta, "files": sources}, absent_is_marker=True))
    return out
