"""Headless Chromium for the dashboard tests: Debian's chromium driven by Selenium through
Debian's chromedriver. Selenium is a dev dependency, imported only when a browser starts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A Selenium driver of a headless Chromium window 1300 by 950 pixels, quit on the way out."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        raise RuntimeError("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1300,950"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
