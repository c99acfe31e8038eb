"""Outputs survive failures: an interrupted run (Ctrl-C, an exception in one check) still writes a valid report
that lists what did not finish, and atomic writes never leave a partial report behind."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from qcheck.report import atomic_write_text, load_report, validate_report

SUITE = """
    import pytest
    from qcheck.results import CheckResult, Status

    def test_first_holds(qcheck_record, qcheck_report):
        qcheck_report.add_metric("int8", "perplexity", {"perplexity": 17.5, "n_tokens": 255})
        qcheck_record(CheckResult("first", Status.PASS, "held", compared="a vs b", n=40, test="exact",
                                  threshold=0.05))

    def test_check_that_crashes(qcheck_record):
        raise RuntimeError("disk on fire inside one check")

    def test_{name}(qcheck_record):
        {body}

    def test_never_reached(qcheck_record):
        qcheck_record(CheckResult("never", Status.PASS, "must not appear"))
"""


def _run(pytester, out, name, body):
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE).replace("{name}", name).replace("{body}", body))
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--qcheck-report={out}", no_reraise_ctrlc=True)


def test_keyboard_interrupt_still_writes_a_valid_report_marking_unfinished_tests(pytester, tmp_path):
    out = tmp_path / "rep"
    result = _run(pytester, out, "ctrl_c", 'raise KeyboardInterrupt("user pressed Ctrl-C")')
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = load_report(out / "qcheck-report.json")
    validate_report(report)
    assert report["complete"] is False and report["status"] == "FAIL"  # the crashed check already failed the run
    assert report["interruption"]["exit_status"] == 2 and "interrupted" in report["interruption"]["reason"]
    assert [n.split("::")[1] for n in report["unfinished"]] == ["test_ctrl_c", "test_never_reached"]
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["first"]["status"] == "PASS"
    assert by_name["check_that_crashes"]["status"] == "ERROR"
    assert "RuntimeError: disk on fire inside one check" in by_name["check_that_crashes"]["message"]
    assert "never" not in by_name
    assert report["variants"]["int8"]["metrics"]["perplexity"]["perplexity"] == 17.5
    md = (out / "qcheck-report.md").read_text()
    assert "## Not finished" in md and "test_never_reached" in md and "(run incomplete)" in md
    page = (out / "qcheck-report.html").read_text()
    assert "Run incomplete" in page and "test_never_reached" in page


def test_exception_in_one_check_is_an_error_and_the_rest_still_run(pytester, tmp_path):
    out = tmp_path / "rep"
    result = _run(pytester, out, "ok", "pass")
    result.assert_outcomes(passed=3, failed=1)
    report = load_report(out / "qcheck-report.json")
    validate_report(report)
    assert report["complete"] is True and report["unfinished"] == [] and report["interruption"] is None
    assert report["status"] == "FAIL" and report["counts"]["ERROR"] == 1 and report["counts"]["PASS"] == 2
    crashed = next(c for c in report["checks"] if c["status"] == "ERROR")
    assert crashed["evidence"]["phase"] == "call" and crashed["evidence"]["test"].endswith("test_check_that_crashes")


def test_stop_after_first_failure_marks_the_rest_unfinished(pytester, tmp_path):
    out = tmp_path / "rep"
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE).replace("{name}", "ok").replace("{body}", "pass"))
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-x", f"--qcheck-report={out}")
    report = load_report(out / "qcheck-report.json")
    validate_report(report)
    assert report["complete"] is False and len(report["unfinished"]) == 2
    assert report["interruption"] == {"reason": "2 test(s) did not finish", "exit_status": 1, "unfinished": 2}


def test_failed_atomic_write_keeps_the_old_report_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "qcheck-report.json"
    atomic_write_text(target, '{"old": true}\n')
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, '{"new": "' + "x" * 100_000 + '\ud800"}')  # fails midway through the write
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qcheck-report.json"]


WRITER = """
import json, sys
from qcheck.report import atomic_write_text
payload = {"rows": list(range(200_000))}
i = 0
while True:
    payload["i"] = i
    atomic_write_text(sys.argv[1], json.dumps(payload))
    i += 1
"""


def test_killed_writer_never_leaves_a_partial_report(tmp_path):
    target = tmp_path / "qcheck-report.json"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    try:
        deadline = time.time() + 60
        while not target.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert target.exists(), "the writer never produced a report"
        seen = set()
        for _ in range(40):
            seen.add(json.loads(target.read_text())["i"])  # every read is a whole JSON document
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert len(json.loads(target.read_text())["rows"]) == 200_000
        assert len(seen) >= 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
