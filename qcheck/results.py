"""Check results as data: status, what was compared, on how many samples, with which test, and evidence.

Every invariant produces a CheckResult; report writers render them. Modelled on deepchecks'
"checks as data": nothing here knows about pytest.
"""
from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    WARN = "WARN"
    INCONCLUSIVE = "INCONCLUSIVE"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"


@dataclass
class CheckResult:
    """The outcome of one check. `compared`, `n`, `test` and `threshold` say what the verdict rests on."""

    name: str
    status: Status
    message: str
    compared: str = ""
    n: int | None = None
    test: str = ""
    threshold: Any = None
    evidence: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def ok(self) -> bool:
        return self.status in (Status.PASS, Status.WARN)

    def render(self) -> str:
        """One readable paragraph: verdict, message, the basis of the decision, a short evidence digest."""
        parts = [f"[{self.status.value}] {self.name}" + (f" ({self.variant})" if self.variant else "") + f": {self.message}"]
        basis = []
        if self.compared:
            basis.append(f"compared {self.compared}")
        if self.n is not None:
            basis.append(f"n={self.n}")
        if self.test:
            basis.append(f"test: {self.test}")
        if self.threshold is not None:
            basis.append(f"threshold: {self.threshold}")
        if basis:
            parts.append("  basis: " + "; ".join(basis))
        if self.evidence:
            text = json.dumps(to_jsonable(self.evidence), sort_keys=True)
            parts.append("  evidence: " + (text if len(text) <= 1500 else text[:1500] + " ..."))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return to_jsonable(data)


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy values, dataclasses, enums and non-finite floats into strict-JSON data."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return str(value)


def raise_if_failed(result: CheckResult) -> CheckResult:
    """Return the result; raise InvariantViolation (carrying it) when its status is FAIL or ERROR. Every assert_*
    and judge_* ends with this, so a violation fails the pytest test that called it and keeps its evidence."""
    if result.status in (Status.FAIL, Status.ERROR):
        from qcheck.errors import InvariantViolation

        raise InvariantViolation(result)
    return result
