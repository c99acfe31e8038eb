"""Optuna search-space audit (bug Z10): static spaces, swallowed exceptions, sentinel values.

Optuna requires one distribution per parameter name within a study. An objective whose
`suggest_categorical` choices depend on an earlier parameter makes Optuna raise
`ValueError: CategoricalDistribution does not support dynamic value space.`; an objective that wraps
its body in `except Exception: return 0.0` turns that error into a COMPLETE trial with value 0.0 and the
parameter missing from `trial.params`, and the study merely looks bad (seed 003: 70% of 20 trials).

Two entry points, both returning an `AuditReport` whose findings are data:

- `audit_objective(objective)` probes the objective on throw-away in-memory studies with a seeded
  `RandomSampler`, records every suggest call (name, distribution, file:line) and every exception the
  objective catches and turns into a return value.
- `audit_study(storage, study_name)` scans a stored study: distributions that differ across trials,
  trials missing parameters, one value shared by many different configurations, FAIL/PRUNED shares.

optuna is imported inside functions only: `import qcheck.search` (and the CLI) stays cheap.
"""
from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType, TracebackType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from qcheck.errors import InvariantViolation, QCheckError, require
from qcheck.results import CheckResult, Status, to_jsonable

ERROR, WARNING = "error", "warning"

DEFAULT_N_TRIALS = 30
"""Probe trials per phase; random sampling reaches a branch of probability p with 1 - (1 - p)**30."""

SENTINEL_SHARE = 0.3
"""A value shared by at least this share of COMPLETE trials (from different configurations) is a sentinel."""

SENTINEL_MIN_TRIALS = 3
"""... and by at least this many trials with this many distinct configurations."""

FAIL_SHARE = 0.1
"""Warn when at least this share of finished trials FAILed."""

PRUNED_SHARE = 0.5
"""Warn when at least this share of finished trials was PRUNED."""

_FIX_FIXED_SPACE = (
    "Give the parameter one fixed distribution: suggest from a fixed superset of choices and "
    "`raise optuna.TrialPruned()` (or return early) for invalid combinations; or use a distinct "
    "parameter name per branch (e.g. f\"{name}_w{width}\"); or `suggest_int` over an index into the "
    "list of valid choices (integer ranges may change between trials)."
)


@dataclass(frozen=True)
class Rule:
    """A finding type: stable id, short name, default severity and the fix Optuna's maintainers recommend."""

    id: str
    name: str
    severity: str
    fix: str


RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("OPT101", "dynamic-choices", ERROR, _FIX_FIXED_SPACE),
        Rule(
            "OPT102",
            "reordered-choices",
            ERROR,
            "Pass the choices in one fixed order: a module-level tuple, or sorted(...) of the set, never an "
            "order computed from other parameters; Optuna compares choice tuples by position, so a reordered "
            "tuple is a different distribution.",
        ),
        Rule(
            "OPT103",
            "distribution-kind-changed",
            ERROR,
            "Use a distinct parameter name per kind of distribution (e.g. 'lr_sgd' = suggest_float, "
            "'lr_choice' = suggest_categorical); Optuna cannot store two kinds under one name.",
        ),
        Rule(
            "OPT104",
            "log-flag-changed",
            ERROR,
            "Use one log setting per parameter name, or a distinct name per branch (e.g. 'lr_log' and 'lr_linear').",
        ),
        Rule(
            "OPT105",
            "range-changed",
            WARNING,
            "Optuna accepts integer/float ranges that change between trials, but samplers model the "
            "parameter as one distribution; if the range is meant to depend on another parameter, keep it, "
            "otherwise use one fixed range and prune invalid values, or a distinct name per branch.",
        ),
        Rule(
            "OPT110",
            "swallowed-suggest-error",
            ERROR,
            "Do not catch broad exceptions around suggest calls: fix the search space so the suggest call "
            "cannot raise (see OPT101-OPT104), and let other errors propagate so Optuna marks the trial FAIL; "
            "raise optuna.TrialPruned() for configurations that are invalid by design.",
        ),
        Rule(
            "OPT111",
            "swallowed-exception",
            ERROR,
            "Do not turn an exception into an objective value: a sentinel score is recorded as a real "
            "result and samplers learn from it. Let the exception propagate (trial FAIL, or "
            "optuna.study.Study.optimize(catch=...)) or raise optuna.TrialPruned() for invalid configurations.",
        ),
        Rule(
            "OPT112",
            "objective-raised",
            WARNING,
            "The trial ends FAIL in a real study: fix the error, or raise optuna.TrialPruned() if the "
            "configuration is invalid by design.",
        ),
        Rule(
            "OPT113",
            "handled-exception",
            WARNING,
            "Check what the handler does: if it substitutes a score or a default configuration, let the "
            "exception propagate (trial FAIL) or raise optuna.TrialPruned() instead; if it is ordinary "
            "control flow, ignore this finding (--ignore OPT113).",
        ),
        Rule(
            "OPT201",
            "missing-params",
            WARNING,
            "Expected in a conditional search space (parameters suggested only on some branches). "
            "Otherwise the objective stopped before these suggest calls (an exception was swallowed): "
            "probe it with `qcheck optuna MODULE:FUNCTION`.",
        ),
        Rule(
            "OPT202",
            "sentinel-value",
            ERROR,
            "Do not return a constant for failed or invalid configurations: let the error propagate (FAIL) "
            "or raise optuna.TrialPruned(); then rerun the study, since samplers such as TPE have learnt "
            "from the sentinel values.",
        ),
        Rule(
            "OPT203",
            "failed-trials",
            WARNING,
            "Look at the FAIL trials' errors in the Optuna log; a configuration that is invalid by design "
            "should raise optuna.TrialPruned() instead.",
        ),
        Rule(
            "OPT204",
            "pruned-trials",
            WARNING,
            "Most trials are pruned: the search space is mostly invalid combinations. Suggest over the "
            "valid combinations only (e.g. suggest_int over an index into a list of valid configurations).",
        ),
    )
}


