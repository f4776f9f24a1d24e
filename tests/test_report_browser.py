"""The report opens in headless Chromium: no console errors, every plotly figure drawn.

Tier ``browser``: needs the Debian packages ``chromium`` and ``chromium-driver`` (``make
setup`` installs them). Skipped where they are missing, except under CI (``CI=true``), where
their absence fails the test. A full-page screenshot goes to the test's tmp dir and, when
``PHASEPRUNE_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from phaseprune.presentation.report import build_report

pytest_plugins = ["report_fixtures"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
WIDTH = 1366  # a laptop screen

# Figures drawn: a plot div whose layout plotly computed and that holds its SVG.
RENDERED = """
const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
return [divs.length,
        divs.filter(d => d._fullLayout && d.querySelector('.main-svg')).length];
"""
# Every loaded resource: the page must need none from the network.
RESOURCES = "return performance.getEntriesByType('resource').map(e => e.name);"
# Pick step 1 on a step slider through that step's own arguments, then list visible traces.
STEP_SLIDER = """
const done = arguments[arguments.length - 1];
const gd = document.getElementById(arguments[0]);
const step = gd.layout.sliders[0].steps[1];
Plotly.update(gd, step.args[0], step.args[1]).then(() => done(
    gd.data.map((t, i) => t.visible === true ? i : -1).filter(i => i >= 0)));
"""


def _tools() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = "chromium" if not chromium else "chromedriver (Debian package chromium-driver)"
    message = f"{missing} not on PATH; `make setup` installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tier must run in CI: {message}")
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_window_size(WIDTH, 900)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_rendered(driver, n_figures: int, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = driver.execute_script(RENDERED)
        if counts == [n_figures, n_figures] or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def _screenshot(driver, tmp_path: Path) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(height, 16000))
    path = tmp_path / "report.png"
    assert driver.save_screenshot(str(path))
    if os.environ.get("PHASEPRUNE_SCREENSHOT_DIR"):
        target = Path(os.environ["PHASEPRUNE_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / "report.png")
    return path


@pytest.mark.browser
def test_report_renders_in_chromium(report_runs, browser, tmp_path):
    report = build_report(
        [report_runs.iterative, report_runs.last, report_runs.analyze],
        out=tmp_path / "report.html",
    )
    browser.get(report.html.as_uri())
    assert browser.title.startswith("phaseprune report")
    assert _wait_rendered(browser, report.n_figures) == [report.n_figures, report.n_figures]
    assert report.n_figures == 1 + 5 + 5 + 3
    visible = browser.execute_async_script(STEP_SLIDER, "run-1-margin-steps")
    assert visible == [2, 3]  # band and curve of step 1 only
    resources = browser.execute_script(RESOURCES)
    assert not [r for r in resources if r.startswith(("http:", "https:"))], resources
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    assert _screenshot(browser, tmp_path).stat().st_size > 50_000
