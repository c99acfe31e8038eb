"""A table seen through its column roles: row labels, row kinds (reference, quantized, ...), groups, references."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qcheck.lint.cells import NOT_RUN
from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.precision import COMPRESSED_KINDS, HALF, MIXED, OTHER, REFERENCE, RowKind, bits_from_text, classify
from qcheck.lint.references import params_from_name
from qcheck.lint.roles import CONDITION_ROLES, assign_roles, refine_roles
from qcheck.lint.scale import declared_scale, proportion_scale
from qcheck.lint.tables import Column, Table, make_column

AGGREGATE_LABELS = frozenset({"mean", "avg", "average", "overall", "total", "all", "summary", "aggregate", "median"})
_LABEL_ROLES = ("config", "model", "task", "qparam", "bits", "params", "sparsity", "batch", "condition",
                "context_length", "trial", "seed", "sample_id")
_SETTING_ROLES = ("qparam", "params", "batch", "condition", "context_length")
"""Label parts named 'name value' and shown only where they vary within the table."""
_FILL_ROLES = ("model", "task", "params", "batch", "condition", "context_length")
_ELISION = frozenset({"", "...", "\u2026"})


@dataclass(frozen=True)
class TableView:
    """Roles, labels, kinds and groups of one table; rules read tables only through this."""

    table: Table
    roles: Mapping[str, str]
    labels: Sequence[str]
    kinds: tuple[RowKind, ...]
    groups: tuple[np.ndarray, ...]
    data_rows: np.ndarray
    aggregate_rows: np.ndarray
    identity: tuple[str, ...]
    default_model: str | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

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
        """Float values of the first column with `role` (a params column reads '7B' as 7e9)."""
        column = self.column(role)
        if column is None:
            return None
        if role == "params":
            return np.array([params_from_name(raw) if raw.strip() and not raw.strip()[-1].isdigit() else value
                             for raw, value in zip(column.raw, column.values.tolist())], dtype=np.float64)
        return column.values

    def bits(self) -> np.ndarray:
        """Bit width per row (NaN when unknown)."""
        if "bits" not in self._cache:
            self._cache["bits"] = np.fromiter((k.bits for k in self.kinds), dtype=np.float64, count=len(self.kinds))
        return self._cache["bits"]

    def compressed_mask(self) -> np.ndarray:
        """Rows that are half precision, mixed, quantized or pruned."""
        return self.kind_mask(*COMPRESSED_KINDS)

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

    def reference_rows(self, kinds: tuple[str, ...] = (REFERENCE,)) -> np.ndarray:
        """Per row, the row of `kinds` (default: uncompressed) in its group whose label shares the longest prefix
        with it (a reference row maps to itself); -1 where the group has none."""
        if kinds not in self._cache:
            result = np.full(self.table.n_rows, -1, dtype=np.int64)
            for group in self.groups:
                first: dict[str, int] = {}
                for r in group:
                    if self.kinds[r].kind in kinds:
                        first.setdefault(self.identity[r], int(r))
                refs = list(first.values())
                if not refs:
                    continue
                best: dict[str, int] = {}
                for r in group:
                    text = self.identity[r]
                    if text not in best:
                        lowered = text.lower()
                        best[text] = max(refs, key=lambda c: (_common_prefix(lowered, self.identity[c].lower()), -c))
                    result[r] = best[text]
            self._cache[kinds] = result
        return self._cache[kinds]

    def baseline_rows(self) -> np.ndarray:
        """Per row, its uncompressed reference row, else (for rows that are not half precision) its fp16/bf16 row."""
        reference = self.reference_rows()
        return np.where((reference < 0) & ~self.kind_mask(HALF), self.reference_rows((HALF,)), reference)

    def kind_mask(self, *kinds: str) -> np.ndarray:
        """Boolean mask of rows whose kind is one of `kinds`."""
        wanted = set(kinds)
        return np.fromiter((k.kind in wanted for k in self.kinds), dtype=bool, count=len(self.kinds))

    def uniform_mask(self) -> np.ndarray:
        """Rows with a known bit width that are not mixed or unclassified configs."""
        key = "uniform"
        if key not in self._cache:
            self._cache[key] = np.isfinite(self.bits()) & ~self.kind_mask(MIXED, OTHER)
        return self._cache[key]

    def finding(self, rule: str, severity: Severity, message: str, rows: Sequence[int] = (),
                columns: Sequence[str] = (), **evidence: object) -> Finding:
        """A Finding located in this table (a reshaped table says how its rows relate to the file's)."""
        rows = [int(r) for r in rows]
        if self.table.note:
            evidence = {**evidence, "layout": self.table.note}
        return Finding(rule, severity, message, self.source, self.table.name, tuple(r + 1 for r in rows),
                       tuple(self.labels[r] for r in rows), tuple(columns), dict(evidence))


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _label_part(role: str, raw: str, name: str) -> str:
    if role in ("qparam", "condition", "batch", "context_length", "params"):
        return f"{name} {raw}"
    if role == "bits":
        return raw if not raw.replace(".", "", 1).isdigit() else f"{raw}-bit"
    if role == "sparsity":
        return f"sparsity={raw}"
    if role == "trial":
        return f"trial {raw}"
    if role == "seed":
        return f"seed {raw}"
    if role == "sample_id":
        return f"sample {raw}"
    return raw


class _Labels(Sequence[str]):
    """'QAT, 6-bit' style row labels, built on first use (most rows of a big table are never named)."""

    def __init__(self, table: Table, label_columns: list[tuple[str, str]], identity: tuple[str, ...]) -> None:
        self._columns = [(role, table.columns[name]) for name, role in label_columns
                         if role not in _SETTING_ROLES or len(set(table.columns[name].raw)) > 1]
        self._identity = identity
        self._n = table.n_rows
        self._cache: dict[int, str] = {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(self._n))]
        row = int(row)
        if row < 0:
            row += self._n
        if not 0 <= row < self._n:
            raise IndexError(row)
        if row not in self._cache:
            parts = [_label_part(role, column.raw[row].strip(), column.name) for role, column in self._columns
                     if column.raw[row].strip()
                     and not (role == "bits" and bits_from_text(self._identity[row]) == column.values[row])]
            self._cache[row] = ", ".join(parts) if parts else f"row {row + 1}"
        return self._cache[row]