@dataclass(frozen=True)
class Finding:
    """One problem found by the audit, as data: rule id, severity, message, evidence and suggested fix."""

    id: str
    name: str
    severity: str
    message: str
    fix: str
    param: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON representation."""
        return to_jsonable(
            {
                "id": self.id,
                "name": self.name,
                "severity": self.severity,
                "param": self.param,
                "message": self.message,
                "fix": self.fix,
                "evidence": dict(self.evidence),
            }
        )

    def render(self, with_fix: bool = True) -> str:
        """A few readable lines: severity, id, message and (unless `with_fix` is False) the fix."""
        head = f"{self.severity:<7} {self.id} {self.name}" + (f" [{self.param}]" if self.param else "")
        fix = self.fix if with_fix else f"as for {self.id} above"
        return f"{head}\n    {self.message}\n    fix: {fix}"


def _finding(rule_id: str, message: str, param: str | None = None, **evidence: Any) -> Finding:
    rule = RULES[rule_id]
    return Finding(rule.id, rule.name, rule.severity, message, rule.fix, param, evidence)


@dataclass(frozen=True)
class CallSite:
    """Where user code called a suggest method."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class SuggestCall:
    """One recorded suggest call of a probe trial; `error` is set when Optuna raised inside the call."""

    trial: int
    name: str
    method: str
    distribution: Any
    site: CallSite
    error: str | None = None


