"""WikiText-2 test as documents, the way lm-evaluation-harness's `wikitext` task sees it.

lm-eval's `wikitext` task (0.4.x) loads `EleutherAI/wikitext_document_level` (`wikitext-2-raw-v1`, split `test`)
from the hub. That data set is built by a loading script from `wiki.test.raw`: the file is read in text mode
(universal newlines) and split on "\\n"; a line that, after `"= = ="` -> `"==="` and `"= ="` -> `"=="`, stripped,
starts with `"= "` and ends with `" ="` (a level-1 title) closes the page collected so far (kept only if it is not
blank) and starts the next one; the last page is kept as it is. Each page is a `{"page": ...}` row. The task then
scores `wikitext_detokenizer(page)` and counts words (`len(re.split(r"\\s+", page))`) and UTF-8 bytes on the page
*before* detokenization. `split_wikitext_pages` and `wikitext_detokenize` do the same on a local file, so the same
documents are scored without the hub (tests check them against lm-eval's own task code).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcheck.errors import DataError
from qcheck.inputs.data import WIKITEXT_TEST, find_data_file, sha256_of

HUB_DATASET = "EleutherAI/wikitext_document_level"
HUB_CONFIG = "wikitext-2-raw-v1"


def _is_title(line: str) -> bool:
    """A level-1 WikiText title (` = Title = `), as the document-level data set's script recognises it."""
    squeezed = line.replace("= = =", "===").replace("= =", "==").strip()
    return squeezed.startswith("= ") and squeezed.endswith(" =")


def split_wikitext_pages(text: str) -> list[str]:
    """The pages of a WikiText raw file's text (newlines already "\\n"), split at level-1 titles."""
    pages: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if _is_title(line):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


_DETOKENIZE_STEPS: tuple[tuple[str, str, bool], ...] = (
    # (pattern, replacement, is_regex), applied in this order (lm-eval's wikitext_detokenizer)
    ("s '", "s'", False),
    (r"/' [0-9]/", r"/'[0-9]/", True),
    (" @-@ ", "-", False),
    (" @,@ ", ",", False),
    (" @.@ ", ".", False),
    (" : ", ": ", False),
    (" ; ", "; ", False),
    (" . ", ". ", False),
    (" ! ", "! ", False),
    (" ? ", "? ", False),
    (" , ", ", ", False),
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)", True),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]", True),
    (r"{\s*([^}]*?)\s*}", r"{\1}", True),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"', True),
    (r"'\s*([^']*?)\s*'", r"'\1'", True),
    ("= = = =", "====", False),
    ("= = =", "===", False),
    ("= =", "==", False),
    (" \u00b0 ", "\u00b0", False),
    (" \n", "\n", False),
    ("\n ", "\n", False),
    (" N ", " 1 ", False),
    (" 's", "'s", False),
)


def wikitext_detokenize(page: str) -> str:
    """The text lm-eval's `wikitext` task scores for a page: WikiText's tokenization spaces undone."""
    for pattern, replacement, is_regex in _DETOKENIZE_STEPS:
        page = re.sub(pattern, replacement, page) if is_regex else page.replace(pattern, replacement)
    return page


@dataclass(frozen=True)
class Document:
    """One document for rolling log-likelihood: `text` is scored, words and bytes are counted on `page`."""

    id: str
    page: str
    text: str

    @property
    def n_words(self) -> int:
        """lm-eval's word count: pieces of `re.split(r"\\s+", page)` (a leading/trailing blank counts as one)."""
        return len(re.split(r"\s+", self.page))

    @property
    def n_bytes(self) -> int:
        """UTF-8 bytes of the page before detokenization (lm-eval's byte count)."""
        return len(self.page.encode("utf-8"))

    @classmethod
    def plain(cls, id: str, text: str) -> Document:
        """A document scored as it is (no detokenization): words and bytes counted on the same text."""
        return cls(id, text, text)