def _classify_cached(cache: dict) -> Callable[[str, float, float], RowKind]:
    """`classify` memoised on (label, bits, sparsity) with NaN normalised (NaN keys never compare equal)."""
    def lookup(text: str, bits: float, sparsity: float) -> RowKind:
        key = (text, None if math.isnan(bits) else bits, None if math.isnan(sparsity) else sparsity)
        kind = cache.get(key)
        if kind is None:
            kind = cache[key] = classify(text, bits, sparsity)
        return kind
    return lookup


def _filled(column: Column) -> Column:
    """A label column with blank cells below a filled one inheriting it (Markdown tables leave repeats blank)."""
    if not column.missing.any():
        return column
    raw = list(column.raw)
    if not raw or not raw[0].strip():
        return column
    last = raw[0]
    for i, cell in enumerate(raw):
        if cell.strip():
            last = cell
        else:
            raw[i] = last
    return make_column(column.name, raw, strings=True)


def _elided_rows(table: Table) -> np.ndarray:
    """Rows that hold no data at all ('...' rows that stand for rows left out of a published table)."""
    if not table.columns:
        return np.zeros(0, dtype=np.int64)
    mask = np.ones(table.n_rows, dtype=bool)
    for column in table.columns.values():
        mask &= column.missing | column.is_state(NOT_RUN)
    candidates = np.flatnonzero(mask)
    return np.array([r for r in candidates.tolist()
                     if all(column.raw[r].strip() in _ELISION for column in table.columns.values())], dtype=np.int64)


