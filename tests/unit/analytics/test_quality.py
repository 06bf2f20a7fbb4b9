"""Model quality (mlwitness.analytics.quality) against scikit-learn, brute force and
published interval values."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from sklearn import metrics
from sklearn.calibration import calibration_curve

from mlwitness.analytics import quality as q
from mlwitness.analytics import review, stats
from mlwitness.analytics.intervals import (
    Estimate,
    difference,
    proportion,
    wilson_bounds,
    z_value,
)


def _data(seed: int, n: int, *, resolution: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.22), 0.0, 1.0)
    if resolution:  # coarse scores: many ties, across classes too
        s = np.round(s * resolution) / resolution
    return y, s


CASES = [
    _data(1, 2000),
    _data(2, 2000, resolution=10),
    _data(3, 57, resolution=4),
    # hand-made: ties inside and across classes, a score exactly on the threshold and on
    # calibration edges
    (np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 0]),
     np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.5, 0.9, 0.0, 1.0, 0.4])),
]


@pytest.mark.parametrize("y,s", CASES)
def test_figures_equal_sklearn(y, s):
    r = q.quality(y, s, threshold=0.5)
    pred = (s >= 0.5).astype(int)
    assert r.accuracy.value == pytest.approx(metrics.accuracy_score(y, pred), abs=1e-15)
    assert r.precision.value == pytest.approx(metrics.precision_score(y, pred), abs=1e-15)
    assert r.recall.value == pytest.approx(metrics.recall_score(y, pred), abs=1e-15)
    assert r.roc_auc.value == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert r.brier.value == pytest.approx(metrics.brier_score_loss(y, s), abs=1e-15)
    tn, fp, fn, tp = metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert r.confusion == q.Confusion(int(tp), int(fp), int(tn), int(fn))
    assert (r.n, r.positives, r.negatives) == (len(y), int(y.sum()), int((1 - y).sum()))
    assert r.threshold == 0.5


@pytest.mark.parametrize("y,s", CASES)
@pytest.mark.parametrize("strategy,bins", [("uniform", 10), ("uniform", 7), ("quantile", 10),
                                           ("quantile", 4)])
def test_calibration_equals_sklearn_calibration_curve(y, s, strategy, bins):
    cal = q.calibration(y, s, bins=bins, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=bins, strategy=strategy)
    kept = [b for b in cal.bins if b.count]  # sklearn drops empty bins
    assert len(cal.bins) == bins and sum(b.count for b in cal.bins) == len(y)
    np.testing.assert_allclose([b.observed_rate.value for b in kept], prob_true, atol=1e-14)
    np.testing.assert_allclose([b.mean_predicted for b in kept], prob_pred, atol=1e-14)
    for b in cal.bins:
        if b.count:
            low, high = stats.wilson_interval(round(b.observed_rate.value * b.count), b.count)
            assert (b.observed_rate.low, b.observed_rate.high) == pytest.approx((low, high))
        else:
            assert b.mean_predicted is None and b.observed_rate.value is None
    if strategy == "uniform":
        assert [b.lower for b in cal.bins] == pytest.approx(np.linspace(0, 1, bins + 1)[:-1])


def test_calibration_bins_hold_upper_edge_like_sklearn():
    cal = q.calibration([0, 1, 1, 0], [0.0, 0.1, 0.5, 1.0], bins=10)
    counts = [b.count for b in cal.bins]
    assert counts == [2, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # 0.1 closes bin 0, 0.5 closes bin 4


def _auc_brute(y, s):
    """AUC and DeLong's variance straight from the definition, O(m n)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size


@pytest.mark.parametrize("seed,resolution", [(4, None), (5, 5), (6, 20), (7, 1)])
def test_delong_variance_equals_brute_force(seed, resolution):
    y, s = _data(seed, 400, resolution=resolution)
    auc, var = q.delong(y, s)
    auc_b, var_b = _auc_brute(y, s)
    assert auc == pytest.approx(auc_b, abs=1e-12)
    assert var == pytest.approx(var_b, rel=1e-10, abs=1e-15)


def test_auc_interval_is_delong_normal():
    y, s = _data(8, 500, resolution=50)
    r = q.quality(y, s)
    auc, var = _auc_brute(y, s)
    z = z_value(0.95)
    assert r.roc_auc.method == "delong" and r.roc_auc.n == 500
    assert r.roc_auc.low == pytest.approx(auc - z * math.sqrt(var), abs=1e-12)
    assert r.roc_auc.high == pytest.approx(auc + z * math.sqrt(var), abs=1e-12)


def test_brier_interval_is_normal_from_squared_errors():
    y, s = _data(9, 300)
    e = (s - y) ** 2
    half = z_value(0.95) * e.std(ddof=1) / math.sqrt(e.size)
    r = q.quality(y, s).brier
    assert r.method == "normal"
    assert (r.low, r.high) == pytest.approx((e.mean() - half, e.mean() + half), abs=1e-15)