@dataclass(frozen=True)
class DocumentSplit:
    """Documents of a data file, with the file's path and SHA-256 (a report names exactly what was scored)."""

    name: str
    documents: tuple[Document, ...]
    path: str
    sha256: str

    def __len__(self) -> int:
        return len(self.documents)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "path": self.path, "sha256": self.sha256, "n": len(self.documents),
                "ids": [d.id for d in self.documents], "words": sum(d.n_words for d in self.documents),
                "bytes": sum(d.n_bytes for d in self.documents),
                "split": f"{HUB_DATASET} ({HUB_CONFIG}, test) rebuilt from the raw file"}

    def write_jsonl(self, path: str | Path) -> Path:
        """Write the pages as `{"page": ...}` rows, the layout of the hub data set (for lm-eval's json loader)."""
        out = Path(path)
        with out.open("w", encoding="utf-8") as fh:
            for doc in self.documents:
                fh.write(json.dumps({"page": doc.page}, ensure_ascii=False) + "\n")
        return out


def _pages_from_jsonl(path: Path) -> list[str]:
    pages = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                pages.append(json.loads(line)["page"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: not a {{\"page\": ...}} row ({exc})") from None
    return pages


def read_wikitext_pages(path: str | Path | None = None) -> tuple[list[str], Path]:
    """Every page of a WikiText raw file (default: `wikitext-2-raw/wiki.test.raw` under the data dir) or of a JSONL
    of `{"page": ...}` rows, with the file's path."""
    file = Path(path) if path else find_data_file(WIKITEXT_TEST)
    if not file.is_file():
        raise DataError(f"WikiText file not found: {file}")
    if file.suffix == ".jsonl":
        return _pages_from_jsonl(file), file
    with file.open(encoding="utf-8") as fh:  # text mode: "\r\n" and "\r" read as "\n", like the data set script
        return split_wikitext_pages(fh.read()), file


def page_document(index: int, page: str) -> Document:
    """Page `index` as lm-eval's `wikitext` task scores it: its detokenized text, words and bytes of the page."""
    return Document(f"wikitext-test-{index}", page, wikitext_detokenize(page))


def wikitext_documents(n: int | None = None, path: str | Path | None = None,
                       select: Sequence[int] | None = None) -> DocumentSplit:
    """WikiText-2 test documents as lm-eval's `wikitext` task scores them: the first `n` (or those at `select`).

    `path`: a WikiText raw file (default: `wikitext-2-raw/wiki.test.raw` under the data dir) or a JSONL of
    `{"page": ...}` rows (the hub data set's rows, exported where it is reachable)."""
    pages, file = read_wikitext_pages(path)
    if n is not None and n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    indices = list(select) if select is not None else list(range(len(pages) if n is None else min(n, len(pages))))
    bad = [i for i in indices if not 0 <= i < len(pages)]
    if bad:
        raise DataError(f"{file}: document indices {bad} outside 0..{len(pages) - 1}")
    docs = tuple(page_document(i, pages[i]) for i in indices)
    if not docs:
        raise DataError(f"{file}: no documents")
    return DocumentSplit("wikitext", docs, str(file), sha256_of(file))


def page_offsets(text: str, pages: Sequence[str]) -> list[int]:
    """The character offset of each page in the raw text it was split from (pages in order, blank ones dropped)."""
    out, pos = [], 0
    for i, page in enumerate(pages):
        found = text.find(page, pos)
        if found < 0:
            raise DataError(f"page {i} is not in the text it was split from (a different file?)")
        out.append(found)
        pos = found + len(page)
    return out


PAGE_RULE = ("whole pages in file order from the page holding the slice's first character (wrapping to page 0 "
             "after the last): pages longer than the budget are passed over until one fits, then pages are added "
             "while the total of lm-eval tokens stays within the budget; the first page that does not fit ends it")
"""How a run chooses the WikiText-2 pages lm-eval's perplexity scores (`select_pages`), stated in its record."""


def select_pages(n_pages: int, first: int, budget: int, tokens_of: Callable[[int], int]) -> list[int]:
    """Indices of the pages PAGE_RULE chooses from page `first` with `budget` tokens (`tokens_of(i)`: page i's
    tokens); empty when no page fits. Whole pages, so a run scores at most `budget` tokens."""
    chosen: list[int] = []
    total = 0
    for k in range(n_pages):
        i = (first + k) % n_pages
        n = tokens_of(i)
        if total + n <= budget:
            chosen.append(i)
            total += n
        elif chosen:
            break
    return chosen
