"""Open circuit.html in headless Chromium, click a node, and take a screenshot.

    python tools/browser.py runs/x/circuits/TASK/circuit.html --click '1.attn.q[0]' --out shot.png

Used by the viewer's browser test (tests/test_viewer.py) and to make the screenshots in docs/; not
part of the sparse_gpt package, which writes the page and never opens it. Needs Debian's `chromium`
and `chromium-driver` (or any Chromium/Chrome with a matching chromedriver on PATH, or named by
$CHROMIUM and $CHROMEDRIVER) and the `selenium` package (pip install -e '.[browser]').
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# Chromium must not reach out to the network (there is none in CI) nor need a display or sandbox.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


class BrowserUnavailable(RuntimeError):
    """No Chromium, chromedriver or selenium on this machine."""


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver) or BrowserUnavailable saying what is missing."""
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
        or shutil.which("google-chrome")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        raise BrowserUnavailable(f"cannot drive a browser: {', '.join(missing)} not found (on Debian: "
                                 "apt-get install chromium chromium-driver; pip install -e '.[browser]')")
    return chromium, driver


@contextmanager
def headless_chromium(width: int = 1600, height: int = 1000) -> Iterator:
    """A selenium Chrome driver on headless Chromium, with the browser console log enabled."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = find_browser()
    with tempfile.TemporaryDirectory(prefix="sparse-gpt-chromium-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        try:
            yield driver
        finally:
            driver.quit()


@dataclass
class PageReport:
    nodes_drawn: int
    console_errors: list[str] = field(default_factory=list)
    tooltip: str = ""                     # what hovering the clicked node showed
    panel_title: str | None = None        # the heading of the node panel after the click
    panel_text: str = ""
    screenshot: Path | None = None


def inspect_viewer(html_path: str | Path, click: str | None = None, screenshot: str | Path | None = None,
                   width: int = 1600, height: int = 1000) -> PageReport:
    """Load the page, count drawn nodes, hover and click node `click` (if given) with the mouse,
    and screenshot the result."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url = Path(html_path).resolve().as_uri()
    with headless_chromium(width, height) as driver:
        driver.get(url)
        nodes = driver.find_elements(By.CSS_SELECTOR, "#diagram circle.node")
        report = PageReport(nodes_drawn=len(nodes))
        if click is not None:
            target = [n for n in nodes if n.get_attribute("data-name") == click]
            if not target:
                raise ValueError(f"no node {click!r} drawn in {html_path}")
            ActionChains(driver).move_to_element(target[0]).perform()
            report.tooltip = driver.find_element(By.ID, "tooltip").text
            ActionChains(driver).click(target[0]).perform()
            panel = driver.find_element(By.ID, "panel")
            if panel.is_displayed():
                report.panel_title = panel.find_element(By.TAG_NAME, "h2").text
                report.panel_text = panel.text
        if screenshot is not None:
            report.screenshot = Path(screenshot)
            driver.save_screenshot(str(report.screenshot))
        report.console_errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("html", help="a circuit.html")
    p.add_argument("--click", help="node to click, e.g. '0.mlp.post_act[3]'")
    p.add_argument("--out", default="viewer.png", help="screenshot path")
    p.add_argument("--size", default="1600x1000", help="window size WIDTHxHEIGHT")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    try:
        report = inspect_viewer(args.html, args.click, args.out, w, h)
    except (BrowserUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{report.nodes_drawn} nodes drawn; panel: {report.panel_title}; screenshot {report.screenshot}")
    for err in report.console_errors:
        print(f"console error: {err}", file=sys.stderr)
    return 1 if report.console_errors else 0


if __name__ == "__main__":
    sys.exit(main())
