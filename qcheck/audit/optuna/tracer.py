"""Watching an objective run: its suggest calls (name, distribution, call site) and the exceptions that reach it.

`record_suggest_calls` shadows `Trial._suggest` on one trial instance (every `suggest_*` goes through it), so the
objective still gets a real `optuna.Trial`. `ExceptionTracer` sees, through `sys.settrace`, exceptions that reach
the objective's own frame and the `except` clause that handles them.
"""
from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType, TracebackType
from typing import Any

from qcheck.audit.optuna._optuna import require_optuna
from qcheck.audit.optuna.trials import CallSite, SuggestCall, error_text

HIDDEN_EXCEPTIONS = ("StopIteration", "StopAsyncIteration", "GeneratorExit", "TrialPruned")
"""Exceptions that are control flow, not errors: never reported as caught."""

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def display_path(path: str) -> str:
    """`path` relative to the current directory when it lies below it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


@functools.lru_cache(maxsize=1)
def _library_prefixes() -> tuple[str, ...]:
    optuna = require_optuna()
    return (os.path.dirname(optuna.__file__) + os.sep, _PACKAGE_DIR)


def is_library_file(filename: str) -> bool:
    """True for Optuna's files and this package's: frames that are not the user's code."""
    return filename.startswith(_library_prefixes())


def user_call_site() -> tuple[CallSite, str]:
    """The first frame of user code above the current suggest call, and the suggest_* method it called."""
    frame: FrameType | None = sys._getframe(1)
    method = "suggest"
    while frame is not None and is_library_file(frame.f_code.co_filename):
        if frame.f_code.co_name.startswith("suggest_"):
            method = frame.f_code.co_name
        frame = frame.f_back
    if frame is None:
        return CallSite("<unknown>", 0, "<unknown>"), method
    return CallSite(display_path(frame.f_code.co_filename), frame.f_lineno, frame.f_code.co_name), method


def innermost(tb: TracebackType | None) -> str:
    """'file:line' of the innermost frame of a traceback."""
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "<unknown>"
    return f"{display_path(last.tb_frame.f_code.co_filename)}:{last.tb_lineno}"


def innermost_user(tb: TracebackType | None) -> str | None:
    """'file:line' of the innermost user frame of a traceback raised by calling the objective.

    None when the traceback holds no frame beyond the caller's own (the call itself failed, e.g. an objective
    that takes no argument); '<unknown>' when it holds only library frames.
    """
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    if len(frames) <= 1:
        return None
    users = [f for f in frames[1:] if not is_library_file(f.tb_frame.f_code.co_filename)]
    if not users:
        return "<unknown>"
    return f"{display_path(users[-1].tb_frame.f_code.co_filename)}:{users[-1].tb_lineno}"


class SuggestRecorder:
    """Records every suggest call of one trial (a failed call too, with Optuna's error) by shadowing its `_suggest`."""

    def __init__(self, trial: Any, number: int) -> None:
        self.number = number
        self.calls: list[SuggestCall] = []
        self.errors: dict[int, SuggestCall] = {}
        suggest = trial._suggest

        def recording_suggest(name: str, distribution: Any) -> Any:
            site, method = user_call_site()
            try:
                value = suggest(name, distribution)
            except Exception as exc:
                call = SuggestCall(number, name, method, distribution, site, error_text(exc))
                self.calls.append(call)
                self.errors[id(exc)] = call
                raise
            self.calls.append(SuggestCall(number, name, method, distribution, site))
            return value

        # Every suggest_* method of optuna.Trial goes through Trial._suggest(name, distribution); shadowing it on
        # this instance records the calls without patching the class (the objective gets a real Trial).
        trial._suggest = recording_suggest


def objective_code(objective: Callable[..., Any]) -> CodeType | None:
    """The code object that runs when `objective` is called (through partials, bound methods, __call__)."""
    target: Any = objective
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    if not inspect.isfunction(target) and callable(target) and not inspect.isbuiltin(target):
        target = getattr(type(target).__call__, "__func__", type(target).__call__)
    target = inspect.unwrap(target) if inspect.isfunction(target) else target
    return getattr(target, "__code__", None)


@functools.lru_cache(maxsize=64)
def handler_spans(filename: str) -> dict[int, int]:
    """First and last line of every `except` clause in a source file ({} when the source is unavailable)."""
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return {}
    return {node.lineno: node.end_lineno or node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.ExceptHandler)}


@dataclass
class Handled:
    """An exception seen in the objective's frame: where it was raised, the clause that handled it (if any), and
    whether the objective returned from inside that clause."""

    exc: BaseException
    raised_at: str
    handled_line: int | None = None
    returned_from_handler: bool = False


class ExceptionTracer:
    """Sees, through sys.settrace, exceptions that reach the objective's own frame and where they are handled.

    Only frames of the objective's code object get a local tracer; any tracer already installed
    (coverage, a debugger) keeps receiving its events. The `except` clause that handles an exception is
    the last clause line seen after the exception event; the objective "returned from the handler" when
    its return statement lies inside that clause.
    """

    def __init__(self, code: CodeType | None) -> None:
        self.code = code
        self.filename = code.co_filename if code is not None else ""
        self.seen: dict[int, Handled] = {}
        self._pending: dict[int, tuple[int, int | None]] = {}
        self._old: Any = None

    def __enter__(self) -> None:
        if self.code is not None:
            self._old = sys.gettrace()
            sys.settrace(self._global)

    def __exit__(self, *exc: object) -> None:
        if self.code is not None:
            sys.settrace(self._old)

    def reset(self) -> None:
        """Forget what the previous trial saw."""
        self.seen.clear()
        self._pending.clear()

    def handled(self) -> dict[int, Handled]:
        """Exceptions that reached the objective's frame and were handled there, by id of the exception."""
        return {key: h for key, h in self.seen.items() if h.handled_line is not None}

    def site(self, line: int | None) -> str | None:
        """'file:line' in the objective's source file."""
        return None if line is None else f"{display_path(self.filename)}:{line}"

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
            if type(exc).__name__ in HIDDEN_EXCEPTIONS or not isinstance(exc, Exception):
                return
            if id(exc) not in self.seen:
                self.seen[id(exc)] = Handled(exc, innermost(arg[2]))
            self._pending[key] = (id(exc), None)
        elif event == "line" and key in self._pending:
            exc_id, clause = self._pending[key]
            if frame.f_lineno in handler_spans(self.filename):
                self._pending[key] = (exc_id, frame.f_lineno)
            else:
                del self._pending[key]
                self._mark_handled(exc_id, clause or frame.f_lineno)
        elif event == "return":
            pending = self._pending.pop(key, None)
            if pending is not None and pending[1] is not None:
                self._mark_handled(pending[0], pending[1])
            for handled in self.seen.values():
                end = handler_spans(self.filename).get(handled.handled_line or -1)
                handled.returned_from_handler = end is not None and handled.handled_line <= frame.f_lineno <= end

    def _mark_handled(self, exc_id: int, line: int) -> None:
        handled = self.seen[exc_id]
        if handled.handled_line is None:
            handled.handled_line = line