@dataclass(frozen=True)
class AuditReport:
    """The outcome of an audit: what was audited, the findings, and a summary of the trials looked at."""

    kind: str
    target: str
    findings: tuple[Finding, ...]
    summary: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def errors(self) -> tuple[Finding, ...]:
        """Findings of severity error."""
        return tuple(f for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """Findings of severity warning."""
        return tuple(f for f in self.findings if f.severity == WARNING)

    @property
    def ids(self) -> list[str]:
        """The finding ids, in report order."""
        return [f.id for f in self.findings]

    @property
    def inconclusive(self) -> bool:
        """True when there was nothing to audit (no probe trial or no finished trial)."""
        return not self.findings and not self.summary.get("n_trials")

    @property
    def status(self) -> Status:
        """FAIL on an error, WARN on a warning, INCONCLUSIVE with nothing audited, else PASS."""
        if self.errors:
            return Status.FAIL
        if self.warnings:
            return Status.WARN
        return Status.INCONCLUSIVE if self.inconclusive else Status.PASS

    def by_id(self, rule_id: str) -> list[Finding]:
        """The findings with this id."""
        return [f for f in self.findings if f.id == rule_id]

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON representation."""
        return to_jsonable(
            {
                "kind": self.kind,
                "target": self.target,
                "status": self.status.value,
                "summary": dict(self.summary),
                "findings": [f.to_dict() for f in self.findings],
            }
        )

    def render(self) -> str:
        """Readable text: a header, the verdict, each finding."""
        lines = [f"qcheck optuna: {self.kind} {self.target}", "  " + _summary_line(self)]
        lines.append(f"{self.status.value}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        shown: set[str] = set()
        for finding in self.findings:
            lines.append(finding.render(with_fix=finding.id not in shown))
            shown.add(finding.id)
        return "\n".join(lines)

    def to_check_result(self) -> CheckResult:
        """The report as a CheckResult (name optuna.search_space or optuna.study) with the findings as evidence."""
        if self.kind == "objective":
            name = "optuna.search_space"
            compared = "the suggest calls and return values of the objective's probe trials"
            test = (
                "one distribution per parameter name; no exception turned into a return value; "
                "no shared sentinel value"
            )
        else:
            name = "optuna.study"
            compared = "the stored trials' distributions, parameters, values and states"
            test = "one distribution per parameter name; no shared sentinel value; FAIL/PRUNED shares"
        if self.findings:
            by_id: dict[str, list[Finding]] = {}
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
            name=name,
            status=self.status,
            message=message,
            compared=compared,
            n=self.summary.get("n_trials"),
            test=test,
            threshold=dict(self.summary.get("thresholds", {})),
            evidence={"summary": dict(self.summary), "findings": [f.to_dict() for f in self.findings]},
            variant=self.target,
        )


def _summary_line(report: AuditReport) -> str:
    s = report.summary
    if report.kind == "objective":
        text = f"{s.get('n_trials', 0)} probe trials (RandomSampler seed {s.get('seed')}"
        text += f"; {s.get('n_shared', 0)} on one study, {s.get('n_isolated', 0)} on fresh studies)"
        return text + f", {s.get('n_suggest_calls', 0)} suggest calls, states {s.get('states', {})}"
    return f"{s.get('n_trials', 0)} trials, states {s.get('states', {})}"


# ----------------------------------------------------------------------------------------------------
# Distributions


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


def _dist_key(dist: Any) -> str:
    try:
        from optuna.distributions import distribution_to_json

        return distribution_to_json(dist)
    except Exception:  # qcheck: a distribution optuna cannot serialise is still compared by repr
        return repr(dist)


def _dist_data(dist: Any) -> dict[str, Any]:
    try:
        return json.loads(_dist_key(dist))
    except ValueError:
        return {"name": type(dist).__name__, "repr": repr(dist)}


_DIFF_ORDER = ("kind", "log", "choices", "order", "range")
_DIFF_TEXT = {
    "kind": "distribution kind",
    "log": "log flag",
    "choices": "choice set",
    "order": "choice order",
    "range": "bounds/step",
}
_DIFF_RULE = {"kind": "OPT103", "log": "OPT104", "choices": "OPT101", "order": "OPT102", "range": "OPT105"}


def classify_difference(old: Any, new: Any) -> str | None:
    """How two distributions differ: 'kind', 'log', 'choices', 'order', 'range', or None when equal."""
    if _dist_key(old) == _dist_key(new):
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


@dataclass(frozen=True)
class _Variant:
    dist: Any
    trials: tuple[int, ...]
    sites: tuple[str, ...]
    methods: tuple[str, ...]


def _conflict_findings(variants_by_name: Mapping[str, list[_Variant]], trial_label: str) -> list[Finding]:
    findings = []
    for name, variants in variants_by_name.items():
        if len(variants) < 2:
            continue
        first = variants[0]
        diffs = [classify_difference(first.dist, v.dist) for v in variants[1:]]
        kinds = sorted({d for d in diffs if d}, key=_DIFF_ORDER.index)
        worst = kinds[0]
        parts = []
        for v in variants:
            where = f" at {', '.join(v.sites)}" if v.sites else ""
            parts.append(f"{describe_distribution(v.dist)}{where} ({trial_label} {_numbers(v.trials)})")
        message = (
            f"parameter '{name}' is suggested with {len(variants)} different distributions "
            f"(differing: {', '.join(_DIFF_TEXT[k] for k in kinds)}): " + "; ".join(parts)
            + ". Optuna requires one distribution per parameter name in a study"
        )
        if worst in ("kind", "log", "choices", "order"):
            message += " and raises ValueError on the later ones"
        else:
            message += "; it accepts changed ranges, but samplers model the parameter as one distribution"
        evidence = {
            "differences": kinds,
            "variants": [
                {
                    "distribution": _dist_data(v.dist),
                    "described": describe_distribution(v.dist),
                    "call_sites": list(v.sites),
                    "methods": list(v.methods),
                    "trials": list(v.trials),
                }
                for v in variants
            ],
        }
        findings.append(_finding(_DIFF_RULE[worst], message + ".", param=name, **evidence))
    return findings


def _numbers(values: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ----------------------------------------------------------------------------------------------------
# Probing an objective


_HIDDEN_EXCEPTIONS = ("StopIteration", "StopAsyncIteration", "GeneratorExit", "TrialPruned")


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _user_call_site(skip_files: frozenset[str]) -> tuple[CallSite, str]:
    frame: FrameType | None = sys._getframe(2)
    method = "suggest"
    while frame is not None and _is_library_file(frame.f_code.co_filename, skip_files):
        if frame.f_code.co_name.startswith("suggest_"):
            method = frame.f_code.co_name
        frame = frame.f_back
    if frame is None:
        return CallSite("<unknown>", 0, "<unknown>"), method
    return CallSite(_display_path(frame.f_code.co_filename), frame.f_lineno, frame.f_code.co_name), method


def _is_library_file(filename: str, skip_files: frozenset[str]) -> bool:
    return filename in skip_files or any(filename.startswith(prefix) for prefix in _library_prefixes())


@functools.lru_cache(maxsize=1)
def _library_prefixes() -> tuple[str, ...]:
    import optuna

    return (os.path.dirname(optuna.__file__) + os.sep,)


def _objective_code(objective: Callable[..., Any]) -> CodeType | None:
    target: Any = objective
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    if not inspect.isfunction(target) and callable(target) and not inspect.isbuiltin(target):
        target = getattr(type(target).__call__, "__func__", type(target).__call__)
    target = inspect.unwrap(target) if inspect.isfunction(target) else target
    return getattr(target, "__code__", None)


@dataclass
class _CaughtException:
    exc: BaseException
    raised_at: str
    handled_line: int | None = None
    returned_from_handler: bool = False


@functools.lru_cache(maxsize=64)
def _handler_spans(filename: str) -> dict[int, int]:
    """First and last line of every `except` clause in a source file ({} when the source is unavailable)."""
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return {}
    return {
        node.lineno: node.end_lineno or node.lineno for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler)
    }


class _ExceptionTracer:
    """Sees, through sys.settrace, exceptions that reach the objective's own frame and where they are handled.

    Only frames of the objective's code object get a local tracer; any tracer already installed
    (coverage, a debugger) keeps receiving its events. The `except` clause that handles an exception is
    the last clause line seen after the exception event; the objective "returned from the handler" when
    its return statement lies inside that clause.
    """

    def __init__(self, code: CodeType | None) -> None:
        self.code = code
        self.filename = code.co_filename if code is not None else ""
        self.caught: dict[int, _CaughtException] = {}
        self._pending: dict[int, tuple[int, int | None]] = {}
        self._old: Any = None

    def __enter__(self) -> "_ExceptionTracer":
        if self.code is not None:
            self._old = sys.gettrace()
            sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.code is not None:
            sys.settrace(self._old)

    def reset(self) -> None:
        """Forget what the previous trial saw."""
        self.caught.clear()
        self._pending.clear()

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        inner = self._old(frame, event, arg) if self._old is not None else None
        if frame.f_code is not self.code:
            return inner
        return self._local(inner)

    def _local(self, inner: Any) -> Callable[[FrameType, str, Any], Any]:
        def trace(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal inner
            self._on_event(frame, event, arg)
            if inner is not None:
                inner = inner(frame, event, arg)
            return trace

        return trace

    def _on_event(self, frame: FrameType, event: str, arg: Any) -> None:
        key = id(frame)
        if event == "exception":
            exc = arg[1]
            if type(exc).__name__ in _HIDDEN_EXCEPTIONS or not isinstance(exc, Exception):
                return
            if id(exc) not in self.caught:
                self.caught[id(exc)] = _CaughtException(exc, _innermost(arg[2]))
            self._pending[key] = (id(exc), None)
        elif event == "line" and key in self._pending:
            exc_id, clause = self._pending[key]
            if frame.f_lineno in _handler_spans(self.filename):
                self._pending[key] = (exc_id, frame.f_lineno)
            else:
                del self._pending[key]
                self._handled(exc_id, clause or frame.f_lineno)
        elif event == "return":
            pending = self._pending.pop(key, None)
            if pending is not None and pending[1] is not None:
                self._handled(pending[0], pending[1])
            for caught in self.caught.values():
                end = _handler_spans(self.filename).get(caught.handled_line or -1)
                caught.returned_from_handler = end is not None and caught.handled_line <= frame.f_lineno <= end

    def _handled(self, exc_id: int, line: int) -> None:
        caught = self.caught[exc_id]
        if caught.handled_line is None:
            caught.handled_line = line

    def handled(self) -> list[_CaughtException]:
        """Exceptions that reached the objective's frame and were handled there."""
        return [c for c in self.caught.values() if c.handled_line is not None]

    def site(self, line: int | None) -> str | None:
        """'file:line' in the objective's source file."""
        return None if line is None else f"{_display_path(self.filename)}:{line}"


def _innermost(tb: TracebackType | None) -> str:
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "<unknown>"
    return f"{_display_path(last.tb_frame.f_code.co_filename)}:{last.tb_lineno}"


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"optuna\..*")
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


