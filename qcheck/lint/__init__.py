"""`qcheck lint`: a results-table linter for impossible and suspicious numbers (issue 5).

    from qcheck.lint import lint_paths
    findings = lint_paths(["results.csv"])
"""
from __future__ import annotations

from qcheck.lint.config import LintConfig
from qcheck.lint.engine import filter_baseline, lint_paths, lint_tables
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.rules import RULES
from qcheck.lint.tables import load_tables, table_from_csv_text, table_from_records

__all__ = [
           "RULES",
           "Finding",
           "LintConfig",
           "Severity",
           "filter_baseline",
           "lint_paths",
           "lint_tables",
           "load_tables",
           "table_from_csv_text",
           "table_from_records",
]
