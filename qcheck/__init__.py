"""qcheck: sanity invariants for quantization experiments, as a library, a pytest plugin and a CLI.

Public names are resolved lazily so that `import qcheck` (and the pytest plugin) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "QCheckError": "qcheck.errors",
    "ConfigError": "qcheck.errors",
    "ModelLoadError": "qcheck.errors",
    "DataError": "qcheck.errors",
    "InvariantViolation": "qcheck.errors",
    "CheckResult": "qcheck.results",
    "Status": "qcheck.results",
    "load_model": "qcheck.inputs.models",
    "Plan": "qcheck.quant.plan",
    "quantize": "qcheck.quant.apply",
    "assert_quantization_applied": "qcheck.invariants.applied",
    "assert_mixed_between": "qcheck.invariants.applied",
    "assert_plan_followed": "qcheck.invariants.applied",
    "assert_robust_le_clean": "qcheck.invariants.robustness",
    "assert_latency_order": "qcheck.invariants.latency",
    "assert_slowdown_bound": "qcheck.invariants.latency",
    "assert_boxed_format": "qcheck.invariants.quality",
    "assert_perplexity_order": "qcheck.invariants.quality",
    "assert_not_collapsed": "qcheck.invariants.quality",
    "assert_kl_sane": "qcheck.invariants.fidelity",
    "assert_kl_ordering": "qcheck.invariants.fidelity",
    "assert_static_search_space": "qcheck.audit.optuna.probe",
    "assert_same_as_reference": "qcheck.strategies",
}

__all__ = sorted(_EXPORTS) + ["__version__"]  # noqa: PLE0605  (one table names the lazy exports)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'qcheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
