"""A report renders in a browser: tools/screenshot_report.sh screenshots it with headless
Chromium, and the picture has the page's plots in it (coloured lines, not a blank or broken page).

Without Chromium the test skips, except under CI (env CI set), where that is a failure."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from inferline.report.build import build_report, parse_since
from report.logs_helpers import fixed_end, write_logs

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tools", "screenshot_report.sh")
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def need_chromium():
    if not any(shutil.which(b) for b in BROWSERS):
        message = "no Chromium (apt-get install chromium-headless-shell; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message + " -- required in CI")
        pytest.skip(message)


def test_a_report_screenshot_shows_its_plots(tmp_path):
    need_chromium()
    write_logs(tmp_path / "logs", fixed_end(), days=3)
    html = tmp_path / "report.html"
    build_report(parse_since("2d"), str(html), logs_root=str(tmp_path / "logs"), now=fixed_end())
    png = tmp_path / "report.png"
    done = subprocess.run(["bash", SCRIPT, str(html), str(png), "1200,2400"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    import matplotlib.image
    pixels = matplotlib.image.imread(str(png))[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    colour = pixels.max(axis=2) - pixels.min(axis=2)
    # The plots' lines (blue and red) cover a visible share of the page, down the page: the first
    # 2400 px hold at least four plots, each with its own band of coloured pixels.
    rows_with_colour = np.flatnonzero((colour > 0.3).sum(axis=1) > 5)
    assert len(rows_with_colour) > 400, len(rows_with_colour)
    bands = np.split(rows_with_colour, np.flatnonzero(np.diff(rows_with_colour) > 60) + 1)
    assert len(bands) >= 4, [(int(b[0]), int(b[-1])) for b in bands]


def test_the_script_says_how_to_use_it():
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("usage:")