@dataclass
class _ProbeTrial:
    number: int
    state: str
    params: dict[str, Any]
    returned: Any = None
    raised: str | None = None
    raised_at: str | None = None


@dataclass
class _Probe:
    objective: Callable[..., Any]
    calls: list[SuggestCall] = field(default_factory=list)
    trials: list[_ProbeTrial] = field(default_factory=list)
    suggest_errors: dict[int, SuggestCall] = field(default_factory=dict)
    swallowed: list[tuple[_ProbeTrial, SuggestCall, str | None]] = field(default_factory=list)
    caught: list[tuple[_ProbeTrial, _CaughtException, str | None]] = field(default_factory=list)

    def run_trial(self, study: Any, number: int, tracer: _ExceptionTracer) -> None:
        """Run the objective on one trial of `study` with its suggest calls recorded."""
        import optuna

        TrialState = optuna.trial.TrialState
        trial = study.ask()
        suggest = trial._suggest
        skip = frozenset({__file__})
        errors_this_trial: dict[int, tuple[BaseException, SuggestCall]] = {}

        def recording_suggest(name: str, distribution: Any) -> Any:
            site, method = _user_call_site(skip)
            try:
                value = suggest(name, distribution)
            except Exception as exc:
                call = SuggestCall(number, name, method, distribution, site, f"{type(exc).__name__}: {exc}")
                self.calls.append(call)
                errors_this_trial[id(exc)] = (exc, call)
                raise
            self.calls.append(SuggestCall(number, name, method, distribution, site))
            return value

        # Every suggest_* method of optuna.Trial goes through Trial._suggest(name, distribution); shadowing
        # it on this instance records the calls without patching the class (the objective gets a real Trial).
        trial._suggest = recording_suggest
        tracer.reset()
        record = _ProbeTrial(number, "RUNNING", {})
        try:
            returned = self.objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=TrialState.PRUNED)
        except Exception as exc:
            record.raised = f"{type(exc).__name__}: {exc}"
            record.raised_at = _innermost_user(exc.__traceback__, skip)
            frozen = study.tell(trial, state=TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            n_values = len(returned) if isinstance(returned, (list, tuple)) else 1
            if n_values != len(study.directions):
                study.tell(trial, state=TrialState.FAIL)
                raise QCheckError(
                    f"the objective returned {n_values} values but the probe has {len(study.directions)} "
                    "direction(s): pass directions=[...] (CLI: --directions minimize,maximize)"
                )
            record.returned = returned
            frozen = study.tell(trial, returned)
        record.state = frozen.state.name
        record.params = dict(frozen.params)
        self.trials.append(record)
        handled = {id(c.exc): c for c in tracer.handled()}
        if record.state in ("COMPLETE", "PRUNED"):
            for exc_id, (_, call) in errors_this_trial.items():
                caught = handled.pop(exc_id, None)
                self.swallowed.append((record, call, tracer.site(caught.handled_line) if caught else None))
        if record.state == "COMPLETE":
            self.caught.extend(
                (record, c, tracer.site(c.handled_line)) for key, c in handled.items() if key not in errors_this_trial
            )


def _innermost_user(tb: TracebackType | None, skip: frozenset[str]) -> str:
    site = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not _is_library_file(filename, skip):
            site = f"{_display_path(filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return site or "<unknown>"


def audit_objective(
    objective: Callable[..., Any],
    n_trials: int = DEFAULT_N_TRIALS,
    *,
    seed: int = 0,
    explore: bool = True,
    directions: Sequence[str] | None = None,
    ignore: Iterable[str] = (),
    target: str | None = None,
) -> AuditReport:
    """Probe an objective on throw-away in-memory studies and report search-space and exception findings.

    Phase 1 runs `n_trials` trials on one study, as Optuna would (so errors Optuna raises and the
    objective swallows are seen); with `explore`, phase 2 runs `n_trials` more, each on a fresh study,
    so that no earlier registration stops a trial early and every code path's suggest calls are recorded.
    """
    optuna = require("optuna", "the Optuna audit")
    if n_trials < 1:
        raise QCheckError(f"n_trials must be >= 1, got {n_trials}")
    ignore = tuple(_ignored_ids(ignore))
    probe = _Probe(objective)
    directions = list(directions) if directions else ["minimize"]

    def new_study(sampler_seed: int) -> Any:
        return optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=optuna.samplers.RandomSampler(seed=sampler_seed),
            pruner=optuna.pruners.NopPruner(),
            directions=directions,
        )

    with _quiet_optuna(), _ExceptionTracer(_objective_code(objective)) as tracer:
        study = new_study(seed)
        for number in range(n_trials):
            probe.run_trial(study, number, tracer)
        if explore:
            for i in range(n_trials):
                probe.run_trial(new_study(seed + 1 + i), n_trials + i, tracer)

    explained = {r.number for r, _, _ in probe.swallowed}
    explained |= {r.number for r, c, _ in probe.caught if c.returned_from_handler}
    findings = _probe_conflicts(probe) + _probe_exceptions(probe)
    findings += _sentinel_findings(
        [
            (t.number, tuple(t.returned) if isinstance(t.returned, (list, tuple)) else (t.returned,), t.params)
            for t in probe.trials
            if t.state == "COMPLETE" and t.number not in explained
        ],
        "probe trials without a swallowed exception",
    )
    states = Counter(t.state for t in probe.trials)
    summary = {
        "n_trials": len(probe.trials),
        "n_shared": n_trials,
        "n_isolated": n_trials if explore else 0,
        "seed": seed,
        "sampler": "RandomSampler",
        "states": dict(sorted(states.items())),
        "n_suggest_calls": len(probe.calls),
        "params": sorted({c.name for c in probe.calls}),
        "thresholds": {"sentinel_share": SENTINEL_SHARE, "sentinel_min_trials": SENTINEL_MIN_TRIALS},
    }
    return AuditReport("objective", target or _callable_name(objective), _filter(findings, ignore), summary)


