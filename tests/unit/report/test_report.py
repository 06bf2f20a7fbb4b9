"""The auditor's report (mlwitness.report): structure, self-containment, escaping. The page
as a real headless Chromium shows and prints it: tests/integration/test_report_browser.py."""

from __future__ import annotations

import math
import re
import sys
import warnings
from html.parser import HTMLParser

import pytest
import report_support
from report_support import PAYLOAD

from mlwitness.analytics import quality as q
from mlwitness.analytics import review
from mlwitness.report import (
    SECTION_IDS,
    BiasGroup,
    BiasSection,
    DriftFeature,
    DriftSection,
    Header,
    Histogram,
    MatplotlibMissing,
    QualitySection,
    RateBound,
    RateSection,
    ReplayCheck,
    ReplaySection,
    ReportData,
    ReviewPoint,
    ReviewSection,
    ViolationSection,
    VolumeSection,
    render,
)
from mlwitness.report.render import EMPTY

SVG_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


class Page(HTMLParser):
    """The parts of a page the tests look at: elements by id, tables, svgs, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.ids: list[str] = []
        self.tags: dict[str, int] = {}
        self.sections: dict[str, dict[str, int]] = {}  # id → tag counts inside it
        self.section_text: dict[str, str] = {}
        self.tables: list[dict[str, object]] = []
        self.svgs: list[dict[str, object]] = []
        self.links: list[str] = []
        self.labelledby: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def _section(self) -> str | None:
        for name, attrs in reversed(self.stack):
            if name == "section":
                return attrs.get("id")
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if a.get("id"):
            self.ids.append(str(a["id"]))
        for key in ("href", "xlink:href", "src"):
            if a.get(key):
                self.links.append(str(a[key]))
        if a.get("aria-labelledby"):
            self.labelledby += str(a["aria-labelledby"]).split()
        sid = self._section()
        if sid is not None:
            counts = self.sections.setdefault(sid, {})
            counts[tag] = counts.get(tag, 0) + 1
        if tag == "section":
            self.sections.setdefault(str(a.get("id")), {})
        if tag == "table":
            self.tables.append({"caption": 0, "col": [], "row": [], "rows": 0})
        elif self.tables and tag == "caption":
            self.tables[-1]["caption"] = 1
        elif self.tables and tag == "th":
            key = "col" if any(n == "thead" for n, _ in self.stack) else "row"
            self.tables[-1][key].append(a.get("scope"))  # type: ignore[union-attr]
        elif self.tables and tag == "tr" and any(n == "tbody" for n, _ in self.stack):
            self.tables[-1]["rows"] += 1  # type: ignore[operator]
        if tag == "svg":
            self.svgs.append({"attrs": a, "title": 0, "desc": 0, "section": sid})
        elif self.svgs and tag in ("title", "desc") and any(n == "svg" for n, _ in self.stack):
            self.svgs[-1][tag] = 1
        if tag not in ("meta", "br", "hr", "img", "input", "link", "path", "use", "rect",
                       "line", "circle", "stop"):
            self.stack.append((tag, a))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        sid = self._section()
        if sid is not None:
            self.section_text[sid] = self.section_text.get(sid, "") + data


@pytest.fixture(scope="module")
def realistic_html() -> str:
    return render(report_support.realistic())


@pytest.fixture(scope="module")
def empty_html() -> str:
    return render(report_support.empty())


def _self_contained(text: str) -> None:
    urls = set(re.findall(r"https?://[^\s\"'<>)]*", text))
    assert urls <= SVG_NAMESPACES, urls - SVG_NAMESPACES
    assert not re.search(r"<(script|link|iframe|object|embed|image|img)\b", text, re.I)
    assert not re.search(r"url\((?!#)", text)  # CSS or SVG references other than #ids
    assert "@import" not in text


def test_realistic_report_has_every_section_with_its_table(realistic_html):
    page = Page(realistic_html)
    for sid in SECTION_IDS:
        assert sid in page.sections, sid
        assert page.sections[sid].get("table", 0) >= 1, f"{sid} has no table"
        assert page.sections[sid].get("h2") == 1
    for sid in ("volume", "favourable-rate", "drift", "bias", "violations", "quality",
                "reviews"):
        assert page.sections[sid].get("svg", 0) >= 1, f"{sid} has no chart"
    assert page.sections["drift"]["svg"] == 20  # one histogram per feature
    for sub in ("calibration", "quality-groups", "quality-over-time", "reviews-over-time",
                "bias-0", "drift-feature-0", "drift-feature-19"):
        assert sub in page.ids
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"
    assert set(page.labelledby) <= set(page.ids)
    assert all(link.startswith("#") and link[1:] in page.ids for link in page.links)


def test_every_table_is_accessible_and_every_chart_described(realistic_html):
    page = Page(realistic_html)
    assert len(page.tables) > 30
    for t in page.tables:
        assert t["caption"] == 1
        assert all(scope == "col" for scope in t["col"])
        assert t["row"] and all(scope == "row" for scope in t["row"])
        assert len(t["row"]) >= t["rows"]  # every body row starts with a row header
    assert len(page.svgs) == 29
    for svg in page.svgs:
        attrs = svg["attrs"]
        assert attrs["role"] == "img" and attrs.get("aria-labelledby")
        assert svg["title"] == 1 and svg["desc"] == 1
        assert "width" not in attrs and "height" not in attrs and attrs.get("viewbox")
        # each chart's numbers sit in a table of the same section
        assert page.sections[svg["section"]].get("table", 0) >= 1


def test_report_is_self_contained_small_and_deterministic(realistic_html, empty_html):
    _self_contained(realistic_html)
    _self_contained(empty_html)
    assert 'http-equiv="Content-Security-Policy"' in realistic_html
    assert "@media print" in realistic_html and "break-before: page" in realistic_html
    size = len(realistic_html.encode())
    assert 100_000 < size <= 3_000_000, size
    assert render(report_support.realistic()) == realistic_html
    # text in charts stays text (svg.fonttype none), with no embedded font or glyph paths
    assert "<text" in realistic_html and "@font-face" not in realistic_html


def test_empty_report_says_why_in_each_section(empty_html):
    page = Page(empty_html)
    for sid in SECTION_IDS:
        assert sid in page.sections
    for sid, line in EMPTY.items():
        assert line in page.section_text[sid], sid
        assert page.sections[sid].get("svg", 0) == 0
    assert page.sections["summary"].get("table", 0) >= 2  # findings and the ledger
    # the findings list every check, each missing one with its reason
    assert page.section_text["summary"].count("No data") == 7
    assert EMPTY["drift"] in page.section_text["summary"]
    noted = render(ReportData(header=report_support.empty().header,
                              notes={"quality": "No outcomes yet: attach them with X."}))
    assert "No outcomes yet: attach them with X." in noted
    assert EMPTY["quality"] not in noted


def test_every_caller_string_is_escaped():
    def name(text: str) -> str:
        return PAYLOAD + text

    for data in (report_support.realistic(name, decisions=5_000), report_support.empty(name)):
        text = render(data)
        page = Page(text)
        assert page.tags.get("script", 0) == 0
        assert "<script" not in text.lower()
        assert PAYLOAD not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert PAYLOAD in "".join(page.text)  # shown to the reader as text
        _self_contained(text)
        assert len(page.ids) == len(set(page.ids))


def test_chart_labels_are_drawn_literally():
    def name(text: str) -> str:
        return "_$x^2$ " + text

    text = render(report_support.realistic(name, decisions=2_000))
    drawn = [t for svg in re.findall(r"<svg.*?</svg>", text, re.S)
             for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    # mathtext would have set "$x^2$" as separate glyphs, and a legend would have hidden
    # labels starting with "_": the statuses' and guards' legends and the group and
    # category ticks show the names as typed
    literal = [t for t in drawn if "_$x^2$ " in t]
    assert any(t.endswith("_$x^2$ OK") for t in literal)
    assert any(t.endswith("_$x^2$ age band 0") for t in literal)
    assert len(literal) > 30


def test_sparse_report_renders_without_warnings():
    """One bucket, buckets without decisions, features without histograms or values, one
    group, one outcome, no reviewed decision, one replayed record."""
    day, start = report_support.DAY, report_support.START
    data = ReportData(
        header=report_support.header(),
        volume=VolumeSection(day, (start,), ("OK",), ((0,),)),
        favourable=RateSection("label = 1", day, (start, start + day), (0, 3), (0, 3),
                               bounds=(RateBound("g", None, 0.9),)),
        drift=DriftSection("baseline", "insufficient_data", (
            DriftFeature("a", "input", "numeric", "no_data", 0, 10),
            DriftFeature("b", "input", "numeric", "insufficient_data", 0, 0, (("PSI", None),),
                         (), Histogram((5, 0), (0, 0), edges=(-math.inf, 0.0, math.inf))),
            DriftFeature("c", "output", "categorical", "ok", 3, 0, (), (),
                         Histogram((1,), (3,), categories=("x",))))),
        bias=(BiasSection("sex", "label = 1", "f", "single_group",
                          (BiasGroup("f", 3, 3, 1.0, 0.43, 1.0, 1.0, 0.0),)),
              BiasSection("age", "label = 1", "", "no_data", ())),
        violations=ViolationSection(day, (start,), ("g",), ((0,),)),
        quality=QualitySection("o", q.quality([1], [0.7]), q.coverage([1, 0]),
                               q.label_delay([0], [math.nan]), day, ()),
        reviews=ReviewSection(review.review_agreement([1, 0], [1, 0], [False, False]), day,
                              (ReviewPoint(start, 2, 0, 0),)),
        replay=ReplaySection(1, None, (ReplayCheck(1, "r", "m", True),)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = render(data)
    page = Page(text)
    assert all(sid in page.sections for sid in SECTION_IDS)
    assert "No histogram was recorded for this feature." in page.section_text["drift"]
    assert "No group had rows in the window." in page.section_text["bias"]
    assert "Too few outcomes to show quality over time." in page.section_text["quality"]
    assert "undefined: no negative outcomes" in page.section_text["quality"]
    assert "no reviewed decisions" in page.section_text["reviews"]
    _self_contained(text)


def test_data_model_refuses_one_point_per_decision_and_bad_shapes():
    day = report_support.DAY
    with pytest.raises(ValueError, match="at most 2000: use wider buckets"):
        VolumeSection(1, tuple(range(2_001)), ("OK",), tuple((1,) for _ in range(2_001)))
    with pytest.raises(ValueError, match="counts must be 2 rows of 1"):
        VolumeSection(day, (0, day), ("OK",), ((1,),))
    with pytest.raises(ValueError, match="starts_us must increase"):
        VolumeSection(day, (day, 0), ("OK",), ((1,), (1,)))
    with pytest.raises(ValueError, match="favourable <= decisions"):
        RateSection("label = 1", day, (0,), (3,), (4,))
    with pytest.raises(ValueError, match="edges must be one more"):
        Histogram((1, 2), (3, 4), edges=(0.0, 1.0))
    with pytest.raises(ValueError, match="not both"):
        Histogram((1,), (1,), edges=(0.0, 1.0), categories=("a",))
    with pytest.raises(ValueError, match="same 1..200 bins"):
        Histogram(tuple(range(201)), tuple(range(201)), categories=tuple("x" * 201))


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(MatplotlibMissing, match=re.escape("pip install 'mlwitness[report]'")):
        render(report_support.empty())


def test_header_fields_all_appear(realistic_html):
    h: Header = report_support.header()
    page = Page(realistic_html)
    summary = page.section_text["summary"]
    for value in (h.ledger_path, h.head_hash, h.command, h.version, "chain intact",
                  "q2Yc3Kx1VbLsKk0=", h.models[0].sha256, h.environments[0].description):
        assert value in summary, value
    assert "records from 2025-01-01 to 2025-04-01 (end excluded)" in summary
