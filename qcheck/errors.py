"""Exception types shared by every qcheck module.

`QCheckError` is the root for problems with the user's input (exit code 2 on the CLI);
`InvariantViolation` is an AssertionError so pytest reports it as a failed check.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qcheck.results import CheckResult


class QCheckError(Exception):
    """Bad input or usage: a message that names the problem and what to do about it."""


class ConfigError(QCheckError, ValueError):
    """An invalid spec, plan or option. `field` names the offending parameter."""

    def __init__(self, message: str, field: str | None = None, layer: str | None = None) -> None:
        self.field = field
        self.layer = layer
        super().__init__(message)


class ModelLoadError(QCheckError):
    """A model source that is missing, corrupt or of an unknown kind."""


class DataError(QCheckError):
    """Evaluation data that is missing, malformed, or would be silently averaged (NaN, None)."""


class MissingDependencyError(QCheckError, ImportError):
    """An optional dependency (bitsandbytes, optuna, ...) is needed but not installed."""

    def __init__(self, package: str, purpose: str, extra: str | None = None) -> None:
        hint = f'pip install "qcheck[{extra}]"' if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the optional package '{package}', which is not installed: {hint}")
        self.package = package


class VariantUnavailable(QCheckError):
    """A requested variant cannot be built on this machine (its backend needs a GPU or a missing package)."""


class InvariantViolation(AssertionError):
    """A sanity invariant does not hold. Carries the CheckResult with the evidence."""

    def __init__(self, result: CheckResult | str, evidence: dict[str, Any] | None = None) -> None:
        from qcheck.results import CheckResult, Status

        if isinstance(result, str):
            result = CheckResult(name="invariant", status=Status.FAIL, message=result, evidence=evidence or {})
        self.result = result
        super().__init__(result.render())


def require(package: str, purpose: str, extra: str | None = None) -> Any:
    """Import an optional dependency or raise MissingDependencyError naming what needs it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(package, purpose, extra) from exc
