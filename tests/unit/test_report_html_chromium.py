"""The HTML report in a real browser (headless Debian chromium): its plots render, and its first screen (a 1280x800
viewport) shows every FAIL, ERROR, WARN and INCONCLUSIVE check of a 136-check run, each linking to its details.

Needs `apt-get install -y chromium` (/usr/bin/chromium); skipped with that reason where it is missing.
The screenshots are kept in the tests' temp dirs.
"""
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcheck.report import load_report
from qcheck.report.html import STATUS_COLOURS, write_html

CHROMIUM = Path("/usr/bin/chromium")
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reports"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
MPL_BLUE = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first colour: only the plots use it
SCREEN = (1280, 800)
"""The first screen: a laptop browser window's viewport."""
MEASURE = """<script>addEventListener("load", () => {
  const rows = [...document.querySelectorAll("table.attention tr.check-row")].map(r => {
    const box = r.getBoundingClientRect(), href = r.querySelector("a").getAttribute("href");
    const target = document.getElementById(href.slice(1));
    return {status: r.dataset.status, top: box.top, bottom: box.bottom, right: box.right,
            target: target ? target.getBoundingClientRect().top : null};
  });
  const out = document.createElement("pre");
  out.id = "measure";
  out.textContent = JSON.stringify({width: innerWidth, rows});
  document.body.appendChild(out);
});</script>"""
"""Appended to a copy of the page (the report itself has no scripts): where each attention row lies on the page."""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="headless Chromium is not installed (/usr/bin/chromium); "
                                       "install it with: apt-get update && apt-get install -y chromium")


def chromium(tmp_path, *args):
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    proc = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def screenshot(tmp_path, page, size):
    import matplotlib.image

    shot = tmp_path / f"shot-{size[0]}x{size[1]}.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", page.as_uri())
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (size[1], size[0])
    assert pixels.std() > 0.05, "the screenshot is blank"
    shutil.copy(shot, page.parent / shot.name)
    return pixels


def badges(pixels, status):
    """How many solid blocks of the status's badge colour the screenshot holds (glyph counters are < 100 px)."""
    from scipy import ndimage

    colour = np.array([int(STATUS_COLOURS[status][i:i + 2], 16) for i in (1, 3, 5)]) / 255
    mask = np.all(np.abs(pixels - colour) < 0.03, axis=-1)
    labels, n = ndimage.label(mask)
    return int(sum(size > 100 for size in ndimage.sum(mask, labels, range(1, n + 1))))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    data = load_report(FIXTURES / "baseline.json")
    metrics = data["variants"]["int8"]["metrics"]
    metrics["latency_ms"] = {"value": 21.0, "interval": {"low": 20.0, "high": 23.0}}
    metrics["boxed_rate"] = {"value": 0.84, "n": 50, "interval": {"low": 0.71, "high": 0.92}}
    path = tmp_path_factory.mktemp("html") / "qcheck-report.html"
    write_html(data, path)
    return path


@pytest.fixture(scope="module")
def attention_page(tmp_path_factory):
    """The 136-check fixture run: 20 SKIPPED checks first, its two FAILs at positions 60 and 91."""
    path = tmp_path_factory.mktemp("attention") / "qcheck-report.html"
    write_html(load_report(FIXTURES / "attention.json"), path)
    return path


def test_page_loads_with_its_plots_after_the_checks_in_headless_chromium(page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    imgs = re.findall(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,', dom)
    assert imgs == ["Perplexity vs bits per family", "latency_ms with intervals",
                    "Boxed-answer compliance and accuracy per variant", "Per-layer bits: mixed"]
    order = [dom.index(marker) for marker in ('id="attention"', "<h2>Variants</h2>", 'id="passed"',
                                              "<h2>Plots</h2>", "<h2>Run</h2>")]
    assert order == sorted(order)

    pixels = screenshot(tmp_path, page, (1280, 2000))
    blue = np.all(np.abs(pixels - MPL_BLUE) < 0.04, axis=-1).sum()
    assert blue > 500, f"plot colours not found in the screenshot ({blue} pixels): the images did not render"


def test_first_screen_shows_every_failure_and_warning_with_a_link_to_its_details(attention_page, tmp_path):
    data = load_report(FIXTURES / "attention.json")
    counts = data["counts"]
    assert counts["FAIL"] == 2 and counts["WARN"] == 3 and counts["SKIPPED"] == 20 and len(data["checks"]) == 136
    measured = attention_page.parent / "measured.html"
    measured.write_text(attention_page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium(tmp_path, f"--window-size={SCREEN[0]},{SCREEN[1]}", "--virtual-time-budget=5000",
                   "--dump-dom", measured.as_uri()).stdout
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the measuring script did not run"
    layout = json.loads(html.unescape(found.group(1)))
    rows = layout["rows"]
    assert [r["status"] for r in rows] == ["FAIL"] * 2 + ["ERROR"] + ["WARN"] * 3 + ["INCONCLUSIVE"] * 2
    for row in rows:
        assert 0 <= row["top"] and row["bottom"] <= SCREEN[1], f"{row['status']} row below the first screen: {row}"
        assert row["right"] <= min(SCREEN[0], layout["width"]), f"row wider than the screen: {row}"
        assert row["target"] is not None and row["target"] > SCREEN[1], f"its details link goes nowhere: {row}"

    pixels = screenshot(tmp_path, attention_page, SCREEN)
    assert badges(pixels, "FAIL") == counts["FAIL"] + 1  # each FAIL row's badge and the verdict's
    assert badges(pixels, "WARN") == counts["WARN"]
    assert badges(pixels, "ERROR") == counts["ERROR"]
    assert badges(pixels, "INCONCLUSIVE") == counts["INCONCLUSIVE"]


def test_skips_are_collapsed_and_grouped_in_the_browser(attention_page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", attention_page.as_uri()).stdout
    skipped = re.search(r'<details class="skipped" id="skipped">(.*?)</details>', dom, re.DOTALL)
    assert skipped, "the skipped checks are not in a closed <details>"
    assert "<summary>Skipped: 20 checks, 3 reasons</summary>" in skipped.group(1)
    assert "latency of [variant] needs GPU timing; this run has no CUDA device</b> (18)" in skipped.group(1)
