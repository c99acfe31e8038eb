"""examples/ci-workflow.yml is valid YAML whose qcheck commands parse with the real CLI."""
import shlex
from pathlib import Path

import yaml

from qcheck.cli import build_parser

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "ci-workflow.yml"


def test_workflow_runs_the_suite_gates_and_uploads_the_html_report():
    flow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = flow["jobs"].values()
    steps = {s.get("name", s.get("uses")): s for s in job["steps"]}
    run = steps["Run the CPU suite"]["run"]
    gate = steps["Gate against the committed baseline"]["run"]
    upload = steps["Upload the reports"]
    assert "qcheck run" in run and "--junitxml=" in run
    assert "qcheck compare ci/qcheck-baseline.json reports/qcheck-report.json" in gate
    assert upload["if"] == "always()" and "reports/qcheck-report.html" in upload["with"]["path"]
    assert job["env"]["CI"] == "true"

    parser = build_parser()
    options = shlex.split(job["env"]["QCHECK_OPTIONS"])
    args = parser.parse_args(["run", *options, "--out", "reports", "--pytest-arg=--junitxml=reports/junit.xml"])
    assert args.device == "cpu" and args.pytest_arg == ["--junitxml=reports/junit.xml"]
    compare = shlex.split(gate.splitlines()[1])[1:]
    args = parser.parse_args(compare[: compare.index(">")])
    assert args.format == "markdown" and args.baseline == "ci/qcheck-baseline.json"
