"""qcheck.timeline: marks in seconds since qcheck started, in order, the first of a name kept; and the report's
line that reads them as phases."""
import subprocess
import sys
import time

import pytest

from qcheck import timeline
from qcheck.report.markdown import render_markdown, timeline_lines


@pytest.fixture(autouse=True)
def fresh():
    timeline.reset()
    yield
    timeline.reset()


def test_marks_keep_order_and_the_first_value_and_grow():
    timeline.mark("imported")
    time.sleep(0.02)
    timeline.mark("validated")
    first = timeline.marks()["imported"]
    time.sleep(0.02)
    timeline.mark("imported")  # set again: keeps its first value and its place
    timeline.mark("collected")
    marks = timeline.marks()
    assert list(marks) == ["imported", "validated", "collected"]
    assert marks["imported"] == first
    values = list(marks.values())
    assert 0 <= values[0] <= values[1] <= values[2]
    assert values[1] - values[0] >= 0.01
    assert all(v == round(v, 2) for v in values)


def test_the_clock_starts_with_qcheck_not_with_a_shell_that_execs_it():
    """A shell that runs something else first and then execs Python keeps its process and its start time (the
    README's set-up line: pip installs, then `qcheck run`): those seconds are not qcheck's start-up."""
    code = "import qcheck.timeline as t; t.mark('imported'); print(t.marks()['imported'])"
    out = subprocess.run(["bash", "-c", f'sleep 1.5; exec "{sys.executable}" -c "{code}"'], capture_output=True,
                         text=True, check=True).stdout
    assert 0 <= float(out) < 1.0, out


def test_reset_forgets_and_marks_is_a_copy():
    timeline.mark("judged")
    marks = timeline.marks()
    marks["judged"] = -1.0
    assert timeline.marks()["judged"] >= 0
    timeline.reset()
    assert timeline.marks() == {}


def test_phases_are_the_gaps_between_marks():
    marks = {"imported": 2.0, "validated": 20.5, "collected": 21.0, "opened": 21.0, "measured": 60.25,
             "judged": 62.0}
    assert timeline.phases(marks) == {"start-up and imports": 2.0, "validation and model load": 18.5,
                                      "pytest collection": 0.5, "opening the run": 0.0, "measurements": 39.25,
                                      "judging the checks": 1.75}
    # a plain pytest run starts at collection; an unknown mark is named as it is
    assert timeline.phases({"collected": 3.0, "custom": 4.5}) == {"start-up and pytest collection": 3.0,
                                                                 "until custom": 1.5}


def test_the_markdown_report_shows_the_phases():
    meta = {"timeline": {"imported": 2.0, "validated": 20.5, "judged": 30.0}}
    (line,) = timeline_lines(meta)
    assert line == ("time by phase: start-up and imports 2.0 s, validation and model load 18.5 s, judging the "
                    "checks 9.5 s; then the reports, from 30.0 s after qcheck started")
    assert timeline_lines({}) == [] and timeline_lines({"timeline": {"x": "bad"}}) == []
    text = render_markdown({"status": "PASS", "meta": meta, "variants": {}, "checks": [], "counts": {"PASS": 1}})
    assert "- time by phase: start-up and imports 2.0 s" in text


def test_a_run_that_marks_the_load_splits_validation_from_it():
    marks = {"imported": 0.0, "memory_checked": 4.0, "loaded": 9.5, "validated": 11.0, "collected": 11.5}
    assert timeline.phases(marks) == {"start-up and imports": 0.0, "heavy imports and the memory pre-check": 4.0,
                                      "loading the reference": 5.5, "validating variants and inputs": 1.5,
                                      "pytest collection": 0.5}
