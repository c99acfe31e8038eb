"""Writing a run's reports: the JSON, Markdown and HTML files, each atomically, all from the same strict-JSON data.

pytest's JUnit XML (`qcheck run` asks pytest for `qcheck-junit.xml`) is written by pytest itself, not here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from qcheck.report.html import write_html
from qcheck.report.io import STEM, Reportable, atomic_write_text, report_data
from qcheck.report.markdown import write_markdown


def write_reports(report: Reportable, out_dir: str | os.PathLike[str], stem: str = STEM) -> list[Path]:
    """Write `stem`.json, .md and .html into `out_dir` (JSON first, so the data is safe before it is rendered);
    returns exactly the paths written here."""
    out = Path(out_dir)
    data = json.loads(json.dumps(report_data(report), allow_nan=False))
    return [atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=2, allow_nan=False) + "\n"),
            write_markdown(data, out / f"{stem}.md"), write_html(data, out / f"{stem}.html")]
