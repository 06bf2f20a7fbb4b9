"""What the auditor's report shows: a tree of frozen dataclasses, already aggregated.

The renderer draws what it is given and computes nothing but presentation (rates and their
Wilson bands from counts, so a band can never disagree with its counts). Everything here
is small by construction: time series are buckets, distributions are histograms, the
replay check is a sample. ``__post_init__`` checks shapes and caps sizes, so a caller that
passes one point per decision gets a ``ValueError`` rather than a 200 MB file.

Conventions: times are microseconds since the Unix epoch, UTC (the ledger's
``received_us``); ``since_us`` / ``until_us`` of 0 mean unbounded. Strings come from
callers (request ids, group and feature names, guard names) and are escaped by the renderer,
never trusted. A section left empty (None or ``()``) is shown as one line saying why: the
line in ``ReportData.notes[section_id]`` when given, else a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mlwitness.analytics.intervals import Estimate, wilson_bounds
from mlwitness.analytics.quality import LabelDelay, QualityReport
from mlwitness.analytics.review import ReviewAgreement

MAX_BUCKETS = 2_000  # time buckets in a series (e.g. 5 years of days, 83 days of hours)
MAX_BINS = 200  # histogram bins or categories of one feature
MAX_FEATURES = 500
MAX_GROUPS = 200
MAX_REPLAY = 1_000


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _series(name: str, starts_us: tuple[int, ...], bucket_us: int) -> None:
    _check(bucket_us > 0, f"{name}: bucket_us must be positive")
    _check(len(starts_us) <= MAX_BUCKETS,
           f"{name}: {len(starts_us)} buckets, at most {MAX_BUCKETS}: use wider buckets")
    _check(all(b > a for a, b in zip(starts_us, starts_us[1:], strict=False)),
           f"{name}: starts_us must increase")


def _matrix(name: str, rows: tuple[tuple[int, ...], ...], n_rows: int, n_cols: int) -> None:
    _check(len(rows) == n_rows and all(len(r) == n_cols for r in rows),
           f"{name}: counts must be {n_rows} rows of {n_cols}")
    _check(all(c >= 0 for r in rows for c in r), f"{name}: counts must be non-negative")


# ---------------------------------------------------------------- header


@dataclass(frozen=True)
class Model:
    name: str
    sha256: str
    records: int


@dataclass(frozen=True)
class Environment:
    sha256: str
    description: str  # e.g. "onnxruntime 1.20.1, CPUExecutionProvider, Linux x86_64"
    records: int


@dataclass(frozen=True)
class Verification:
    ok: bool
    records_checked: int
    message: str  # what the verifier said, e.g. "chain intact" or where it broke


@dataclass(frozen=True)
class Header:
    ledger_path: str
    records: int
    head_seq: int  # the last record read
    head_hash: str  # its chain hash: the report describes the ledger up to here
    since_us: int
    until_us: int
    generated_us: int
    version: str  # mlwitness version that made the report
    command: str  # the command line that made it
    verification: Verification
    checkpoint: str | None = None  # text of the latest signed checkpoint, if any
    models: tuple[Model, ...] = ()
    environments: tuple[Environment, ...] = ()


# ---------------------------------------------------------------- over time


@dataclass(frozen=True)
class VolumeSection:
    """Records per time bucket and status (OK, INVALID_ARGUMENT, REFUSED, …)."""

    bucket_us: int
    starts_us: tuple[int, ...]
    statuses: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]  # [bucket][status]

    def __post_init__(self) -> None:
        _series("volume", self.starts_us, self.bucket_us)
        _matrix("volume", self.counts, len(self.starts_us), len(self.statuses))


@dataclass(frozen=True)
class RateBound:
    """A rate guard's bounds on the favourable rate (None: that side is open)."""

    guard: str
    low: float | None
    high: float | None


