"""`qcheck lint FILE... [--format text|json|markdown] [--column ROLE=NAME] [--baseline FILE]`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from qcheck.errors import ConfigError, QCheckError
from qcheck.lint.config import config_from_mapping, load_pyproject, parse_column_options
from qcheck.lint.engine import filter_baseline, lint_paths
from qcheck.lint.findings import Severity
from qcheck.lint.render import FORMATS, render
from qcheck.lint.roles import KNOWN_ROLES


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the lint options on the `qcheck lint` sub-parser."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="result tables: .csv, .tsv, .json, .jsonl")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--column", action="append", default=[], metavar="ROLE=NAME",
                        help=f"set a column's role explicitly; roles: {', '.join(KNOWN_ROLES)}")
    parser.add_argument("--baseline", metavar="JSON", help="a previous `qcheck lint --format json` output: report "
                        "only findings that are not in it")
    parser.add_argument("--num-classes", type=int, help="number of classes of the task (chance = 1/k)")
    parser.add_argument("--disable", action="append", default=[], metavar="RULE",
                        help="disable a rule by id or number (e.g. Q008); repeatable")
    parser.add_argument("--verbose", "-v", action="store_true", help="text format: print each finding's evidence")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")


def _load_baseline(path: str) -> list[str]:
    """Fingerprints of an earlier `--format json` report; any other file is a usage error (exit 2), never a crash."""
    if not os.path.isfile(path):
        raise QCheckError(f"--baseline {path}: no such file")
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise QCheckError(f"--baseline {path}: not a `qcheck lint --format json` report (binary data, not UTF-8 "
                          f"text at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise QCheckError(f"--baseline {path}: not a `qcheck lint --format json` report (not JSON: {exc.msg} at "
                          f"line {exc.lineno})") from exc
    except OSError as exc:
        raise QCheckError(f"--baseline {path}: cannot be read ({exc.strerror or exc})") from exc
    findings = data.get("findings") if isinstance(data, dict) else None
    if not isinstance(findings, list) or not all(isinstance(f, dict) and isinstance(f.get("fingerprint"), str)
                                                 for f in findings):
        raise QCheckError(f"--baseline {path}: not a `qcheck lint --format json` report (expected an object whose "
                          "'findings' list holds entries with a 'fingerprint')")
    return [f["fingerprint"] for f in findings]


def _check_output(path: str, inputs: list[str]) -> None:
    """Refuse an output path that cannot or must not be written, before anything is linted."""
    if os.path.isdir(path):
        raise QCheckError(f"--output {path}: is a directory; give the name of a file to write")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise QCheckError(f"--output {path}: {parent} is not a directory")
    if os.path.exists(path) and any(os.path.exists(f) and os.path.samefile(path, f) for f in inputs):
        raise QCheckError(f"--output {path}: is one of the files being linted; it would be overwritten")


def cli_main(args: argparse.Namespace) -> int:
    """Lint the files; exit 1 when an error-level finding remains, 0 otherwise."""
    config = config_from_mapping(load_pyproject(os.getcwd()), "pyproject.toml [tool.qcheck.lint]")
    columns = {**config.columns, **parse_column_options(args.column)}
    if args.num_classes is not None and args.num_classes < 2:
        raise ConfigError("--num-classes must be at least 2", field="num_classes")
    config = dataclasses.replace(
        config, columns=columns, disable=config.disable | frozenset(args.disable),
        num_classes=args.num_classes if args.num_classes is not None else config.num_classes)
    if args.output:
        _check_output(args.output, args.files)
    baseline = _load_baseline(args.baseline) if args.baseline else None
    findings = lint_paths(args.files, config)
    if baseline is not None:
        findings = filter_baseline(findings, baseline)
    text = render(findings, args.files, args.format, verbose=args.verbose)
    if args.output:
        from qcheck.report import atomic_write_text

        try:
            atomic_write_text(args.output, text + "\n")
        except OSError as exc:
            raise QCheckError(f"--output {args.output}: cannot be written ({exc.strerror or exc})") from exc
    else:
        sys.stdout.write(text + "\n")
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0
