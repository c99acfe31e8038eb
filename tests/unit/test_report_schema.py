"""The JSON report follows report_schema.json: built reports, the fixture reports and broken ones."""
import copy
import json
import re
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the dev extra) validates the report schema itself")

from qcheck.errors import QCheckError
from qcheck.report import SCHEMA_VERSION, RunReport, load_report, run_metadata, schema, validate_report, write_reports
from qcheck.results import CheckResult, Status

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reports"


def built_report(tmp_path):
    report = RunReport(meta=run_metadata())
    text = tmp_path / "slice.txt"
    text.write_text("a small evaluation slice\n")
    report.add_data_slice("perplexity_text", text, max_tokens=64, context=32)
    report.variant("int8").manifest_summary = {"layers": 2, "applied": 1, "kept": 1, "bits": {"8": 1}}
    report.variant("int8").manifest = [
        {"name": "a", "format": "int", "bits": 8, "applied": True, "kept_reason": None},
        {"name": "lm_head", "format": "keep", "bits": None, "applied": False, "kept_reason": "tied embedding"}]
    report.add_metric("int8", "perplexity", {"perplexity": 12.5, "window_nll": [300.0, 340.0],
                                             "window_tokens": [120, 120], "n_tokens": 240, "context": 128})
    report.add_metric("int8", "boxed_rate", {"value": 0.8, "n": 50, "interval": {"low": 0.67, "high": 0.89,
                                                                                 "level": 0.95}})
    report.add_metric("int8", "kl_mean", float("nan"))
    report.add_check(CheckResult("quantization_applied", Status.PASS, "weights moved", compared="int8 vs fp32",
                                 n=2, test="exact equality", threshold=0.0, evidence={"max": float("inf")},
                                 variant="int8"))
    report.add_check(CheckResult("boxed", Status.INCONCLUSIVE, "n=5 < 30", n=5))
    return report


def test_schema_is_valid_draft_2020_12_and_versioned():
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["properties"]["schema_version"]["pattern"] == r"^1\.[0-9]+$"
    assert SCHEMA_VERSION.startswith("1.")


def test_built_report_validates_and_round_trips(tmp_path):
    report = built_report(tmp_path)
    data = report.to_dict()
    validate_report(data)
    paths = write_reports(report, tmp_path / "out")
    assert [p.name for p in paths] == ["qcheck-report.json", "qcheck-report.md", "qcheck-report.html"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # JUnit is pytest's
    loaded = load_report(paths[0])
    validate_report(loaded)
    assert loaded["variants"]["int8"]["metrics"]["kl_mean"] == "NaN"
    assert loaded["checks"][0]["evidence"]["max"] == "Infinity"
    assert loaded["meta"]["data"]["perplexity_text"]["max_tokens"] == 64
    assert len(loaded["meta"]["data"]["perplexity_text"]["sha256"]) == 64
    assert loaded["status"] == "WARN" and loaded["counts"]["INCONCLUSIVE"] == 1


def test_run_metadata_records_versions_flags_and_platform():
    meta = run_metadata()
    for key in ("qcheck", "torch", "transformers", "python", "platform", "created", "argv", "cuda_available"):
        assert key in meta
    assert isinstance(meta["argv"], list)


@pytest.mark.parametrize("name", ["baseline.json", "regression.json", "rerun.json", "attention.json"])
def test_fixture_reports_validate(name):
    validate_report(load_report(FIXTURES / name))


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.pop("checks"), "(top level)"),
    (lambda d: d["checks"][0].__setitem__("status", "OK"), "checks/0/status"),
    (lambda d: d["counts"].__setitem__("PASS", -1), "counts/PASS"),
    (lambda d: d["meta"]["data"]["perplexity_text"].__setitem__("sha256", "abc"),
     "meta/data/perplexity_text/sha256"),
    (lambda d: d["variants"]["int8"]["metrics"].__setitem__("perplexity", [1, 2]), "variants/int8/metrics/perplexity"),
    (lambda d: d["meta"].__setitem__("timeline", {"imported": 0.1, "validated": "late"}), "meta/timeline/validated"),
])
def test_broken_reports_are_rejected_naming_the_place(tmp_path, mutate, where):
    data = copy.deepcopy(built_report(tmp_path).to_dict())
    mutate(data)
    with pytest.raises(QCheckError, match=re.escape(f"at {where}:")):
        validate_report(data)


def test_load_report_refuses_other_major_versions_and_foreign_json(tmp_path):
    data = built_report(tmp_path).to_dict()
    minor = tmp_path / "minor.json"
    minor.write_text(json.dumps({**data, "schema_version": "1.7"}))
    assert load_report(minor)["schema_version"] == "1.7"  # minor versions only add optional fields
    major = tmp_path / "major.json"
    major.write_text(json.dumps({**data, "schema_version": "2.0"}))
    with pytest.raises(QCheckError, match="major versions differ"):
        load_report(major)
    foreign = tmp_path / "results.json"
    foreign.write_text(json.dumps({"model": "x", "accuracy": 0.5}))
    with pytest.raises(QCheckError, match="not a qcheck report"):
        load_report(foreign)
