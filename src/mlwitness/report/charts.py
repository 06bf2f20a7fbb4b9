"""The report's charts: matplotlib figures saved as SVG text, inlined into the page.

matplotlib is an optional dependency (``pip install 'mlwitness[report]'``), imported on the
first chart. Figures are made with ``matplotlib.figure.Figure`` and never through pyplot,
so no GUI backend is loaded and the host process's backend is left alone.

Every SVG is made safe to inline many times in one HTML page:

* text stays text (``svg.fonttype = none``): small, searchable, selectable; the XML prolog,
  DOCTYPE (which names a URL), comments and matplotlib's global ``*{…}`` style are removed;
* ``width``/``height`` are dropped so the viewBox scales to the column, up to the drawn
  width (``max-width``), so chart text is never larger than it was drawn;
* ids are renamed ``<uid>-<id>`` (and the unreferenced ones removed), so two charts never
  share an id; each figure has its own hash salt, so output is deterministic;
* the root gets ``role="img"``, a ``<title>`` and a ``<desc>`` (escaped here) for
  assistive technology; the numbers themselves are in the table beside each chart.

Labels that come from data are shown literally: ``$`` is escaped so mathtext never parses
them, and a leading ``_`` (which matplotlib would hide from a legend) is padded.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mlwitness.report.markup import Markup

Values = Sequence[float | None] | NDArray[Any]  # None (or NaN) leaves a gap

INSTALL_HINT = ("the auditor's report draws its charts with matplotlib, which is not "
                "installed: pip install 'mlwitness[report]'")

INK = "#1f3b63"  # window / main series
MUTED = "#9aa5b1"  # baseline / reference
ALERT = "#b03a2e"  # guard bounds, violations
PALETTE = ("#4a6f9c", "#d0892b", "#b03a2e", "#5b8c5a", "#7a5c99", "#8a8f96", "#3f7f9f",
           "#a0522d", "#6b7f2a", "#c05780")
FONT = ["DejaVu Sans"]  # ships with matplotlib: identical layout on every machine
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": FONT,
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "axes.labelcolor": "#333333",
    "axes.edgecolor": "#8a8f96",
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.6,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "figure.dpi": 72,
    "path.simplify": True,
}


class MatplotlibMissing(ImportError):
    """matplotlib is needed to draw the report and is not installed."""


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.dates  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import matplotlib.ticker  # noqa: F401
    except ImportError as exc:
        raise MatplotlibMissing(INSTALL_HINT) from exc
    return matplotlib


def label(text: str, limit: int = 40) -> str:
    """A data string as matplotlib must be given it to draw it literally."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


