"""Model quality once outcomes are known, from plain arrays.

Inputs: ``y_true`` (the outcome, 0/1 or bool), ``y_score`` (the model's score for class 1,
finite, in [0, 1]) and ``y_pred`` (the decision, 0/1; by default ``y_score >= threshold``).
Bad input (wrong shape, values outside those sets, NaN) raises ``ValueError`` naming the
argument. Everything is vectorised numpy: one stable sort of the scores is the only
O(n log n) step, so a million rows take a fraction of a second.

Figures and how their intervals are made (see :mod:`.intervals` for the methods):

* accuracy, precision, recall — Wilson. Precision is undefined when the model predicted no
  positive, recall when there is no positive outcome (``value = None`` with a reason; scikit-
  learn would return 0 with a warning).
* ROC AUC — the Mann–Whitney statistic with ties counted one half (equal to the trapezoid
  under the ROC curve, i.e. ``sklearn.metrics.roc_auc_score``), with DeLong's variance
  computed from mid-ranks in O(n log n) (Sun & Xu 2014). Undefined without both classes; no
  interval with fewer than two rows of a class (the variance uses ddof = 1).
* Brier score — mean squared error of the score, normal interval from the sample variance of
  the squared errors.
* Calibration — bins of the predicted score, as ``sklearn.calibration.calibration_curve``
  makes them: ``uniform`` cuts [0, 1] into equal widths (deciles by default), ``quantile``
  at the scores' quantiles; bin ``i`` holds ``edges[i] < p <= edges[i+1]`` (the first also
  holds ``edges[0]``). Each bin: count, mean predicted score, observed positive rate with
  its Wilson interval. Empty bins are kept (count 0, values None) so the grid is fixed.
* By group — TPR and FPR per group (Wilson), and their differences from a *reference*
  group (``TPR_g − TPR_ref`` is the equal-opportunity difference; Newcombe intervals). The
  reference is the one named, or else the group with the most rows (ties: the first in
  ``names`` order). A group listed in ``names`` but without rows is kept, every rate None.

Also: outcome coverage (share of decisions with an outcome) and label delay (median, p90 and
max of outcome time − decision time). How human review relates to the model is in
:mod:`.review`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mlwitness.analytics.intervals import (
    DELONG,
    NORMAL,
    Estimate,
    difference,
    normal,
    proportion,
    wilson_bounds,
)

STRATEGIES = ("uniform", "quantile")


class Result:
    """Base of the typed results: ``to_dict()`` gives plain JSON-able numbers and strings."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class Confusion(Result):
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True, slots=True)
class CalibrationBin(Result):
    lower: float
    upper: float
    count: int
    mean_predicted: float | None
    observed_rate: Estimate  # Wilson


@dataclass(frozen=True, slots=True)
class Calibration(Result):
    strategy: str  # "uniform" | "quantile"
    bins: tuple[CalibrationBin, ...]


@dataclass(frozen=True, slots=True)
class GroupRates(Result):
    group: str
    n: int
    positives: int
    negatives: int
    tpr: Estimate
    fpr: Estimate
    tpr_difference: Estimate  # equal-opportunity difference TPR_g − TPR_ref (Newcombe)
    fpr_difference: Estimate  # FPR_g − FPR_ref (Newcombe)


@dataclass(frozen=True, slots=True)
class GroupQuality(Result):
    reference: str | None
    reference_rule: str  # "given" | "largest group"
    groups: tuple[GroupRates, ...]


@dataclass(frozen=True, slots=True)
class QualityReport(Result):
    n: int
    positives: int
    negatives: int
    threshold: float | None  # None when the decisions were given
    confidence: float
    confusion: Confusion
    accuracy: Estimate
    precision: Estimate
    recall: Estimate
    roc_auc: Estimate
    brier: Estimate
    calibration: Calibration
    groups: GroupQuality | None


@dataclass(frozen=True, slots=True)
class LabelDelay(Result):
    """Seconds from decision to outcome; ``negative`` counts outcomes timed before their
    decision (clock skew or a wrong time), which are included in the figures."""

    n: int
    median_s: float | None
    p90_s: float | None
    max_s: float | None
    negative: int
    method: str = "numpy linear-interpolated percentiles"
    reason: str | None = None


# ---------------------------------------------------------------- input checks


def binary(values: ArrayLike, name: str) -> NDArray[np.int8]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.number)):
            raise ValueError(f"{name} must be 0/1 or bool, got dtype {arr.dtype}")
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.int8)


def _scores(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all((arr >= 0.0) & (arr <= 1.0)):  # also false for NaN
        raise ValueError(f"{name} must be finite and within [0, 1]")
    return arr


def same_length(**arrays: NDArray[Any]) -> None:
    sizes = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"length mismatch: {sizes}")


# ---------------------------------------------------------------- ROC AUC (DeLong)


