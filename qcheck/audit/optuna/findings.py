"""The audit's results as data: `OptunaFinding` (lint's Finding with a rule name, parameter and fix) and
`AuditReport` (what was audited, the findings, a summary; rendered as text, JSON or a CheckResult)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qcheck.lint.findings import Finding, Severity
from qcheck.results import CheckResult, Status, to_jsonable


@dataclass(frozen=True)
class OptunaFinding(Finding):
    """One problem found by the audit: lint's Finding (rule id, severity, message, source = the audited
    objective or study, evidence) plus the rule's short name, the parameter it concerns, and the fix."""

    name: str = ""
    param: str | None = None
    fix: str = ""

    @property
    def id(self) -> str:
        """The stable rule id, e.g. 'OPT101'."""
        return self.rule

    def fingerprint(self) -> str:
        """Identity of the finding: rule, audited target and parameter (not the numbers)."""
        return "|".join([self.rule, self.source, self.param or ""])

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON representation."""
        return to_jsonable({
            "id": self.rule, "name": self.name, "severity": self.severity.value, "param": self.param,
            "message": self.message, "fix": self.fix, "source": self.source, "evidence": dict(self.evidence),
        })

    def render(self, with_fix: bool = True) -> str:
        """A few readable lines: severity, id, message and (unless `with_fix` is False) the fix."""
        head = f"{self.severity.value:<7} {self.rule} {self.name}" + (f" [{self.param}]" if self.param else "")
        fix = self.fix if with_fix else f"as for {self.rule} above"
        return f"{head}\n    {self.message}\n    fix: {fix}"


@dataclass(frozen=True)
class AuditReport:
    """The outcome of an audit: what was audited ('objective' or 'study'), the findings, and a summary."""

    kind: str
    target: str
    findings: tuple[OptunaFinding, ...]
    summary: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def errors(self) -> tuple[OptunaFinding, ...]:
        """Findings of severity error."""
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[OptunaFinding, ...]:
        """Findings of severity warning."""
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def ids(self) -> list[str]:
        """The finding ids, in report order."""
        return [f.id for f in self.findings]

    @property
    def inconclusive(self) -> bool:
        """True when there was nothing to audit and no finding says so (OPT205 ignored)."""
        return not self.findings and not self.summary.get("n_trials")

    @property
    def status(self) -> Status:
        """FAIL on an error, WARN on a warning, INCONCLUSIVE with nothing audited, else PASS."""
        if self.errors:
            return Status.FAIL
        if self.warnings:
            return Status.WARN
        return Status.INCONCLUSIVE if self.inconclusive else Status.PASS

    def by_id(self, rule_id: str) -> list[OptunaFinding]:
        """The findings with this id."""
        return [f for f in self.findings if f.id == rule_id]

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON representation."""
        return to_jsonable({"kind": self.kind, "target": self.target, "status": self.status.value,
                            "summary": dict(self.summary), "findings": [f.to_dict() for f in self.findings]})

    def render(self) -> str:
        """Readable text: a header, the verdict, each finding (a rule's fix printed once)."""
        lines = [f"qcheck optuna: {self.kind} {self.target}", "  " + self._summary_line()]
        lines.append(f"{self.status.value}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        shown: set[str] = set()
        for finding in self.findings:
            lines.append(finding.render(with_fix=finding.id not in shown))
            shown.add(finding.id)
        return "\n".join(lines)

    def _summary_line(self) -> str:
        s = self.summary
        if self.kind == "objective":
            text = f"{s.get('n_trials', 0)} probe trials (RandomSampler seed {s.get('seed')}"
            text += f"; {s.get('n_shared', 0)} on one study, {s.get('n_isolated', 0)} on fresh studies)"
            return text + f", {s.get('n_suggest_calls', 0)} suggest calls, states {s.get('states', {})}"
        return f"{s.get('n_trials', 0)} trials, states {s.get('states', {})}"

    def to_check_result(self) -> CheckResult:
        """The report as a CheckResult (name optuna.search_space or optuna.study) with the findings as evidence."""
        if self.kind == "objective":
            name = "optuna.search_space"
            compared = "the suggest calls and return values of the objective's probe trials"
            test = ("one distribution per parameter name; no exception turned into a return value; "
                    "no shared sentinel value; at least one COMPLETE trial")
        else:
            name = "optuna.study"
            compared = "the stored trials' distributions, parameters, values and states"
            test = ("one distribution per parameter name; no shared sentinel value; at least one COMPLETE trial; "
                    "FAIL/PRUNED shares")
        if self.findings:
            by_id: dict[str, list[OptunaFinding]] = {}
            for finding in self.findings:
                by_id.setdefault(finding.id, []).append(finding)
            message = "; ".join(
                f"{rule_id} {group[0].name}"
                + (f" [{', '.join(f.param for f in group if f.param)}]" if any(f.param for f in group) else "")
                for rule_id, group in by_id.items()
            )
        elif self.inconclusive:
            message = "nothing to audit: no trials"
        else:
            message = "search space static, no swallowed exceptions or sentinel values"
        return CheckResult(
            name=name, status=self.status, message=message, compared=compared, n=self.summary.get("n_trials"),
            test=test, threshold=dict(self.summary.get("thresholds", {})),
            evidence={"summary": dict(self.summary), "findings": [f.to_dict() for f in self.findings]},
            variant=self.target,
        )
