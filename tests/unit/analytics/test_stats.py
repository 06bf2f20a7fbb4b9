"""Tests for mlwitness.analytics.stats; scipy is the oracle throughout."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as ss
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from mlwitness.analytics import stats

TOL = {"abs": 1e-9, "rel": 1e-9}


def close(x: float, y: float) -> bool:
    return math.isclose(x, y, abs_tol=1e-9, rel_tol=1e-9)


def sample_pair(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted samples of a named shape."""
    rng = np.random.default_rng(seed)
    if kind == "small":
        a, b = rng.normal(size=20), rng.normal(size=20)
    elif kind == "small_unequal_shifted":
        a, b = rng.normal(size=20), rng.normal(0.8, 1.3, size=31)
    elif kind == "ties":
        a, b = rng.integers(0, 6, size=40), rng.integers(1, 7, size=55)
    elif kind == "ties_heavy_one_value":
        a = np.concatenate([np.zeros(30), rng.normal(size=10)])
        b = np.concatenate([np.zeros(12), rng.normal(size=25)])
    elif kind == "large_unshifted":
        a, b = rng.normal(size=100_000), rng.normal(size=80_000)
    elif kind == "large_shifted":
        a, b = rng.normal(size=100_000), rng.normal(0.02, size=100_000)
    elif kind == "large_lognormal_rounded":
        a = np.round(rng.lognormal(size=100_000), 1)
        b = np.round(rng.lognormal(0.05, size=50_000), 1)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return np.sort(a.astype(float)), np.sort(b.astype(float))


KINDS = [
    "small",
    "small_unequal_shifted",
    "ties",
    "ties_heavy_one_value",
    "large_unshifted",
    "large_shifted",
    "large_lognormal_rounded",
]


# ---------------------------------------------------------------- import hygiene


def test_module_import_does_not_import_scipy() -> None:
    src = str(Path(stats.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    code = "import sys, mlwitness.analytics.stats; print('scipy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- KS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_ks_matches_scipy_asymp(kind: str, seed: int) -> None:
    a, b = sample_pair(kind, seed)
    ours = stats.ks_2samp_sorted(a, b)
    ref = ss.ks_2samp(a, b, method="asymp")
    assert ours.statistic == pytest.approx(ref.statistic, **TOL)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)


def test_ks_matches_scipy_with_ties_and_argument_order_swapped() -> None:
    a, b = sample_pair("ties", 3)
    ours = stats.ks_2samp_sorted(b, a)
    ref = ss.ks_2samp(b, a, method="asymp")
    assert ours.statistic == pytest.approx(ref.statistic, **TOL)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)


def test_ks_detects_large_shift_with_tiny_pvalue() -> None:
    rng = np.random.default_rng(7)
    a, b = np.sort(rng.normal(size=5000)), np.sort(rng.normal(0.5, size=5000))
    stat, p = stats.ks_2samp_sorted(a, b)
    assert stat > 0.15
    assert p < 1e-30
    assert p == pytest.approx(ss.ks_2samp(a, b, method="asymp").pvalue, **TOL)


def test_ks_identical_samples_give_zero_statistic_and_pvalue_one() -> None:
    a = np.sort(np.random.default_rng(2).normal(size=50))
    res = stats.ks_2samp_sorted(a, a)
    assert res.statistic == 0.0
    assert res.pvalue == 1.0