class Charts:
    """Makes the page's charts, numbering them so their ids never collide."""

    def __init__(self, prefix: str = "fig") -> None:
        self._mpl = _matplotlib()
        self._prefix = prefix
        self._count = 0
        self._histograms: dict[bool, tuple[Any, Any, Any, Any]] = {}

    def _uid(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count}"

    @contextmanager
    def _figure(self, width: float, height: float, left: float, bottom: float,
                right: float = 0.15, top: float = 0.12) -> Iterator[tuple[Any, Any, str]]:
        """A figure of ``width`` × ``height`` inches with one axes inside fixed margins
        (inches): an automatic layout engine would triple the drawing time."""
        uid = self._uid()
        with self._mpl.rc_context({**_RC, "svg.hashsalt": uid}):
            fig = self._mpl.figure.Figure(figsize=(width, height))
            ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width,
                               1 - (bottom + top) / height))
            yield fig, ax, uid

    def _svg(self, fig: Any, uid: str, title: str, desc: str) -> Markup:
        buf = io.StringIO()
        with self._mpl.rc_context({**_RC, "svg.hashsalt": uid}):
            fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None,
                                                     "Format": None, "Type": None})
        return finish_svg(buf.getvalue(), uid, title, desc)

    def _percent(self) -> Any:
        """Proportions as percentages with only the decimals a tick needs (0.5%, 3%)."""
        return self._mpl.ticker.FuncFormatter(lambda x, _pos: f"{100 * x:.6g}%")

    # ------------------------------------------------------------ time series

    def _time_axis(self, ax: Any, starts_us: Sequence[int], bucket_us: int) -> np.ndarray:
        mdates = self._mpl.dates
        edges_us = np.append(np.asarray(starts_us, dtype=np.int64),
                             int(starts_us[-1]) + bucket_us)
        edges = mdates.date2num(edges_us.astype("datetime64[us]"))
        locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=True))
        ax.set_xlim(edges[0], edges[-1])
        return edges

    def stacked(self, starts_us: Sequence[int], bucket_us: int, names: Sequence[str],
                counts: ArrayLike, *, ylabel: str, title: str, desc: str) -> Markup:
        """Counts per bucket stacked by series (statuses, guards)."""
        c = np.asarray(counts, dtype=np.float64).reshape(len(starts_us), len(names))
        with self._figure(7.2, 2.6, 0.75, 0.5, 1.75 if len(names) > 1 else 0.2) as (
                fig, ax, uid):
            edges = self._time_axis(ax, starts_us, bucket_us)
            below = np.zeros(len(starts_us))
            for j, name in enumerate(names):
                above = below + c[:, j]
                ax.stairs(above, edges, baseline=below, fill=True, linewidth=0,
                          color=PALETTE[j % len(PALETTE)], label=label(name, 28))
                below = above
            ax.set_ylim(0, max(1.0, float(below.max()) * 1.05))
            ax.set_ylabel(ylabel)
            ax.yaxis.set_major_formatter(self._mpl.ticker.StrMethodFormatter("{x:,.0f}"))
            if len(names) > 1:
                ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7.5)
            return self._svg(fig, uid, title, desc)

    def rate_band(self, starts_us: Sequence[int], bucket_us: int, rate: Values,
                  low: Values, high: Values, bounds: Sequence[tuple[str, float]], *,
                  ylabel: str, band: str, title: str, desc: str) -> Markup:
        """A rate per bucket with its interval band and horizontal guard bounds."""
        with self._figure(7.2, 2.6, 0.75, 0.5, 1.45 if bounds else 0.2) as (fig, ax, uid):
            edges = self._time_axis(ax, starts_us, bucket_us)
            mid = (edges[:-1] + edges[1:]) / 2
            ax.fill_between(mid, low, high, color=INK, alpha=0.15, linewidth=0,
                            label=band)
            few = len(starts_us) <= 31  # a lone point of a line would not show
            ax.plot(mid, rate, color=INK, linewidth=1.2, label="rate", marker="o" if few else "",
                    markersize=2.5)
            for text, y in bounds:
                ax.axhline(y, color=ALERT, linewidth=0.9, linestyle=(0, (4, 3)))
                ax.annotate(label(text, 36), (1.0, y), xycoords=("axes fraction", "data"),
                            xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7.5, color=ALERT)
            ax.yaxis.set_major_formatter(self._percent())
            ax.set_ylabel(ylabel)
            ax.legend(loc="lower left", ncols=2, fontsize=7.5)
            return self._svg(fig, uid, title, desc)

    def lines(self, starts_us: Sequence[int], bucket_us: int,
              series: Sequence[tuple[str, Values, Values, Values]], *,
              ylabel: str, percent: bool, title: str, desc: str,
              ylim: tuple[float, float] | None = None) -> Markup:
        """Several series over time, each ``(name, value, low, high)`` with a band."""
        with self._figure(7.2, 2.6, 0.75, 0.5) as (fig, ax, uid):
            edges = self._time_axis(ax, starts_us, bucket_us)
            mid = (edges[:-1] + edges[1:]) / 2
            for j, (name, value, low, high) in enumerate(series):
                colour = PALETTE[j % len(PALETTE)]
                ax.fill_between(mid, _nan(low), _nan(high), color=colour, alpha=0.13,
                                linewidth=0)
                ax.plot(mid, _nan(value), color=colour, linewidth=1.2, marker="o",
                        markersize=2.2, label=label(name))
            if percent:
                ax.yaxis.set_major_formatter(self._percent())
            if ylim:
                ax.set_ylim(*ylim)
            ax.set_ylabel(ylabel)
            ax.legend(loc="lower left", ncols=len(series), fontsize=7.5)
            return self._svg(fig, uid, title, desc)

    # ------------------------------------------------------------ distributions

    def histogram(self, baseline: Sequence[int], window: Sequence[int],
                  tick_labels: Sequence[str], *, numeric: bool, title: str,
                  desc: str) -> Markup:
        """Baseline vs window shares per bin, bins side by side (quantile bins have unequal
        widths, so the x axis is the bin, labelled with its edges or category). Numeric:
        the window is a step line; categorical: a mark per category (no line implying an
        order between categories)."""
        b = np.asarray(baseline, dtype=np.float64)
        w = np.asarray(window, dtype=np.float64)
        b = b / b.sum() if b.sum() else b
        w = w / w.sum() if w.sum() else w
        k = b.size
        uid = self._uid()
        with self._mpl.rc_context({**_RC, "svg.hashsalt": uid}):
            fig, ax, base, win = self._histogram_template(numeric)
            edges = np.arange(k + 1) - 0.5
            base.set_data(b, edges)
            if numeric:
                win.set_data(w, edges)
            else:
                win.set_data(np.arange(k), w)
            ax.set_xlim(-0.5, k - 0.5)
            ax.set_ylim(0, max(float(b.max(initial=0)), float(w.max(initial=0)), 0.01) * 1.08)
            if numeric:  # ticks on the bin boundaries, labelled with the edge values
                step = max(1, int(np.ceil((k - 1) / 6)))
                at = np.arange(1, k, step)
                ax.set_xticks(at - 0.5, [label(tick_labels[i], 10) for i in at])
            else:
                step = max(1, int(np.ceil(k / 12)))
                at = np.arange(0, k, step)
                ax.set_xticks(at, [label(tick_labels[i], 14) for i in at], rotation=35,
                              ha="right", rotation_mode="anchor")
        return self._svg(fig, uid, title, desc)

    def _histogram_template(self, numeric: bool) -> tuple[Any, Any, Any, Any]:
        """One figure per kind, reused with new data: a report has tens of histograms, and
        building the axes is half the cost of each."""
        if numeric not in self._histograms:
            bottom = 0.5 if numeric else 0.8
            fig = self._mpl.figure.Figure(figsize=(4.6, 2.5))
            ax = fig.add_axes((0.7 / 4.6, bottom / 2.5, 1 - 0.82 / 4.6,
                               1 - (bottom + 0.3) / 2.5))
            base = ax.stairs([0.0], [0.0, 1.0], fill=True, color=MUTED, alpha=0.55,
                             linewidth=0, label="baseline")
            if numeric:
                win = ax.stairs([0.0], [0.0, 1.0], color=INK, linewidth=1.3, label="window")
                ax.set_xlabel("value (bin edges)")
            else:
                (win,) = ax.plot([], [], linestyle="none", marker="_", markersize=7,
                                 markeredgewidth=2, color=INK, label="window")
            ax.yaxis.set_major_locator(self._mpl.ticker.MaxNLocator(5))
            ax.yaxis.set_major_formatter(self._percent())
            ax.set_ylabel("share of values")
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, fontsize=7.5,
                      borderaxespad=0.2)
            self._histograms[numeric] = (fig, ax, base, win)
        return self._histograms[numeric]

    def intervals(self, names: Sequence[str], value: Values, low: Values,
                  high: Values, *, reference: float | None, xlabel: str, percent: bool,
                  title: str, desc: str, xlim: tuple[float, float] | None = None) -> Markup:
        """A dot per row with its interval, rows top to bottom (groups, TPR/FPR)."""
        v, lo, hi = _nan(value), _nan(low), _nan(high)
        n = len(names)
        with self._figure(5.2, 0.6 + 0.24 * max(n, 2), 1.8, 0.45, 0.25, 0.08) as (
                fig, ax, uid):
            y = np.arange(n)[::-1]
            ax.hlines(y, lo, hi, color=INK, linewidth=1.4)
            ax.plot(v, y, "o", color=INK, markersize=3.5)
            if reference is not None:
                ax.axvline(reference, color=MUTED, linewidth=0.9, linestyle=(0, (3, 2)))
            ax.set_yticks(y, [label(s, 24) for s in names])
            ax.set_ylim(-0.7, n - 0.3)
            ax.grid(axis="x", visible=True)
            ax.grid(axis="y", visible=False)
            if percent:
                ax.xaxis.set_major_formatter(self._percent())
            if xlim:
                ax.set_xlim(*xlim)
            ax.set_xlabel(xlabel)
            return self._svg(fig, uid, title, desc)

    def reliability(self, predicted: Values, observed: Values, low: Values,
                    high: Values, *, title: str, desc: str) -> Markup:
        """Observed rate against mean predicted score per bin, with the diagonal."""
        p, o, lo, hi = _nan(predicted), _nan(observed), _nan(low), _nan(high)
        with self._figure(3.6, 3.4, 0.62, 0.5, 0.12, 0.12) as (fig, ax, uid):
            ax.plot([0, 1], [0, 1], color=MUTED, linewidth=0.9, linestyle=(0, (3, 2)),
                    label="perfectly calibrated")
            ax.vlines(p, lo, hi, color=INK, linewidth=1.2)
            ax.plot(p, o, "o-", color=INK, markersize=3.5, linewidth=0.9, label="observed")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.grid(axis="x", visible=True)
            ax.set_xlabel("mean predicted score")
            ax.set_ylabel("observed positive rate")
            ax.legend(loc="upper left", fontsize=7.5)
            return self._svg(fig, uid, title, desc)


