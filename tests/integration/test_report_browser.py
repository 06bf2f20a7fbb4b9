"""The auditor's report as a real headless Chromium shows and prints it: every section laid
out, no script run, nothing fetched, a printable PDF (Debian's chromium, driven by Playwright;
scripts/install_chromium.sh installs it)."""

from __future__ import annotations

import pytest
import report_support
from browser_support import keep_artifacts, launch, open_page, pdf_pages
from report_support import PAYLOAD

from mlwitness.report import SECTION_IDS, render


@pytest.fixture(scope="module")
def realistic_html() -> str:
    return render(report_support.realistic())


@pytest.fixture(scope="module")
def empty_html() -> str:
    return render(report_support.empty())


@pytest.fixture(scope="module")
def browser():
    yield from launch()


def test_report_in_headless_chromium(browser, tmp_path, realistic_html):
    path = tmp_path / "report.html"
    path.write_text(realistic_html, encoding="utf-8")
    page, seen = open_page(browser, path)
    try:
        for sid in SECTION_IDS:
            section = page.locator(f"section#{sid}")
            assert section.is_visible(), sid
            box = section.bounding_box()
            assert box and box["height"] > 40 and box["width"] > 600, (sid, box)
        sizes = page.evaluate("""[...document.querySelectorAll('svg.chart')].map(s => {
            const r = s.getBoundingClientRect(); return [r.width, r.height]; })""")
        assert len(sizes) == 29 and all(w > 200 and h > 80 for w, h in sizes), sizes
        assert page.evaluate("document.scripts.length") == 0
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nreport screenshot: {shot}")
        keep_artifacts((shot, "report.png"), (path, "report.html"))
        pdf = page.pdf(format="A4", print_background=True)
        pages = pdf_pages(pdf)
        # 29 pages when written: a page break before each section, long tables (90 days,
        # 20 × 30 bins) across pages with their headers repeated, nothing one row per page
        assert 20 <= pages <= 40, pages
    finally:
        page.close()
    assert seen == {"requests": [], "errors": [], "dialogs": []}


def test_abusive_report_runs_nothing_in_chromium(browser, tmp_path):
    def name(text: str) -> str:
        return PAYLOAD + text

    path = tmp_path / "abuse.html"
    path.write_text(render(report_support.realistic(name, decisions=5_000)), encoding="utf-8")
    page, seen = open_page(browser, path)
    try:
        assert page.evaluate("document.scripts.length") == 0
        assert PAYLOAD in page.locator("#replay").inner_text()
        assert PAYLOAD in page.locator("#summary").inner_text()
    finally:
        page.close()
    assert seen == {"requests": [], "errors": [], "dialogs": []}


def test_empty_report_prints_short(browser, tmp_path, empty_html):
    path = tmp_path / "empty.html"
    path.write_text(empty_html, encoding="utf-8")
    page, seen = open_page(browser, path)
    try:
        for sid in SECTION_IDS:
            assert page.locator(f"section#{sid}").is_visible()
        pages = pdf_pages(page.pdf(format="A4"))
        assert 1 <= pages <= 2, pages  # sections that only say "no data" do not break pages
    finally:
        page.close()
    assert seen == {"requests": [], "errors": [], "dialogs": []}
