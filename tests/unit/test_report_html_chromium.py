"""The HTML report renders in a real browser (headless Debian chromium) with its plots.

Needs `apt-get install -y chromium` (/usr/bin/chromium); skipped with that reason where it is missing.
The screenshot is kept in the test's temp dir.
"""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcheck.report import load_report
from qcheck.report.html import write_html

CHROMIUM = Path("/usr/bin/chromium")
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reports"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
MPL_BLUE = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first colour: only the plots use it

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="headless Chromium is not installed (/usr/bin/chromium); "
                                       "install it with: apt-get update && apt-get install -y chromium")


def chromium(tmp_path, *args):
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    proc = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    data = load_report(FIXTURES / "baseline.json")
    metrics = data["variants"]["int8"]["metrics"]
    metrics["latency_ms"] = {"value": 21.0, "interval": {"low": 20.0, "high": 23.0}}
    metrics["boxed_rate"] = {"value": 0.84, "n": 50, "interval": {"low": 0.71, "high": 0.92}}
    path = tmp_path_factory.mktemp("html") / "qcheck-report.html"
    write_html(data, path)
    return path


def test_page_loads_with_its_plots_in_headless_chromium(page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    imgs = re.findall(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,', dom)
    assert imgs == ["Perplexity vs bits per family", "latency_ms with intervals",
                    "Boxed-answer compliance and accuracy per variant", "Per-layer bits: mixed"]
    assert "<h2>Checks</h2>" in dom

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05, "the screenshot is blank"
    blue = np.all(np.abs(pixels - MPL_BLUE) < 0.04, axis=-1).sum()
    assert blue > 500, f"plot colours not found in the screenshot ({blue} pixels): the images did not render"
    shutil.copy(shot, page.parent / "shot.png")
