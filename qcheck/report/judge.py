"""`qcheck judge REPORT.json [--out DIR] [-k EXPR]`: judge a stored run's records again, without a model or a GPU.

The records in a qcheck-report.json are everything the checks read; judging them with this qcheck (new thresholds,
a newer release) writes the same reports and uses the same exit codes as `qcheck run`. Without -k it judges the
checks the stored run selected (its -k expression is kept in the records).
"""
from __future__ import annotations

import argparse


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from qcheck.runner import common_arguments

    parser.add_argument("report", metavar="REPORT.json", help="a qcheck-report.json written by `qcheck run`")
    common_arguments(parser)


def cli_main(args: argparse.Namespace) -> int:
    from qcheck.records import RecordStore
    from qcheck.report import load_report
    from qcheck.runner import check_out_dir, run_suite

    data = load_report(args.report)
    store = RecordStore.from_dict(data.get("records"), source=args.report)
    check_out_dir(args.out)
    if args.keyword is None:  # judge the checks the run selected, unless told otherwise
        args.keyword = (store.meta.get("selection") or {}).get("keyword")
    return run_suite([f"--qcheck-records={args.report}"], args)