def _nan(values: Values) -> NDArray[np.float64]:
    """Floats with None as NaN (a gap in a line)."""
    return np.array([np.nan if v is None else v for v in np.asarray(values, dtype=object)],
                    dtype=np.float64)


_TAG = re.compile(r"<[^>]+>")
_ID = re.compile(r'\sid="([^"]*)"')
_REF = re.compile(r'(href="#|url\(#)([^")]+)')


def finish_svg(svg: str, uid: str, title: str, desc: str) -> Markup:
    """matplotlib's SVG document as an element to inline (see the module docstring)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r'<style type="text/css">[^<]*</style>', "", svg)
    svg = re.sub(r"<defs>\s*</defs>", "", svg)
    referenced = {m.group(2) for m in _REF.finditer(svg)}

    def retag(tag: re.Match[str]) -> str:
        text = _ID.sub(lambda m: f' id="{uid}-{m.group(1)}"' if m.group(1) in referenced
                       else "", tag.group(0))
        return _REF.sub(lambda m: f"{m.group(1)}{uid}-{m.group(2)}", text)

    svg = _TAG.sub(retag, svg)
    end = svg.index(">")
    root = svg[:end]
    width = re.search(r'\swidth="([\d.]+)pt"', root)
    root = re.sub(r'\s(width|height)="[^"]*"', "", root)
    # Scale with the column, but never beyond the drawn size: text stays at its point size.
    size = f' style="max-width: {width.group(1)}pt"' if width else ""
    root += f' class="chart"{size} role="img" aria-labelledby="{uid}-title {uid}-desc"'
    return Markup(f'{root}><title id="{uid}-title">{html.escape(title)}</title>'
                  f'<desc id="{uid}-desc">{html.escape(desc)}</desc>{svg[end + 1:]}')
