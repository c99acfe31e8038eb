"""Evaluation task slices from local data: GSM8K problems (gold number after `####`) and ARC-Easy questions.

A slice remembers where it came from (path, SHA-256, offset, size) so a report can say exactly which
questions a rate rests on. Malformed rows raise DataError naming the line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from qcheck.errors import DataError
from qcheck.inputs.data import ARC_EASY_TEST, GSM8K_TEST, find_data_file, sha256_of

T = TypeVar("T")


@dataclass(frozen=True)
class GSM8KProblem:
    """One GSM8K problem; `gold` is the number after `####` in the reference solution (commas removed)."""

    id: str
    question: str
    solution: str
    gold: str


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question (ARC-Easy format): `answer_idx` indexes `choices`."""

    id: str
    prompt: str
    choices: tuple[str, ...]
    answer_idx: int

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise DataError(f"question {self.id}: needs at least 2 choices, got {len(self.choices)}")
        if not 0 <= self.answer_idx < len(self.choices):
            raise DataError(f"question {self.id}: answer_idx {self.answer_idx} outside 0..{len(self.choices) - 1}")


@dataclass(frozen=True)
class TaskSlice(Generic[T]):
    """Items [offset, offset + n) of a data file, with the file's path and SHA-256."""

    name: str
    items: tuple[T, ...]
    path: str
    sha256: str
    offset: int

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "path": self.path, "sha256": self.sha256, "offset": self.offset,
                "n": len(self.items), "ids": [getattr(i, "id", None) for i in self.items]}


def _rows(path: Path, n: int | None, offset: int) -> list[tuple[int, dict[str, Any]]]:
    if offset < 0 or (n is not None and n < 1):
        raise DataError(f"a slice needs offset >= 0 and n >= 1, got offset={offset}, n={n}")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno <= offset or not line.strip():
                continue
            if n is not None and len(out) >= n:
                break
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    if not out:
        raise DataError(f"{path}: no rows after offset {offset}")
    return out


def gold_after_hashes(solution: str) -> str:
    """The gold answer of a GSM8K solution: the text after the last `####`, commas removed."""
    if "####" not in solution:
        raise DataError("GSM8K solution has no '####' gold marker")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise DataError("GSM8K solution has an empty gold answer after '####'")
    return gold


def load_gsm8k(n: int | None = None, offset: int = 0, path: str | Path | None = None) -> TaskSlice[GSM8KProblem]:
    """GSM8K test problems [offset, offset + n) from ../shared/data (or `path`)."""
    file = Path(path) if path else find_data_file(GSM8K_TEST)
    items = []
    for lineno, row in _rows(file, n, offset):
        try:
            items.append(GSM8KProblem(f"gsm8k-test-{lineno - 1}", row["question"], row["answer"],
                                      gold_after_hashes(row["answer"])))
        except (KeyError, DataError) as exc:
            raise DataError(f"{file}:{lineno}: malformed GSM8K row ({exc})") from None
    return TaskSlice("gsm8k", tuple(items), str(file), sha256_of(file), offset)


def load_arc_easy(n: int | None = None, offset: int = 0, path: str | Path | None = None) -> TaskSlice[MCQuestion]:
    """ARC-Easy test questions [offset, offset + n) from ../shared/data (or `path`)."""
    file = Path(path) if path else find_data_file(ARC_EASY_TEST)
    items = []
    for lineno, row in _rows(file, n, offset):
        try:
            items.append(MCQuestion(str(row["id"]), row["prompt"], tuple(row["choices"]), int(row["answer_idx"])))
        except (KeyError, TypeError, ValueError, DataError) as exc:
            raise DataError(f"{file}:{lineno}: malformed ARC row ({exc})") from None
    return TaskSlice("arc-easy", tuple(items), str(file), sha256_of(file), offset)
