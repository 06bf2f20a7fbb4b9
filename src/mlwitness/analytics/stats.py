"""Statistics core for drift, guard and bias analytics.

Every statistic here is computed by our own code from *counts* (histogram bins,
contingency tables) or from *ascending-sorted* value arrays, because in production
those inputs are SQL aggregates fetched from the DuckDB ledger. SciPy is used only
for distribution tail functions (``kstwo.sf``, ``chi2.sf``, ``norm.ppf``,
``hypergeom.pmf``) and is imported lazily so that importing this module stays cheap.

Conventions
-----------
* Logarithms are natural (nats) unless a function takes a ``base``.
* Count vectors must be 1-D, finite, non-negative and have a positive total;
  violations raise ``ValueError`` naming the argument and the problem.
* Sorted-sample functions reject NaN and unsorted input (O(n) check); ties are allowed.
* Each function documents which SciPy call it reproduces (to ~1e-12 in practice).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ContingencyResult",
    "GoodnessOfFitResult",
    "TestResult",
    "bin_counts",
    "chi2_contingency",
    "chi2_goodness_of_fit",
    "disparate_impact",
    "fisher_exact_2x2",
    "js_distance",
    "ks_2samp_sorted",
    "linf_distance",
    "psi",
    "quantile_edges",
    "statistical_parity_difference",
    "wasserstein1_sorted",
    "wilson_interval",
]


@dataclass(frozen=True, slots=True)
class TestResult:
    """A test statistic and its p-value; unpacks as ``stat, p = result``."""

    __test__ = False  # not a pytest test class

    statistic: float
    pvalue: float

    def __iter__(self) -> Iterator[float]:
        return iter((self.statistic, self.pvalue))


@dataclass(frozen=True, slots=True)
class GoodnessOfFitResult(TestResult):
    """χ² goodness of fit; ``unseen_categories`` lists indices whose expected
    proportion was 0 but which were observed (their proportion was floored)."""

    dof: int = 0
    unseen_categories: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ContingencyResult:
    """Pearson χ² test of independence."""

    statistic: float
    pvalue: float
    dof: int


def _counts(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(arr < 0):
        raise ValueError(f"{name} contains negative counts")
    if arr.sum() <= 0:
        raise ValueError(f"{name} has a zero total")
    return arr


def _proportion_pair(
    p: ArrayLike, q: ArrayLike, p_name: str, q_name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    a, b = _counts(p, p_name), _counts(q, q_name)
    if a.size != b.size:
        raise ValueError(f"length mismatch: {p_name} has {a.size} bins, {q_name} has {b.size}")
    return a / a.sum(), b / b.sum()


def _sorted_sample(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} contains NaN")
    if np.any(arr[1:] < arr[:-1]):
        raise ValueError(f"{name} is not sorted ascending")
    return arr


def psi(expected_counts: ArrayLike, actual_counts: ArrayLike, *, epsilon: float = 1e-4) -> float:
    """Population Stability Index of ``actual`` against ``expected`` over the same bins.

    ``p = e / sum(e)``, ``q = a / sum(a)``, both floored at ``epsilon`` (so empty bins
    give a large but finite contribution; floored vectors are *not* renormalised),
    ``PSI = sum((q - p) * ln(q / p))`` in nats. Symmetric in its arguments; 0 iff p == q.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    p, q = _proportion_pair(expected_counts, actual_counts, "expected_counts", "actual_counts")
    p, q = np.maximum(p, epsilon), np.maximum(q, epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(p_counts: ArrayLike, q_counts: ArrayLike, *, base: float = 2.0) -> float:
    """Jensen–Shannon distance (square root of the JS divergence).

    With normalised p, q and ``m = (p + q) / 2``:
    ``sqrt((KL(p||m) + KL(q||m)) / (2 ln base))`` where ``0 * ln(0/x) = 0``.
    In base 2 the result lies in [0, 1]. Equals
    ``scipy.spatial.distance.jensenshannon(p, q, base=base)``.
    """
    if not (base > 0 and base != 1):
        raise ValueError(f"base must be positive and != 1, got {base}")
    p, q = _proportion_pair(p_counts, q_counts, "p_counts", "q_counts")
    m = (p + q) / 2.0

    def kl(x: NDArray[np.float64]) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    js = (kl(p) + kl(q)) / math.log(base)
    return math.sqrt(max(js, 0.0) / 2.0)


def linf_distance(p_counts: ArrayLike, q_counts: ArrayLike) -> float:
    """L∞ distance ``max_i |p_i - q_i|`` of the two normalised frequency vectors."""
    p, q = _proportion_pair(p_counts, q_counts, "p_counts", "q_counts")
    return float(np.max(np.abs(p - q)))


def ks_2samp_sorted(a_sorted: ArrayLike, b_sorted: ArrayLike) -> TestResult:
    """Two-sided two-sample Kolmogorov–Smirnov test on ascending-sorted samples.

    ``D = max_x |F_a(x) - F_b(x)|`` with right-continuous ECDFs evaluated at every
    pooled value via ``searchsorted(side="right")`` (correct with ties). The p-value is
    scipy's ``method="asymp"`` two-sided path: ``kstwo.sf(D, round(n*m/(n+m)))``, the
    exact one-sample KS distribution at the rounded effective sample size (not the
    Kolmogorov limit). Equals ``scipy.stats.ks_2samp(a, b, method="asymp")``.
    """
    from scipy.stats import kstwo

    a = _sorted_sample(a_sorted, "a_sorted")
    b = _sorted_sample(b_sorted, "b_sorted")
    n1, n2 = a.size, b.size
    pooled = np.concatenate([a, b])
    diffs = (
        np.searchsorted(a, pooled, side="right") / n1
        - np.searchsorted(b, pooled, side="right") / n2
    )
    d = float(max(np.max(diffs), np.clip(-np.min(diffs), 0.0, 1.0)))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    p = float(np.clip(kstwo.sf(d, np.round(en)), 0.0, 1.0))
    return TestResult(d, p)


def wasserstein1_sorted(a_sorted: ArrayLike, b_sorted: ArrayLike) -> float:
    """1-Wasserstein (earth mover's) distance ``∫ |F_a(x) - F_b(x)| dx`` of two
    equally-weighted empirical samples given ascending-sorted (ties allowed).
    Equals ``scipy.stats.wasserstein_distance(a, b)``."""
    a = _sorted_sample(a_sorted, "a_sorted")
    b = _sorted_sample(b_sorted, "b_sorted")
    pooled = np.sort(np.concatenate([a, b]), kind="mergesort")
    deltas = np.diff(pooled)
    fa = np.searchsorted(a, pooled[:-1], side="right") / a.size
    fb = np.searchsorted(b, pooled[:-1], side="right") / b.size
    return float(np.dot(np.abs(fa - fb), deltas))


@dataclass(frozen=True)
class Counted:
    """A sample as its distinct finite values, ascending, and how often each occurs.

    What KS, Wasserstein, the mean, the std and the bin counts need, in the size of its
    distinct values rather than of the sample: drift over millions of rows reads the value
    counts from DuckDB (`GROUP BY`) instead of sorting every value. The statistics equal
    those of the expanded sample (KS exactly; sums up to floating-point order)."""

    values: NDArray[np.float64]
    counts: NDArray[np.int64]

    @classmethod
    def of(cls, values: ArrayLike) -> Counted:
        """The finite values of a sample, counted."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        distinct, counts = np.unique(arr[np.isfinite(arr)], return_counts=True)
        return cls(distinct, counts.astype(np.int64))

    @classmethod
    def empty(cls) -> Counted:
        return cls(np.zeros(0), np.zeros(0, np.int64))

    @property
    def size(self) -> int:
        return int(self.counts.sum())

    def expanded(self) -> NDArray[np.float64]:
        """The sample itself, sorted."""
        return np.repeat(self.values, self.counts)

    def cdf(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """The right-continuous ECDF at ``x``: the share of values ``<= x``."""
        below = np.concatenate([[0], np.cumsum(self.counts)])
        return below[np.searchsorted(self.values, x, side="right")] / self.size

    def mean(self) -> float:
        return float(np.dot(self.values, self.counts) / self.size)

    def std(self) -> float:
        """Standard deviation with ddof = 1 (NaN for fewer than 2 values)."""
        n = self.size
        if n < 2:
            return math.nan
        return float(np.sqrt(np.dot(self.counts, (self.values - self.mean()) ** 2) / (n - 1)))

    def bins(self, edges: ArrayLike) -> NDArray[np.int64]:
        """Counts per bin, as :func:`bin_counts` of the expanded sample."""
        e = np.asarray(edges, dtype=np.float64)
        nbins = e.size - 1
        idx = np.searchsorted(e, self.values, side="right") - 1
        keep = (idx >= 0) & (idx < nbins)
        out = np.zeros(nbins, np.int64)
        np.add.at(out, idx[keep], self.counts[keep])
        return out


def _counted(x: Counted, name: str) -> Counted:
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    return x


def ks_2samp_counted(a: Counted, b: Counted) -> TestResult:
    """:func:`ks_2samp_sorted` of two counted samples: the ECDFs compared at every
    distinct value of either, which is every pooled value."""
    from scipy.stats import kstwo

    a, b = _counted(a, "a"), _counted(b, "b")
    grid = np.union1d(a.values, b.values)
    diffs = a.cdf(grid) - b.cdf(grid)
    d = float(max(np.max(diffs), np.clip(-np.min(diffs), 0.0, 1.0)))
    m, n = sorted([float(a.size), float(b.size)], reverse=True)
    p = float(np.clip(kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))
    return TestResult(d, p)


def wasserstein1_counted(a: Counted, b: Counted) -> float:
    """:func:`wasserstein1_sorted` of two counted samples."""
    a, b = _counted(a, "a"), _counted(b, "b")
    grid = np.union1d(a.values, b.values)
    return float(np.dot(np.abs(a.cdf(grid[:-1]) - b.cdf(grid[:-1])), np.diff(grid)))


def chi2_goodness_of_fit(
    observed_counts: ArrayLike, expected_proportions: ArrayLike, *, epsilon: float = 1e-4
) -> GoodnessOfFitResult:
    """Pearson χ² goodness of fit of observed counts to expected proportions.

    ``E_i = P_i * N`` with ``P`` normalised to sum 1 (reference *counts* are accepted),
    ``X² = sum((O_i - E_i)² / E_i)``, ``p = chi2.sf(X², k - 1)``. Equals
    ``scipy.stats.chisquare(O, f_exp=P * O.sum())`` whenever that is finite.

    Zero expected proportion: if the category was also not observed it is dropped
    (contributes nothing, does not count toward ``k``); if it *was* observed (an unseen
    category, where scipy would return an infinite statistic) its proportion is floored
    at ``epsilon``, ``P`` is renormalised and the index is reported in
    ``unseen_categories``. With fewer than 2 remaining categories: statistic 0, p 1.
    """
    from scipy.stats import chi2

    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    obs = _counts(observed_counts, "observed_counts")
    prop = _counts(expected_proportions, "expected_proportions")
    if obs.size != prop.size:
        raise ValueError(
            f"length mismatch: observed_counts has {obs.size} categories, "
            f"expected_proportions has {prop.size}"
        )
    prop = prop / prop.sum()
    unseen = tuple(int(i) for i in np.flatnonzero((prop == 0) & (obs > 0)))
    keep = (prop > 0) | (obs > 0)
    obs, prop = obs[keep], prop[keep]
    if unseen:
        prop = np.where(prop == 0, epsilon, prop)
        prop = prop / prop.sum()
    dof = obs.size - 1
    if dof < 1:
        return GoodnessOfFitResult(0.0, 1.0, 0, unseen)
    exp = prop * obs.sum()
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return GoodnessOfFitResult(stat, float(chi2.sf(stat, dof)), dof, unseen)


def chi2_contingency(table: ArrayLike, *, correction: bool = False) -> ContingencyResult:
    """Pearson χ² test of independence for an r×c table of counts.

    ``E = outer(row_sums, col_sums) / N``, ``X² = sum((O - E)² / E)``,
    ``dof = (r - 1)(c - 1)``, ``p = chi2.sf(X², dof)``. With ``correction=True`` and
    ``dof == 1`` Yates' correction moves each O toward E by ``min(0.5, |E - O|)``.
    Equals ``scipy.stats.chi2_contingency(table, correction=correction)``; note the
    default here is ``False`` (scipy's is ``True``). All-zero rows/columns (a category
    absent from every group) are dropped first, where scipy would raise. A degenerate
    table (dof 0) gives statistic 0, p 1.
    """
    from scipy.stats import chi2

    obs = np.asarray(table, dtype=np.float64)
    if obs.ndim != 2 or obs.size == 0:
        raise ValueError(f"table must be a non-empty 2-D array, got shape {obs.shape}")
    if not np.all(np.isfinite(obs)) or np.any(obs < 0):
        raise ValueError("table must contain finite, non-negative counts")
    obs = obs[obs.sum(axis=1) > 0][:, obs.sum(axis=0) > 0]
    if obs.size == 0:
        raise ValueError("table has a zero total")
    dof = (obs.shape[0] - 1) * (obs.shape[1] - 1)
    if dof == 0:
        return ContingencyResult(0.0, 1.0, 0)
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0)) / obs.sum()
    if correction and dof == 1:
        diff = exp - obs
        obs = obs + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return ContingencyResult(stat, float(chi2.sf(stat, dof)), dof)


def fisher_exact_2x2(table: ArrayLike) -> TestResult:
    """Two-sided Fisher exact test on ``[[a, b], [c, d]]``.

    ``statistic`` is the sample odds ratio ``a*d / (b*c)`` (``inf`` if ``b*c == 0``).
    With margins fixed, ``a ~ Hypergeom(M=N, n=a+b, N=a+c)``; the p-value sums the pmf
    over every ``x`` in the support with ``pmf(x) <= pmf(a) * (1 + 1e-14)`` (scipy's
    relative tolerance), capped at 1; if ``pmf(a)`` equals the mode's pmf within 1e-14
    the p-value is exactly 1. A zero row or column gives ``(nan, 1.0)``.
    Equals ``scipy.stats.fisher_exact(table)``. Cost is O(support size).
    """
    from scipy.stats import hypergeom

    c = np.asarray(table)
    if c.shape != (2, 2):
        raise ValueError(f"table must have shape (2, 2), got {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c != np.round(c)):
        raise ValueError("table must contain non-negative integer counts")
    c = c.astype(np.int64)
    if 0 in c.sum(axis=0) or 0 in c.sum(axis=1):
        return TestResult(math.nan, 1.0)
    b_c = int(c[1, 0]) * int(c[0, 1])
    odds = int(c[0, 0]) * int(c[1, 1]) / b_c if b_c > 0 else math.inf
    n1, n2, n = int(c[0].sum()), int(c[1].sum()), int(c[:, 0].sum())
    total = n1 + n2
    pexact = float(hypergeom.pmf(c[0, 0], total, n1, n))
    mode = int((n + 1) * (n1 + 1) / (total + 2))
    pmode = float(hypergeom.pmf(mode, total, n1, n))
    if abs(pexact - pmode) / max(pexact, pmode) <= 1e-14:
        return TestResult(odds, 1.0)
    support = np.arange(max(0, n - n2), min(n, n1) + 1)
    pmf = hypergeom.pmf(support, total, n1, n)
    pvalue = float(np.sum(pmf[pmf <= pexact * (1 + 1e-14)]))
    return TestResult(odds, min(pvalue, 1.0))


def wilson_interval(
    successes: int, trials: int, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Two-sided Wilson score interval for a binomial proportion (Newcombe 1998).

    ``z = Φ⁻¹((1 + confidence) / 2)``, ``p̂ = k / n``,
    ``centre = (2 n p̂ + z²) / (2 (n + z²))``,
    ``half = z / (2 (n + z²)) * sqrt(4 n p̂ (1 - p̂) + z²)``; the bound is exactly 0 when
    ``k == 0`` and exactly 1 when ``k == n``. ``trials == 0`` gives ``(0.0, 1.0)``.
    Equals ``binomtest(k, n).proportion_ci(confidence_level, method="wilson")``.
    """

    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if trials == 0:
        return 0.0, 1.0
    k, n = successes, trials
    p = k / n
    z = NormalDist().inv_cdf(0.5 + 0.5 * confidence)  # no scipy on the inference path
    denom = 2 * (n + z**2)
    center = (2 * n * p + z**2) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z**2)
    low = 0.0 if k == 0 else center - delta
    high = 1.0 if k == n else center + delta
    return low, high


