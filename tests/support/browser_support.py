"""Debian's headless Chromium driven by Playwright, for the report tests: a page opened with
every request other than the page itself refused and recorded, console errors, page errors
and dialogs recorded, and PDF page counts. No browser is downloaded (scripts/install_chromium.sh
installs the system's)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def pdf_pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))


def launch() -> Iterator[Any]:
    """A headless Chromium (for a fixture: `yield from launch()`)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


def open_page(browser: Any, path: Path) -> tuple[Any, dict[str, list[str]]]:
    """The file in a fresh page; returns the page and what it asked for and logged."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    url = path.resolve().as_uri()
    seen: dict[str, list[str]] = {"requests": [], "errors": [], "dialogs": []}

    def route(r: Any) -> None:
        if r.request.url == url:
            r.continue_()
        else:
            seen["requests"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("request", lambda r: r.url != url and seen["requests"].append(r.url))
    page.on("console", lambda m: m.type in ("error", "warning") and seen["errors"].append(
        m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.goto(url, wait_until="load", timeout=60_000)
    return page, seen


def keep_artifacts(*files: tuple[Path, str]) -> None:
    """Copy (file, name) pairs to test-artifacts/ when MLWITNESS_ARTIFACTS is set."""
    if not os.environ.get("MLWITNESS_ARTIFACTS"):
        return
    ARTIFACTS.mkdir(exist_ok=True)
    for path, name in files:
        shutil.copy(path, ARTIFACTS / name)