@dataclass(frozen=True)
class RateSection:
    """The favourable-outcome rate per bucket; the band is Wilson's at ``confidence``."""

    definition: str  # what counts as favourable, e.g. "label = 1"
    bucket_us: int
    starts_us: tuple[int, ...]
    decisions: tuple[int, ...]
    favourable: tuple[int, ...]
    confidence: float = 0.95
    bounds: tuple[RateBound, ...] = ()

    def __post_init__(self) -> None:
        _series("favourable rate", self.starts_us, self.bucket_us)
        _check(len(self.decisions) == len(self.starts_us) == len(self.favourable),
               "favourable rate: starts_us, decisions and favourable differ in length")
        _check(all(0 <= f <= d for f, d in zip(self.favourable, self.decisions, strict=True)),
               "favourable rate: need 0 <= favourable <= decisions")

    def band(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Rate, low and high per bucket; NaN where a bucket has no decision."""
        k = np.asarray(self.favourable, dtype=np.float64)
        n = np.asarray(self.decisions, dtype=np.float64)
        low, high = wilson_bounds(k, n, self.confidence)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, k / n, np.nan), low, high


@dataclass(frozen=True)
class ViolationSection:
    """Guard violations per bucket and guard."""

    bucket_us: int
    starts_us: tuple[int, ...]
    guards: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]  # [bucket][guard]

    def __post_init__(self) -> None:
        _series("violations", self.starts_us, self.bucket_us)
        _matrix("violations", self.counts, len(self.starts_us), len(self.guards))


# ---------------------------------------------------------------- drift and bias


@dataclass(frozen=True)
class Histogram:
    """Baseline and window counts over the same bins: numeric ``edges`` (one more than the
    counts) or ``categories`` (as many as the counts)."""

    baseline: tuple[int, ...]
    window: tuple[int, ...]
    edges: tuple[float, ...] | None = None
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        k = len(self.window)
        _check(len(self.baseline) == k and 0 < k <= MAX_BINS,
               f"histogram: baseline and window need the same 1..{MAX_BINS} bins")
        _check((self.edges is None) != (self.categories is None),
               "histogram: give edges or categories, not both")
        if self.edges is not None:
            _check(len(self.edges) == k + 1, "histogram: edges must be one more than bins")
        if self.categories is not None:
            _check(len(self.categories) == k, "histogram: one category per bin")


@dataclass(frozen=True)
class DriftFeature:
    name: str
    role: str  # "input" | "output"
    kind: str  # "numeric" | "categorical"
    verdict: str  # "ok", "drift", "insufficient_data", …
    count: int  # window values
    missing: int
    scores: tuple[tuple[str, float | None], ...] = ()  # e.g. ("PSI", 0.03), ("KS p", 0.4)
    reasons: tuple[str, ...] = ()
    histogram: Histogram | None = None


@dataclass(frozen=True)
class DriftSection:
    reference: str  # what the window is compared with, e.g. the baseline file and its hash
    verdict: str
    features: tuple[DriftFeature, ...]

    def __post_init__(self) -> None:
        _check(len(self.features) <= MAX_FEATURES, f"drift: at most {MAX_FEATURES} features")


@dataclass(frozen=True)
class BiasGroup:
    group: str
    n: int
    favourable: int
    rate: float
    low: float
    high: float
    disparate_impact: float | None
    parity_difference: float | None
    pvalue: float | None = None  # against the reference group (e.g. Fisher, Holm-adjusted)


@dataclass(frozen=True)
class BiasSection:
    attribute: str
    definition: str  # what counts as favourable
    reference: str  # the privileged (reference) group
    verdict: str
    groups: tuple[BiasGroup, ...]
    reasons: tuple[str, ...] = ()
    excluded: int = 0  # rows without the attribute or the outcome

    def __post_init__(self) -> None:
        _check(len(self.groups) <= MAX_GROUPS, f"bias: at most {MAX_GROUPS} groups")


# ---------------------------------------------------------------- outcomes and reviews


@dataclass(frozen=True)
class QualityPoint:
    start_us: int
    accuracy: Estimate
    roc_auc: Estimate
    brier: Estimate


@dataclass(frozen=True)
class QualitySection:
    outcome: str  # what the outcome is, e.g. "repaid within 12 months (1 = repaid)"
    overall: QualityReport
    coverage: Estimate  # decisions with an outcome
    label_delay: LabelDelay
    bucket_us: int = 86_400_000_000
    over_time: tuple[QualityPoint, ...] = ()

    def __post_init__(self) -> None:
        _series("quality", tuple(p.start_us for p in self.over_time), self.bucket_us)
        if self.overall.groups is not None:
            _check(len(self.overall.groups.groups) <= MAX_GROUPS,
                   f"quality: at most {MAX_GROUPS} groups")


@dataclass(frozen=True)
class ReviewPoint:
    start_us: int
    decisions: int
    reviewed: int
    overrides: int


@dataclass(frozen=True)
class ReviewSection:
    summary: ReviewAgreement
    bucket_us: int = 86_400_000_000
    over_time: tuple[ReviewPoint, ...] = ()

    def __post_init__(self) -> None:
        _series("reviews", tuple(p.start_us for p in self.over_time), self.bucket_us)


@dataclass(frozen=True)
class ReplayCheck:
    seq: int
    request_id: str
    model: str
    identical: bool  # replayed output bit-identical to the recorded one
    detail: str = ""  # what differed, or an error


@dataclass(frozen=True)
class ReplaySection:
    population: int  # decisions the sample was drawn from
    seed: int | None
    checks: tuple[ReplayCheck, ...]

    def __post_init__(self) -> None:
        _check(len(self.checks) <= MAX_REPLAY, f"replay: at most {MAX_REPLAY} checks")


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class ReportData:
    header: Header
    volume: VolumeSection | None = None
    favourable: RateSection | None = None
    drift: DriftSection | None = None
    bias: tuple[BiasSection, ...] = ()
    violations: ViolationSection | None = None
    quality: QualitySection | None = None
    reviews: ReviewSection | None = None
    replay: ReplaySection | None = None
    notes: Mapping[str, str] = field(default_factory=dict)  # section id → why it is empty