# ---------------------------------------------------------------- intervals


def test_wilson_eight_of_ten_by_hand():
    # z = 1.959964, z² = 3.841459; centre = (16 + z²) / (2(10 + z²)) = 0.716740;
    # half = z / (2(10 + z²)) · sqrt(32 · 0.2 + z²) = 0.226578; the usual published
    # rounding is 0.4902 – 0.9433
    e = proportion(8, 10)
    assert e.value == 0.8 and e.method == "wilson"
    assert e.low == pytest.approx(0.490162, abs=5e-7)
    assert e.high == pytest.approx(0.943318, abs=5e-7)


@pytest.mark.parametrize("k,n,low,high", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_published_values(k, n, low, high):
    e = proportion(k, n)
    assert (round(e.low, 4), round(e.high, 4)) == (low, high)


def test_wilson_bounds_vectorised_equal_scalar():
    k = np.array([0, 1, 5, 10, 3, 0])
    n = np.array([10, 10, 10, 10, 1000, 0])
    low, high = wilson_bounds(k, n, 0.9)
    for i in range(5):
        assert (low[i], high[i]) == pytest.approx(stats.wilson_interval(k[i], n[i],
                                                                        confidence=0.9))
    assert math.isnan(low[5]) and math.isnan(high[5])
    assert (low[0], high[3]) == (0.0, 1.0)


def test_newcombe_difference_matches_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a) 56/70 − 48/80, method 10
    d = difference(proportion(56, 70), proportion(48, 80), "x")
    assert d.method == "newcombe" and d.value == pytest.approx(0.2)
    assert (round(d.low, 4), round(d.high, 4)) == (0.0524, 0.3339)


# ---------------------------------------------------------------- groups


def test_group_rates_equal_sklearn_per_group():
    rng = np.random.default_rng(10)
    y, s = _data(10, 3000)
    labels = rng.choice(np.array(["a", "b", "c"]), 3000, p=[0.5, 0.3, 0.2])
    codes, names = q.encode_groups(labels)
    assert names == ("a", "b", "c")
    pred = (s >= 0.5).astype(int)
    gq = q.group_rates(y, pred, codes, names)
    assert gq.reference == "a" and gq.reference_rule == "largest group"
    tpr, fpr = {}, {}
    for g in gq.groups:
        m = labels == g.group
        tn, fp, fn, tp = metrics.confusion_matrix(y[m], pred[m], labels=[0, 1]).ravel()
        assert (g.n, g.positives, g.negatives) == (m.sum(), tp + fn, tn + fp)
        assert g.tpr.value == pytest.approx(metrics.recall_score(y[m], pred[m]))
        assert g.fpr.value == pytest.approx(fp / (fp + tn))
        assert (g.tpr.low, g.tpr.high) == pytest.approx(stats.wilson_interval(tp, tp + fn))
        tpr[g.group], fpr[g.group] = g.tpr.value, g.fpr.value
    for g in gq.groups:
        assert g.tpr_difference.value == pytest.approx(tpr[g.group] - tpr["a"])
        assert g.fpr_difference.value == pytest.approx(fpr[g.group] - fpr["a"])
        assert g.tpr_difference.method == "newcombe"
    assert gq.groups[0].tpr_difference.value == 0.0


def test_group_reference_given_and_empty_group_kept():
    y = np.array([1, 0, 1, 0, 1, 1])
    pred = np.array([1, 0, 0, 1, 1, 1])
    codes = np.array([0, 0, 0, 0, 1, 1])
    gq = q.group_rates(y, pred, codes, ["big", "small", "nobody"], reference="small")
    assert gq.reference == "small" and gq.reference_rule == "given"
    big, small, nobody = gq.groups
    assert big.tpr.value == 0.5 and small.tpr.value == 1.0
    assert big.tpr_difference.value == -0.5
    # "small" has no negatives: its FPR, and every FPR difference, is undefined
    assert small.fpr.value is None and small.fpr.reason == "no negative outcomes"
    assert big.fpr_difference.value is None and "undefined" in big.fpr_difference.reason
    assert nobody.n == 0 and nobody.tpr.value is None and nobody.tpr.reason == "no rows"
    assert nobody.tpr_difference.value is None
    with pytest.raises(ValueError, match="reference group 'x'"):
        q.group_rates(y, pred, codes, ["big", "small"], reference="x")
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 1\)"):
        q.group_rates(y, pred, codes, ["big"])


