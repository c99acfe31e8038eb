"""The rule registry: each rule is a small function with a stable id, registered by a decorator."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qcheck.lint.findings import Finding

TableRule = Callable[..., Iterable[Finding]]


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule: id, the severities it can emit, the zoo bug it catches, and its function."""

    id: str
    severities: str
    zoo: str
    summary: str
    func: TableRule
    scope: str = "table"
    records: bool = False


RULES: list[RuleSpec] = []


def rule(rule_id: str, severities: str, zoo: str, summary: str, scope: str = "table",
         records: bool = False) -> Callable[[TableRule], TableRule]:
    """Register a rule; `scope` is 'table' (func(view, config)) or 'tables' (func(views, config))."""
    def register(func: TableRule) -> TableRule:
        RULES.append(RuleSpec(rule_id, severities, zoo, summary, func, scope, records))
        return func
    return register

