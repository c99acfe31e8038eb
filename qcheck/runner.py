"""`qcheck run` and `qcheck judge`: validate everything first, then run the shipped suite through pytest and write
the reports (JSON, Markdown, HTML, and pytest's JUnit XML).

`run` loads the reference, resolves every plan against it, checks every PTQ spec, the evaluation text and the
report folder before anything is measured: bad input exits 2 with a message naming it and nothing is written.
`judge` reads a stored run's records (a qcheck-report.json) and runs the same checks on them, without a model.
Exit codes: 0 at least one check ran and every invariant holds; 1 an invariant is violated (or a check errored);
2 bad usage or input, or nothing was judged; 130 interrupted; 3 an internal error.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from qcheck import timeline
from qcheck.errors import QCheckError

JUNIT = "qcheck-junit.xml"


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from qcheck.options import add_arguments

    add_arguments(parser)
    common_arguments(parser)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports", metavar="DIR", help="report folder (default: reports)")
    parser.add_argument("-k", dest="keyword", default=None, help="only run the checks matching this expression")
    parser.add_argument("--pytest-arg", action="append", default=[], help="extra argument passed to pytest")


def check_out_dir(out: str) -> Path:
    """The report folder: an existing file there, or a folder that cannot be written, is bad input (exit 2)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise QCheckError(f"--out {out}: a file is in the way; the reports need a folder there (give another --out)")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QCheckError(f"--out {out}: cannot write into {parent} (permission denied); give a writable folder")
    return path


def validate_run(args: argparse.Namespace) -> object:
    """Everything `qcheck run` can check before it measures; returns the RunOptions."""
    from qcheck.engine import open_run
    from qcheck.options import RunOptions

    # report_dir as the plugin will read it from --qcheck-report: the same options, so the plugin measures in the
    # context opened here (one reference, validated once)
    options = RunOptions.from_values({**vars(args), "report_dir": str(Path(args.out))})
    check_out_dir(args.out)
    if options.variants == () and not options.plans and not options.ptq:
        raise QCheckError("no variant to check: --variants none leaves only --plan and --ptq variants, and none was "
                          "given (add --plan FILE or --ptq SPEC, or pick built-in variants)")
    if options.text is not None and not Path(options.text).is_file():
        raise QCheckError(f"--text {options.text}: file not found")
    ctx = open_run(options)
    ctx.inputs.eval_text()
    timeline.mark("validated")
    return options


def cli_main(args: argparse.Namespace) -> int:
    options = validate_run(args)
    return run_suite(options.pytest_args(), args)


def _plugin_installed() -> bool:
    """Whether pytest will load qcheck's plugin by its entry point (not so when run from an uninstalled source tree)."""
    from importlib.metadata import entry_points

    return any(ep.value == "qcheck.pytest_plugin" for ep in entry_points(group="pytest11"))


def run_suite(options_args: list[str], args: argparse.Namespace) -> int:
    import pytest

    import qcheck.suite

    out = Path(args.out)
    suite = Path(qcheck.suite.__file__).parent  # conftest files of the folder qcheck runs in stay out of the suite
    # hypothesis's plugin imports hypothesis at the terminal summary (1.5 s on a CPU); the suite has no property tests
    argv = ["--pyargs", "qcheck.suite", f"--confcutdir={suite}", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
            "-q", "-rfEs",
            f"--qcheck-report={out}",
            f"--junitxml={out / JUNIT}", "-o", "junit_family=xunit2", "-o", "junit_suite_name=qcheck",
            *options_args, "-o", "addopts=", "-o", "testpaths=", "-W", "ignore::DeprecationWarning"]
    if args.keyword:
        argv += ["-k", args.keyword]
    if not _plugin_installed():
        argv += ["-p", "qcheck.pytest_plugin"]
    argv += args.pytest_arg
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    code = int(pytest.main(argv))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        raise QCheckError("no check selected" + (f" by -k {args.keyword!r}" if args.keyword else "")
                          + "; nothing was judged and no report was written")
    if code == pytest.ExitCode.USAGE_ERROR:
        raise QCheckError(f"pytest could not run the suite (usage error, exit {code}); see its message above")
    if code == pytest.ExitCode.INTERRUPTED:
        print(f"qcheck {args.command}: interrupted; the report marks what did not finish: {out}")
        return 130
    report_path = out / "qcheck-report.json"
    if code == pytest.ExitCode.INTERNAL_ERROR or not report_path.is_file():
        where = report_path if report_path.is_file() else "not written"
        print(f"qcheck {args.command}: internal error: pytest exit {code}, report {where}")
        return 3
    data = json.loads(report_path.read_text(encoding="utf-8"))
    status, counts = data["status"], data["counts"]
    judged = sum(v for k, v in counts.items() if k != "SKIPPED")
    print(f"qcheck {args.command}: {status} ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}); report: "
          f"{report_path}, {out / 'qcheck-report.md'}, {out / 'qcheck-report.html'}, {out / JUNIT}")
    if status == "FAIL" or code == pytest.ExitCode.TESTS_FAILED:
        return 1
    if judged == 0:
        raise QCheckError(f"no check ran: all {counts.get('SKIPPED', 0)} selected checks were skipped (see their "
                          f"reasons in {out / 'qcheck-report.md'}); nothing was judged")
    return 0
