"""Parameter validation shared by the number formats: integers only, ranges named in the error."""
from __future__ import annotations

import numbers

from qcheck.errors import ConfigError


def require_int(name: str, value: object, low: int | None = None, high: int | None = None, where: str = "") -> int:
    """Return `value` as int, or raise ConfigError naming the parameter and the allowed values."""
    suffix = f" ({where})" if where else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}{suffix}", field=name)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be in {allowed}, got {value}{suffix}", field=name)
    return value