def _callable_name(objective: Callable[..., Any]) -> str:
    base: Any = objective
    while isinstance(base, functools.partial):
        base = base.func
    module = getattr(base, "__module__", None) or "?"
    name = getattr(base, "__qualname__", None) or type(base).__qualname__
    return f"{module}:{name}"


def _probe_conflicts(probe: _Probe) -> list[Finding]:
    grouped: dict[str, dict[str, list[SuggestCall]]] = defaultdict(dict)
    for call in probe.calls:
        grouped[call.name].setdefault(_dist_key(call.distribution), []).append(call)
    variants = {
        name: [
            _Variant(
                calls[0].distribution,
                tuple(sorted({c.trial for c in calls})),
                tuple(sorted({str(c.site) for c in calls}, key=_site_order)),
                tuple(sorted({c.method for c in calls})),
            )
            for calls in by_dist.values()
        ]
        for name, by_dist in grouped.items()
    }
    return _conflict_findings(variants, "probe trials")


def _site_order(site: str) -> tuple[str, int]:
    path, _, line = site.rpartition(":")
    return path, int(line) if line.isdigit() else 0


def _probe_exceptions(probe: _Probe) -> list[Finding]:
    findings = []
    groups: dict[tuple[Any, ...], list[tuple[_ProbeTrial, SuggestCall, str | None]]] = defaultdict(list)
    for record, call, handled_at in probe.swallowed:
        groups[(call.name, str(call.site), call.error, handled_at, record.state, repr(record.returned))].append(
            (record, call, handled_at)
        )
    for (name, site, error, handled_at, state, returned), items in groups.items():
        trials = [r.number for r, _, _ in items]
        call = items[0][1]
        caught = f"caught it at {handled_at}" if handled_at else "caught it"
        outcome = f"returned {returned}" if state == "COMPLETE" else "raised optuna.TrialPruned"
        message = (
            f"{call.method}('{name}') at {site} raised {error} in {len(trials)} of {len(probe.trials)} probe trials "
            f"({_numbers(trials)}); the objective {caught} and {outcome}, so the trial ends {state} "
            f"with '{name}' missing from trial.params"
        )
        if state == "COMPLETE":
            message += f" and the sentinel {returned} recorded as a real score"
        findings.append(
            _finding(
                "OPT110",
                message + ".",
                param=name,
                call_site=site,
                error=error,
                handled_at=handled_at,
                trial_state=state,
                returned=items[0][0].returned,
                trials=trials,
            )
        )
    caught_groups: dict[tuple[Any, ...], list[_ProbeTrial]] = defaultdict(list)
    for record, caught, handled_at in probe.caught:
        error = f"{type(caught.exc).__name__}: {caught.exc}"
        key = (error, caught.raised_at, handled_at, caught.returned_from_handler, repr(record.returned))
        caught_groups[key].append(record)
    for (error, raised_at, handled_at, from_handler, returned), records in caught_groups.items():
        trials = [r.number for r in records]
        message = (
            f"{error} (raised at {raised_at}) reached the objective in {len(trials)} of {len(probe.trials)} probe "
            f"trials ({_numbers(trials)}); it was caught at {handled_at} and the objective returned {returned}"
        )
        if from_handler:
            message += " from inside that except clause, which Optuna records as a COMPLETE trial's score"
        else:
            message += " later; if the handler substitutes a value (score = 0.0), that value is a sentinel"
        findings.append(
            _finding(
                "OPT111" if from_handler else "OPT113",
                message + ".",
                error=error,
                raised_at=raised_at,
                handled_at=handled_at,
                returned=records[0].returned,
                trials=trials,
            )
        )
    raised: dict[tuple[str, str], list[int]] = defaultdict(list)
    for record in probe.trials:
        if record.state == "FAIL" and record.raised:
            raised[(record.raised, record.raised_at or "<unknown>")].append(record.number)
    for (error, raised_at), trials in raised.items():
        findings.append(
            _finding(
                "OPT112",
                f"the objective raised {error} (at {raised_at}) in {len(trials)} of {len(probe.trials)} probe trials "
                f"({_numbers(trials)}); those trials end FAIL.",
                error=error,
                raised_at=raised_at,
                trials=trials,
            )
        )
    return findings


