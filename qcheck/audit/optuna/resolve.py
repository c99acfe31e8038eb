"""Resolving MODULE:FUNCTION (or path/to/file.py:FUNCTION) to the objective callable; failures are bad input."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qcheck.audit.optuna.trials import error_text
from qcheck.errors import QCheckError


def resolve_objective(spec: str) -> Callable[..., Any]:
    """Resolve 'package.module:function' or 'path/to/file.py:function' (dotted attributes allowed) to a callable."""
    module_part, sep, attr_path = spec.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise QCheckError(f"expected MODULE:FUNCTION or path/to/file.py:FUNCTION, got {spec!r}")
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        module = _import_file(module_part)
    else:
        module = _import_module(module_part)
    value: Any = module
    for part in attr_path.split("."):
        if not hasattr(value, part):
            candidates = sorted(
                n for n, v in vars(module).items() if callable(v) and getattr(v, "__module__", None) == module.__name__
            )
            raise QCheckError(f"{module_part!r} has no attribute {attr_path!r}; "
                              f"callables defined there: {', '.join(candidates) or 'none'}")
        value = getattr(value, part)
    if not callable(value):
        raise QCheckError(f"{spec!r} is a {type(value).__name__}, not a callable objective")
    return value


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise QCheckError(f"cannot import module {name!r}: {exc} (is it on sys.path / PYTHONPATH?)") from exc
        raise QCheckError(f"importing {name!r} failed: {error_text(exc)}") from exc
    except (Exception, SystemExit) as exc:  # the user's module failing to import (even sys.exit) is bad input
        raise QCheckError(f"importing {name!r} failed: {error_text(exc)}") from exc


def _import_file(path_text: str) -> Any:
    path = Path(path_text)
    if not path.is_file():
        raise QCheckError(f"objective file not found: {path_text!r}")
    resolved = path.resolve()
    module_name = "qcheck_objective_" + "".join(ch if ch.isalnum() else "_" for ch in str(resolved))
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise QCheckError(f"cannot load {path_text!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(resolved.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's file failing to import (even sys.exit) is bad input
        del sys.modules[module_name]
        raise QCheckError(f"importing {path_text!r} failed: {error_text(exc)}") from exc
    finally:
        sys.path.remove(str(resolved.parent))
    return module