def test_ks_disjoint_samples_give_statistic_one() -> None:
    res = stats.ks_2samp_sorted([1.0, 2.0, 3.0], [10.0, 11.0])
    ref = ss.ks_2samp([1.0, 2.0, 3.0], [10.0, 11.0], method="asymp")
    assert res.statistic == 1.0
    assert res.pvalue == pytest.approx(ref.pvalue, **TOL)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ([2.0, 1.0], [1.0, 2.0], "a_sorted is not sorted ascending"),
        ([1.0, 2.0], [1.0, np.nan], "b_sorted contains NaN"),
        ([], [1.0], "a_sorted must be a non-empty 1-D array"),
        ([[1.0, 2.0]], [1.0], "a_sorted must be a non-empty 1-D array"),
    ],
)
def test_ks_rejects_bad_samples(a: list, b: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.ks_2samp_sorted(a, b)


# ---------------------------------------------------------------- Wasserstein


@pytest.mark.parametrize("kind", KINDS)
def test_wasserstein_matches_scipy(kind: str) -> None:
    a, b = sample_pair(kind, 11)
    ours = stats.wasserstein1_sorted(a, b)
    assert ours == pytest.approx(ss.wasserstein_distance(a, b), **TOL)


def test_wasserstein_of_constant_shift_equals_shift() -> None:
    a = np.sort(np.random.default_rng(4).normal(size=1000))
    assert stats.wasserstein1_sorted(a, a + 0.25) == pytest.approx(0.25, **TOL)
    assert stats.wasserstein1_sorted(a, a) == 0.0


def test_wasserstein_rejects_unsorted_input() -> None:
    with pytest.raises(ValueError, match="b_sorted is not sorted ascending"):
        stats.wasserstein1_sorted([0.0, 1.0], [3.0, 2.0])


# ---------------------------------------------------------------- PSI


def psi_reference(e: np.ndarray, a: np.ndarray, eps: float = 1e-4) -> float:
    p = np.clip(e / e.sum(), eps, None)
    q = np.clip(a / a.sum(), eps, None)
    return float(((q - p) * np.log(q / p)).sum())


@pytest.mark.parametrize("seed", range(5))
def test_psi_matches_numpy_reference_including_empty_bins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    e = rng.integers(0, 500, size=12).astype(float)
    a = rng.integers(0, 500, size=12).astype(float)
    e[seed % 12] = 0  # at least one empty bin on each side
    a[(seed + 5) % 12] = 0
    assert stats.psi(e, a) == pytest.approx(psi_reference(e, a), **TOL)
    assert stats.psi(e, a, epsilon=1e-6) == pytest.approx(psi_reference(e, a, 1e-6), **TOL)


def test_psi_textbook_two_bins() -> None:
    # p = (0.5, 0.5), q = (0.25, 0.75):
    # (0.25-0.5) ln(0.25/0.5) + (0.75-0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 ln 3
    assert stats.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(3), **TOL)


def test_psi_textbook_deciles() -> None:
    # Reference deciles (10% each) vs. a population where the lowest decile doubled.
    expected = [10] * 10
    actual = [20] + [80 / 9] * 9
    q0, qi = 0.2, (0.8 / 9)
    by_hand = (q0 - 0.1) * math.log(q0 / 0.1) + 9 * (qi - 0.1) * math.log(qi / 0.1)
    # by hand: 0.1 * ln 2 = 0.0693; 9 * (-0.01111) * ln(0.8889) = 9 * 0.001309 = 0.0118
    assert by_hand == pytest.approx(0.0811, abs=5e-5)
    assert stats.psi(expected, actual) == pytest.approx(by_hand, **TOL)


def test_psi_equals_jeffreys_divergence_without_flooring() -> None:
    rng = np.random.default_rng(9)
    e, a = rng.integers(100, 1000, size=8), rng.integers(100, 1000, size=8)
    p, q = e / e.sum(), a / a.sum()
    jeffreys = rel_entr(p, q).sum() + rel_entr(q, p).sum()
    assert stats.psi(e, a) == pytest.approx(jeffreys, **TOL)
    assert stats.psi(e, a) == pytest.approx(stats.psi(a, e), **TOL)


