"""Headless Chromium for the page tests, driven by selenium through the system's
chromium-driver (never a downloaded one: CI has no internet, and neither has the page)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No internet here: background fetches would only flood the log with refused connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL without a GPU, so NiiVue can draw: ANGLE on SwiftShader (software).
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--window-size=1400,1100",
)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(  # a missing browser fails the test, it never skips it
        f"none of {names} is installed: apt-get install -y chromium chromium-driver"
    )


def start(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = find("chromium", "chromium-browser", "google-chrome")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=find("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    driver.get("about:blank")
    requested_urls(driver)  # drop the start page's own (chrome://) loads
    return driver


def requested_urls(driver: webdriver.Chrome, into: list[str] | None = None) -> list[str]:
    """Every URL the browser asked for since the last call (DevTools network events); kept
    in ``into`` too, as reading the log empties it."""
    urls = [] if into is None else into
    for entry in driver.get_log("performance"):
        message: dict[str, Any] = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob") or (
        parsed.scheme in ("http", "https", "ws") and parsed.hostname in LOCAL_HOSTS
    )
