"""Markdown and HTML renderings of a report: what a person reads first in a PR and in a browser."""
import base64
import copy
import re
from pathlib import Path

from qcheck.report import interval_note, load_report, metric_cell, metric_interval, metric_value, render_markdown
from qcheck.report.from_records import perplexity_metric
from qcheck.report.html import render_html
from qcheck.report.plots import draw_perplexity_vs_bits, mixed_variants, perplexity_notes, variant_bits
from qcheck.report.sections import attention, reason, skipped_groups, verdict_sentence

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reports"
PNG = b"\x89PNG\r\n\x1a\n"


def fixture(name="baseline.json"):
    return load_report(FIXTURES / name)


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


def few_blocks(data):
    """Every variant's perplexity rendered from 3 blocks of 128 tokens (a 384-token slice): no interval."""
    for v in data["variants"].values():
        metric = v["metrics"]["perplexity"]
        per_token = metric["nll_sum"] / metric["n_tokens"]
        v["metrics"]["perplexity"] = perplexity_metric(
            {"perplexity": metric["perplexity"], "n_tokens": 384, "block_size": 128, "block_index": [0, 1, 2],
             "block_nll": [per_token * 128 * f for f in (0.9, 1.0, 1.1)], "block_tokens": [128, 128, 128]})
    return data


# --- what is read first ---

def test_markdown_opens_with_the_verdict_then_failures_and_warnings_before_anything_else():
    data = fixture("attention.json")
    md = render_markdown(data)
    lines = md.splitlines()
    assert lines[0] == "# qcheck report: FAIL"
    assert lines[2].startswith("2 checks failed, 1 check errored, 3 warned and 2 were inconclusive (108 passed, "
                               "20 skipped, 136 in all).")
    assert lines[4] == "## Failures and warnings (8)"
    rows = [line for line in lines[6:16] if line.startswith("| **")]
    assert [r.split(" | ")[0] for r in rows] == ["| **FAIL**"] * 2 + ["| **ERROR**"] + ["| **WARN**"] * 3 + [
        "| **INCONCLUSIVE**"] * 2
    assert "mixed_between_uniform | mixed | perplexity of mixed (152.3) is 6.5x above" in rows[0]
    sections = [md.index(h) for h in ("## Failures and warnings", "## Variants", "## Passed (108)",
                                      "<summary>Skipped: 20 checks, 3 reasons</summary>",
                                      "## Details of failures and warnings", "## Run")]
    assert sections == sorted(sections)


def test_every_failure_and_warning_links_to_its_details_further_down():
    md = render_markdown(fixture("attention.json"))
    links = re.findall(r"\[details\]\(#([a-z0-9-]+)\)", md)
    assert len(links) == 8 == len(set(links))
    for target in links:
        assert md.count(f'<a id="{target}"></a>') == 1
        assert md.index(f'<a id="{target}"></a>') > md.index("## Passed")
    page = render_html(fixture("attention.json"))
    for target in re.findall(r'<a href="#([a-z0-9-]+)">details</a>', page):
        assert page.count(f'id="{target}"') == 1


def test_skips_are_collapsed_counted_and_grouped_by_reason():
    data = fixture("attention.json")
    groups = skipped_groups(data)
    assert [len(checks) for _, checks in groups] == [18, 1, 1]
    assert groups[0][0] == "latency of [variant] needs GPU timing; this run has no CUDA device"
    assert groups[1][0].startswith("no Optuna objective configured")  # a group of one keeps its own words
    md = render_markdown(data)
    block = md[md.index("<details>"):md.index("</details>")]
    assert "- **latency of [variant] needs GPU timing; this run has no CUDA device** (18): `slowdown_bound` (fp32)" \
        in block
    assert "SKIPPED" not in md.split("<details>")[0]  # nothing skipped above the fold


def test_verdict_sentence_and_one_line_reasons():
    data = fixture()
    assert verdict_sentence(data) == "Every check that ran held (4 passed, 0 skipped, 4 in all)."
    skipped = copy.deepcopy(data)
    for c in skipped["checks"]:
        c["status"] = "SKIPPED"
    skipped["status"], skipped["counts"] = "INCONCLUSIVE", {"SKIPPED": 4}
    assert verdict_sentence(skipped).startswith("No check ran: all 4 selected checks were skipped")
    assert "None: no check ran." in render_markdown(skipped)
    assert reason({"message": "first line\nsecond line"}) == "first line …"
    assert reason({"message": "x" * 500}).endswith("x …") and len(reason({"message": "x" * 500})) < 250
    order = [c["status"] for _, c in attention([{"status": s} for s in ("WARN", "PASS", "INCONCLUSIVE", "FAIL",
                                                                        "SKIPPED", "ERROR")])]
    assert order == ["FAIL", "ERROR", "WARN", "INCONCLUSIVE"]