def table_roles(table: Table, config: LintConfig) -> dict[str, str]:
    """Every column's role: --column wins, then what the reader knows, then the name, then the cells."""
    roles = assign_roles({n: c.kind for n, c in table.columns.items()}, config.columns, table.hints)
    roles = refine_roles(table, roles, config.columns)
    first = next(iter(table.columns), None)
    pinned = set(config.columns.values()) | set(table.hints)
    if first is not None and first not in pinned and roles[first] == "text" and "model" not in roles.values():
        roles[first] = "model" if "config" in roles.values() else roles[first]
    return roles


def _default_model(table: Table, roles: Mapping[str, str]) -> str | None:
    """A model named by the table rather than a column: a reader's fact, or the header of a config column
    ('LLaMA-7B' over FP16 / RTN / GPTQ rows)."""
    if table.meta.get("model"):
        return str(table.meta["model"])
    for name, role in roles.items():
        if role == "config" and math.isfinite(params_from_name(name)):
            return name
    return None


def build_view(table: Table, config: LintConfig) -> TableView:
    """Assign roles and derive labels, kinds, groups and aggregate rows of `table`."""
    roles = table_roles(table, config)
    filled = {name: _filled(column) if roles[name] in _FILL_ROLES else column for name, column in table.columns.items()}
    if any(filled[name] is not column for name, column in table.columns.items()):
        table = Table(table.source, table.name, filled, table.n_rows, table.hints, table.note, table.meta)
    n = table.n_rows
    label_columns = [(name, role) for role in _LABEL_ROLES for name, r in roles.items() if r == role]
    text_columns = [table.columns[name] for name, role in roles.items() if role in ("config", "model")]
    kind_text = tuple(map(" ".join, zip(*(tuple(map(str.strip, c.raw)) for c in text_columns)))) if text_columns \
        else ("",) * n
    qparams = [table.columns[name] for name, role in roles.items() if role == "qparam"]
    identity = tuple(" ".join(parts) for parts in zip(kind_text, *(tuple(map(str.strip, c.raw)) for c in qparams))) \
        if qparams else kind_text
    labels = _Labels(table, label_columns, identity)
    bits_col = [table.columns[name] for name, role in roles.items() if role == "bits"]
    sparsity_col = [table.columns[name] for name, role in roles.items() if role == "sparsity"]
    bits = bits_col[0].values if bits_col else np.full(n, math.nan)
    bits = np.where((bits >= 1) & (bits <= 64), bits, math.nan)
    sparsity = sparsity_col[0].values if sparsity_col else np.full(n, math.nan)
    kinds = tuple(map(_classify_cached({}), kind_text, bits.tolist(), sparsity.tolist()))
    first_label = text_columns[0].raw if text_columns else ("",) * n
    aggregate = np.array([i for i in range(n) if first_label[i].strip().lower() in AGGREGATE_LABELS], dtype=np.int64)
    data_mask = np.ones(n, dtype=bool)
    data_mask[aggregate] = False
    data_mask[_elided_rows(table)] = False
    data_rows = np.flatnonzero(data_mask)
    group_columns = [table.columns[name] for name, role in roles.items()
                     if role in ("task", "params") + CONDITION_ROLES
                     or (role == "model" and "config" in roles.values())]
    keys = list(zip(*(c.raw for c in group_columns))) if group_columns else [()] * n
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in data_rows.tolist():
        groups.setdefault(keys[i], []).append(i)
    return TableView(table, roles, labels, kinds, tuple(np.array(g, dtype=np.int64) for g in groups.values()),
                     data_rows, aggregate, identity, _default_model(table, roles))


def fraction(view: TableView, column: str) -> np.ndarray:
    """An accuracy-like column on the [0, 1] scale; the scale (fraction or percent) is inferred from the column's
    values (qcheck.lint.scale), and values impossible on that scale are NaN here (rule Q022 reports them)."""
    col = view.table.columns[column]
    values = col.values
    scale = proportion_scale(values, col.unit, declared_scale(view.table, column))
    if scale is None:
        return values
    out = values / scale
    return np.where((out >= 0) & (out <= 1), out, np.where(np.isnan(out), out, math.nan))
