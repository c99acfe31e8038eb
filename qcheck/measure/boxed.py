"""Answer extraction from `\\boxed{...}`: the last box wins, nested braces are balanced, `\\fbox{...}` is the
fallback, an unclosed box is malformed (not silently truncated) and an empty output is reported as empty.

Every extraction says which of these happened (`BoxStatus`), so a 0% compliance rate can be broken down
into "empty", "no box" and "malformed" instead of one opaque "Extracted: None" (seed 002).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import Decimal

COMMANDS = ("boxed", "fbox")
"""Box commands, in order of preference: `\\fbox` is used only when no `\\boxed` occurs."""


class BoxStatus(str, enum.Enum):
    OK = "ok"
    EMPTY = "empty"
    MISSING = "missing"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class BoxedAnswer:
    """The outcome of extracting a boxed answer from one output; `answer` is set only when status is OK."""

    status: BoxStatus
    answer: str | None = None
    command: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if (self.status == BoxStatus.OK) != (self.answer is not None):
            raise ValueError(f"a boxed answer has an answer exactly when its status is ok (status {self.status})")

    @property
    def ok(self) -> bool:
        return self.status == BoxStatus.OK


def _last_command(text: str, command: str) -> int:
    """Index just past the last `\\command` that is not the prefix of a longer command name, or -1."""
    for match in reversed(list(re.finditer(r"\\" + command + r"(?![A-Za-z])", text))):
        return match.end()
    return -1


def _balanced(text: str, start: int) -> tuple[str | None, str]:
    """Content of the brace group opening at text[start] ('{'), honouring nesting and escaped braces."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1: i], ""
        i += 1
    return None, f"unclosed brace: {depth} still open at the end of the output"


def extract_boxed(text: str | None) -> BoxedAnswer:
    """The answer in the last `\\boxed{...}` of `text` (else the last `\\fbox{...}`), with its status."""
    if text is None or not text.strip():
        return BoxedAnswer(BoxStatus.EMPTY, reason="the output is empty")
    for command in COMMANDS:
        end = _last_command(text, command)
        if end < 0:
            continue
        rest = text[end:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            content, problem = _balanced(text, end + len(rest) - len(stripped))
            if content is None:
                return BoxedAnswer(BoxStatus.MALFORMED, command=command, reason=f"\\{command}{{ {problem}")
            if not content.strip():
                return BoxedAnswer(BoxStatus.MALFORMED, command=command, reason=f"empty \\{command}{{}}")
            return BoxedAnswer(BoxStatus.OK, content.strip(), command)
        token = re.match(r"\s+([^\s${}\\]+)", rest)
        if token:
            return BoxedAnswer(BoxStatus.OK, token.group(1), command, reason=f"\\{command} without braces")
        return BoxedAnswer(BoxStatus.MALFORMED, command=command, reason=f"\\{command} not followed by a {{...}} group")
    return BoxedAnswer(BoxStatus.MISSING, reason="no \\boxed{} (or \\fbox{}) in the output")


def normalize_number(answer: str | None) -> str | None:
    """A numeric answer in canonical form ('$1,000.00' -> '1000', '-3.50' -> '-3.5'), or None if not a number."""
    if answer is None:
        return None
    text = answer.strip().strip("$").replace(",", "").replace("\\$", "").replace("\\!", "")
    text = re.sub(r"^\\text\{(.*)\}$", r"\1", text).strip()
    text = text.rstrip(".").strip()
    if not re.fullmatch(r"[-+]?\d+(\.\d+)?", text):
        return None
    value = Decimal(text)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def answers_match(extracted: str | None, gold: str) -> bool:
    """Whether a boxed answer equals the gold answer numerically (GSM8K), else as stripped strings."""
    if extracted is None:
        return False
    a, b = normalize_number(extracted), normalize_number(gold)
    if a is not None and b is not None:
        return a == b
    return extracted.strip() == gold.strip()
