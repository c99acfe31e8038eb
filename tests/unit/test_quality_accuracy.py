"""Chance-level collapse, unresolved differences, NaN-refusing aggregation and recomputable summaries."""
import math

import pytest

from qcheck.errors import DataError, InvariantViolation
from qcheck.invariants.aggregate import check_summary, summarize, values_of
from qcheck.invariants.quality import assert_difference_resolved, assert_not_collapsed, assert_summary_recomputable
from qcheck.measure.choice import MCRecord, MCResult


def mc(flags, k=4, task="arc-easy"):
    return MCResult(task, [MCRecord(f"q{i}", 0, 0 if f else 1, bool(f), (0.0,) * k, k) for i, f in enumerate(flags)])


def test_clearly_above_chance_passes():
    result = assert_not_collapsed(mc([1] * 30 + [0] * 20))
    assert result.status.value == "PASS"
    assert result.evidence["chance"] == 0.25 and result.evidence["p_above_chance"] < 1e-6


def test_at_chance_is_collapsed():
    with pytest.raises(InvariantViolation) as err:
        assert_not_collapsed(mc([1] * 10 + [0] * 30))
    assert "collapsed to chance, indistinguishable from guessing" in err.value.result.message


def test_binary_task_at_half_is_collapsed():
    with pytest.raises(InvariantViolation, match="collapsed to chance"):
        assert_not_collapsed(50, 100, 0.5, variant="fixed4.2", task="binary")


def test_slightly_above_chance_is_inconclusive():
    result = assert_not_collapsed(12, 40, 0.25)
    assert result.status.value == "INCONCLUSIVE"
    assert "questions would be needed" in result.message


def test_small_n_above_chance_warns():
    result = assert_not_collapsed(15, 20, 0.25)
    assert result.status.value == "WARN" and "n=20 < 30" in result.message


def test_difference_resolved_and_unresolved():
    a = [True] * 40 + [False] * 60
    b = [False] * 40 + [False] * 60
    assert assert_difference_resolved(a, b, variant="w2").status.value == "PASS"
    close = [True] * 38 + [False] * 62
    result = assert_difference_resolved(a, close, variant="w4")
    assert result.status.value == "INCONCLUSIVE"
    assert "-2.0 points" in result.message and "questions would be needed" in result.message
    assert result.evidence["interval"]["low"] < -0.019 < 0 <= result.evidence["interval"]["high"]
    with pytest.raises(DataError):
        assert_difference_resolved(a, b[:10], variant="x")


def test_aggregation_refuses_nan_and_none_naming_rows():
    rows = [{"id": "a", "f1": 1.0}, {"id": "b", "f1": float("nan")}, {"id": "c", "f1": None}, {"id": "d"},
            {"id": "e", "f1": "0.5"}, {"id": "f", "f1": 0.0}]
    with pytest.raises(DataError) as err:
        values_of(rows, "f1")
    msg = str(err.value)
    assert "4 of 6 rows" in msg
    for part in ("id='b': nan", "id='c': None", "id='d': None", "id='e': '0.5'"):
        assert part in msg
    with pytest.raises(DataError, match="row 1: inf"):
        values_of([{"x": 1}, {"x": math.inf}], "x")
    with pytest.raises(DataError, match="no records"):
        values_of([], "x")


def test_summary_of_booleans_is_a_proportion_with_interval():
    s = summarize([{"id": i, "correct": i % 4 == 0} for i in range(20)], "correct")
    assert (s.kind, s.successes, s.n, s.value) == ("proportion", 5, 20, 0.25)
    metric = s.to_metric()
    assert metric["interval"]["method"] == "wilson" and metric["interval"]["low"] < 0.25 < metric["interval"]["high"]


def test_summary_must_be_recomputable():
    rows = [{"id": i, "f1": 0.0} for i in range(10)]
    assert check_summary(0.0, rows, "f1")[0]
    with pytest.raises(InvariantViolation) as err:
        assert_summary_recomputable(50.0, rows, "f1")
    assert "summary f1 = 50.0 but its 10 records give 0" in err.value.result.message
    with pytest.raises(InvariantViolation, match="refusing to aggregate 'f1'"):
        assert_summary_recomputable(0.0, rows + [{"id": 10, "f1": None}], "f1")
    assert assert_summary_recomputable(0.0, rows, "f1").status.value == "PASS"


def test_mc_result_metric_carries_its_records():
    result = mc([1, 0, 1, 1])
    metric = result.to_metric()
    assert metric["value"] == 0.75 and metric["n"] == 4 and metric["chance"] == 0.25
    assert summarize(metric["records"], "correct").value == metric["value"]
