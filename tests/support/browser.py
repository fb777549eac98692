"""Headless Chromium from Debian (``chromium``, ``chromium-driver``), driven by Selenium.

Nothing here downloads a browser or a driver: both paths are given to Selenium,
and ``SE_OFFLINE`` keeps Selenium Manager from looking anything up. The page's
own JavaScript is switched off, as the pages must work without it; WebDriver's
commands still run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

PHONE = (390, 844)
"""A phone's viewport in CSS pixels (an iPhone 12 to 15)."""


@contextlib.contextmanager
def chromium(
    chromium_path: Path, driver_path: Path, *, size: tuple[int, int] = PHONE
) -> Iterator[Chrome]:
    """A headless Chromium at ``size``, JavaScript off; quit on exit."""
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium_path)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers; loopback pages of our own only
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    try:
        driver.set_page_load_timeout(30)
        # A headless window is at least 500 pixels wide: emulate the phone's viewport.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": True},
        )
        yield driver
    finally:
        driver.quit()
