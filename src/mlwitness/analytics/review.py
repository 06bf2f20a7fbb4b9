"""Human review against the model, from arrays of the model's decision, the final
decision and whether a person reviewed it.

Review rate is reviewed / decisions; override rate is, among reviewed rows, the share whose
final decision differs from the model's; raw agreement is one minus that. Cohen's kappa of
model vs final decision over the reviewed rows (equal to
``sklearn.metrics.cohen_kappa_score``) has the Fleiss–Cohen–Everitt (1969) interval; it is
undefined when both used one decision throughout. Rows that were not reviewed but whose
final decision differs are counted apart (``unreviewed_changes``): an override nobody
recorded as a review is something an auditor asks about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mlwitness.analytics.intervals import FLEISS_COHEN_EVERITT, Estimate, normal, proportion
from mlwitness.analytics.quality import Result, binary, same_length


@dataclass(frozen=True, slots=True)
class ReviewAgreement(Result):
    """Human review against the model; agreement figures are over the reviewed rows."""

    decisions: int
    reviewed: int
    overrides: int  # reviewed rows whose final decision differs from the model's
    review_rate: Estimate  # reviewed / decisions
    override_rate: Estimate  # overrides / reviewed
    agreement: Estimate  # 1 − override rate
    kappa: Estimate  # Cohen's kappa, model vs final, over the reviewed rows
    labels: tuple[str, ...]
    unreviewed_changes: int  # rows not reviewed whose final decision still differs


def _kappa(a: NDArray[np.intp], b: NDArray[np.intp], k: int,
           confidence: float) -> Estimate:
    n = a.size
    if n == 0:
        return Estimate(None, None, None, FLEISS_COHEN_EVERITT, confidence, 0,
                        "no reviewed decisions")
    p = np.bincount(a * k + b, minlength=k * k).reshape(k, k) / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    po, pe = float(np.trace(p)), float(rows @ cols)
    if pe >= 1.0 - 1e-15:
        return Estimate(None, None, None, FLEISS_COHEN_EVERITT, confidence, n,
                        "undefined: model and reviewers used a single decision throughout")
    kappa = (po - pe) / (1.0 - pe)
    # Fleiss, Cohen & Everitt (1969), the variance under no assumption about kappa.
    diag = np.diag(p) * (1.0 - (rows + cols) * (1.0 - kappa)) ** 2
    weight = (cols[:, None] + rows[None, :]) ** 2  # (p.i + pj.)² for cell (i, j)
    off = p * weight
    np.fill_diagonal(off, 0.0)
    var = (diag.sum() + (1.0 - kappa) ** 2 * off.sum()
           - (kappa - pe * (1.0 - kappa)) ** 2) / (n * (1.0 - pe) ** 2)
    return normal(kappa, math.sqrt(max(float(var), 0.0)), n, FLEISS_COHEN_EVERITT,
                  confidence, (-1.0, 1.0))


def _numeric(a: NDArray[Any]) -> bool:
    return a.dtype == np.bool_ or np.issubdtype(a.dtype, np.number)


def review_agreement(model_decision: ArrayLike, final_decision: ArrayLike,
                     reviewed: ArrayLike, confidence: float = 0.95) -> ReviewAgreement:
    """Review rate, override rate, agreement and Cohen's kappa of model vs final decision.

    Decisions are labels of any kind: numbers (or bools) compare as numbers, anything else
    as strings (integer codes are much faster than strings for a million rows). Only
    reviewed rows enter the agreement figures: unreviewed rows agree by construction.
    """
    m, f = np.asarray(model_decision), np.asarray(final_decision)
    if not (_numeric(m) and _numeric(f)):  # sorting a million numbers is ~10x faster
        m, f = m.astype(str), f.astype(str)
    r = binary(reviewed, "reviewed").astype(bool)
    if m.ndim != 1 or f.ndim != 1:
        raise ValueError("model_decision and final_decision must be 1-D")
    same_length(model_decision=m, final_decision=f, reviewed=r)
    labels, codes = np.unique(np.concatenate([m, f]), return_inverse=True)
    mc, fc = codes[: m.size], codes[m.size:]
    changed = mc != fc
    nr = int(r.sum())
    overrides = int((changed & r).sum())
    return ReviewAgreement(
        decisions=int(m.size), reviewed=nr, overrides=overrides,
        review_rate=proportion(nr, int(m.size), confidence, "no decisions"),
        override_rate=proportion(overrides, nr, confidence, "no reviewed decisions"),
        agreement=proportion(nr - overrides, nr, confidence, "no reviewed decisions"),
        kappa=_kappa(mc[r], fc[r], len(labels), confidence),
        labels=tuple(str(x) for x in labels),
        unreviewed_changes=int((changed & ~r).sum()))
