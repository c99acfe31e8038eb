"""Describing and comparing Optuna distributions: how two suggest calls of one parameter name differ."""
from __future__ import annotations

import json
from typing import Any

DIFFERENCES = ("kind", "log", "choices", "order", "range")
"""The ways two distributions can differ, worst first."""


def describe_distribution(dist: Any) -> str:
    """A short readable form of a distribution: 'choices (2, 4)', 'int [0, 8] step 2', 'float [0.001, 1.0] log'."""
    kind = type(dist).__name__
    if kind == "CategoricalDistribution":
        return f"choices {tuple(dist.choices)!r}"
    if kind in ("IntDistribution", "FloatDistribution"):
        text = f"{'int' if kind == 'IntDistribution' else 'float'} [{dist.low!r}, {dist.high!r}]"
        if dist.log:
            text += " log"
        if dist.step is not None and not (kind == "IntDistribution" and dist.step == 1):
            text += f" step {dist.step!r}"
        return text
    return repr(dist)


def distribution_key(dist: Any) -> str:
    """A string equal for equal distributions: Optuna's JSON form (its repr when Optuna cannot serialise it)."""
    try:
        from optuna.distributions import distribution_to_json

        return distribution_to_json(dist)
    except Exception:  # noqa: BLE001 - a distribution optuna cannot serialise is still compared by repr
        return repr(dist)


def distribution_data(dist: Any) -> dict[str, Any]:
    """The distribution as JSON-able data, for a finding's evidence."""
    try:
        return json.loads(distribution_key(dist))
    except ValueError:
        return {"name": type(dist).__name__, "repr": repr(dist)}


def classify_difference(old: Any, new: Any) -> str | None:
    """How two distributions differ: 'kind', 'log', 'choices', 'order', 'range', or None when equal."""
    if distribution_key(old) == distribution_key(new):
        return None
    if type(old) is not type(new):
        return "kind"
    if type(old).__name__ == "CategoricalDistribution":
        a, b = list(old.choices), list(new.choices)
        same_members = len(a) == len(b) and all(a.count(x) == b.count(x) for x in a)
        return "order" if same_members else "choices"
    if getattr(old, "log", None) != getattr(new, "log", None):
        return "log"
    return "range"