def test_html_opens_with_the_verdict_and_failures_and_puts_plots_after_the_checks():
    page = render_html(fixture("attention.json"))
    body = page[page.index("<body>"):]
    order = [body.index(m) for m in ("<h1>", 'class="verdict"', 'id="attention"', "<h2>Variants</h2>",
                                     'id="passed"', 'id="skipped"', "<h2>Plots</h2>", "Details of failures",
                                     "<h2>Run</h2>")]
    assert order == sorted(order)
    table = body[body.index('<table class="attention">'):body.index("</table>", body.index('id="attention"'))]
    assert re.findall(r'data-status="(\w+)"', table) == ["FAIL"] * 2 + ["ERROR"] + ["WARN"] * 3 + \
        ["INCONCLUSIVE"] * 2


# --- intervals: stated, or a note instead of a bar ---

def test_perplexity_interval_is_the_stated_one_never_recomputed_from_windows():
    metric = fixture()["variants"]["int8"]["metrics"]["perplexity"]
    assert metric.get("window_nll") and "interval" not in metric
    assert metric_interval(metric) is None  # four windows are not an interval
    stated = fixture("attention.json")["variants"]["int8"]["metrics"]["perplexity"]
    low, high = metric_interval(stated)
    assert low < metric_value(stated) < high and "over 8 blocks of 128 tokens" in stated["interval"]["method"]
    assert metric_cell(stated) == f"{metric_value(stated):.4f} [{low:.4f}, {high:.4f}]"


def test_too_few_blocks_give_a_note_and_no_bar_in_markdown_html_and_the_plot():
    data = few_blocks(fixture())
    metric = data["variants"]["int8"]["metrics"]["perplexity"]
    assert metric_interval(metric) is None
    assert interval_note(metric) == "too few blocks for an interval (3 of 128 tokens, < 4)"
    md = render_markdown(data)
    row = next(line for line in md.splitlines() if line.startswith("| int8 |"))
    assert row.endswith(f"| {metric_value(metric):.4f} — too few blocks for an interval (3 of 128 tokens, < 4) |")
    page = render_html(data)
    assert "<figcaption>Drawn without a bar: fp32, int8, w4g64, mixed: too few blocks for an interval" in page
    note = "too few blocks for an interval (3 of 128 tokens, < 4)"
    assert perplexity_notes(data) == [f"fp32, int8, w4g64, mixed: {note}"]
    from matplotlib.figure import Figure

    ax = Figure().add_subplot(1, 1, 1)
    draw_perplexity_vs_bits(ax, data)
    assert not ax.containers, "an error bar was drawn for a perplexity without an interval"
    assert any("too few blocks for an interval" in t.get_text() for t in ax.texts)

    stated = fixture("attention.json")
    ax = Figure().add_subplot(1, 1, 1)
    draw_perplexity_vs_bits(ax, stated)
    assert ax.containers and not any("too few blocks" in t.get_text() for t in ax.texts)


# --- the rest of the page ---

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
    assert "<script" not in page
    titles = re.findall(r'<img class="plot" alt="([^"]*)"', page)
    assert titles == ["Perplexity vs bits per family", "energy_j with intervals", "latency_ms with intervals",
                      "Boxed-answer compliance and accuracy per variant", "Per-layer bits: mixed"]
    assert all(png.startswith(PNG) and len(png) > 5000 for png in images(page))


def test_html_says_which_plots_have_no_data_and_escapes_text():
    data = fixture()
    data["checks"][0]["message"] = "<script>alert(1)</script>"
    data["checks"][1]["status"] = "FAIL"
    data["checks"][1]["message"] = "<img src=x onerror=alert(1)> broke"
    page = render_html(data)
    assert "no latency or energy metrics in this run" in page
    assert "no boxed-compliance or accuracy metrics in this run" in page
    assert "<script>" not in page and "&lt;script&gt;" in page and "<img src=x" not in page
    assert len(images(page)) == 2  # perplexity vs bits, per-layer bits of the mixed plan
    md = render_markdown(data)
    assert "<img src=x" not in md and "&lt;img src=x onerror=alert(1)> broke" in md


def test_odd_manifest_values_do_not_break_the_page():
    data = fixture()
    data["variants"]["mixed"]["manifest"][0]["bits"] = {"not": "a number"}
    data["variants"]["mixed"]["metrics"]["perplexity"]["perplexity"] = "NaN"
    page = render_html(data)
    assert "Per-layer bits: mixed" in page and 'id="passed"' in page
