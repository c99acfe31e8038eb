"""All lint rules, registered in id order; see docs/lint.md for the table of ids and severities."""
from __future__ import annotations

from qcheck.lint.rules import bounds, integrity, quality, samples, speed  # noqa: F401  (registration)
from qcheck.lint.rules.registry import RULES, RuleSpec

RULES.sort(key=lambda spec: spec.id)

__all__ = ["RULES", "RuleSpec"]