def test_psi_is_zero_for_proportional_counts() -> None:
    assert stats.psi([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0, abs=1e-15)


def test_psi_empty_bin_is_finite_and_uses_epsilon() -> None:
    value = stats.psi([50, 50, 0], [50, 40, 10], epsilon=1e-3)
    p = np.array([0.5, 0.5, 1e-3])
    q = np.array([0.5, 0.4, 0.1])
    assert math.isfinite(value)
    assert value == pytest.approx(float(((q - p) * np.log(q / p)).sum()), **TOL)


@pytest.mark.parametrize(
    ("e", "a", "kwargs", "match"),
    [
        ([1, 2, 3], [1, 2], {}, "length mismatch: expected_counts has 3 bins, actual_counts has 2"),
        ([1, -2, 3], [1, 2, 3], {}, "expected_counts contains negative counts"),
        ([1, 2, 3], [0, 0, 0], {}, "actual_counts has a zero total"),
        ([1, np.nan], [1, 2], {}, "expected_counts contains NaN or infinite values"),
        ([], [], {}, "expected_counts must be a non-empty 1-D array"),
        ([1, 2], [1, 2], {"epsilon": 0.0}, "epsilon must be positive"),
    ],
)
def test_psi_rejects_bad_input(e: list, a: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.psi(e, a, **kwargs)


# ---------------------------------------------------------------- JS / L-inf


@pytest.mark.parametrize("base", [2.0, math.e, 10.0])
@pytest.mark.parametrize("seed", range(4))
def test_js_matches_scipy_jensenshannon(base: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 50, size=15).astype(float)
    q = rng.integers(0, 50, size=15).astype(float)
    p[seed] = 0.0
    q[seed + 3] = 0.0
    assert stats.js_distance(p, q, base=base) == pytest.approx(
        jensenshannon(p, q, base=base), **TOL
    )


def test_js_of_disjoint_supports_is_one_in_base_2_and_zero_for_equal() -> None:
    assert stats.js_distance([5, 0], [0, 7]) == pytest.approx(1.0, **TOL)
    assert stats.js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)


def test_js_rejects_mismatched_lengths_and_bad_base() -> None:
    with pytest.raises(ValueError, match="length mismatch: p_counts has 2 bins"):
        stats.js_distance([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="base must be positive and != 1"):
        stats.js_distance([1, 2], [1, 2], base=1.0)


def test_linf_distance_matches_numpy_reference() -> None:
    rng = np.random.default_rng(5)
    p, q = rng.integers(0, 100, size=20), rng.integers(0, 100, size=20)
    ref = np.max(np.abs(p / p.sum() - q / q.sum()))
    assert stats.linf_distance(p, q) == pytest.approx(ref, **TOL)
    assert stats.linf_distance([1, 1], [3, 1]) == pytest.approx(0.25, **TOL)


def test_linf_rejects_zero_total() -> None:
    with pytest.raises(ValueError, match="p_counts has a zero total"):
        stats.linf_distance([0, 0], [1, 1])


# ---------------------------------------------------------------- chi-square goodness of fit


@pytest.mark.parametrize("seed", range(5))
def test_chi2_gof_matches_scipy_chisquare(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 3 + seed
    props = rng.dirichlet(np.ones(k))
    obs = rng.multinomial(200 * (seed + 1), rng.dirichlet(np.ones(k) * 5)).astype(float)
    ours = stats.chi2_goodness_of_fit(obs, props)
    ref = ss.chisquare(obs, f_exp=props * obs.sum())
    assert ours.statistic == pytest.approx(ref.statistic, **TOL)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)
    assert ours.dof == k - 1
    assert ours.unseen_categories == ()
    assert isinstance(ours, stats.TestResult)


def test_chi2_gof_accepts_reference_counts_as_proportions() -> None:
    obs, ref_counts = np.array([30.0, 50.0, 20.0]), np.array([300.0, 400.0, 300.0])
    ours = stats.chi2_goodness_of_fit(obs, ref_counts)
    ref = ss.chisquare(obs, f_exp=ref_counts / ref_counts.sum() * obs.sum())
    assert ours.statistic == pytest.approx(ref.statistic, **TOL)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)


def test_chi2_gof_unseen_category_is_floored_and_reported() -> None:
    obs = np.array([40.0, 55.0, 5.0])
    props = np.array([0.4, 0.6, 0.0])
    with np.errstate(divide="ignore"):
        assert not np.isfinite(ss.chisquare(obs, f_exp=props * obs.sum()).statistic)
    res = stats.chi2_goodness_of_fit(obs, props, epsilon=1e-3)
    floored = np.array([0.4, 0.6, 1e-3]) / 1.001
    exp = floored * obs.sum()
    assert res.unseen_categories == (2,)
    assert res.dof == 2
    assert math.isfinite(res.statistic)
    assert res.statistic == pytest.approx(float(((obs - exp) ** 2 / exp).sum()), **TOL)
    assert res.pvalue < 1e-10


def test_chi2_gof_drops_categories_empty_in_both() -> None:
    res = stats.chi2_goodness_of_fit([10, 0, 30], [0.2, 0.0, 0.8])
    ref = ss.chisquare([10, 30], f_exp=np.array([0.2, 0.8]) * 40)
    assert res.dof == 1
    assert res.unseen_categories == ()
    assert res.statistic == pytest.approx(ref.statistic, **TOL)
    assert res.pvalue == pytest.approx(ref.pvalue, **TOL)


def test_chi2_gof_single_category_is_degenerate() -> None:
    stat, p = stats.chi2_goodness_of_fit([7, 0], [1.0, 0.0])
    assert (stat, p) == (0.0, 1.0)


def test_chi2_gof_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="observed_counts has 2 categories"):
        stats.chi2_goodness_of_fit([1, 2], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="expected_proportions contains negative counts"):
        stats.chi2_goodness_of_fit([1, 2], [1.2, -0.2])


