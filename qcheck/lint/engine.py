"""Run every enabled rule over every table; a crashing rule becomes a finding, never a crashed run."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from qcheck.errors import ConfigError, DataError
from qcheck.lint.config import LintConfig
from qcheck.lint.findings import Finding, Severity
from qcheck.lint.loader import load_all
from qcheck.lint.roles import MEASUREMENT_ROLES
from qcheck.lint.rules import RULES
from qcheck.lint.tables import Table
from qcheck.lint.view import TableView, build_view

CRASH_RULE = "Q000-rule-crashed"


def _check_layout(view: TableView) -> None:
    recognised = [n for n, r in view.roles.items()
                  if r in MEASUREMENT_ROLES and (r != "metric" or view.table.hints.get(n) == "metric")]
    if view.table.n_rows == 0:
        raise DataError(f"{view.table.location}: no data rows (columns: {', '.join(view.table.columns) or 'none'})")
    if not recognised:
        found = ", ".join(f"{n} ({r})" for n, r in view.roles.items()) or "none"
        raise DataError(
            f"{view.table.location}: unknown layout: no column is recognised as a metric (perplexity, accuracy, "
            f"f1, throughput, latency, energy, value, ...). Columns found: {found}. Name them with "
            "--column ROLE=COLUMN or a [tool.qcheck.lint] columns table")


def _check_explicit_columns(tables: Sequence[Table], config: LintConfig) -> None:
    names = {name for table in tables for name in table.columns}
    for role, column in config.columns.items():
        if column not in names:
            raise ConfigError(f"--column {role}={column}: no table has a column named {column!r}; columns found: "
                              f"{', '.join(sorted(names))}", field="column")


def _run(spec, target, config: LintConfig, where: TableView) -> list[Finding]:
    try:
        with np.errstate(all="ignore"):  # NaN and inf are data here; rules treat them explicitly
            return list(spec.func(target, config))
    except Exception as exc:  # noqa: BLE001 - a rule bug must not hide the other rules' findings
        return [where.finding(CRASH_RULE, Severity.ERROR, f"rule {spec.id} crashed on this table: "
                              f"{type(exc).__name__}: {exc}", crashed_rule=spec.id)]


def lint_tables(tables: Sequence[Table], config: LintConfig | None = None) -> list[Finding]:
    """Lint parsed tables; raises DataError for a table whose layout is unknown."""
    config = config or LintConfig()
    _check_explicit_columns(tables, config)
    views = [build_view(table, config) for table in tables]
    for view in views:
        _check_layout(view)
    findings: list[Finding] = []
    for spec in RULES:
        if not config.enabled(spec.id):
            continue
        if spec.scope == "tables":
            if views:
                findings.extend(_run(spec, views, config, views[0]))
            continue
        for view in views:
            if view.is_records and not spec.records:
                continue
            findings.extend(_run(spec, view, config, view))
    order = {view.table.location: i for i, view in enumerate(views)}
    findings.sort(key=lambda f: (order.get(f.location, len(order)), f.severity.rank, f.rule, f.rows))
    return findings


def lint_paths(paths: Iterable[str], config: LintConfig | None = None) -> list[Finding]:
    """Load and lint result files (CSV, JSON, JSONL)."""
    return lint_tables(load_all(paths), config)


def filter_baseline(findings: Iterable[Finding], baseline: Iterable[str]) -> list[Finding]:
    """Drop findings whose fingerprint is in `baseline` (fingerprints of an earlier run)."""
    known = set(baseline)
    return [f for f in findings if f.fingerprint() not in known]
