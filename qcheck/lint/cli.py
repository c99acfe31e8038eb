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
    if not os.path.isfile(path):
        raise QCheckError(f"--baseline {path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return [f["fingerprint"] for f in data["findings"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise QCheckError(f"--baseline {path}: not a `qcheck lint --format json` report ({exc})") from exc


def cli_main(args: argparse.Namespace) -> int:
    """Lint the files; exit 1 when an error-level finding remains, 0 otherwise."""
    config = config_from_mapping(load_pyproject(os.getcwd()), "pyproject.toml [tool.qcheck.lint]")
    columns = {**config.columns, **parse_column_options(args.column)}
    if args.num_classes is not None and args.num_classes < 2:
        raise ConfigError("--num-classes must be at least 2", field="num_classes")
    config = dataclasses.replace(
        config, columns=columns, disable=config.disable | frozenset(args.disable),
        num_classes=args.num_classes if args.num_classes is not None else config.num_classes)
    findings = lint_paths(args.files, config)
    if args.baseline:
        findings = filter_baseline(findings, _load_baseline(args.baseline))
    text = render(findings, args.files, args.format, verbose=args.verbose)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0