def test_quality_with_groups():
    y, s = _data(11, 200)
    codes = np.arange(200) % 3
    r = q.quality(y, s, group_codes=codes, group_names=["x", "y", "z"], reference="z")
    assert r.groups is not None and r.groups.reference == "z"
    assert sum(g.n for g in r.groups.groups) == 200
    with pytest.raises(ValueError, match="group_names"):
        q.quality(y, s, group_codes=codes)


# ---------------------------------------------------------------- edge cases


def test_no_positive_outcomes():
    r = q.quality([0, 0, 0], [0.2, 0.7, 0.4])
    assert r.roc_auc.value is None and r.roc_auc.reason == "undefined: no positive outcomes"
    assert r.recall.value is None and r.recall.reason == "undefined: no positive outcomes"
    assert r.precision.value == 0.0  # one positive prediction, wrong
    assert r.accuracy.value == pytest.approx(2 / 3)


def test_no_negative_outcomes():
    r = q.quality([1, 1], [0.2, 0.7])
    assert r.roc_auc.value is None and r.roc_auc.reason == "undefined: no negative outcomes"


def test_all_one_class_predictions_leave_precision_undefined():
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.45])
    r = q.quality(y, s)
    assert r.precision.value is None
    assert r.precision.reason == "undefined: no positive predictions"
    assert math.isnan(metrics.precision_score(y, (s >= 0.5).astype(int), zero_division=np.nan))
    assert r.recall.value == 0.0 and r.recall.low == 0.0
    assert r.roc_auc.value == pytest.approx(metrics.roc_auc_score(y, s))


def test_no_rows():
    r = q.quality([], [])
    assert r.n == 0 and r.accuracy.value is None and r.accuracy.reason == "no rows"
    assert r.precision.reason == "no rows" and r.roc_auc.reason == "undefined: no rows"
    assert r.brier.value is None and all(b.count == 0 for b in r.calibration.bins)
    assert q.calibration([], [], strategy="quantile").bins == ()


def test_one_row_of_a_class_gives_auc_without_interval():
    y = np.array([1, 0, 0, 0])
    s = np.array([0.6, 0.6, 0.2, 0.1])
    r = q.quality(y, s)
    assert r.roc_auc.value == pytest.approx(metrics.roc_auc_score(y, s))
    assert r.roc_auc.low is None and "fewer than two" in r.roc_auc.reason
    with pytest.raises(ValueError, match="two rows of each class"):
        q.delong(y, s)


