"""The report's sections read from the ledger, each already aggregated as the renderer
wants it (`mlwitness.report.data`): time series in buckets, distributions as histograms.

Every function takes a read cursor and the `Scope` (window, model, bucket) and returns its
section, or (None, why) when there is nothing to show; the report then says why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from mlwitness.analytics.baseline import Baseline
from mlwitness.analytics.bias import bias_report
from mlwitness.analytics.drift import drift_report, window_columns
from mlwitness.analytics.outcomes import QualityQuery, Rows, Rule, quality_answer
from mlwitness.analytics.quality import quality
from mlwitness.analytics.review import review_agreement
from mlwitness.guards.violations import violations_over_time
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.schema import BATCH_SIZE
from mlwitness.report import data as rd

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MIN_QUALITY_ROWS = 20  # rows with an outcome a bucket needs for its quality point

Why = str | None


@dataclass(frozen=True)
class Scope:
    since_us: int  # 0: from the first record
    until_us: int  # 0: to the head (exclusive)
    model: str
    bucket_us: int
    first_us: int  # first bucket start shown
    buckets: int

    @property
    def filters(self) -> Filters:
        return Filters(self.since_us, self.until_us, self.model)

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(self.first_us + i * self.bucket_us for i in range(self.buckets))

    def index(self, us: np.ndarray) -> np.ndarray:
        return ((np.asarray(us, np.int64) - self.first_us) // self.bucket_us).astype(np.int64)


def scope(con: duckdb.DuckDBPyConnection, since_us: int, until_us: int, model: str,
          bucket: str) -> Scope:
    """The window's buckets: whole UTC days (or hours) from the first to the last decision
    in it, widened when there would be more than the report's MAX_BUCKETS."""
    where, params = Filters(since_us, until_us, model).where()
    low, high = con.execute(f"SELECT min(received_us), max(received_us) FROM entries "
                            f"WHERE {where}", params).fetchall()[0]
    size = HOUR_US if bucket == "hour" else DAY_US
    if low is None:
        return Scope(since_us, until_us, model, size, 0, 0)
    first = low // size * size
    count = high // size - low // size + 1
    if count > rd.MAX_BUCKETS:  # wider buckets, same alignment
        factor = math.ceil(count / rd.MAX_BUCKETS)
        size *= factor
        first = low // size * size
        count = high // size - low // size + 1
    return Scope(since_us, until_us, model, size, first, int(count))


# ── over time ─────────────────────────────────────────────────────────────────────────

def volume(con: duckdb.DuckDBPyConnection, s: Scope) -> tuple[rd.VolumeSection | None, Why]:
    if not s.buckets:
        return None, None
    where, params = s.filters.where()
    rows = con.execute(f"SELECT (received_us - ?) // ? AS b, status, count(*) FROM entries "
                       f"WHERE {where} GROUP BY ALL", [s.first_us, s.bucket_us, *params]
                       ).fetchall()
    statuses = sorted({r[1] for r in rows}, key=lambda x: (x != "OK", x))
    counts = np.zeros((s.buckets, len(statuses)), np.int64)
    for b, status, n in rows:
        counts[b, statuses.index(status)] = n
    return rd.VolumeSection(s.bucket_us, s.starts, tuple(statuses),
                            tuple(tuple(int(x) for x in r) for r in counts)), None


def latest_rate_guards(con: duckdb.DuckDBPyConnection, until_us: int) -> list[dict[str, Any]]:
    """The rate guards of the guard version in force at the window's end (the last admin
    record that put guards in force)."""
    found = con.execute(
        "SELECT detail FROM entries WHERE kind = 'admin' AND json_valid(detail) "
        "AND detail->>'action' = 'guards' AND (? = 0 OR received_us < ?) "
        "ORDER BY seq DESC LIMIT 1", [until_us, until_us]).fetchall()
    if not found:
        return []
    rates = json.loads(found[0][0]).get("config", {}).get("rates", [])
    return [r for r in rates if isinstance(r, dict)]


def _guard_rule(guard: dict[str, Any]) -> str:
    if guard.get("equals") is not None:
        return f"{guard['output']}={guard['equals']}"
    return f"{guard['output']}>={guard['at_least']}"


def favourable_rule(given: str, guards: list[dict[str, Any]]) -> str:
    """The favourable decision: as given, else the first rate guard's."""
    return given or (_guard_rule(guards[0]) if guards else "")