# ---------------------------------------------------------------- contingency


@pytest.mark.parametrize("shape", [(2, 2), (2, 5), (3, 4), (6, 3)])
@pytest.mark.parametrize("correction", [False, True])
def test_chi2_contingency_matches_scipy(shape: tuple[int, int], correction: bool) -> None:
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    table = rng.integers(1, 60, size=shape)
    ours = stats.chi2_contingency(table, correction=correction)
    ref = ss.chi2_contingency(table, correction=correction)
    assert ours.statistic == pytest.approx(ref.statistic, **TOL)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)
    assert ours.dof == ref.dof


def test_chi2_contingency_yates_caps_correction_at_the_difference() -> None:
    table = [[10, 10], [10, 11]]  # |E - O| < 0.5 in every cell
    ours = stats.chi2_contingency(table, correction=True)
    ref = ss.chi2_contingency(table, correction=True)
    assert ours.statistic == pytest.approx(ref.statistic, **TOL)
    assert ours.statistic == pytest.approx(0.0, abs=1e-12)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)


def test_chi2_contingency_default_is_uncorrected() -> None:
    table = [[12, 3], [17, 16]]
    assert stats.chi2_contingency(table).statistic == pytest.approx(
        ss.chi2_contingency(table, correction=False).statistic, **TOL
    )
    assert stats.chi2_contingency(table).pvalue == pytest.approx(0.0614122539870913, **TOL)


def test_chi2_contingency_drops_all_zero_rows_and_columns() -> None:
    table = np.array([[10, 0, 20], [0, 0, 0], [15, 0, 5]])
    with pytest.raises(ValueError):
        ss.chi2_contingency(table)
    ours = stats.chi2_contingency(table)
    ref = ss.chi2_contingency([[10, 20], [15, 5]], correction=False)
    assert ours.dof == 1
    assert ours.statistic == pytest.approx(ref.statistic, **TOL)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)


