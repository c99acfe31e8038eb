"""transformers' key/value cache by either of its names: `cache` (transformers >= 5.2x) or `past_key_values` (older,
deprecated there and removed in 5.40), for the forward's argument and for the output's field."""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from torch import nn


@lru_cache(maxsize=64)
def _argument_of(forward_type: type) -> str:
    params = inspect.signature(forward_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_argument(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword that passes `cache` to `model`'s forward, as the installed transformers names it."""
    return {_argument_of(type(model)): cache}


def cache_of(output: Any) -> Any:
    """The key/value cache a forward returned (None when it returned none)."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None
