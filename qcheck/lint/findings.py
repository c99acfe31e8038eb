"""Lint findings as data: a stable rule id, a severity, a message naming rows and columns, and evidence."""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any

from qcheck.results import to_jsonable


class Severity(str, enum.Enum):
    """How bad a finding is; an ERROR makes `qcheck lint` exit 1."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for error, 1 for warning, 2 for info (sort order)."""
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    """One problem in one table: which rule, where (rows are 1-based data rows), why, and the numbers."""

    rule: str
    severity: Severity
    message: str
    source: str
    table: str | None = None
    rows: tuple[int, ...] = ()
    row_labels: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def location(self) -> str:
        """'file[:table]' as shown in reports."""
        return self.source + (f":{self.table}" if self.table else "")

    def fingerprint(self) -> str:
        """Identity used by --baseline: rule, file name, table, columns and row labels (not the numbers)."""
        return "|".join([self.rule, os.path.basename(self.source), self.table or "",
                         ",".join(self.columns), ",".join(self.row_labels)])

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON representation."""
        return to_jsonable({
            "rule": self.rule, "severity": self.severity.value, "message": self.message,
            "source": self.source, "table": self.table, "rows": list(self.rows),
            "row_labels": list(self.row_labels), "columns": list(self.columns),
            "evidence": self.evidence, "fingerprint": self.fingerprint(),
        })
