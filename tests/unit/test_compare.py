"""`qcheck compare`: a regression is worse than the tolerance AND beyond the measured noise; exit codes 0/1/2."""
import copy
import json
import math
from pathlib import Path

import pytest

from qcheck.cli import main
from qcheck.errors import ConfigError
from qcheck.report import load_report
from qcheck.report.compare import compare_metric, compare_reports, direction, parse_tolerances

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reports"
BASELINE, REGRESSED, RERUN = FIXTURES / "baseline.json", FIXTURES / "regression.json", FIXTURES / "rerun.json"


def ppl_metric(per_token_nll, tokens=128):
    """A perplexity metric with per-window data, as the plugin records it."""
    nll = [x * tokens for x in per_token_nll]
    total = sum(nll) / (tokens * len(nll))
    return {"perplexity": math.exp(total), "nll_sum": sum(nll), "n_tokens": tokens * len(nll), "context": tokens,
            "stride": tokens, "n_windows": len(nll), "window_nll": nll, "window_tokens": [tokens] * len(nll)}


# --- the fixture reports: a real run, the same run with a planted 10% perplexity regression, a rerun ---

def test_planted_ten_percent_perplexity_regression_is_flagged_with_exit_1(capsys):
    assert main(["compare", str(BASELINE), str(REGRESSED)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("qcheck compare: REGRESSION")
    row = next(line for line in out.splitlines() if line.startswith("regression"))
    assert "mixed" in row and "perplexity" in row and "+10.00%" in row and "paired t over" in row


def test_identical_rerun_passes_with_exit_0(capsys):
    assert main(["compare", str(BASELINE), str(RERUN)]) == 0
    assert capsys.readouterr().out.startswith("qcheck compare: OK")
    assert main(["compare", str(BASELINE), str(BASELINE)]) == 0


def test_regression_verdict_in_detail():
    comparison = compare_reports(load_report(BASELINE), load_report(REGRESSED))
    (reg,) = comparison.regressions
    assert (reg.variant, reg.metric) == ("mixed", "perplexity")
    assert reg.relative == pytest.approx(0.10, abs=1e-6)
    assert 0 < reg.change_low < 0.10 < reg.change_high  # the change's interval from per-window noise
    others = [c for c in comparison.changes if c.metric == "perplexity" and c.variant != "mixed"]
    assert others and all(c.verdict == "within tolerance" and c.relative == 0 for c in others)
    assert not comparison.check_regressions


def test_markdown_table_for_ci_comments(capsys):
    assert main(["compare", str(BASELINE), str(REGRESSED), "--format", "markdown"]) == 1
    md = capsys.readouterr().out
    assert md.startswith("## qcheck compare: REGRESSION")
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| verdict |"))
    assert lines[header + 1].startswith("|---|")
    assert lines[header + 2].startswith("| **regression** | mixed | perplexity |")


def test_json_output_is_machine_readable(capsys):
    assert main(["compare", str(BASELINE), str(REGRESSED), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "REGRESSION"
    assert [(c["variant"], c["metric"]) for c in data["changes"] if c["verdict"] == "regression"] == [
        ("mixed", "perplexity")]


def test_a_wider_tolerance_lets_the_same_change_pass(capsys):
    assert main(["compare", str(BASELINE), str(REGRESSED), "--tolerance", "perplexity=15%"]) == 0
    assert "within tolerance" in capsys.readouterr().out


# --- the noise rule, on constructed metrics ---

def test_change_beyond_tolerance_but_within_noise_is_not_a_regression():
    base = ppl_metric([2.0, 3.5, 2.2, 3.9])
    noisy = ppl_metric([2.5, 3.2, 2.8, 3.6])  # +10% overall, but windows disagree in sign
    change = compare_metric("int8", "perplexity", base, noisy, tolerance=0.02)
    assert change.relative > 0.02 and change.change_low < 0 < change.change_high
    assert change.verdict == "within noise"


def test_change_beyond_noise_but_within_tolerance_is_not_a_regression():
    base = ppl_metric([2.0, 3.0, 2.5, 2.8])
    new = ppl_metric([x + 0.01 for x in [2.0, 3.0, 2.5, 2.8]])  # +1%, the same in every window
    change = compare_metric("int8", "perplexity", base, new, tolerance=0.02)
    assert change.change_low > 0 and change.verdict == "within tolerance"


def test_improvement_beyond_tolerance_and_noise_is_reported_as_improved():
    base = ppl_metric([2.2, 3.2, 2.7, 3.0])
    better = ppl_metric([x - 0.2 for x in [2.2, 3.2, 2.7, 3.0]])
    assert compare_metric("int8", "perplexity", base, better, tolerance=0.02).verdict == "improved"


def test_metric_without_noise_data_never_gates_on_a_fixed_threshold():
    change = compare_metric("int8", "quantize_seconds", 1.0, 3.0, tolerance=0.05)
    assert change.verdict == "unmeasured" and change.change_low is None


def test_intervals_of_both_runs_are_the_noise_for_latency():
    base = {"value": 10.0, "interval": {"low": 9.8, "high": 10.2}, "unit": "ms"}
    slow = {"value": 12.0, "interval": {"low": 11.8, "high": 12.2}, "unit": "ms"}
    wide = {"value": 12.0, "interval": {"low": 8.0, "high": 16.0}, "unit": "ms"}
    assert compare_metric("fp16", "latency_ms", base, slow, tolerance=0.10).verdict == "regression"
    assert compare_metric("fp16", "latency_ms", base, wide, tolerance=0.10).verdict == "within noise"


def test_rates_with_n_use_a_wilson_interval_and_higher_is_better():
    base, drop = {"value": 0.90, "n": 400}, {"value": 0.70, "n": 400}
    change = compare_metric("w4g64", "boxed_rate", base, drop, tolerance=0.05)
    assert change.verdict == "regression" and change.noise == "intervals of both runs"
    small = compare_metric("w4g64", "boxed_rate", {"value": 0.9, "n": 10}, {"value": 0.7, "n": 10}, 0.05)
    assert small.verdict == "within noise"  # n=10 cannot tell 0.9 from 0.7


def test_raw_samples_are_bootstrapped():
    base = {"median_ms": 10.0, "samples": [9.9, 10.0, 10.1, 10.0, 9.95, 10.05] * 5}
    new = {"median_ms": 13.0, "samples": [12.9, 13.0, 13.1, 13.0, 12.95, 13.05] * 5}
    assert compare_metric("int8", "latency_ms", base, new, tolerance=0.10).verdict == "regression"


def test_direction_of_known_and_declared_metrics():
    assert direction("perplexity") == -1 and direction("arc_accuracy") == 1 and direction("energy_j") == -1
    assert direction("mystery") == 0
    assert direction("mystery", {"value": 1, "higher_is_better": True}) == 1


def test_unpaired_windows_when_data_slices_differ():
    base, new = load_report(BASELINE), load_report(REGRESSED)
    new = copy.deepcopy(new)
    new["meta"]["data"]["perplexity_text"]["sha256"] = "0" * 64
    comparison = compare_reports(base, new)
    assert any("slices differ" in n for n in comparison.notes)
    mixed = next(c for c in comparison.changes if (c.variant, c.metric) == ("mixed", "perplexity"))
    assert mixed.noise in ("intervals of both runs", "none recorded")


def test_newly_failing_check_and_incomplete_run_fail_the_gate(tmp_path, capsys):
    new = load_report(BASELINE)
    check = next(c for c in new["checks"] if c["status"] == "PASS")
    check["status"] = "FAIL"
    new["complete"] = False
    new["unfinished"] = ["qcheck/suite/test_x.py::test_y"]
    new["interruption"] = {"reason": "interrupted", "exit_status": 2, "unfinished": 1}
    path = tmp_path / "new.json"
    path.write_text(json.dumps(new))
    assert main(["compare", str(BASELINE), str(path)]) == 1
    out = capsys.readouterr().out
    assert f"check now FAIL: {check['name']}" in out and "the new run is incomplete" in out


# --- a new report that measured less: vanished variants and checks, no check run ---

def write_report(tmp_path: Path, data: dict, name: str = "new.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_new_report_that_lost_every_variant_and_check_fails_naming_them(tmp_path, capsys):
    new = load_report(BASELINE)
    new["variants"], new["checks"] = {}, []
    new["counts"] = {status: 0 for status in new["counts"]}
    assert main(["compare", str(BASELINE), str(write_report(tmp_path, new))]) == 1
    out = capsys.readouterr().out
    assert out.startswith("qcheck compare: REGRESSION")
    for variant in ("fp32", "int8", "w4g64", "mixed"):
        assert f"variant vanished: {variant} is in the baseline but absent from the new report" in out
        assert f"check vanished: perplexity_finite {variant} ran in the baseline (PASS)" in out
    assert "no check ran: the new report has no check that ran" in out


def test_new_report_whose_every_check_was_skipped_fails(tmp_path, capsys):
    new = load_report(BASELINE)
    for check in new["checks"]:
        check["status"] = "SKIPPED"
    comparison = compare_reports(load_report(BASELINE), new)
    assert comparison.checks_run == 0 and comparison.failed
    assert not comparison.regressions and not comparison.check_regressions and not comparison.vanished_checks
    assert main(["compare", str(BASELINE), str(write_report(tmp_path, new)), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "REGRESSION" and data["checks_run"] == 0


def test_one_vanished_variant_and_its_check_fail_the_gate(tmp_path, capsys):
    new = load_report(BASELINE)
    del new["variants"]["w4g64"]
    new["checks"] = [c for c in new["checks"] if c["variant"] != "w4g64"]
    comparison = compare_reports(load_report(BASELINE), new)
    assert comparison.vanished_variants == ("w4g64",)
    assert comparison.vanished_checks == ({"name": "perplexity_finite", "variant": "w4g64", "baseline": "PASS"},)
    assert comparison.checks_run == 3 and comparison.failed
    assert main(["compare", str(BASELINE), str(write_report(tmp_path, new)), "--format", "markdown"]) == 1
    md = capsys.readouterr().out
    assert md.startswith("## qcheck compare: REGRESSION")
    assert "### Missing from the new report" in md
    assert "- **variant vanished: w4g64 is in the baseline but absent from the new report**" in md
    assert "- **check vanished: perplexity_finite w4g64 ran in the baseline (PASS)" in md


def test_one_vanished_check_fails_the_gate(tmp_path, capsys):
    new = load_report(BASELINE)
    new["checks"] = [c for c in new["checks"] if c["variant"] != "int8"]
    assert main(["compare", str(BASELINE), str(write_report(tmp_path, new))]) == 1
    out = capsys.readouterr().out
    assert "check vanished: perplexity_finite int8 ran in the baseline (PASS) but is absent" in out
    assert "variant vanished" not in out  # int8's metrics are still there


def test_check_skipped_in_the_baseline_may_vanish(tmp_path, capsys):
    base = load_report(BASELINE)
    base["checks"].append({**base["checks"][0], "name": "latency_order", "status": "SKIPPED"})
    assert main(["compare", str(write_report(tmp_path, base, "base.json")), str(BASELINE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("qcheck compare: OK")
    assert "note: 1 check(s) SKIPPED in the baseline are absent from the new report" in out


def test_variant_new_in_the_new_report_is_not_a_regression():
    base = load_report(BASELINE)
    del base["variants"]["mixed"]
    base["checks"] = [c for c in base["checks"] if c["variant"] != "mixed"]
    comparison = compare_reports(base, load_report(BASELINE))
    assert not comparison.failed and not comparison.vanished_variants


def test_weights_memory_is_gated_and_the_fidelity_summary_is_no_row(tmp_path, capsys):
    """Every real run's `memory` metric (the weights' bytes as stored, from the latency step) and `fidelity` summary
    (whose kl_mean and top1_agreement are metrics of their own) were "not comparable" rows in every comparison, even
    of a report with itself (session 29, an 80-layer run): a packing that broke went ungated. Memory is now compared,
    lower being better; the summary is left out."""
    base = load_report(BASELINE)
    for name, view in base["variants"].items():
        view["metrics"]["memory"] = {"weights_mb": 2.0 if name == "w4g64" else 8.0, "shape": [1, 32],
                                     "what": "parameter + buffer bytes as stored (packed where the backend packs)"}
        view["metrics"]["fidelity"] = {"variant": name, "n_tokens": 2046, "kl_mean": 0.001}
    same = compare_reports(base, copy.deepcopy(base))
    assert not [c for c in same.changes if c.verdict.startswith("not comparable")]
    assert not [c for c in same.changes if c.metric == "fidelity"]
    assert {c.variant for c in same.changes if c.metric == "memory" and c.verdict == "within tolerance"} == set(
        base["variants"])
    unpacked = copy.deepcopy(base)
    unpacked["variants"]["w4g64"]["metrics"]["memory"]["weights_mb"] = 8.0  # stored unpacked: 4x
    path_base, path_new = write_report(tmp_path, base, "base.json"), write_report(tmp_path, unpacked)
    assert main(["compare", str(path_base), str(path_new)]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("regression"))
    assert "w4g64" in row and "memory" in row and "+300.00%" in row


# --- bad input exits 2, a bug in qcheck exits 3 ---

@pytest.mark.parametrize("content, message", [
    (None, "cannot read the report"),
    ("{not json", "not a JSON file"),
    ('{"rows": [1, 2]}', "not a qcheck report"),
    ('[1, 2, 3]', "not a qcheck report"),
])
def test_bad_input_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    assert main(["compare", str(BASELINE), str(path)]) == 2
    assert message in capsys.readouterr().err


def test_schema_version_mismatch_exits_2(tmp_path, capsys):
    data = load_report(BASELINE)
    data["schema_version"] = "2.0"
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    assert main(["compare", str(path), str(BASELINE)]) == 2
    assert "schema version 2.0 does not match" in capsys.readouterr().err


def test_report_breaking_the_schema_exits_2(tmp_path, capsys):
    data = load_report(BASELINE)
    data["checks"][0]["status"] = "MAYBE"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    assert main(["compare", str(BASELINE), str(path)]) == 2
    assert "does not match report_schema.json at checks/0/status" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(checks=[1, 2]), "checks/0 must be an object"),
    (lambda d: d["variants"].update(int8=[1]), "variants/int8 must be an object whose 'metrics' is an object"),
    (lambda d: d.update(meta="run"), "'meta' must be an object"),
])
def test_malformed_report_without_schema_validation_exits_2_in_one_line(tmp_path, capsys, change, message):
    data = load_report(BASELINE)
    change(data)
    assert main(["compare", str(BASELINE), str(write_report(tmp_path, data)), "--no-validate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qcheck compare: error: ") and message in err


def test_internal_error_exits_3_in_one_line(monkeypatch, capsys):
    import qcheck.report.compare

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(qcheck.report.compare, "compare_reports", broken)
    assert main(["compare", str(BASELINE), str(RERUN)]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "qcheck compare: internal error: ZeroDivisionError: a bug\n"


@pytest.mark.parametrize("raw", ["abc", "-0.1", "perplexity=nan%"])
def test_bad_tolerance_is_a_config_error(raw):
    with pytest.raises(ConfigError):
        parse_tolerances([raw])


def test_tolerance_forms():
    assert parse_tolerances(["5%"])["perplexity"] == pytest.approx(0.05)
    merged = parse_tolerances(["0.1", "perplexity=0.01"])
    assert merged["perplexity"] == 0.01 and merged["*"] == 0.1 and merged["latency_ms"] == 0.1
