"""Open a report in a real headless Chromium, offline, through selenium: used by the browser tests, the
size benchmark (benchmarks/report_size.py) and the screenshot in docs/report.md. Writing a report needs
none of this.

Chromium and its driver come from the system (Debian: `apt-get install chromium chromium-driver`, or
.ci/install_browser.sh); selenium is told both paths, so it never tries to download a driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver",)
# Headless, no sandbox (root in CI containers), and nothing that phones home in the background.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--disable-quic", "--disable-default-apps", "--disable-extensions",
                  "--mute-audio", "--hide-scrollbars")


def _which(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).exists() else None
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


def unavailable_reason() -> str | None:
    """Why no headless browser can be driven here (None when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'vidprune[test]')"
    if _which(BROWSER_NAMES, "VIDPRUNE_CHROMIUM") is None:
        return "no Chromium found (apt-get install chromium chromium-driver, or run .ci/install_browser.sh)"
    if _which(DRIVER_NAMES, "VIDPRUNE_CHROMEDRIVER") is None:
        return "no chromedriver found (apt-get install chromium-driver, or run .ci/install_browser.sh)"
    return None


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A selenium Chrome driver on a fresh profile with the network switched off; quit on exit."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vidprune-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSER_NAMES, "VIDPRUNE_CHROMIUM")
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_which(DRIVER_NAMES, "VIDPRUNE_CHROMEDRIVER")), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_report(driver, path: Path, timeout: float = 60.0, until: str = "all") -> dict:
    """Load a report from file:// and wait until its first group (until="first") or every group
    (until="all") is drawn. Returns the page's timings in ms from the start of navigation:
    domContentLoaded (headings and skeleton on screen), plotly.js ready, first group drawn, all groups
    drawn (None while still drawing), and the wall time selenium waited."""
    if until not in ("first", "all"):
        raise ValueError(f"until must be 'first' or 'all', got {until!r}")
    done = "firstMs" if until == "first" else "allMs"
    start = time.perf_counter()
    driver.get(Path(path).resolve().as_uri())
    deadline = time.monotonic() + timeout
    while not driver.execute_script(f"return !!(window.vidpruneReport && window.vidpruneReport.{done} !== null)"):
        if time.monotonic() > deadline:
            state = driver.execute_script("return window.vidpruneReport || null")
            raise TimeoutError(f"the report did not finish drawing in {timeout:g} s (state: {state})")
        time.sleep(0.05)
    wall = (time.perf_counter() - start) * 1000.0
    timings = driver.execute_script("""
        const nav = performance.getEntriesByType('navigation')[0];
        const r = window.vidpruneReport;
        return {dom_content_loaded_ms: nav.domContentLoadedEventEnd, plotly_ready_ms: r.plotlyMs,
                first_group_ms: r.firstMs, all_groups_ms: r.allMs, groups: r.total, errors: r.errors};
    """)
    timings["wall_ms"] = wall
    return timings


def severe_console_messages(driver) -> list[str]:
    """Console errors since the last call (selenium empties the log as it reads it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
