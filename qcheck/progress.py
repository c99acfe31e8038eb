"""Progress bars (tqdm) for long evaluations and model loading; quiet when not a TTY or in CI.

`QCHECK_PROGRESS=1` forces bars on, `QCHECK_PROGRESS=0` forces them off; otherwise they show only when the
stream is a terminal and no `CI` variable is set (GitHub Actions, GitLab and most CI systems set it).
Bars go to stderr so they never mix with report output on stdout.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

T = TypeVar("T")
_FALSE = ("", "0", "false", "no", "off")


def progress_enabled(stream: IO[str] | None = None) -> bool:
    """Whether bars should be drawn on `stream` (default stderr): QCHECK_PROGRESS, then CI, then isatty."""
    forced = os.environ.get("QCHECK_PROGRESS")
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() not in _FALSE
    if os.environ.get("CI", "").strip().lower() not in _FALSE:
        return False
    target = stream if stream is not None else sys.stderr
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             stream: IO[str] | None = None, **kwargs: Any) -> Iterable[T]:
    """`iterable` wrapped in a tqdm bar when bars are enabled, else returned unchanged."""
    if not progress_enabled(stream):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream or sys.stderr, leave=False,
                dynamic_ncols=True, **kwargs)


class _Quiet:
    """Stands in for a tqdm bar when bars are off: same update/set_postfix_str calls, no output."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        return None

    def set_description_str(self, text: str = "", refresh: bool = True) -> None:
        return None


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "it", stream: IO[str] | None = None,
                 **kwargs: Any) -> Iterator[Any]:
    """A bar to `update(n)` by hand (e.g. tokens scored, tensors loaded); a quiet stand-in when bars are off."""
    if not progress_enabled(stream):
        yield _Quiet()
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, total=total, unit=unit, file=stream or sys.stderr, leave=False, dynamic_ncols=True,
               **kwargs)
    try:
        yield bar
    finally:
        bar.close()


def hf_progress_env() -> dict[str, str]:
    """Environment that silences Hugging Face's own bars when qcheck's are off (for subprocesses and loaders)."""
    return {} if progress_enabled() else {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


@contextmanager
def variant_progress(variants: list[str], stream: IO[str] | None = None) -> Iterator[Any]:
    """A live line for a run: one tick per variant measured, the current variant and stage as its postfix, and
    tqdm's ETA; `progress(variant, stage)` moves it. Quiet when bars are off (CI, not a terminal)."""
    seen: list[str] = []
    with progress_bar("qcheck", total=len(variants), unit="variant", stream=stream) as bar:
        def update(variant: str, stage: str) -> None:
            if variant not in seen:
                if seen:
                    bar.update(1)
                seen.append(variant)
            bar.set_postfix_str(f"{variant}: {stage}")

        yield update
        if seen:
            bar.update(1)