# ----------------------------------------------------------------------------------------------------
# Auditing a stored study


def _sentinel_findings(
    complete: list[tuple[int, tuple[Any, ...], Mapping[str, Any]]],
    label: str,
    missing_by_trial: Mapping[int, Sequence[str]] | None = None,
    share: float = SENTINEL_SHARE,
    min_trials: int = SENTINEL_MIN_TRIALS,
) -> list[Finding]:
    if not complete:
        return []
    groups: dict[tuple[Any, ...], list[tuple[int, Mapping[str, Any]]]] = defaultdict(list)
    for number, values, params in complete:
        groups[tuple(float(v) for v in values)].append((number, params))
    findings = []
    for values, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        configs = {json.dumps(to_jsonable(dict(p)), sort_keys=True) for _, p in members}
        fraction = len(members) / len(complete)
        if len(members) < min_trials or fraction < share or len(configs) < min_trials:
            continue
        value = values[0] if len(values) == 1 else list(values)
        trials = [n for n, _ in members]
        message = (
            f"{len(members)} of {len(complete)} COMPLETE {label} ({fraction:.0%}) share the value {value!r}, "
            f"from {len(configs)} different configurations: a sentinel returned for failed or invalid "
            "configurations, not a measured score"
        )
        evidence: dict[str, Any] = {
            "value": value,
            "count": len(members),
            "n_complete": len(complete),
            "share": round(fraction, 4),
            "distinct_configurations": len(configs),
            "trials": trials,
        }
        if missing_by_trial is not None:
            truncated = [n for n in trials if missing_by_trial.get(n)]
            evidence["trials_missing_params"] = truncated
            if truncated:
                message += (
                    f"; {len(truncated)} of them lack parameters other trials have (OPT201), the signature of "
                    "a suggest call that raised and an exception turned into a return value"
                )
        findings.append(_finding("OPT202", message + ".", **evidence))
    return findings


def _stored_conflicts(trials: Sequence[Any]) -> list[Finding]:
    grouped: dict[str, dict[str, tuple[Any, list[int]]]] = defaultdict(dict)
    for t in trials:
        for name, dist in t.distributions.items():
            grouped[name].setdefault(_dist_key(dist), (dist, []))[1].append(t.number)
    variants = {
        name: [_Variant(dist, tuple(numbers), (), ()) for dist, numbers in by_dist.values()]
        for name, by_dist in grouped.items()
    }
    findings = _conflict_findings(variants, "trials")
    return [
        Finding(
            f.id,
            f.name,
            f.severity,
            f.message[:-1] + " (stored trials keep no call sites: probe the objective with `qcheck optuna "
            "MODULE:FUNCTION` to locate the suggest calls).",
            f.fix,
            f.param,
            f.evidence,
        )
        for f in findings
    ]