def _rates(fav_u: int, n_u: int, fav_p: int, n_p: int) -> tuple[float, float]:
    for fav, n, group in ((fav_u, n_u, "unprivileged"), (fav_p, n_p, "privileged")):
        if n < 0 or not 0 <= fav <= n:
            raise ValueError(f"{group}: need 0 <= favorable <= n, got {fav} of {n}")
    return (fav_u / n_u if n_u else math.nan), (fav_p / n_p if n_p else math.nan)


def disparate_impact(
    fav_unprivileged: int, n_unprivileged: int, fav_privileged: int, n_privileged: int
) -> float:
    """Ratio of favourable-outcome rates ``(fav_u / n_u) / (fav_p / n_p)``.

    1 means parity; the "four-fifths rule" flags values below 0.8. ``nan`` when a group
    is empty or both rates are 0 (0/0); ``inf`` when only the privileged rate is 0.
    """
    r_u, r_p = _rates(fav_unprivileged, n_unprivileged, fav_privileged, n_privileged)
    if math.isnan(r_u) or math.isnan(r_p) or (r_u == 0 and r_p == 0):
        return math.nan
    return r_u / r_p if r_p > 0 else math.inf


def statistical_parity_difference(
    fav_unprivileged: int, n_unprivileged: int, fav_privileged: int, n_privileged: int
) -> float:
    """Difference of favourable-outcome rates ``fav_u / n_u - fav_p / n_p`` in [-1, 1];
    0 means parity. ``nan`` when either group is empty."""
    r_u, r_p = _rates(fav_unprivileged, n_unprivileged, fav_privileged, n_privileged)
    return r_u - r_p


