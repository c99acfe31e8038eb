"""Evaluation data on local disk: WikiText-2 raw, GSM8K, ARC-Easy from ../shared/data or a user's path.

The data directory is $QCHECK_DATA_DIR, else ../shared/data relative to the working directory or to the
source checkout. Missing data raises DataError naming where qcheck looked.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from qcheck.errors import DataError, QCheckError

WIKITEXT_TEST = "wikitext-2-raw/wiki.test.raw"
GSM8K_TEST = "gsm8k/test.jsonl"
ARC_EASY_TEST = "arc-easy/test.jsonl"


def data_dir_candidates() -> list[Path]:
    """Where qcheck looks for the shared evaluation data, in order."""
    out = []
    if os.environ.get("QCHECK_DATA_DIR"):
        out.append(Path(os.environ["QCHECK_DATA_DIR"]))
    out.append(Path.cwd() / ".." / "shared" / "data")
    out.append(Path(__file__).resolve().parents[3] / "shared" / "data")  # beside a source checkout
    return out


def find_data_file(relative: str) -> Path:
    """The first existing `relative` file under the candidate data dirs, or DataError listing them."""
    for base in data_dir_candidates():
        candidate = base / relative
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(b) for b in data_dir_candidates())
    raise DataError(f"evaluation data {relative} not found (looked in: {looked}); set QCHECK_DATA_DIR "
                    "to a folder holding it or pass a text file with --text (--qcheck-text under pytest)")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file (recorded with every data slice in the report)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(path: str | os.PathLike[str], max_chars: int | None = None) -> str:
    """A UTF-8 text file with CRLF normalized to LF, optionally cut at `max_chars` (at a line end)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text: {exc}") from None
    if max_chars is not None and len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut if cut > 0 else max_chars]
    if not text.strip():
        raise DataError(f"{p} holds no text")
    return text


def wikitext_test(max_chars: int | None = None) -> tuple[str, Path]:
    """WikiText-2 raw test split (optionally the first `max_chars`) and its path."""
    path = find_data_file(WIKITEXT_TEST)
    return read_text(path, max_chars), path


def read_json(path: Path, what: str = "the file", context: str = "") -> Any:
    """The JSON in `path`; QCheckError naming `what` and the file (after `context`, e.g. the option that named it)
    when it cannot be read or is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise QCheckError(f"{context}cannot read {what} {path} ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QCheckError(f"{context}{what} {path} is not a JSON file ({exc})") from None
