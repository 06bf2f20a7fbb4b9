"""ReportData for the report tests: a realistic one (90 days, 100,000 decisions, 20 drift
features of 30 bins, 10 groups, outcomes and reviews) and one with every optional part empty.

Every string a caller could have sent (ledger path, model, request ids, feature, category,
group, status and guard names, checkpoint, command…) goes through ``name(text)``, so the
abuse test can put markup in all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlwitness.analytics import quality as q
from mlwitness.analytics import review
from mlwitness.analytics.stats import wilson_interval
from mlwitness.report import (
    BiasGroup,
    BiasSection,
    DriftFeature,
    DriftSection,
    Environment,
    Header,
    Histogram,
    Model,
    QualityPoint,
    QualitySection,
    RateBound,
    RateSection,
    ReplayCheck,
    ReplaySection,
    ReportData,
    ReviewPoint,
    ReviewSection,
    Verification,
    ViolationSection,
    VolumeSection,
)

DAY = 86_400_000_000
START = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
SHA = "9f2c4e7a1b3d5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff"
PAYLOAD = "<script>alert(1)</script>\"'&"  # a caller's string that must stay text


def _plain(text: str) -> str:
    return text


def header(name: Callable[[str], str] = _plain, *, records: int = 100_000) -> Header:
    return Header(
        ledger_path=name("/var/lib/mlwitness/credit.ledger"), records=records,
        head_seq=records, head_hash=SHA, since_us=START, until_us=START + 90 * DAY,
        generated_us=START + 90 * DAY + 3_600_000_000, version="0.1.0",
        command=name("mlwitness audit report --since 2025-01-01 --until 2025-04-01"),
        verification=Verification(True, records, name("chain intact")),
        checkpoint=name("ledger.example/credit\n100000\nq2Yc3Kx1VbLsKk0=\n\n— witness Az3f…"),
        models=(Model(name("credit-risk"), SHA, records - 40),
                Model(name("credit-risk-shadow"), SHA[::-1], 40)),
        environments=(Environment(SHA[:40] + "0" * 24,
                                  name("onnxruntime 1.20.1, CPUExecutionProvider, Linux"),
                                  records),))


def realistic(name: Callable[[str], str] = _plain, *, seed: int = 0,
              decisions: int = 100_000) -> ReportData:
    rng = np.random.default_rng(seed)
    days = 90
    starts = tuple(START + d * DAY for d in range(days))
    per_day = rng.multinomial(decisions, np.full(days, 1 / days))
    statuses = tuple(name(s) for s in ("OK", "INVALID_ARGUMENT", "REFUSED", "UNAVAILABLE"))
    status_counts = tuple(tuple(int(x) for x in rng.multinomial(n, [0.95, 0.03, 0.015, 0.005]))
                          for n in per_day)
    ok = np.array([c[0] for c in status_counts])
    trend = 0.42 + 0.06 * np.sin(np.arange(days) / 14)
    favourable = rng.binomial(ok, trend)
    rate = RateSection(name("label = 1"), DAY, starts, tuple(int(x) for x in ok),
                       tuple(int(x) for x in favourable),
                       bounds=(RateBound(name("approval-rate"), 0.35, 0.5),))
    return ReportData(
        header=header(name, records=decisions),
        volume=VolumeSection(DAY, starts, statuses, status_counts),
        favourable=rate,
        drift=_drift(rng, name),
        bias=_bias(rng, name),
        violations=_violations(rng, name, starts),
        quality=_quality(rng, name, starts, ok),
        reviews=_reviews(rng, starts, ok),
        replay=ReplaySection(decisions, 7, tuple(
            ReplayCheck(int(s), name(f"req-{s:08d}"), name("credit-risk"), i != 3,
                        name("" if i != 3 else "output probabilities[0] differs in the "
                             "last bit"))
            for i, s in enumerate(rng.choice(decisions, 20, replace=False)))),
    )


def _drift(rng: np.random.Generator, name: Callable[[str], str]) -> DriftSection:
    features = []
    for i in range(20):
        numeric = i < 15
        bins = 30
        base = rng.multinomial(20_000, np.full(bins, 1 / bins))
        shift = 0.25 if i % 6 == 0 else 0.0
        p = np.exp(shift * np.linspace(-1, 1, bins))
        window = rng.multinomial(95_000, p / p.sum())
        hist = (Histogram(tuple(int(x) for x in base), tuple(int(x) for x in window),
                          edges=(-np.inf, *np.round(np.linspace(18, 90, bins - 1), 2),
                                 np.inf))
                if numeric else
                Histogram(tuple(int(x) for x in base), tuple(int(x) for x in window),
                          categories=tuple(name(f"region-{j:02d}") for j in range(bins))))
        scores = ((("PSI", 0.09 if shift else 0.002), ("JS", 0.05 if shift else 0.01),
                   ("KS D", 0.12 if shift else 0.01), ("KS p", 1e-30 if shift else 0.62),
                   ("Wasserstein", 3.1 if shift else 0.2))
                  if numeric else (("χ² p", 1e-12 if shift else 0.4),
                                   ("L∞", 0.11 if shift else 0.004)))
        features.append(DriftFeature(
            name(f"feature_{i:02d}" if numeric else f"category_{i:02d}"), "input",
            "numeric" if numeric else "categorical", "drift" if shift else "ok", 95_000,
            i * 3, scores, (name("KS p < 0.01 and D > 0.1"),) if shift else (), hist))
    return DriftSection(name("baseline credit-2024Q4.json (sha256 5d1e…)"), "drift",
                        tuple(features))


def _bias(rng: np.random.Generator, name: Callable[[str], str]) -> tuple[BiasSection, ...]:
    groups = []
    for j in range(10):
        n = int(rng.integers(2_000, 15_000))
        k = int(rng.binomial(n, 0.45 - 0.015 * j))
        low, high = wilson_interval(k, n)
        groups.append((name(f"age band {j}"), n, k, k / n, low, high))
    ref = max(groups, key=lambda g: g[3])
    return (BiasSection(
        name("age_band"), name("label = 1"), ref[0], "disparity",
        tuple(BiasGroup(g, n, k, r, lo, hi, r / ref[3], r - ref[3], 0.5 if g == ref[0]
                        else 10 ** -float(j)) for j, (g, n, k, r, lo, hi) in
              enumerate(groups)),
        (name("age band 9: ratio 0.69 < 0.8, Fisher p < 0.01"),), 120),)


def _violations(rng: np.random.Generator, name: Callable[[str], str],
                starts: tuple[int, ...]) -> ViolationSection:
    guards = tuple(name(g) for g in ("income >= 0", "age in [18, 100]", "approval-rate",
                                     "amount <= 1e6", "term in {12, 24, 36}"))
    counts = tuple(tuple(int(x) for x in rng.poisson([2, 0.5, 0.2, 1, 0.1])) for _ in starts)
    return ViolationSection(DAY, starts, guards, counts)


def _quality(rng: np.random.Generator, name: Callable[[str], str], starts: tuple[int, ...],
             ok: np.ndarray) -> QualitySection:
    n = int(ok.sum())
    day = np.repeat(np.arange(len(starts)), ok)
    has = rng.random(n) < np.clip((len(starts) - day) / 40, 0, 1)  # recent: not yet known
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.38 + 0.26 * y, 0.2), 0, 1)
    codes = rng.integers(0, 10, n)
    names = [name(f"age band {j}") for j in range(10)]
    report = q.quality(y[has], s[has], group_codes=codes[has], group_names=names)
    points = []
    for d in range(len(starts)):
        m = has & (day == d)
        if m.sum() < 20:
            continue
        r = q.quality(y[m], s[m], bins=1)
        points.append(QualityPoint(starts[d], r.accuracy, r.roc_auc, r.brier))
    decided = day * DAY + rng.integers(0, DAY, n)
    known = np.where(has, decided + rng.exponential(20 * DAY, n), np.nan)
    return QualitySection(name("repaid within 12 months (1 = defaulted)"), report,
                          q.coverage(has), q.label_delay(decided, known), DAY, tuple(points))


def _reviews(rng: np.random.Generator, starts: tuple[int, ...],
             ok: np.ndarray) -> ReviewSection:
    n = int(ok.sum())
    model = rng.integers(0, 2, n)
    reviewed = rng.random(n) < 0.12
    final = np.where(reviewed & (rng.random(n) < 0.18), 1 - model, model)
    day = np.repeat(np.arange(len(starts)), ok)
    points = tuple(ReviewPoint(starts[d], int((day == d).sum()),
                               int((reviewed & (day == d)).sum()),
                               int((reviewed & (day == d) & (final != model)).sum()))
                   for d in range(len(starts)))
    return ReviewSection(review.review_agreement(model, final, reviewed), DAY, points)


def empty(name: Callable[[str], str] = _plain) -> ReportData:
    """Only the header: no records, no baseline, no guards, no outcomes, no reviews."""
    h = header(name, records=0)
    return ReportData(header=Header(
        h.ledger_path, 0, 0, "0" * 64, 0, 0, h.generated_us, h.version, h.command,
        Verification(True, 0, name("empty ledger"))))
