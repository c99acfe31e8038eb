"""`qcheck optuna`: probe an objective (MODULE:FUNCTION) or audit a stored study (--storage URL --study NAME).

Exit 0 when the audit ran and found no error, 1 on an error-level finding, 2 on bad input (QCheckError, printed
in one line by `qcheck.cli`), 3 on an internal error (a bug in qcheck or Optuna, one line; never 0 or 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from qcheck.audit.optuna.findings import AuditReport
from qcheck.audit.optuna.probe import DEFAULT_N_TRIALS, audit_objective
from qcheck.audit.optuna.resolve import resolve_objective
from qcheck.audit.optuna.rules import ignored_ids
from qcheck.audit.optuna.study import audit_study
from qcheck.audit.optuna.trials import error_text
from qcheck.errors import QCheckError

EXIT_INTERNAL = 3
"""pytest's convention for an internal error."""


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `qcheck optuna`."""
    parser.add_argument("objective", nargs="?", metavar="MODULE:FUNCTION",
                        help="objective to probe: package.module:function or path/to/file.py:function")
    parser.add_argument("--n-trials", type=int, default=DEFAULT_N_TRIALS,
                        help="probe trials per phase (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="RandomSampler seed of the probe (default %(default)s)")
    parser.add_argument("--directions", default="minimize", metavar="D1,D2",
                        help="study directions for a multi-objective objective, e.g. minimize,maximize "
                             "(default %(default)s)")
    parser.add_argument("--storage", metavar="URL",
                        help="storage holding the study: sqlite:///path.db, an RDB URL, a .db or .log file")
    parser.add_argument("--study", metavar="NAME", help="name of the stored study to audit (with --storage)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default %(default)s)")
    parser.add_argument("--ignore", action="append", default=[], metavar="ID",
                        help="finding id to leave out (repeatable), e.g. OPT201")


def _audit(args: argparse.Namespace) -> AuditReport:
    """Validate the arguments (QCheckError before anything runs) and run the audit they ask for."""
    ignored_ids(args.ignore)
    if args.objective and (args.storage or args.study):
        raise QCheckError("give either MODULE:FUNCTION or --storage URL --study NAME, not both")
    if args.objective:
        if args.n_trials < 1:
            raise QCheckError(f"--n-trials must be >= 1, got {args.n_trials}")
        directions = [d.strip() for d in args.directions.split(",") if d.strip()]
        if not directions or any(d not in ("minimize", "maximize") for d in directions):
            raise QCheckError(f"--directions takes minimize/maximize separated by commas, got {args.directions!r}")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        objective = resolve_objective(args.objective)
        return audit_objective(objective, n_trials=args.n_trials, seed=args.seed, directions=directions,
                               ignore=args.ignore, target=args.objective)
    if args.storage:
        return audit_study(args.storage, args.study, ignore=args.ignore)
    if args.study:
        raise QCheckError("--study needs --storage URL (the storage that holds the study)")
    raise QCheckError("nothing to audit: give MODULE:FUNCTION, or --storage URL --study NAME")


def cli_main(args: argparse.Namespace) -> int:
    """Run `qcheck optuna`: exit 1 on an error-level finding, 0 otherwise (QCheckError -> exit 2, a bug -> 3)."""
    try:
        report = _audit(args)
        text = json.dumps(report.to_dict(), indent=2, sort_keys=True) if args.format == "json" else report.render()
    except QCheckError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug must not read as a clean audit (0) or a finding (1)
        print(f"qcheck optuna: internal error: {error_text(exc)}", file=sys.stderr)
        return EXIT_INTERNAL
    print(text)
    return 1 if report.errors else 0