def _midranks(sorted_values: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks of an ascending array, tied runs sharing their mean rank."""
    n = sorted_values.size
    if n == 0:
        return np.empty(0)
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    ends = np.append(starts[1:], n)
    return np.repeat((starts + ends + 1) / 2.0, ends - starts)


def delong(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, float]:
    """ROC AUC and DeLong's variance of it, via mid-ranks (Sun & Xu 2014).

    With m positives and n negatives, ``Tz`` the mid-ranks in the pooled sample and ``Tx``,
    ``Ty`` those within the positives and within the negatives, the structural components
    are ``V10 = (Tz − Tx) / n`` (positives) and ``V01 = 1 − (Tz − Ty) / m`` (negatives);
    ``AUC = mean(V10)`` and ``Var = var(V10) / m + var(V01) / n`` (ddof = 1). Needs m, n ≥ 2.
    """
    t = binary(y_true, "y_true").astype(bool)
    s = _scores(y_score, "y_score")
    same_length(y_true=t, y_score=s)
    m = int(t.sum())
    n = t.size - m
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's variance needs two rows of each class, got {m} and {n}")
    order = np.argsort(s)  # ties need no order: they share a mid-rank
    s, t = s[order], t[order]
    tz = _midranks(s)
    v10 = (tz[t] - _midranks(s[t])) / n  # the positives' scores in ascending order
    v01 = 1.0 - (tz[~t] - _midranks(s[~t])) / m
    return float(v10.mean()), float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


def roc_auc(y_true: NDArray[np.int8], y_score: NDArray[np.float64],
            confidence: float) -> Estimate:
    m = int(y_true.sum())
    n = y_true.size - m
    if m == 0 or n == 0:
        why = "no rows" if m + n == 0 else ("no positive outcomes" if m == 0
                                           else "no negative outcomes")
        return Estimate(None, None, None, DELONG, confidence, m + n, f"undefined: {why}")
    if m < 2 or n < 2:
        # AUC is defined; its DeLong variance (ddof = 1) is not.
        order = np.argsort(y_score)
        ranks = _midranks(y_score[order])[y_true[order].astype(bool)]
        auc = float((ranks.sum() - m * (m + 1) / 2) / (m * n))
        return normal(auc, None, m + n, DELONG, confidence, (0.0, 1.0),
                      "no interval: fewer than two rows of a class")
    auc, var = delong(y_true, y_score)
    return normal(auc, math.sqrt(max(var, 0.0)), m + n, DELONG, confidence, (0.0, 1.0))


# ---------------------------------------------------------------- Brier, calibration


def brier(y_true: NDArray[np.int8], y_score: NDArray[np.float64], confidence: float) -> Estimate:
    if y_true.size == 0:
        return Estimate(None, None, None, NORMAL, confidence, 0, "no rows")
    err = (y_score - y_true) ** 2
    value = float(err.mean())
    if err.size < 2:
        return normal(value, None, 1, NORMAL, confidence, (0.0, 1.0),
                      "no interval: a single row")
    se = float(err.std(ddof=1)) / math.sqrt(err.size)
    return normal(value, se, int(err.size), NORMAL, confidence, (0.0, 1.0))


def calibration(y_true: ArrayLike, y_score: ArrayLike, *, bins: int = 10,
                strategy: str = "uniform", confidence: float = 0.95) -> Calibration:
    t = binary(y_true, "y_true")
    s = _scores(y_score, "y_score")
    same_length(y_true=t, y_score=s)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif strategy == "quantile":
        if s.size == 0:
            return Calibration(strategy, ())
        edges = np.percentile(s, np.linspace(0, 1, bins + 1) * 100)
    else:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    ids = np.searchsorted(edges[1:-1], s)  # sklearn's binning, side="left"
    count = np.bincount(ids, minlength=bins)
    total = np.bincount(ids, weights=s, minlength=bins)
    positive = np.bincount(ids, weights=t, minlength=bins).round().astype(np.int64)
    low, high = wilson_bounds(positive, count, confidence)
    out = []
    for i in range(bins):
        k, c = int(positive[i]), int(count[i])
        rate = (Estimate(k / c, float(low[i]), float(high[i]), "wilson", confidence, c)
                if c else proportion(0, 0, confidence, "empty bin"))
        out.append(CalibrationBin(float(edges[i]), float(edges[i + 1]), c,
                                  float(total[i] / c) if c else None, rate))
    return Calibration(strategy, tuple(out))


# ---------------------------------------------------------------- groups


def encode_groups(labels: ArrayLike) -> tuple[NDArray[np.intp], tuple[str, ...]]:
    """Codes into sorted distinct names, for :func:`group_rates` (callers with SQL can
    produce the codes themselves, which is faster than sorting a million strings)."""
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return codes.astype(np.intp), tuple(str(n) for n in names)


def group_rates(y_true: ArrayLike, y_pred: ArrayLike, codes: ArrayLike,
                names: tuple[str, ...] | list[str], *, reference: str | None = None,
                confidence: float = 0.95) -> GroupQuality:
    """TPR and FPR per group and their differences from the reference group.

    ``codes[i]`` indexes ``names``. ``reference`` must be one of ``names``; by default it is
    the group with the most rows (ties: the earliest in ``names``).
    """
    t = binary(y_true, "y_true")
    p = binary(y_pred, "y_pred")
    c = np.asarray(codes)
    names = tuple(str(n) for n in names)
    if c.ndim != 1 or not (c.size == 0 or np.issubdtype(c.dtype, np.integer)):
        raise ValueError("codes must be a 1-D integer array")
    same_length(y_true=t, y_pred=p, codes=c)
    if c.size and (c.min() < 0 or c.max() >= len(names)):
        raise ValueError(f"codes must lie in [0, {len(names)})")
    if reference is not None and reference not in names:
        raise ValueError(f"reference group {reference!r} is not among the groups")
    cells = np.bincount(c * 4 + t * 2 + p, minlength=4 * len(names)).reshape(-1, 4)
    tn, fp, fn, tp = (cells[:, j] for j in range(4))  # index = 2·true + pred
    sizes = cells.sum(axis=1)
    if reference is None and len(names):
        reference, rule = names[int(np.argmax(sizes))], "largest group"
    else:
        rule = "given"
    tprs = [proportion(int(tp[g]), int(tp[g] + fn[g]), confidence,
                       "no rows" if sizes[g] == 0 else "no positive outcomes")
            for g in range(len(names))]
    fprs = [proportion(int(fp[g]), int(fp[g] + tn[g]), confidence,
                       "no rows" if sizes[g] == 0 else "no negative outcomes")
            for g in range(len(names))]
    ref = names.index(reference) if reference is not None else -1
    out = []
    for g, name in enumerate(names):
        out.append(GroupRates(
            name, int(sizes[g]), int(tp[g] + fn[g]), int(fp[g] + tn[g]), tprs[g], fprs[g],
            difference(tprs[g], tprs[ref], "undefined: a TPR is undefined"),
            difference(fprs[g], fprs[ref], "undefined: an FPR is undefined")))
    return GroupQuality(reference, rule, tuple(out))


# ---------------------------------------------------------------- everything at once


def quality(y_true: ArrayLike, y_score: ArrayLike, y_pred: ArrayLike | None = None, *,
            threshold: float = 0.5, group_codes: ArrayLike | None = None,
            group_names: tuple[str, ...] | list[str] | None = None,
            reference: str | None = None, bins: int = 10, strategy: str = "uniform",
            confidence: float = 0.95) -> QualityReport:
    """Every quality figure of one set of decisions with outcomes."""
    t = binary(y_true, "y_true")
    s = _scores(y_score, "y_score")
    given = y_pred is not None
    p = binary(y_pred, "y_pred") if y_pred is not None else (s >= threshold).astype(np.int8)
    same_length(y_true=t, y_score=s, y_pred=p)
    cells = np.bincount(t * 2 + p, minlength=4)
    tn, fp, fn, tp = (int(x) for x in cells)
    n = t.size
    groups = None
    if group_codes is not None:
        if group_names is None:
            raise ValueError("group_codes needs group_names")
        groups = group_rates(t, p, group_codes, group_names, reference=reference,
                             confidence=confidence)
    return QualityReport(
        n=n, positives=tp + fn, negatives=tn + fp,
        threshold=None if given else float(threshold), confidence=confidence,
        confusion=Confusion(tp, fp, tn, fn),
        accuracy=proportion(tp + tn, n, confidence),
        precision=proportion(tp, tp + fp, confidence,
                             "undefined: no positive predictions" if n else "no rows"),
        recall=proportion(tp, tp + fn, confidence,
                          "undefined: no positive outcomes" if n else "no rows"),
        roc_auc=roc_auc(t, s, confidence),
        brier=brier(t, s, confidence),
        calibration=calibration(t, s, bins=bins, strategy=strategy, confidence=confidence),
        groups=groups)


# ---------------------------------------------------------------- outcomes and reviews


def coverage(has_outcome: ArrayLike, confidence: float = 0.95) -> Estimate:
    """Share of decisions that have an outcome (Wilson)."""
    h = binary(has_outcome, "has_outcome")
    return proportion(int(h.sum()), int(h.size), confidence, "no decisions")


def label_delay(decision_us: ArrayLike, outcome_us: ArrayLike) -> LabelDelay:
    """Median, 90th percentile and maximum of ``outcome − decision`` in seconds, over the
    pairs where both times are present (NaN marks a missing time)."""
    d = np.asarray(decision_us, dtype=np.float64)
    o = np.asarray(outcome_us, dtype=np.float64)
    if d.ndim != 1 or o.ndim != 1:
        raise ValueError("decision_us and outcome_us must be 1-D")
    same_length(decision_us=d, outcome_us=o)
    delay = (o - d)[np.isfinite(o) & np.isfinite(d)] / 1e6
    if delay.size == 0:
        return LabelDelay(0, None, None, None, 0, reason="no decision with an outcome time")
    median, p90 = np.quantile(delay, [0.5, 0.9])
    return LabelDelay(int(delay.size), float(median), float(p90), float(delay.max()),
                      int((delay < 0).sum()))