def _missing_params(complete: Sequence[Any]) -> tuple[Finding | None, dict[int, list[str]]]:
    names: Counter[str] = Counter()
    for t in complete:
        names.update(t.params.keys())
    missing_by_trial: dict[int, list[str]] = {}
    for t in complete:
        missing = sorted(set(names) - set(t.params))
        if missing:
            missing_by_trial[t.number] = missing
    if not missing_by_trial:
        return None, missing_by_trial
    by_param: dict[str, list[int]] = defaultdict(list)
    for number, missing in missing_by_trial.items():
        for name in missing:
            by_param[name].append(number)
    most_missing = sorted(by_param.items(), key=lambda kv: -len(kv[1]))
    described = ", ".join(f"'{name}' ({len(numbers)} trials)" for name, numbers in most_missing[:6])
    more = f" and {len(by_param) - 6} more" if len(by_param) > 6 else ""
    message = (
        f"{len(missing_by_trial)} of {len(complete)} COMPLETE trials lack parameters that other COMPLETE trials have: "
        f"{described}{more}."
    )
    finding = _finding(
        "OPT201",
        message,
        missing_by_param={k: v for k, v in sorted(by_param.items())},
        trials=sorted(missing_by_trial),
        param_counts=dict(sorted(names.items())),
    )
    return finding, missing_by_trial


def _open_storage(storage: Any) -> Any:
    optuna = require("optuna", "the Optuna audit")
    if not isinstance(storage, (str, os.PathLike)):
        return storage
    text = os.fspath(storage)
    if "://" not in text:
        path = Path(text)
        if not path.is_file():
            raise QCheckError(f"storage not found: {text!r} is neither a storage URL nor an existing file")
        if path.suffix in (".log", ".jsonl"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        text = f"sqlite:///{path.resolve()}"
    if text.startswith("sqlite:///"):
        _check_sqlite_file(text[len("sqlite:///"):].split("?", 1)[0])
    try:
        return optuna.storages.RDBStorage(text)
    except Exception as exc:  # qcheck: any failure to open the user's storage is bad input (exit 2)
        raise QCheckError(f"cannot open Optuna storage {text!r}: {type(exc).__name__}: {exc}") from exc


def _check_sqlite_file(path: str) -> None:
    import sqlite3

    if path in ("", ":memory:"):
        raise QCheckError("an in-memory SQLite URL holds no stored study; pass the URL of a database file")
    if not Path(path).is_file():
        raise QCheckError(
            f"SQLite storage not found: {path!r} does not exist (Optuna would silently create an empty "
            "database there; check the path)"
        )
    try:
        with sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise QCheckError(f"{path!r} is not a SQLite database: {exc}") from exc
    if "studies" not in tables:
        raise QCheckError(f"{path!r} is not an Optuna storage (it has no 'studies' table)")


def load_study(storage: Any, study_name: str | None) -> Any:
    """Load a study from a storage URL, a file path or an Optuna storage; QCheckError names what is missing."""
    optuna = require("optuna", "the Optuna audit")
    if isinstance(storage, optuna.Study):
        return storage
    backend = _open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)]
    available = ", ".join(repr(n) for n in names) if names else "none"
    if study_name is None:
        raise QCheckError(f"no study name given (--study NAME); studies in this storage: {available}")
    if study_name not in names:
        raise QCheckError(f"study {study_name!r} not found in the storage; studies there: {available}")
    with _quiet_optuna():
        return optuna.load_study(study_name=study_name, storage=backend)


def audit_study(
    storage: Any,
    study_name: str | None = None,
    *,
    sentinel_share: float = SENTINEL_SHARE,
    fail_share: float = FAIL_SHARE,
    pruned_share: float = PRUNED_SHARE,
    ignore: Iterable[str] = (),
) -> AuditReport:
    """Audit a stored study (storage URL, file path, Optuna storage object or Study) for Z10 findings."""
    optuna = require("optuna", "the Optuna audit")
    ignore = tuple(_ignored_ids(ignore))
    opened = _open_storage(storage) if isinstance(storage, (str, os.PathLike)) else None
    try:
        study = load_study(storage if opened is None else opened, study_name)
        trials = study.get_trials(deepcopy=False)
        directions = [d.name for d in study.directions]
    finally:
        if opened is not None and hasattr(opened, "engine"):
            opened.engine.dispose()
    TrialState = optuna.trial.TrialState
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    finished = [t for t in trials if t.state.is_finished()]
    states = Counter(t.state.name for t in trials)

    findings = _stored_conflicts(trials)
    missing, missing_by_trial = _missing_params(complete)
    findings += _sentinel_findings(
        [(t.number, tuple(t.values), t.params) for t in complete],
        "trials",
        missing_by_trial,
        share=sentinel_share,
    )
    if missing is not None:
        findings.append(missing)
    for state, rule_id, threshold in (("FAIL", "OPT203", fail_share), ("PRUNED", "OPT204", pruned_share)):
        numbers = [t.number for t in finished if t.state.name == state]
        if finished and numbers and len(numbers) / len(finished) >= threshold:
            share = len(numbers) / len(finished)
            findings.append(
                _finding(
                    rule_id,
                    f"{len(numbers)} of {len(finished)} finished trials ({share:.0%}) are {state} "
                    f"(threshold {threshold:.0%}).",
                    count=len(numbers),
                    n_finished=len(finished),
                    share=round(share, 4),
                    trials=numbers,
                )
            )
    summary = {
        "n_trials": len(finished),
        "n_stored": len(trials),
        "states": dict(sorted(states.items())),
        "directions": directions,
        "params": sorted({name for t in trials for name in t.distributions}),
        "thresholds": {
            "sentinel_share": sentinel_share,
            "sentinel_min_trials": SENTINEL_MIN_TRIALS,
            "fail_share": fail_share,
            "pruned_share": pruned_share,
        },
    }
    label = f"{study.study_name!r}" + (f" in {storage}" if isinstance(storage, (str, os.PathLike)) else "")
    return AuditReport("study", label, _filter(findings, ignore), summary)


