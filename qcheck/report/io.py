"""The report as a file: atomic writes, the JSON layout's version and schema, reading a report back.

Reports are written through a temp file and a rename, so a reader never sees half a report. The JSON layout is
described by `schema.json` (versioned by SCHEMA_VERSION); `load_report` refuses files that are not qcheck
reports or that use another major schema version.
"""
from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from qcheck.errors import QCheckError

SCHEMA_VERSION = "1.1"
"""Major.minor: a minor bump only adds optional fields; readers refuse another major version."""
STEM = "qcheck-report"
"""File name stem of the reports a run writes (`qcheck-report.json`, `.md`, `.html`)."""


class Reportable(Protocol):
    """Anything that renders itself as report data (a RunReport)."""

    def to_dict(self) -> dict[str, Any]: ...


def report_data(report: Reportable | dict[str, Any]) -> dict[str, Any]:
    """Report data from a RunReport (its strict-JSON dict) or from data already loaded."""
    return report if isinstance(report, dict) else report.to_dict()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` through a temp file in the same folder and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a report is as readable as any new file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(report: Reportable | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """The JSON report, atomically (strict JSON: NaN and infinities are written as strings)."""
    return atomic_write_text(path, json.dumps(report_data(report), indent=2, sort_keys=False, allow_nan=False) + "\n")


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the report, shipped as qcheck/report/schema.json."""
    return json.loads(resources.files("qcheck.report").joinpath("schema.json").read_text(encoding="utf-8"))


def validate_report(data: dict[str, Any]) -> None:
    """Validate report data against the schema; raises QCheckError naming the first problem (needs jsonschema)."""
    from qcheck.errors import require

    jsonschema = require("jsonschema", "validating qcheck reports against report_schema.json")
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top level)"
        raise QCheckError(f"report does not match report_schema.json at {where}: {errors[0].message}"
                          + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""))


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a qcheck JSON report; QCheckError when unreadable, not a qcheck report, or of another major version."""
    source = Path(path)
    from qcheck.inputs.data import read_json

    data = read_json(source, "the report")
    required = ("schema_version", "status", "meta", "variants", "checks")
    if not isinstance(data, dict) or any(k not in data for k in required):
        raise QCheckError(f"{source}: not a qcheck report (a qcheck report is a JSON object with the keys "
                          f"{', '.join(required)})")
    version = str(data["schema_version"])
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise QCheckError(f"{source}: report schema version {version} does not match this qcheck's "
                          f"{SCHEMA_VERSION} (major versions differ); regenerate the report with this qcheck")
    if not isinstance(data["variants"], dict) or not isinstance(data["checks"], list):
        raise QCheckError(f"{source}: not a qcheck report ('variants' must be an object and 'checks' a list)")
    return data