def test_chi2_contingency_single_row_is_degenerate() -> None:
    assert stats.chi2_contingency([[3, 4, 5]]) == stats.ContingencyResult(0.0, 1.0, 0)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ([1, 2, 3], "table must be a non-empty 2-D array"),
        ([[1, -1], [2, 3]], "table must contain finite, non-negative counts"),
        ([[0, 0], [0, 0]], "table has a zero total"),
    ],
)
def test_chi2_contingency_rejects_bad_tables(table: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.chi2_contingency(table)


# ---------------------------------------------------------------- Fisher


def fisher_tables() -> list[list[list[int]]]:
    rng = np.random.default_rng(42)
    tables = [rng.integers(0, 15, size=(2, 2)).tolist() for _ in range(60)]
    tables += [rng.integers(200, 3000, size=(2, 2)).tolist() for _ in range(10)]
    tables += [
        [[3, 7], [9, 2]],
        [[8, 2], [1, 5]],
        [[0, 10], [10, 0]],
        [[10, 0], [0, 10]],
        [[5, 5], [5, 5]],
        [[1, 0], [0, 1]],
        [[100, 1], [1, 100]],
        [[1000, 2000], [1500, 1400]],
        # pmf(x) ties pmf(observed) only within rounding: needs scipy's 1e-14 tolerance
        [[0, 3], [15, 12]],
        [[0, 9], [18, 9]],
    ]
    return tables


@pytest.mark.parametrize("table", fisher_tables())
def test_fisher_matches_scipy(table: list[list[int]]) -> None:
    ours = stats.fisher_exact_2x2(table)
    ref = ss.fisher_exact(table)
    assert ours.pvalue == pytest.approx(ref.pvalue, **TOL)
    if math.isnan(ref.statistic):
        assert math.isnan(ours.statistic)
    else:
        assert ours.statistic == pytest.approx(ref.statistic, **TOL)


@pytest.mark.parametrize("table", [[[5, 5], [5, 5]], [[0, 3], [3, 8]], [[0, 1], [15, 14]]])
def test_fisher_table_as_likely_as_the_mode_has_pvalue_exactly_one(table: list) -> None:
    # for the last two, summing the pmf gives 1 - 1e-16; scipy short-circuits to 1.0
    assert ss.fisher_exact(table).pvalue == 1.0
    assert stats.fisher_exact_2x2(table).pvalue == 1.0


def test_fisher_zero_margin_gives_nan_odds_and_pvalue_one() -> None:
    stat, p = stats.fisher_exact_2x2([[0, 0], [4, 5]])
    assert math.isnan(stat)
    assert p == 1.0


def test_fisher_infinite_odds_ratio_and_small_pvalue() -> None:
    res = stats.fisher_exact_2x2([[10, 0], [0, 10]])
    assert res.statistic == math.inf
    assert res.pvalue == pytest.approx(2 / math.comb(20, 10), **TOL)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ([[1, 2, 3], [4, 5, 6]], r"table must have shape \(2, 2\)"),
        ([[1, -2], [3, 4]], "non-negative integer counts"),
        ([[1.5, 2], [3, 4]], "non-negative integer counts"),
    ],
)
def test_fisher_rejects_bad_tables(table: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.fisher_exact_2x2(table)


# ---------------------------------------------------------------- Wilson


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize(
    ("k", "n"),
    [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (17, 250), (4999, 10_000), (1, 1_000_000)],
)
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    ref = ss.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    low, high = stats.wilson_interval(k, n, confidence=confidence)
    assert low == pytest.approx(ref.low, **TOL)
    assert high == pytest.approx(ref.high, **TOL)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_zero_trials_is_uninformative() -> None:
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="need 0 <= successes <= trials, got 5 of 3"):
        stats.wilson_interval(5, 3)
    with pytest.raises(ValueError, match="confidence must be in"):
        stats.wilson_interval(1, 3, confidence=1.0)


# ---------------------------------------------------------------- bias metrics


def test_disparate_impact_and_parity_difference_known_values() -> None:
    # unprivileged 30/100 favourable, privileged 50/100
    assert stats.disparate_impact(30, 100, 50, 100) == pytest.approx(0.6, **TOL)
    assert stats.statistical_parity_difference(30, 100, 50, 100) == pytest.approx(-0.2, **TOL)
    assert stats.disparate_impact(50, 100, 25, 50) == pytest.approx(1.0, **TOL)


def test_disparate_impact_undefined_cases() -> None:
    assert math.isnan(stats.disparate_impact(3, 10, 0, 0))  # empty privileged group
    assert math.isnan(stats.disparate_impact(0, 0, 3, 10))  # empty unprivileged group
    assert math.isnan(stats.disparate_impact(0, 10, 0, 10))  # 0/0
    assert stats.disparate_impact(3, 10, 0, 10) == math.inf
    assert stats.disparate_impact(0, 10, 3, 10) == 0.0
    assert math.isnan(stats.statistical_parity_difference(3, 10, 0, 0))


def test_bias_metrics_reject_impossible_counts() -> None:
    with pytest.raises(ValueError, match="unprivileged: need 0 <= favorable <= n"):
        stats.disparate_impact(11, 10, 3, 10)
    with pytest.raises(ValueError, match="privileged: need 0 <= favorable <= n"):
        stats.statistical_parity_difference(1, 10, -1, 10)


# ---------------------------------------------------------------- binning


