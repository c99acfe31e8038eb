"""Lint settings: thresholds, explicit column roles and facts about the experiment (pyproject or CLI)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tomllib

from qcheck.errors import ConfigError
from qcheck.lint.roles import KNOWN_ROLES


@dataclass(frozen=True)
class LintConfig:
    """Everything a rule may consult besides the table; defaults are documented in docs/lint.md."""

    columns: Mapping[str, str] = field(default_factory=dict)
    disable: frozenset[str] = frozenset()
    num_classes: int | None = None
    model: str | None = None
    dataset: str | None = None
    params: float | None = None
    context_length: int | None = None
    level: float = 0.95
    alpha: float = 0.05
    min_samples: int = 30
    chance_margin: float = 0.02
    min_effect: float = 0.005
    tie_digits: int = 5
    flat_tolerance: float = 0.05
    slowdown_ratio: float = 5.0
    reduced_slower_tolerance: float = 0.05
    mixed_tolerance: float = 0.10
    ppl_min_change: float = 0.01
    ppl_factor: float = 3.0
    tokens_per_sample: int = 32
    peak_flops: float = 2.5e15
    sentinel_fraction: float = 0.10

    def enabled(self, rule_id: str) -> bool:
        """False when the rule's id or its number (e.g. 'Q004') is in `disable`."""
        return rule_id not in self.disable and rule_id.split("-", 1)[0] not in self.disable


_FIELDS = {f.name: f for f in dataclasses.fields(LintConfig)}


def parse_column_options(options: Iterable[str]) -> dict[str, str]:
    """Parse `--column role=name` options into {role: name}, rejecting unknown roles."""
    mapping: dict[str, str] = {}
    for option in options:
        role, sep, name = option.partition("=")
        role, name = role.strip(), name.strip()
        if not sep or not role or not name:
            raise ConfigError(f"--column expects ROLE=COLUMN, got {option!r}", field="column")
        _check_role(role)
        mapping[role] = name
    return mapping


def _check_role(role: str) -> None:
    if role not in KNOWN_ROLES:
        raise ConfigError(f"unknown column role {role!r}; roles: {', '.join(KNOWN_ROLES)}", field="column")


def config_from_mapping(data: Mapping[str, Any], origin: str = "[tool.qcheck.lint]") -> LintConfig:
    """Build a LintConfig from a TOML-style mapping, naming unknown keys and bad values."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"{origin}: unknown key {key!r}; known keys: {', '.join(sorted(_FIELDS))}", field=key)
        if name == "columns":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: 'columns' must be a table of role = \"column\"", field=key)
            for role in value:
                _check_role(str(role))
            kwargs[name] = {str(k): str(v) for k, v in value.items()}
        elif name == "disable":
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ConfigError(f"{origin}: 'disable' must be a list of rule ids", field=key)
            kwargs[name] = frozenset(str(v) for v in value)
        else:
            default = _FIELDS[name].default
            expected = (int, float) if isinstance(default, float) or name == "params" else \
                int if isinstance(default, int) or name in ("num_classes", "context_length") else str
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ConfigError(f"{origin}: {key} = {value!r} has the wrong type", field=key)
            kwargs[name] = value
    return LintConfig(**kwargs)


def load_pyproject(directory: str = ".") -> dict[str, Any]:
    """The [tool.qcheck.lint] table of directory/pyproject.toml, or {} when there is none."""
    path = os.path.join(directory, "pyproject.toml")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    section = data.get("tool", {}).get("qcheck", {}).get("lint", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [tool.qcheck.lint] must be a table")
    return section
