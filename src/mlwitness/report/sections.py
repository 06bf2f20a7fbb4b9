"""The report's larger sections: drift, model quality, human review and the replay check.

Each returns the section's body, or None when there is nothing to show (the caller then
says why in one line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from mlwitness.analytics.intervals import Estimate, wilson_bounds
from mlwitness.analytics.quality import GroupQuality, GroupRates
from mlwitness.report.charts import Charts, Values
from mlwitness.report.data import (
    DriftFeature,
    DriftSection,
    QualitySection,
    ReplaySection,
    ReviewSection,
)
from mlwitness.report.markup import (
    DASH,
    Col,
    Markup,
    count,
    duration,
    facts,
    join,
    num,
    pair,
    pct,
    pill,
    signed,
    table,
    tag,
    unit,
    verdict,
    when,
)


def score(x: float | None) -> str:
    """A statistic to four significant digits (small p-values in scientific notation)."""
    if x is None or x != x:
        return DASH
    if x in (float("inf"), float("-inf")):
        return "∞" if x > 0 else "−∞"
    return (f"{x:.2e}" if x and abs(x) < 1e-3 else f"{x:.4g}").replace("-", "−")


def _edge(x: float) -> str:
    return score(x) if np.isfinite(x) else ("−∞" if x < 0 else "+∞")


# ---------------------------------------------------------------- drift


def drift_section(d: DriftSection | None, charts: Charts) -> Markup | None:
    if d is None:
        return None
    intro = tag("p", join(["Window compared with ", tag("strong", d.reference),
                           ". Overall verdict: ", verdict(d.verdict), "."]))
    if not d.features:
        return join([intro, tag("p", "No feature was analysed.", class_="empty")])
    names: list[str] = []
    for f in d.features:
        names += [n for n, _ in f.scores if n not in names]
    names = names[:8]
    rows = []
    for i, f in enumerate(d.features):
        scores = dict(f.scores)
        rows.append((tag("a", f.name, href=f"#drift-feature-{i}"), verdict(f.verdict),
                     f"{f.role}, {f.kind}", count(f.count), count(f.missing),
                     *(score(scores.get(n)) for n in names)))
    summary = table("Drift by feature", [Col("Feature"), Col("Verdict"), Col("Kind"),
                                         Col("Values", True), Col("Missing", True),
                                         *(Col(n, True) for n in names)], rows)
    return join([intro, summary, *(_feature(i, f, charts) for i, f in enumerate(d.features))])


def _feature(i: int, f: DriftFeature, charts: Charts) -> Markup:
    heading = tag("h3", join([f.name, tag("span", f"{f.role} · {f.kind}", class_="sub"),
                              verdict(f.verdict)]))
    reasons = tag("p", "; ".join(f.reasons), class_="note") if f.reasons else Markup("")
    scores = table(f"Statistics for {f.name}", [Col("Statistic"), Col("Value", True)],
                   [("Values in window", count(f.count)), ("Missing in window",
                                                          count(f.missing)),
                    *((n, score(v)) for n, v in f.scores)])
    h = f.histogram
    if h is None:
        body = join([scores, tag("p", "No histogram was recorded for this feature.",
                                 class_="empty")])
        return tag("div", join([heading, reasons, body]), id=f"drift-feature-{i}",
                   class_="feature")
    numeric = h.edges is not None
    if h.edges is not None:
        e = h.edges
        bins = [f"[{_edge(e[j])}, {_edge(e[j + 1])})" for j in range(len(h.window))]
        ticks = [_edge(x) for x in e]
    else:
        assert h.categories is not None
        bins = ticks = list(h.categories)
    bt, wt = sum(h.baseline), sum(h.window)
    svg = charts.histogram(h.baseline, h.window, ticks, numeric=numeric,
                           title=f"Distribution of {f.name}: baseline and window",
                           desc=f"Share of values in each of {len(bins)} bins, baseline "
                                f"({bt:,} values) against the window ({wt:,}).")
    binned = table(f"Counts per bin for {f.name}",
                   [Col("Bin" if numeric else "Category"), Col("Baseline", True),
                    Col("Baseline (%)", True), Col("Window", True), Col("Window (%)", True)],
                   [(bins[j], count(h.baseline[j]), pct(h.baseline[j] / bt if bt else None),
                     count(h.window[j]), pct(h.window[j] / wt if wt else None))
                    for j in range(len(bins))], scroll=True)
    return tag("div", join([heading, reasons, pair(
        svg, "Grey: baseline share per bin; dark: the window's.", binned, "even", scores)]),
        id=f"drift-feature-{i}", class_="feature")


# ---------------------------------------------------------------- quality


def _ci(e: Estimate, fmt: Callable[[float | None], str]) -> tuple[str, str, str]:
    return fmt(e.value), fmt(e.low), fmt(e.high)


def _why(e: Estimate) -> str:
    return e.reason or ""


def quality_section(q: QualitySection | None, charts: Charts) -> Markup | None:
    if q is None:
        return None
    r, cov, delay = q.overall, q.coverage, q.label_delay
    conf = f"{r.confidence:.0%}"
    rule = (f"score ≥ {r.threshold:g}" if r.threshold is not None
            else "the decision the model recorded")
    context = facts("Outcomes", [
        ("Outcome", q.outcome),
        ("Decisions with an outcome", f"{pct(cov.value)}% of {cov.n:,} "
                                      f"({conf} interval {pct(cov.low)}–{pct(cov.high)}%)"
         if cov.value is not None else f"{DASH} ({_why(cov)})"),
        ("Label delay", f"median {duration(delay.median_s)}, 90th percentile "
                        f"{duration(delay.p90_s)}, longest {duration(delay.max_s)} "
                        f"({delay.n:,} outcomes)" if delay.n else f"{DASH} ({delay.reason})"),
        *([("Outcomes timed before their decision", count(delay.negative))]
          if delay.negative else []),
        ("Rows evaluated", f"{r.n:,} ({r.positives:,} positive, {r.negatives:,} negative)"),
        ("Positive decision", rule),
    ])
    metrics = table(f"Quality of the model's decisions ({conf} intervals)",
                    [Col("Metric"), Col("Value", True), Col("Low", True), Col("High", True),
                     Col("Interval method"), Col("Rows", True), Col("Note")],
                    [("Accuracy (%)", *_ci(r.accuracy, pct), r.accuracy.method,
                      count(r.accuracy.n), _why(r.accuracy)),
                     ("Precision (%)", *_ci(r.precision, pct), r.precision.method,
                      count(r.precision.n), _why(r.precision)),
                     ("Recall, TPR (%)", *_ci(r.recall, pct), r.recall.method,
                      count(r.recall.n), _why(r.recall)),
                     ("ROC AUC", *_ci(r.roc_auc, num), r.roc_auc.method,
                      count(r.roc_auc.n), _why(r.roc_auc)),
                     ("Brier score", *_ci(r.brier, lambda x: num(x, 4)), r.brier.method,
                      count(r.brier.n), _why(r.brier))])
    c = r.confusion
    confusion = table("Confusion matrix (rows: outcome; columns: decision)",
                      [Col("Outcome"), Col("Decided positive", True),
                       Col("Decided negative", True)],
                      [("Positive (1)", count(c.tp), count(c.fn)),
                       ("Negative (0)", count(c.fp), count(c.tn))], class_="facts")
    return join([context, metrics, confusion, _over_time(q, charts), _calibration(q, charts),
                 _groups(r.groups, charts)])


def _over_time(q: QualitySection, charts: Charts) -> Markup:
    head = tag("h3", "Quality over time", id="quality-over-time")
    pts = q.over_time
    if not pts:
        return join([head, tag("p", "Too few outcomes to show quality over time.",
                               class_="empty")])
    u = unit(q.bucket_us)
    starts = [p.start_us for p in pts]
    series = [_series("ROC AUC", [p.roc_auc for p in pts]),
              _series("accuracy", [p.accuracy for p in pts])]
    svg = charts.lines(starts, q.bucket_us, series, ylabel="value", percent=False,
                       title=f"ROC AUC and accuracy per {u}", ylim=(0.0, 1.0),
                       desc=f"ROC AUC (DeLong interval) and accuracy (Wilson interval) for "
                            f"decisions made in each of {len(pts)} {u}s.")
    rows = [(when(p.start_us, q.bucket_us), count(p.accuracy.n), *_ci(p.roc_auc, num),
             *_ci(p.accuracy, pct), num(p.brier.value, 4)) for p in pts]
    numbers = table(f"Quality per {u} of decision",
                    [Col(f"{u.capitalize()} starting", nowrap=True), Col("Rows", True),
                     Col("AUC", True), Col("Low", True), Col("High", True),
                     Col("Accuracy (%)", True), Col("Low", True), Col("High", True),
                     Col("Brier", True)], rows,
                    scroll=True)
    return join([head, pair(svg, "Shaded: intervals. A gap means the figure is undefined "
                                 "for that period.", numbers, "stack")])


def _series(name: str, es: Sequence[Estimate]) -> tuple[str, Values, Values, Values]:
    return (name, [e.value for e in es], [e.low for e in es], [e.high for e in es])


def _calibration(q: QualitySection, charts: Charts) -> Markup:
    cal = q.overall.calibration
    head = tag("h3", "Calibration", id="calibration")
    filled = [b for b in cal.bins if b.count]
    if not filled:
        return join([head, tag("p", "No scored decision with an outcome.", class_="empty")])
    svg = charts.reliability([b.mean_predicted for b in filled],
                             [b.observed_rate.value for b in filled],
                             [b.observed_rate.low for b in filled],
                             [b.observed_rate.high for b in filled],
                             title="Calibration: observed rate against predicted score",
                             desc=f"Observed positive rate against mean predicted score in "
                                  f"{len(filled)} non-empty {cal.strategy} score bins, with "
                                  f"Wilson intervals; the diagonal is perfect calibration.")
    rows = [(f"{b.lower:.2f}–{b.upper:.2f}", count(b.count), num(b.mean_predicted),
             *_ci(b.observed_rate, pct)) for b in cal.bins]
    numbers = table(f"Calibration by score bin ({cal.strategy} bins)",
                    [Col("Score bin"), Col("Rows", True), Col("Mean score", True),
                     Col("Observed (%)", True), Col("Low (%)", True), Col("High (%)", True)],
                    rows, scroll=True)
    return join([head, pair(svg, "Points on the dashed diagonal are well calibrated; bars "
                                 "are 95% Wilson intervals of the observed rate.", numbers,
                            "even")])


def _groups(gq: GroupQuality | None, charts: Charts) -> Markup:
    head = tag("h3", "Error rates by group", id="quality-groups")
    if gq is None or not gq.groups:
        return join([head, tag("p", "No group attribute was given, so error rates by group "
                                    "were not computed.", class_="empty")])
    gs = gq.groups
    ref = next((g for g in gs if g.group == gq.reference), None)

    def chart(name: str, pick: Callable[..., Estimate]) -> Markup:
        e = [pick(g) for g in gs]
        return charts.intervals([g.group for g in gs], [x.value for x in e],
                                [x.low for x in e], [x.high for x in e],
                                reference=pick(ref).value if ref else None,
                                xlabel=name, percent=True,
                                title=f"{name} by group",
                                desc=f"{name} with Wilson interval for {len(gs)} groups; "
                                     f"the dashed line is the reference group's.")

    figs = tag("div", join([tag("figure", join([chart("true positive rate", lambda g: g.tpr),
                                                tag("figcaption", "True positive rate")])),
                            tag("figure", join([chart("false positive rate", lambda g: g.fpr),
                                                tag("figcaption", "False positive rate")]))]),
               class_="pair even")
    def diff(g: GroupRates, e: Estimate) -> tuple[str, str]:
        return ("reference", "") if g is ref else (signed(e.value), _range(e))

    rows = [(g.group, count(g.n), count(g.positives), count(g.negatives), *_ci(g.tpr, pct),
             *_ci(g.fpr, pct), *diff(g, g.tpr_difference), *diff(g, g.fpr_difference))
            for g in gs]
    numbers = table("True and false positive rates by group",
                    [Col("Group"), Col("Rows", True), Col("Positives", True),
                     Col("Negatives", True), Col("TPR (%)", True), Col("Low", True),
                     Col("High", True), Col("FPR (%)", True), Col("Low", True),
                     Col("High", True), Col("Equal opp. diff. (pp)", True),
                     Col("Interval (pp)", True), Col("FPR diff. (pp)", True),
                     Col("Interval (pp)", True)], rows)
    rule = ("named by the caller" if gq.reference_rule == "given"
            else "the group with the most rows")
    intro = tag("p", join(["Differences are against the reference group ",
                           tag("strong", gq.reference or DASH), f" ({rule}); intervals are "
                           "Newcombe's for a difference of two proportions."]))
    return join([head, intro, figs, numbers])


def _range(e: Estimate) -> str:
    if e.low is None or e.high is None:
        return DASH
    return f"{signed(e.low)} to {signed(e.high)}"


# ---------------------------------------------------------------- reviews and replay


def _rates(k: Sequence[int], n: Sequence[int]
           ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    kk, nn = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    low, high = wilson_bounds(kk, nn)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nn > 0, kk / nn, np.nan), low, high


def review_section(rv: ReviewSection | None, charts: Charts) -> Markup | None:
    if rv is None:
        return None
    s = rv.summary
    k = s.kappa
    summary = facts("Human review of the model's decisions", [
        ("Decisions", count(s.decisions)),
        ("Reviewed", f"{s.reviewed:,} ({pct(s.review_rate.value)}%, interval "
                     f"{pct(s.review_rate.low)}–{pct(s.review_rate.high)}%)"),
        ("Overridden", f"{s.overrides:,} ({pct(s.override_rate.value)}% of reviewed, "
                       f"interval {pct(s.override_rate.low)}–{pct(s.override_rate.high)}%)"),
        ("Reviewer agrees with the model", f"{pct(s.agreement.value)}% of reviewed"),
        ("Cohen's kappa", f"{num(k.value)} (interval {num(k.low)} to {num(k.high)}, "
                          f"{k.method})" if k.value is not None else f"{DASH} ({k.reason})"),
        ("Decisions seen", ", ".join(s.labels) or DASH),
        ("Changed without a review", count(s.unreviewed_changes)),
    ])
    head = tag("h3", "Review over time", id="reviews-over-time")
    pts = rv.over_time
    if not pts:
        return join([summary, head, tag("p", "No review counts over time were given.",
                                        class_="empty")])
    u = unit(rv.bucket_us)
    review = _rates([p.reviewed for p in pts], [p.decisions for p in pts])
    override = _rates([p.overrides for p in pts], [p.reviewed for p in pts])
    series: list[tuple[str, Values, Values, Values]] = [
        ("review rate", *review), ("override rate (of reviewed)", *override)]
    svg = charts.lines([p.start_us for p in pts], rv.bucket_us,
                       series,
                       ylabel="rate", percent=True, title=f"Review and override rates per {u}",
                       desc=f"Share of decisions reviewed, and share of reviewed decisions "
                            f"overridden, per {u}, with Wilson intervals.")
    rows = [(when(p.start_us, rv.bucket_us), count(p.decisions), count(p.reviewed),
             pct(review[0][i]), count(p.overrides), pct(override[0][i]))
            for i, p in enumerate(pts)]
    numbers = table(f"Reviews per {u}", [Col(f"{u.capitalize()} starting", nowrap=True),
                                         Col("Decisions", True), Col("Reviewed", True),
                                         Col("Review rate (%)", True), Col("Overridden", True),
                                         Col("Override rate (%)", True)], rows, scroll=True)
    return join([summary, head, pair(svg, "Shaded: 95% Wilson intervals.", numbers, "stack")])


def replay_section(rp: ReplaySection | None) -> Markup | None:
    if rp is None or not rp.checks:
        return None
    same = sum(c.identical for c in rp.checks)
    seed = f" (seed {rp.seed})" if rp.seed is not None else ""
    intro = tag("p", f"{len(rp.checks):,} decisions drawn at random{seed} from "
                     f"{rp.population:,} were replayed through the recorded model: {same:,} "
                     f"reproduced the recorded output bit for bit, "
                     f"{len(rp.checks) - same:,} did not.")
    rows = [(count(c.seq), tag("code", c.request_id), c.model,
             pill("ok", "Identical") if c.identical else pill("fail", "Differs"), c.detail)
            for c in rp.checks]
    return join([intro, table("Replayed decisions", [Col("Record", True), Col("Request id"),
                                                     Col("Model"), Col("Result"),
                                                     Col("Detail")], rows, scroll=True)])