def bin_reference(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Brute-force edges[i] <= v < edges[i+1] (+inf in the last bin when edges[-1] is +inf)."""
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for v in values:
        for i in range(len(edges) - 1):
            last_inf = i == len(edges) - 2 and v == np.inf == edges[-1]
            if edges[i] <= v < edges[i + 1] or last_inf:
                counts[i] += 1
    return counts


def test_quantile_edges_are_open_ended_numpy_quantiles() -> None:
    values = np.random.default_rng(0).normal(size=1001)
    edges = stats.quantile_edges(values, bins=10)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    assert len(edges) == 11
    np.testing.assert_allclose(edges[1:-1], np.quantile(values, np.arange(1, 10) / 10))
    counts = stats.bin_counts(values, edges)
    assert counts.sum() == 1001
    assert counts.min() >= 99 and counts.max() <= 101  # deciles hold ~10% each


def test_quantile_edges_deduplicate_ties_and_ignore_non_finite() -> None:
    values = np.array([0.0] * 80 + [1.0] * 10 + [2.0] * 10 + [np.nan, np.inf])
    edges = stats.quantile_edges(values, bins=10)
    assert np.all(np.diff(edges) > 0)
    # linear interpolation: q(0.1..0.7) = 0 (deduplicated), q(0.8) = 0.2, q(0.9) = 1.1
    assert edges[1:-1].tolist() == pytest.approx([0.0, 0.2, 1.1], **TOL)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    assert stats.quantile_edges([5.0], bins=1).tolist() == [-np.inf, np.inf]


@pytest.mark.parametrize("seed", range(3))
def test_bin_counts_matches_brute_force_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref_values = np.round(rng.normal(size=500), 1)
    new_values = np.concatenate(
        [np.round(rng.normal(0.3, size=300), 1), [np.nan, np.inf, -np.inf, 9.0, -9.0]]
    )
    edges = stats.quantile_edges(ref_values, bins=8)
    counts = stats.bin_counts(new_values, edges)
    np.testing.assert_array_equal(counts, bin_reference(new_values, edges))
    assert counts.sum() == 304  # everything but the NaN has a bin
    assert counts.dtype == np.int64


def test_bin_counts_value_on_edge_goes_to_upper_bin_and_out_of_range_is_dropped() -> None:
    edges = np.array([0.0, 1.0, 2.0])
    counts = stats.bin_counts([0.0, 0.5, 1.0, 2.0, -0.1, np.inf], edges)
    assert counts.tolist() == [2, 1]


def test_binning_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="edges must be a strictly increasing"):
        stats.bin_counts([1.0], [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        stats.quantile_edges([1.0, 2.0], bins=0)
    with pytest.raises(ValueError, match="values contain no finite value"):
        stats.quantile_edges([np.nan, np.inf])


# ── counted samples (drift reads value counts, not values) ───────────────────────────────


@pytest.mark.parametrize("seed", range(5))
def test_counted_samples_give_the_statistics_of_the_samples_they_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # ties on purpose: values drawn from a small pool, as integer features and labels are
    a = rng.choice(rng.normal(0, 1, 40), 3_000)
    b = rng.choice(np.concatenate([rng.normal(0.3, 1.2, 30), [np.nan, np.inf]]), 2_000)
    ca, cb = stats.Counted.of(a), stats.Counted.of(b)
    finite_b = np.sort(b[np.isfinite(b)])
    assert ca.size == a.size and cb.size == finite_b.size
    assert np.array_equal(cb.expanded(), finite_b)
    ks, ref = stats.ks_2samp_counted(ca, cb), ss.ks_2samp(a, finite_b, method="asymp")
    assert ks.statistic == ref.statistic  # the same fractions, compared at the same points
    assert ks.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
    assert stats.wasserstein1_counted(ca, cb) == pytest.approx(
        ss.wasserstein_distance(a, finite_b), rel=1e-9)
    assert ca.mean() == pytest.approx(np.mean(a), rel=1e-12)
    assert ca.std() == pytest.approx(np.std(a, ddof=1), rel=1e-12)
    edges = stats.quantile_edges(finite_b, 7)
    assert ca.bins(edges).tolist() == stats.bin_counts(a, edges).tolist()


def test_an_empty_counted_sample_is_refused_by_the_tests() -> None:
    empty = stats.Counted.of([np.nan])
    assert empty.size == 0 and np.isnan(stats.Counted.of([1.0]).std())
    with pytest.raises(ValueError, match="empty"):
        stats.ks_2samp_counted(empty, stats.Counted.of([1.0, 2.0]))