def _ignored_ids(ignore: Iterable[str]) -> set[str]:
    ignored = {i.upper() for i in ignore}
    unknown = ignored - set(RULES)
    if unknown:
        raise QCheckError(f"unknown finding id(s) to ignore: {', '.join(sorted(unknown))}; known: {', '.join(RULES)}")
    return ignored


def _filter(findings: list[Finding], ignore: Iterable[str]) -> tuple[Finding, ...]:
    ignored = _ignored_ids(ignore)
    kept = [f for f in findings if f.id not in ignored]
    return tuple(sorted(kept, key=lambda f: (f.severity != ERROR, f.id, f.param or "")))


def stub_score(*args: Any, **kwargs: Any) -> float:
    """A deterministic stand-in score in [0, 1) that differs between configurations, for probing cheaply.

    Replace the expensive evaluation (quantize + evaluate a model) with it when auditing an objective:
    unlike a constant, it cannot look like a shared sentinel value (OPT202).
    """
    text = json.dumps(to_jsonable([list(args), kwargs]), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


# ----------------------------------------------------------------------------------------------------
# pytest-facing assertion


def assert_static_search_space(
    objective: Callable[..., Any], n_trials: int = DEFAULT_N_TRIALS, **kwargs: Any
) -> CheckResult:
    """Probe `objective` and raise InvariantViolation (with the findings as evidence) on an error-level finding."""
    report = audit_objective(objective, n_trials=n_trials, **kwargs)
    result = report.to_check_result()
    if report.errors:
        raise InvariantViolation(result)
    return result


# ----------------------------------------------------------------------------------------------------
# Resolving MODULE:FUNCTION and the CLI


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
            raise QCheckError(
                f"{module_part!r} has no attribute {attr_path!r}; "
                f"callables defined there: {', '.join(candidates) or 'none'}"
            )
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
        raise QCheckError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # qcheck: an error while importing the user's module is bad input (exit 2)
        raise QCheckError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


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
    except Exception as exc:  # qcheck: an error while importing the user's file is bad input (exit 2)
        del sys.modules[module_name]
        raise QCheckError(f"importing {path_text!r} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(resolved.parent))
    return module


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `qcheck optuna`."""
    parser.add_argument(
        "objective",
        nargs="?",
        metavar="MODULE:FUNCTION",
        help="objective to probe: package.module:function or path/to/file.py:function",
    )
    parser.add_argument(
        "--n-trials", type=int, default=DEFAULT_N_TRIALS, help="probe trials per phase (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="RandomSampler seed of the probe (default %(default)s)")
    parser.add_argument(
        "--directions",
        default="minimize",
        metavar="D1,D2",
        help="study directions for a multi-objective objective, e.g. minimize,maximize (default %(default)s)",
    )
    parser.add_argument(
        "--storage", metavar="URL", help="storage holding the study: sqlite:///path.db, an RDB URL, a .db or .log file"
    )
    parser.add_argument("--study", metavar="NAME", help="name of the stored study to audit (with --storage)")
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default %(default)s)"
    )
    parser.add_argument(
        "--ignore", action="append", default=[], metavar="ID", help="finding id to leave out (repeatable), e.g. OPT201"
    )


def cli_main(args: argparse.Namespace) -> int:
    """Run `qcheck optuna`: exit 1 on an error-level finding, 0 otherwise (QCheckError -> exit 2)."""
    _ignored_ids(args.ignore)
    if args.objective and (args.storage or args.study):
        raise QCheckError("give either MODULE:FUNCTION or --storage URL --study NAME, not both")
    if args.objective:
        if args.n_trials < 1:
            raise QCheckError(f"--n-trials must be >= 1, got {args.n_trials}")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        objective = resolve_objective(args.objective)
        directions = [d.strip() for d in args.directions.split(",") if d.strip()]
        if not directions or any(d not in ("minimize", "maximize") for d in directions):
            raise QCheckError(f"--directions takes minimize/maximize separated by commas, got {args.directions!r}")
        report = audit_objective(
            objective,
            n_trials=args.n_trials,
            seed=args.seed,
            directions=directions,
            ignore=args.ignore,
            target=args.objective,
        )
    elif args.storage:
        report = audit_study(args.storage, args.study, ignore=args.ignore)
    elif args.study:
        raise QCheckError("--study needs --storage URL (the storage that holds the study)")
    else:
        raise QCheckError("nothing to audit: give MODULE:FUNCTION, or --storage URL --study NAME")
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.render())
    return 1 if report.errors else 0
