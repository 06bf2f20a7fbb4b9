"""`audit report --pdf`: the report printed by a headless Chromium, driven by Playwright.

Nothing is downloaded: the browser is the system's (Debian's `chromium` at
/usr/bin/chromium, or the executable MLWITNESS_CHROMIUM names), and the page may load
nothing from any network (the report needs nothing: it is self-contained).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mlwitness.errors import FailedPrecondition

DEFAULT_CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium() -> Path:
    return Path(os.environ.get("MLWITNESS_CHROMIUM") or DEFAULT_CHROMIUM)


def check_printer() -> None:
    """FailedPrecondition naming what is missing to print a PDF."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise FailedPrecondition("--pdf needs Playwright: pip install 'mlwitness[report]' "
                                 "(its own browser download is not needed)") from None
    if not chromium().exists():
        raise FailedPrecondition(f"--pdf needs a Chromium at {chromium()} (Debian: apt-get "
                                 "install chromium; or set MLWITNESS_CHROMIUM)")


def print_pdf(html: Path, pdf: Path) -> int:
    """Print `html` to `pdf` (A4, backgrounds on); return its page count."""
    check_printer()
    from playwright.sync_api import sync_playwright

    url = html.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium()), args=ARGS,
                                    timeout=60_000)
        try:
            page = browser.new_page()
            page.route("**/*", lambda r: r.continue_() if r.request.url == url else r.abort())
            page.goto(url, wait_until="load", timeout=60_000)
            data = page.pdf(format="A4", print_background=True)
        finally:
            browser.close()
    pdf.write_bytes(data)
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
