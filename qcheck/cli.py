"""The `qcheck` command: run | lint | optuna | compare.

Each subcommand lives in the module that owns its work and exposes two functions,
`add_cli_arguments(parser)` and `cli_main(args) -> int`; this file only dispatches.
Exit codes: 0 all invariants hold, 1 a violation / error-level finding, 2 bad usage or input.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from qcheck import timeline
from qcheck.errors import QCheckError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("qcheck.runner", "run the invariant suite against a model and write reports"),
    "lint": ("qcheck.lint.cli", "lint result tables (CSV, JSON, JSONL) for impossible or suspicious numbers"),
    "optuna": ("qcheck.audit.optuna.cli", "audit an Optuna objective (MODULE:FUNCTION) or a stored study"),
    "compare": ("qcheck.report.compare", "regression gate between two qcheck JSON reports"),
    "judge": ("qcheck.report.judge", "judge a stored run's records again (qcheck-report.json), without a model"),
}

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its message short and clear
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"qcheck: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qcheck", description=__doc__.splitlines()[0])
    from qcheck import __version__

    parser.add_argument("--version", action="version", version=f"qcheck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_cli_arguments(p)
        p.set_defaults(_handler=module.cli_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; its wall time is marked from here on (qcheck.timeline), and the marks end with it."""
    timeline.reset()  # tests call main more than once in a process: each run's marks start afresh
    timeline.mark("imported")
    try:
        return _dispatch(argv)
    finally:
        timeline.reset()  # the run's marks are in its report (if it got that far); none outlive it


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args._handler(args))
    except QCheckError as exc:
        print(f"qcheck {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"qcheck {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error is never 0 (pass) or 1 (a violation)
        print(f"qcheck {args.command}: internal error: {type(exc).__name__}: {exc} (set QCHECK_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        if os.environ.get("QCHECK_DEBUG"):
            raise
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
