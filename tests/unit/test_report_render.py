"""Markdown and HTML renderings of a report: what a person reads in a PR and in a browser."""
import base64
import re
from pathlib import Path

from qcheck.report import load_report, metric_interval, metric_value, render_markdown
from qcheck.report.html import mixed_variants, render_html, variant_bits

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reports"
PNG = b"\x89PNG\r\n\x1a\n"


def fixture():
    return load_report(FIXTURES / "baseline.json")


def with_speed_and_tasks(data):
    """The fixture plus latency, energy and task metrics, as the timing and task modules record them."""
    for i, name in enumerate(("fp32", "int8", "w4g64", "mixed")):
        metrics = data["variants"].setdefault(name, {"name": name, "plan": {}, "manifest_summary": {},
                                                     "metrics": {}, "manifest": []})["metrics"]
        metrics["latency_ms"] = {"value": 20.0 + i, "interval": {"low": 19.0 + i, "high": 22.0 + i}, "unit": "ms"}
        metrics["energy_j"] = {"value": 1.0 + i / 10, "interval": {"low": 0.9, "high": 1.5}}
        metrics["boxed_rate"] = {"value": 0.9 - i / 10, "n": 50, "interval": {"low": 0.7 - i / 10, "high": 0.95}}
        metrics["arc_accuracy"] = {"value": 0.5, "n": 50, "interval": {"low": 0.36, "high": 0.64}}
    return data


def test_markdown_summary_has_verdict_data_slice_variants_and_checks():
    data = fixture()
    md = render_markdown(data)
    assert md.startswith(f"# qcheck report: {data['status']}")
    sha = data["meta"]["data"]["perplexity_text"]["sha256"][:12]
    assert f"sha256 {sha}" in md
    assert "| variant | layers quantized | perplexity |" in md
    row = next(line for line in md.splitlines() if line.startswith("| mixed |"))
    ppl = data["variants"]["mixed"]["metrics"]["perplexity"]["perplexity"]
    assert f"{ppl:.4f} [" in row  # value with its interval from the per-window NLL
    assert all(c["name"] in md for c in data["checks"])


def test_perplexity_interval_comes_from_window_data():
    metric = fixture()["variants"]["int8"]["metrics"]["perplexity"]
    low, high = metric_interval(metric)
    assert low < metric_value(metric) < high


def test_variant_bits_and_mixed_detection():
    data = fixture()
    assert variant_bits(data["variants"]["int8"]) == 8.0
    assert variant_bits(data["variants"]["w4g64"]) == 4.0
    assert 4.0 < variant_bits(data["variants"]["mixed"]) < 8.0
    assert mixed_variants(data) == ["mixed"]


def images(page):
    return [base64.b64decode(m) for m in re.findall(r'<img class="plot" alt="[^"]*" src="data:image/png;base64,([^"]+)"',
                                                       page)]


def test_html_is_self_contained_with_every_plot():
    page = render_html(with_speed_and_tasks(fixture()))
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    titles = re.findall(r'<img class="plot" alt="([^"]*)"', page)
    assert titles == ["Perplexity vs bits per family", "energy_j with intervals", "latency_ms with intervals",
                      "Boxed-answer compliance and accuracy per variant", "Per-layer bits: mixed"]
    assert all(png.startswith(PNG) and len(png) > 5000 for png in images(page))


def test_html_says_which_plots_have_no_data_and_escapes_text():
    data = fixture()
    data["checks"][0]["message"] = "<script>alert(1)</script>"
    page = render_html(data)
    assert "no latency or energy metrics in this run" in page
    assert "no boxed-compliance or accuracy metrics in this run" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert len(images(page)) == 2  # perplexity vs bits, per-layer bits of the mixed plan


def test_odd_manifest_values_do_not_break_the_page():
    data = fixture()
    data["variants"]["mixed"]["manifest"][0]["bits"] = {"not": "a number"}
    data["variants"]["mixed"]["metrics"]["perplexity"]["perplexity"] = "NaN"
    page = render_html(data)
    assert "Per-layer bits: mixed" in page and "<h2>Checks</h2>" in page