def quantile_edges(values: ArrayLike, bins: int = 10) -> NDArray[np.float64]:
    """Bin edges from the quantiles of ``values`` for PSI/JS/χ² histograms.

    Interior edges are the linear-interpolation quantiles (numpy's default method, same
    as DuckDB ``quantile_cont``) at ``i / bins`` for ``i = 1 .. bins-1`` of the finite
    values, de-duplicated (ties may yield fewer than ``bins`` bins). The result is
    ``[-inf, *interior, +inf]``, strictly increasing, so every future value has a bin
    (see :func:`bin_counts`). Raises ``ValueError`` if there is no finite value.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError("values contain no finite value")
    interior = np.unique(np.quantile(arr, np.arange(1, bins) / bins))
    return np.concatenate([[-np.inf], interior, [np.inf]])


def bin_counts(values: ArrayLike, edges: ArrayLike) -> NDArray[np.int64]:
    """Counts of ``values`` per bin, ``len(edges) - 1`` bins.

    A value is in bin ``i`` when ``edges[i] <= v < edges[i+1]`` (i.e. bin index =
    number of edges ``<= v`` minus 1), except that ``v == +inf`` falls in the last bin
    when ``edges[-1] == +inf``. NaN values and values outside ``[edges[0], edges[-1])``
    are not counted. ``edges`` must be strictly increasing with at least 2 entries.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or np.any(np.isnan(e)) or np.any(np.diff(e) <= 0):
        raise ValueError("edges must be a strictly increasing 1-D array of >= 2 edges")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    nbins = e.size - 1
    idx = np.searchsorted(e, v, side="right") - 1
    if e[-1] == np.inf:
        idx[v == np.inf] = nbins - 1
    idx = idx[(idx >= 0) & (idx < nbins)]
    return np.bincount(idx, minlength=nbins).astype(np.int64)
