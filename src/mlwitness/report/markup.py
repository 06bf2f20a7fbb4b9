"""HTML building blocks for the report: escaping, tables, numbers, times.

Every string reaches the page through :func:`esc` unless it is a :class:`Markup`, which only
this package makes (from its own templates, from already-escaped parts, or from the SVG
that :mod:`.charts` produced). So a request id, group or feature name that a caller sent is
always text, never markup.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

DAY_US = 86_400_000_000
DASH = "—"  # shown where a figure is undefined; the reason is given beside it


class Markup(str):
    """Text that is already HTML (made by this package); anything else gets escaped."""

    __slots__ = ()


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def tag(name: str, body: object = "", **attrs: object) -> Markup:
    """``<name attrs>body</name>``; attribute values are escaped, ``class_`` → ``class``."""
    text = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
                   for k, v in attrs.items() if v is not None)
    return Markup(f"<{name}{text}>{esc(body)}</{name}>")


# ---------------------------------------------------------------- numbers and times


def count(n: int | None) -> str:
    return DASH if n is None else f"{n:,}"


def pct(x: float | None, digits: int = 1) -> str:
    """A proportion as a percentage number (the unit goes in the column header)."""
    return DASH if x is None or x != x else f"{100 * x:.{digits}f}"


def num(x: float | None, digits: int = 3) -> str:
    return DASH if x is None or x != x else f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 1, scale: float = 100.0) -> str:
    """A difference, signed (percentage points by default)."""
    return DASH if x is None or x != x else f"{scale * x:+.{digits}f}".replace("-", "−")


def pvalue(p: float | None) -> str:
    if p is None or p != p:
        return DASH
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def when(us: int, bucket_us: int = 0) -> str:
    """A UTC time: the date alone for buckets of a day or more (or, with no bucket given,
    at midnight); else to the minute."""
    t = datetime.fromtimestamp(us / 1e6, tz=UTC)
    if bucket_us >= DAY_US or (bucket_us == 0 and t.hour == t.minute == t.second == 0):
        return t.strftime("%Y-%m-%d")
    return t.strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    sign, s = ("−", -seconds) if seconds < 0 else ("", seconds)
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if s >= size:
            return f"{sign}{s / size:.1f} {unit}"
    return f"{sign}{s:.0f} s"


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class Col:
    header: str
    numeric: bool = False  # right-aligned, tabular figures
    nowrap: bool = False  # dates and the like


def _cell_class(col: Col) -> str | None:
    return "num" if col.numeric else ("nowrap" if col.nowrap else None)


def table(caption: str, cols: Sequence[Col], rows: Iterable[Sequence[object]], *,
          foot: Sequence[object] | None = None, class_: str = "",
          scroll: bool = False) -> Markup:
    """A data table: ``<caption>``, ``<th scope="col">``, the first cell of each row a
    ``<th scope="row">``, numeric columns right-aligned."""
    head = join(tag("th", c.header, scope="col", class_=_cell_class(c)) for c in cols)

    def row(cells: Sequence[object]) -> Markup:
        out = [tag("th", cells[0], scope="row", class_=_cell_class(cols[0]))]
        out += [tag("td", cell, class_=_cell_class(col))
                for col, cell in zip(cols[1:], cells[1:], strict=True)]
        return tag("tr", join(out))

    body = join(row(r) for r in rows)
    parts = [tag("caption", caption), tag("thead", tag("tr", head)), tag("tbody", body)]
    if foot is not None:
        parts.append(tag("tfoot", row(foot)))
    t = tag("table", join(parts), class_=class_ or None)
    if scroll:  # long tables scroll on screen and print in full
        return tag("div", t, class_="scroll", tabindex="0", role="region",
                   aria_label=caption)
    return t


def facts(caption: str, pairs: Iterable[tuple[str, object]], class_: str = "facts") -> Markup:
    """A two-column table of labelled facts (a row header and its value)."""
    rows = join(tag("tr", join([tag("th", k, scope="row"), tag("td", v)])) for k, v in pairs)
    return tag("table", join([tag("caption", caption), tag("tbody", rows)]), class_=class_)


def pair(figure: Markup, caption: str, numbers: Markup, layout: str,
         below: Markup | str = "") -> Markup:
    """A chart with its caption (and ``below`` it, say, a table of statistics) and its
    numbers: side by side in ``even`` halves, or ``stack``ed (a wide time series over its
    long table)."""
    fig = tag("figure", join([figure, tag("figcaption", caption)]))
    return tag("div", join([tag("div", join([fig, below])), tag("div", numbers)]),
               class_=f"pair {layout}")


def unit(bucket_us: int) -> str:
    """A time bucket's name: day, hour, …"""
    names = {86_400_000_000: "day", 3_600_000_000: "hour", 604_800_000_000: "week",
             60_000_000: "minute"}
    return names.get(bucket_us, f"{bucket_us / 3.6e9:g}-hour bucket")


PILLS = {"ok": "OK", "attention": "Review", "fail": "Failed", "info": "Info",
         "none": "No data"}
VERDICT_STATES = {"ok": "ok", "drift": "attention", "disparity": "attention"}


def pill(state: str, text: str | None = None) -> Markup:
    """A status label that says its state in words, not only in colour."""
    return tag("span", text or PILLS[state], class_=f"pill pill-{state}")


def verdict(v: str) -> Markup:
    """A verdict word (``ok``, ``drift``, ``insufficient_data``…) as a pill."""
    text = "OK" if v == "ok" else v.replace("_", " ")
    return pill(VERDICT_STATES.get(v, "info"), text[:1].upper() + text[1:])