def favourable(con: duckdb.DuckDBPyConnection, s: Scope, rule_text: str,
               guards: list[dict[str, Any]]) -> tuple[rd.RateSection | None, Why]:
    if not rule_text:
        return None, ("No favourable decision was named (--favorable, e.g. label=1) and no "
                      "rate guard defines one, so no favourable rate is shown.")
    if not s.buckets:
        return None, None
    rule = Rule.parse(rule_text, "favorable")
    present = window_columns(con, s.filters)
    predicate, _ = rule.sql(present)
    where, params = s.filters.where()
    rows = con.execute(
        f"SELECT (received_us - ?) // ? AS b, count(fav), count(*) FILTER (WHERE fav) FROM ("
        f"SELECT received_us, ({predicate}) AS fav FROM (SELECT received_us, "
        f"unnest(outputs) AS o, unnest(outputs_text) AS ot FROM entries WHERE {where} "
        f"AND status = 'OK')) GROUP BY ALL", [s.first_us, s.bucket_us, *params]).fetchall()
    decided = np.zeros(s.buckets, np.int64)
    good = np.zeros(s.buckets, np.int64)
    for b, n, k in rows:
        decided[b], good[b] = n, k
    bounds = tuple(rd.RateBound(g["name"], g.get("min"), g.get("max")) for g in guards
                   if _same_rule(g, rule))
    return rd.RateSection(str(rule), s.bucket_us, s.starts, tuple(int(x) for x in decided),
                          tuple(int(x) for x in good), bounds=bounds), None


def _same_rule(guard: dict[str, Any], rule: Rule) -> bool:
    try:
        return Rule.parse(_guard_rule(guard)) == rule or (
            guard.get("equals") is not None and rule.op == "=" and
            rule.column == guard["output"] and float(rule.value) == float(guard["equals"]))
    except (ValueError, KeyError, TypeError):
        return False


