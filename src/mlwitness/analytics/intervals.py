"""Confidence intervals, each returned with the name of the method that made it.

An :class:`Estimate` is a point value with a two-sided interval, the method, the confidence
level and the number of rows behind it. A figure that cannot be computed (no rows, no
positives, …) has ``value = None`` and a ``reason`` saying why, never NaN, so that a report
shows the reason rather than a blank.

Methods (the strings in :attr:`Estimate.method`):

* ``wilson`` — Wilson score interval for a binomial proportion (Wilson 1927; Newcombe 1998,
  method 3). Bounds are exactly 0 at ``k = 0`` and exactly 1 at ``k = n``. Vectorised in
  :func:`wilson_bounds`; equals :func:`mlwitness.analytics.stats.wilson_interval` element by
  element.
* ``newcombe`` — Newcombe's hybrid score interval for a difference of two independent
  proportions (Newcombe 1998b, method 10), built from the two Wilson intervals.
* ``delong`` — ROC AUC ± z·SE with DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988)
  computed in O(n log n) (Sun & Xu 2014), clipped to [0, 1].
* ``normal`` — mean ± z·s/√n with the sample standard deviation (ddof = 1), clipped to the
  statistic's range; used for the Brier score.
* ``fleiss-cohen-everitt`` — Cohen's kappa ± z·SE with the large-sample (non-null) variance
  of Fleiss, Cohen & Everitt (1969).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

WILSON = "wilson"
NEWCOMBE = "newcombe"
DELONG = "delong"
NORMAL = "normal"
FLEISS_COHEN_EVERITT = "fleiss-cohen-everitt"


@dataclass(frozen=True, slots=True)
class Estimate:
    """A figure with its two-sided interval; ``value is None`` when undefined (see reason)."""

    value: float | None
    low: float | None
    high: float | None
    method: str
    confidence: float
    n: int  # rows (trials) behind the figure
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def z_value(confidence: float) -> float:
    """The two-sided normal quantile ``Φ⁻¹((1 + confidence) / 2)``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + 0.5 * confidence)


def wilson_bounds(
    successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Wilson score bounds for arrays of counts; NaN where ``trials == 0``.

    ``centre = (2k + z²) / (2(n + z²))``, ``half = z / (2(n + z²)) · sqrt(4k(1 − k/n) + z²)``.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(n < 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= successes <= trials")
    z = z_value(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 2.0 * (n + z * z)
        centre = (2.0 * k + z * z) / denom
        half = z / denom * np.sqrt(4.0 * k * (1.0 - p) + z * z)
        low = np.where(k == 0, 0.0, centre - half)
        high = np.where(k == n, 1.0, centre + half)
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def proportion(successes: int, trials: int, confidence: float = 0.95,
               undefined: str = "no rows") -> Estimate:
    """``successes / trials`` with its Wilson interval; ``undefined`` is the reason when
    ``trials == 0``."""
    if trials == 0:
        return Estimate(None, None, None, WILSON, confidence, 0, undefined)
    low, high = wilson_bounds(successes, trials, confidence)
    return Estimate(successes / trials, float(low), float(high), WILSON, confidence,
                    int(trials))


def difference(a: Estimate, b: Estimate, undefined: str) -> Estimate:
    """``a − b`` of two independent Wilson proportions, Newcombe's hybrid score interval.

    ``L = d − sqrt((p₁ − l₁)² + (u₂ − p₂)²)``, ``U = d + sqrt((u₁ − p₁)² + (p₂ − l₂)²)``.
    """
    if a.value is None or b.value is None:
        return Estimate(None, None, None, NEWCOMBE, a.confidence, a.n + b.n, undefined)
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    d = a.value - b.value
    low = d - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = d + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    return Estimate(d, low, high, NEWCOMBE, a.confidence, a.n + b.n)


def normal(value: float, se: float | None, n: int, method: str, confidence: float,
           bounds: tuple[float, float], reason: str | None = None) -> Estimate:
    """``value ± z·se`` clipped to ``bounds``; no interval when ``se`` is None (with reason)."""
    if se is None:
        return Estimate(value, None, None, method, confidence, n, reason)
    z = z_value(confidence)
    low = min(max(value - z * se, bounds[0]), bounds[1])
    high = min(max(value + z * se, bounds[0]), bounds[1])
    return Estimate(value, low, high, method, confidence, n, reason)
