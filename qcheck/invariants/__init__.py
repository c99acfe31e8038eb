"""The invariants: `assert_*` functions that judge measurements (results read back from the record store) and
return a CheckResult when they hold or raise InvariantViolation (an AssertionError carrying the CheckResult and its
evidence) when they do not. One module per capability; nothing here knows about pytest or loads a model.

Every `assert_*` is importable from here, resolved lazily (no heavy optional dependency loaded before it is needed).
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE: dict[str, str] = {
    "assert_quantization_applied": "qcheck.invariants.applied", "assert_plan_followed": "qcheck.invariants.applied",
    "assert_mixed_between": "qcheck.invariants.applied",
    "assert_close_to_reference": "qcheck.invariants.closeness",
    "assert_perplexity_order": "qcheck.invariants.quality", "assert_context_sensitivity": "qcheck.invariants.quality",
    "assert_perplexity_claim": "qcheck.invariants.quality", "assert_boxed_format": "qcheck.invariants.quality",
    "assert_not_collapsed": "qcheck.invariants.quality", "assert_difference_resolved": "qcheck.invariants.quality",
    "assert_summary_recomputable": "qcheck.invariants.quality",
    "assert_kl_sane": "qcheck.invariants.fidelity", "assert_kl_ordering": "qcheck.invariants.fidelity",
    "assert_kl_between": "qcheck.invariants.fidelity", "assert_flips_consistent": "qcheck.invariants.fidelity",
    "assert_robust_le_clean": "qcheck.invariants.robustness",
    "assert_latency_order": "qcheck.invariants.latency", "assert_throughput_honest": "qcheck.invariants.latency",
    "assert_placement": "qcheck.invariants.latency", "assert_slowdown_bound": "qcheck.invariants.latency",
    "assert_plausible_speed": "qcheck.invariants.latency",
    "assert_ptq_not_worse_than_rtn": "qcheck.invariants.ptq", "assert_reference_untouched": "qcheck.invariants.ptq",
    "assert_ptq_applied": "qcheck.invariants.ptq",
    "assert_static_search_space": "qcheck.audit.optuna.probe",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'qcheck.invariants' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