def violations(con: duckdb.DuckDBPyConnection, s: Scope, guarded: bool
               ) -> tuple[rd.ViolationSection | None, Why]:
    if not s.buckets:
        return None, None
    found = violations_over_time(con, bucket_us=s.bucket_us, since_us=s.since_us,
                                 until_us=s.until_us, model=s.model)
    if not found and not guarded:
        return None, None
    guards = sorted({g for _, g, _ in found})
    counts = np.zeros((s.buckets, len(guards)), np.int64)
    for start, guard, n in found:
        counts[(start - s.first_us) // s.bucket_us, guards.index(guard)] += n
    if not guards:
        return None, "Guards were in force and none was violated in the window."
    return rd.ViolationSection(s.bucket_us, s.starts, tuple(guards),
                               tuple(tuple(int(x) for x in r) for r in counts)), None


# ── drift and bias ────────────────────────────────────────────────────────────────────

def drift(con: duckdb.DuckDBPyConnection, s: Scope, baseline: Baseline | None
          ) -> tuple[rd.DriftSection | None, Why]:
    if baseline is None:
        return None, ("No baseline is stored in the ledger (serve --baseline), so drift "
                      "was not computed.")
    report = drift_report(con, baseline, since_us=s.since_us, until_us=s.until_us,
                          model=s.model)
    features = tuple(_drift_feature(f) for f in report.features[:rd.MAX_FEATURES])
    source = baseline.source
    name = source.get("file", "") if isinstance(source, dict) else str(source or "")
    return rd.DriftSection(f"baseline {name} (sha256 {baseline.sha256})".replace("  ", " "),
                           report.verdict, features), None


_SCORES = (("PSI", "psi"), ("JS", "js_distance"), ("KS D", "ks_statistic"),
           ("KS p", "ks_pvalue"), ("Wasserstein", "wasserstein"), ("χ² p", "chi2_pvalue"),
           ("L∞", "linf"))


def _drift_feature(f: Any) -> rd.DriftFeature:
    st = f.statistics
    scores = tuple((label, float(st[key])) for label, key in _SCORES
                   if isinstance(st.get(key), int | float))
    return rd.DriftFeature(f.name, f.role, f.kind, f.verdict, f.count, f.missing, scores,
                           tuple(f.reasons), _histogram(st))


def _histogram(st: dict[str, Any]) -> rd.Histogram | None:
    if "counts" in st and "edges" in st:
        counts, ref = st["counts"], st["reference_counts"]
        if 0 < len(counts) <= rd.MAX_BINS and len(st["edges"]) == len(counts) + 1:
            return rd.Histogram(tuple(int(x) for x in ref), tuple(int(x) for x in counts),
                                edges=tuple(float(x) for x in st["edges"]))
    if isinstance(st.get("categories"), dict) and st["categories"]:
        items = sorted(st["categories"].items(),
                       key=lambda kv: -(kv[1]["count"] + kv[1]["reference_count"]))
        kept, rest = items[:rd.MAX_BINS - 1], items[rd.MAX_BINS - 1:]
        names = [str(k) for k, _ in kept]
        window = [int(v["count"]) for _, v in kept]
        base = [int(v["reference_count"]) for _, v in kept]
        if rest:
            names.append(f"({len(rest)} others)")
            window.append(sum(int(v["count"]) for _, v in rest))
            base.append(sum(int(v["reference_count"]) for _, v in rest))
        return rd.Histogram(tuple(base), tuple(window), categories=tuple(names))
    return None


def bias(con: duckdb.DuckDBPyConnection, s: Scope, attributes: list[str], rule: str
         ) -> tuple[tuple[rd.BiasSection, ...], Why]:
    if not attributes:
        return (), None
    if not rule:
        return (), ("No favourable decision was named (--favorable), so bias was not "
                    "tested.")
    out = []
    for attribute in attributes:
        r = bias_report(con, attribute=attribute, favorable=rule, since_us=s.since_us,
                        until_us=s.until_us, model=s.model)
        groups = tuple(rd.BiasGroup(
            g.group, g.n, g.favorable, g.rate, g.rate_ci95[0], g.rate_ci95[1],
            _finite(g.disparate_impact), _finite(g.statistical_parity_difference),
            None if g.group == r.privileged else g.pvalue_holm if g.disparate_impact < 0.8
            else g.pvalue) for g in r.groups)
        out.append(rd.BiasSection(attribute, r.favorable, r.privileged, r.verdict, groups,
                                  tuple(r.reasons), sum(r.excluded.values())))
    return tuple(out), None


def _finite(x: float) -> float | None:
    return x if isinstance(x, int | float) and math.isfinite(x) else None


# ── quality and reviews ───────────────────────────────────────────────────────────────

def quality_section(rows: Rows, q: QualityQuery, s: Scope
                    ) -> tuple[rd.QualitySection | None, Why]:
    if not q.label:
        return None, ("No outcome was named (--label, e.g. defaulted), so model quality "
                      "was not measured.")
    answer = quality_answer(rows, q)
    if answer.quality is None:
        return None, (f"No decision in the window has an outcome for {q.label!r} with a "
                      f"usable score ({answer.with_outcome:,} of {answer.decisions:,} have "
                      "an outcome), so model quality cannot be measured.")
    usable = (rows.truth >= 0) & np.isfinite(rows.score)
    if q.decision:
        usable &= rows.pred >= 0
    u = rows.take(usable)
    index = s.index(u.received_us)
    points = []
    for b in range(s.buckets):
        m = index == b
        if int(m.sum()) < MIN_QUALITY_ROWS:
            continue
        r = quality(u.truth[m], u.score[m], u.pred[m] if q.decision else None,
                    threshold=q.threshold, bins=1, confidence=q.confidence)
        points.append(rd.QualityPoint(s.first_us + b * s.bucket_us, r.accuracy, r.roc_auc,
                                      r.brier))
    outcome = f"{q.label} (positive: {q.label} = {q.positive}); the model's positive " \
              f"decision: {answer.decision}"
    return rd.QualitySection(outcome, answer.quality, answer.coverage, answer.label_delay,
                             s.bucket_us, tuple(points)), None


def review_section(rows: Rows, s: Scope, confidence: float
                   ) -> tuple[rd.ReviewSection | None, Why]:
    decided = rows.pred >= 0
    if not rows.reviewed[decided].any():
        return None, None
    r = rows.take(decided)
    final = np.where(r.final >= 0, r.final, r.pred)
    summary = review_agreement(r.pred, final, r.reviewed, confidence)
    index = s.index(r.received_us)
    decisions = np.bincount(index, minlength=s.buckets)
    reviewed = np.bincount(index, weights=r.reviewed, minlength=s.buckets)
    overrides = np.bincount(index, weights=r.reviewed & (final != r.pred), minlength=s.buckets)
    points = tuple(rd.ReviewPoint(s.first_us + b * s.bucket_us, int(decisions[b]),
                                  int(reviewed[b]), int(overrides[b]))
                   for b in range(s.buckets))
    return rd.ReviewSection(summary, s.bucket_us, points), None


def batch_rows(con: duckdb.DuckDBPyConnection, s: Scope) -> int:
    where, params = s.filters.where()
    return int(con.execute(f"SELECT COALESCE(sum({BATCH_SIZE}), 0) FROM entries WHERE "
                           f"{where} AND status = 'OK'", params).fetchall()[0][0])
