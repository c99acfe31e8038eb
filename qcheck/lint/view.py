"""A table seen through its column roles: row labels, row kinds (reference, quantized, ...), groups, references."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.precision import REFERENCE, RowKind, bits_from_text, classify
from qcheck.lint.roles import assign_roles
from qcheck.lint.tables import Column, Table

AGGREGATE_LABELS = frozenset({"mean", "avg", "average", "overall", "total", "all", "summary", "aggregate", "median"})
_LABEL_ROLES = ("config", "model", "task", "bits", "sparsity", "trial", "sample_id")


@dataclass(frozen=True)
class TableView:
    """Roles, labels, kinds and groups of one table; rules read tables only through this."""

    table: Table
    roles: Mapping[str, str]
    labels: tuple[str, ...]
    kinds: tuple[RowKind, ...]
    groups: tuple[np.ndarray, ...]
    data_rows: np.ndarray
    aggregate_rows: np.ndarray
    identity: tuple[str, ...]
    _reference_cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def source(self) -> str:
        """The file the table came from."""
        return self.table.source

    def columns(self, *roles: str) -> list[str]:
        """Names of the columns that have any of `roles`, in table order."""
        return [name for name, role in self.roles.items() if role in roles]

    def column(self, role: str) -> Column | None:
        """The first column with `role`, or None."""
        names = self.columns(role)
        return self.table.columns[names[0]] if names else None

    def values(self, role: str) -> np.ndarray | None:
        """Float values of the first column with `role`."""
        column = self.column(role)
        return None if column is None else column.values

    def bits(self) -> np.ndarray:
        """Bit width per row (NaN when unknown)."""
        return np.fromiter((k.bits for k in self.kinds), dtype=np.float64, count=len(self.kinds))

    def describe(self, rows: Iterable[int], limit: int = 8) -> str:
        """'rows 2 (16-bit), 1 (FP32)' using 1-based data-row numbers; long lists end with '... and N more'."""
        rows = [int(r) for r in rows]
        parts = [f"{r + 1} ({self.labels[r]})" if self.labels[r] != f"row {r + 1}" else str(r + 1)
                 for r in rows[:limit]]
        if len(rows) > limit:
            parts.append(f"... and {len(rows) - limit} more")
        return ("row " if len(rows) == 1 else "rows ") + ", ".join(parts)

    def cell(self, column: str, row: int) -> str:
        """The cell as written in the file."""
        return self.table.columns[column].raw[int(row)].strip()

    @property
    def is_records(self) -> bool:
        """True for per-sample records (a sample-id column): only cell-level rules apply to them."""
        return "sample_id" in self.roles.values()

    def reference_for(self, row: int, group: np.ndarray, kinds: tuple[str, ...] = (REFERENCE,)) -> int | None:
        """The row of `kinds` (default: uncompressed) in `row`'s group whose label shares the longest prefix."""
        key = (id(group), self.identity[row], kinds)
        if key not in self._reference_cache:
            refs = [int(r) for r in group if self.kinds[r].kind in kinds and r != row]
            best = None
            if refs:
                text = self.identity[row].lower()
                best = max(refs, key=lambda r: (_common_prefix(text, self.identity[r].lower()), -r))
            self._reference_cache[key] = best
        return self._reference_cache[key]

    def finding(self, rule: str, severity: Severity, message: str, rows: Sequence[int] = (),
                columns: Sequence[str] = (), **evidence: object) -> Finding:
        """A Finding located in this table."""
        rows = [int(r) for r in rows]
        return Finding(rule, severity, message, self.source, self.table.name, tuple(r + 1 for r in rows),
                       tuple(self.labels[r] for r in rows), tuple(columns), dict(evidence))


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _label_part(role: str, raw: str) -> str:
    if role == "bits":
        return raw if not raw.replace(".", "", 1).isdigit() else f"{raw}-bit"
    if role == "sparsity":
        return f"sparsity={raw}"
    if role == "trial":
        return f"trial {raw}"
    if role == "sample_id":
        return f"sample {raw}"
    return raw


def build_view(table: Table, config: LintConfig) -> TableView:
    """Assign roles and derive labels, kinds, groups and aggregate rows of `table`."""
    roles = assign_roles({n: c.kind for n, c in table.columns.items()}, config.columns)
    n = table.n_rows
    label_columns = [(name, role) for role in _LABEL_ROLES for name, r in roles.items() if r == role]
    text_columns = [table.columns[name] for name, role in roles.items() if role in ("config", "model")]
    identity = tuple(" ".join(c.raw[i].strip() for c in text_columns) for i in range(n))
    labels = []
    for i in range(n):
        parts = [_label_part(role, table.columns[name].raw[i].strip()) for name, role in label_columns
                 if table.columns[name].raw[i].strip()
                 and not (role == "bits" and bits_from_text(identity[i]) == table.columns[name].values[i])]
        labels.append(", ".join(parts) if parts else f"row {i + 1}")
    bits_col = [table.columns[name] for name, role in roles.items() if role == "bits"]
    sparsity_col = [table.columns[name] for name, role in roles.items() if role == "sparsity"]
    bits = bits_col[0].values if bits_col else np.full(n, math.nan)
    bits = np.where((bits >= 1) & (bits <= 64), bits, math.nan)
    sparsity = sparsity_col[0].values if sparsity_col else np.full(n, math.nan)
    kinds = tuple(classify(identity[i], float(bits[i]), float(sparsity[i])) for i in range(n))
    first_label = text_columns[0].raw if text_columns else ("",) * n
    aggregate = np.array([i for i in range(n) if first_label[i].strip().lower() in AGGREGATE_LABELS], dtype=np.int64)
    data_mask = np.ones(n, dtype=bool)
    data_mask[aggregate] = False
    data_rows = np.flatnonzero(data_mask)
    group_columns = [table.columns[name] for name, role in roles.items()
                     if role in ("task", "context_length") or (role == "model" and "config" in roles.values())]
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in data_rows:
        groups.setdefault(tuple(c.raw[i].strip() for c in group_columns), []).append(int(i))
    return TableView(table, roles, tuple(labels), kinds,
                     tuple(np.array(g, dtype=np.int64) for g in groups.values()), data_rows, aggregate, identity)


def fraction(view: TableView, column: str) -> np.ndarray:
    """An accuracy-like column on the [0, 1] scale (a column whose values exceed 1 is read as percent)."""
    values = view.table.columns[column].values
    finite = values[np.isfinite(values)]
    return values / 100.0 if finite.size and finite.max() > 1.0 and finite.max() <= 100.0 else values
