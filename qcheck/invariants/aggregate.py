"""Aggregation that refuses to average missing values away: NaN, None, inf and non-numbers raise a DataError
naming the rows (seed 002's "avg_abs_diff = NaN"). A summary keeps the key and rows it came from, so it can
always be recomputed from the per-sample records stored in the report and checked against what was claimed
(seed 002's "Squad F1 50.0 in the summary, 0.0 recomputed").
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qcheck.errors import DataError
from qcheck.stats import wilson_interval

SHOWN_ROWS = 10


def _row_name(row: Mapping[str, Any], index: int, id_key: str) -> str:
    return f"{id_key}={row[id_key]!r}" if id_key in row else f"row {index}"


def bad_rows(records: Sequence[Mapping[str, Any]], key: str, id_key: str = "id") -> list[str]:
    """Names of the rows whose `key` is missing, None, NaN, inf, or not a number (booleans count as 0/1)."""
    bad = []
    for i, row in enumerate(records):
        value = row.get(key) if isinstance(row, Mapping) else None
        if isinstance(value, bool):
            continue
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad.append(f"{_row_name(row, i, id_key) if isinstance(row, Mapping) else f'row {i}'}: {value!r}")
    return bad


def values_of(records: Sequence[Mapping[str, Any]], key: str, id_key: str = "id") -> list[float]:
    """The numeric `key` of every record, or DataError naming every row that is missing/None/NaN/inf."""
    if not records:
        raise DataError(f"cannot aggregate {key!r}: no records")
    bad = bad_rows(records, key, id_key)
    if bad:
        shown = "; ".join(bad[:SHOWN_ROWS]) + (f" (+{len(bad) - SHOWN_ROWS} more)" if len(bad) > SHOWN_ROWS else "")
        raise DataError(f"refusing to aggregate {key!r}: {len(bad)} of {len(records)} rows are missing, None, NaN "
                        f"or not numbers ({shown}); fix or explain them instead of averaging them away")
    return [float(r[key]) for r in records]


@dataclass(frozen=True)
class Summary:
    """A mean over records with what it rests on; `recompute(records)` must give the same value."""

    key: str
    value: float
    n: int
    kind: str
    successes: int | None = None

    def recompute(self, records: Sequence[Mapping[str, Any]], id_key: str = "id") -> Summary:
        return summarize(records, self.key, id_key=id_key)

    def to_metric(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The report metric: value, n, and for proportions a Wilson interval; with `records`, the records too."""
        out: dict[str, Any] = {"value": self.value, "n": self.n, "key": self.key, "kind": self.kind}
        if self.successes is not None:
            ci = wilson_interval(self.successes, self.n)
            out.update(successes=self.successes, interval={"low": ci.low, "high": ci.high, "level": ci.level,
                                                            "method": ci.method})
        if records is not None:
            out["records"] = [dict(r) for r in records]
        return out


def summarize(records: Sequence[Mapping[str, Any]], key: str, *, id_key: str = "id") -> Summary:
    """Mean of `key` over records (a proportion when every value is a bool); refuses NaN/None naming the rows."""
    values = values_of(records, key, id_key)
    binary = all(isinstance(r[key], bool) for r in records)
    successes = int(sum(values)) if binary else None
    return Summary(key, math.fsum(values) / len(values), len(values), "proportion" if binary else "mean", successes)


def check_summary(claimed: float, records: Sequence[Mapping[str, Any]], key: str, *, id_key: str = "id",
                  tolerance: float = 1e-9) -> tuple[bool, Summary]:
    """Whether a claimed summary equals the mean recomputed from the records (within `tolerance`, absolute)."""
    summary = summarize(records, key, id_key=id_key)
    return (math.isfinite(claimed) and abs(claimed - summary.value) <= tolerance), summary