def test_perfect_separation_gives_degenerate_interval():
    r = q.quality([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (r.roc_auc.value, r.roc_auc.low, r.roc_auc.high) == (1.0, 1.0, 1.0)


def test_given_decisions_override_threshold():
    r = q.quality([1, 0, 1], [0.9, 0.1, 0.2], [1, 1, 1])
    assert r.threshold is None and r.confusion == q.Confusion(2, 1, 0, 0)


@pytest.mark.parametrize("args,match", [
    (([0, 2], [0.1, 0.2]), "y_true must hold only 0 and 1"),
    (([0, 1], [0.1, 1.2]), "y_score must be finite and within"),
    (([0, 1], [0.1, float("nan")]), "y_score must be finite and within"),
    (([0, 1], [0.1]), "length mismatch"),
    (([[0, 1]], [[0.1, 0.2]]), "y_true must be 1-D"),
    ((["a", "b"], [0.1, 0.2]), "y_true must be 0/1 or bool"),
])
def test_bad_input_is_named(args, match):
    with pytest.raises(ValueError, match=match):
        q.quality(*args)


def test_bad_calibration_arguments():
    with pytest.raises(ValueError, match="strategy"):
        q.calibration([0], [0.1], strategy="kmeans")
    with pytest.raises(ValueError, match="bins"):
        q.calibration([0], [0.1], bins=0)


# ---------------------------------------------------------------- outcomes and review


def test_coverage_and_label_delay():
    c = q.coverage([True, False, True, True])
    assert c.value == 0.75 and c.n == 4 and c.method == "wilson"
    assert q.coverage([]).value is None
    day = 86_400e6
    decided = np.array([0, 0, 0, 0, 0, 0], dtype=float)
    known = np.array([1 * day, 2 * day, 3 * day, 10 * day, np.nan, -1e6])
    d = q.label_delay(decided, known)
    delays = np.array([86400, 172800, 259200, 864000, -1.0])
    assert d.n == 5 and d.negative == 1
    assert d.median_s == pytest.approx(np.median(delays))
    assert d.p90_s == pytest.approx(np.percentile(delays, 90))
    assert d.max_s == 864000
    none = q.label_delay([1.0], [np.nan])
    assert none.n == 0 and none.median_s is None and none.reason


def test_review_agreement_equals_sklearn_kappa():
    rng = np.random.default_rng(12)
    n = 5000
    model = rng.choice(np.array(["approve", "decline", "refer"]), n, p=[0.6, 0.3, 0.1])
    reviewed = rng.random(n) < 0.3
    flip = reviewed & (rng.random(n) < 0.25)
    final = np.where(flip, rng.choice(np.array(["approve", "decline", "refer"]), n), model)
    final[~reviewed & (rng.random(n) < 0.01)] = "refer"  # changed without a review
    r = review.review_agreement(model, final, reviewed)
    assert r.decisions == n and r.reviewed == reviewed.sum()
    assert r.overrides == (reviewed & (model != final)).sum()
    assert r.unreviewed_changes == (~reviewed & (model != final)).sum()
    assert r.labels == ("approve", "decline", "refer")
    assert r.review_rate.value == pytest.approx(reviewed.mean())
    assert r.override_rate.value == pytest.approx(r.overrides / r.reviewed)
    assert r.agreement.value == pytest.approx(
        metrics.accuracy_score(model[reviewed], final[reviewed]))
    assert r.kappa.value == pytest.approx(
        metrics.cohen_kappa_score(model[reviewed], final[reviewed]), abs=1e-12)
    numeric = review.review_agreement(np.unique(model, return_inverse=True)[1],
                                 np.unique(np.concatenate([model, final]),
                                           return_inverse=True)[1][n:], reviewed)
    assert numeric.kappa.value == pytest.approx(r.kappa.value)


def _kappa_of(p):
    po, pe = np.trace(p), p.sum(axis=1) @ p.sum(axis=0)
    return (po - pe) / (1 - pe)


def test_kappa_variance_is_the_delta_method_variance():
    # Fleiss–Cohen–Everitt is the multinomial delta-method variance: check it against a
    # numerical gradient of kappa(p) with Σ = diag(p) − p pᵀ.
    counts = np.array([[40, 6, 2], [5, 30, 4], [1, 3, 9]], dtype=float)
    n = counts.sum()
    p = counts / n
    flat = p.ravel()
    grad = np.empty(flat.size)
    h = 1e-7
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (_kappa_of(up.reshape(3, 3)) - _kappa_of(down.reshape(3, 3))) / (2 * h)
    var = grad @ (np.diag(flat) - np.outer(flat, flat)) @ grad / n
    model = np.repeat(np.arange(3), counts.sum(axis=1).astype(int))
    final = np.concatenate([np.repeat(np.arange(3), counts[i].astype(int)) for i in range(3)])
    k = review.review_agreement(model, final, np.ones(int(n), dtype=bool)).kappa
    z = z_value(0.95)
    assert k.value == pytest.approx(_kappa_of(p), abs=1e-12)
    assert (k.high - k.low) / (2 * z) == pytest.approx(math.sqrt(var), rel=1e-6)
    assert k.method == "fleiss-cohen-everitt"


def test_review_edge_cases():
    none = review.review_agreement(["a", "b"], ["a", "b"], [False, False])
    assert none.reviewed == 0 and none.override_rate.value is None
    assert none.kappa.value is None and none.kappa.reason == "no reviewed decisions"
    same = review.review_agreement(["a", "a"], ["a", "a"], [True, True])
    assert same.agreement.value == 1.0 and same.kappa.value is None
    assert "single decision" in same.kappa.reason
    empty = review.review_agreement([], [], [])
    assert empty.decisions == 0 and empty.review_rate.reason == "no decisions"


def test_to_dict_is_json_with_numbers():
    y, s = _data(13, 100)
    r = q.quality(y, s, group_codes=np.arange(100) % 2, group_names=["p", "q"])
    d = json.loads(json.dumps(r.to_dict()))
    assert isinstance(d["roc_auc"]["value"], float) and isinstance(d["n"], int)
    assert d["accuracy"]["method"] == "wilson" and d["confusion"]["tp"] >= 0
    assert d["calibration"]["bins"][0]["observed_rate"]["confidence"] == 0.95
    assert d["groups"]["groups"][1]["group"] == "q"
    for part in (review.review_agreement([1], [1], [True]), q.label_delay([0], [1e6]),
                 q.coverage([1]), Estimate(None, None, None, "wilson", 0.95, 0, "x")):
        json.dumps(part.to_dict())
    # Python numbers, not numpy scalars, all the way down
    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)
        else:
            assert type(x) in (int, float, str, bool, type(None)), type(x)
    walk(r.to_dict())


def test_confidence_level_is_used_and_recorded():
    y, s = _data(14, 300)
    wide, narrow = q.quality(y, s, confidence=0.99), q.quality(y, s, confidence=0.8)
    for a, b in itertools.pairwise([wide.accuracy, narrow.accuracy]):
        assert a.low < b.low < b.high < a.high
    assert wide.roc_auc.confidence == 0.99 and narrow.brier.confidence == 0.8
    with pytest.raises(ValueError, match="confidence"):
        q.quality(y, s, confidence=1.0)
