"""Drift of a ledger window against a baseline or against another window.

The window is the answered inference rows (the ``decisions`` view: status OK, one row per
batch row) with ``received_us`` in ``[since_us, until_us)`` (0 = unbounded) whose model
name equals ``model`` or whose model SHA-256 starts with it (empty = every model).

How it is computed
------------------
1. One DuckDB query unnests the window's numeric inputs and outputs and counts each
   analysed column's finite values (`GROUP BY` column, value): only the distinct values
   and their counts reach Python (:class:`stats.Counted`), whatever the window's size.
2. KS, Wasserstein, mean, std and the bin counts (bin ``i`` holding ``edges[i] <= v <
   edges[i+1]``, exactly as :func:`stats.bin_counts`) are computed from those counts; a
   reference window's quantile edges from its counted values, expanded.
3. Categorical columns: one more scan, only for the names the window holds as text or
   request parameters, counts categories (``histogram``); a label's categories come from
   its counted numbers.

Statistics (all from :mod:`mlwitness.analytics.stats`). Numeric: PSI and Jensen–Shannon distance
(base 2) of the window's bin counts against the reference's, KS statistic and asymptotic
p-value and Wasserstein-1 of the window's finite values against the reference sample
(baseline) or values (reference window), mean and std (ddof = 1) shifts as
``window − reference`` and that divided by the reference std. Categorical: χ² goodness of
fit of the window's counts to the reference proportions (categories unseen in the
reference are floored and listed) and the L∞ distance of the two frequency vectors.
Against a reference *window* every χ² test is two-sample (homogeneity of the 2×k table):
that reference is a sample as much as the window. A categorical input that comes from the
request parameters is counted once per record (the rows of one call share it). Inputs the
window's records store minimised (hashed or redacted) get the verdict ``minimised``.
NULL, NaN and ±inf values are *missing*: counted, never binned or tested.

Verdicts (:class:`Thresholds`, defaults in brackets): a numeric column drifts when
PSI > ``psi`` [0.2], or KS p < ``ks_pvalue`` [0.01] *and* KS D > ``ks_statistic`` [0.1]
(significant *and* large: with a million rows a negligible shift is significant), or JS >
``js`` [0.1]; the PSI and JS rules count only when a χ² test of the binned counts against
the reference proportions is significant (p < ``chi2_pvalue``), since on a window of a
few hundred rows sampling noise alone exceeds them. A categorical column drifts when
χ² p < ``chi2_pvalue`` [0.01] *and* L∞ > ``linf`` [0.1]. Other verdicts: ``no_data``
(no value in the window), ``no_reference``,
``insufficient_data`` (fewer than ``min_count`` [30] values in the window or the
reference: statistics shown, no call). The report's verdict is ``drift`` if any column
drifts, else ``ok`` if any column was judged ``ok``; otherwise ``insufficient_data`` or
``no_data``; ``no_data`` for an empty window, ``no_reference`` when the reference has no
data for any analysed column.

For small shifts JS (base 2) ≈ sqrt(PSI / (8 ln 2)): the JS rule fires from PSI ≈ 0.055.

A column appears once per kind: an output of whole numbers with few distinct values (a
label) is analysed as numbers and as categories, two entries told apart by ``kind``. The
p-values are not all scipy's defaults: χ² tests have no continuity correction (scipy's
``chi2_contingency`` applies Yates' to a 2×2 table unless ``correction=False``), and KS
p-values are asymptotic (scipy's ``ks_2samp`` is exact for small samples unless
``method="asymp"``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np

from mlwitness.analytics import stats
from mlwitness.analytics.baseline import (
    MAX_CATEGORIES,
    Baseline,
    ColumnProfile,
    category_key,
    json_safe,
)
from mlwitness.errors import InvalidInput
from mlwitness.ledger.filters import Filters


@dataclass(frozen=True)
class Window:
    """A reference window of the same ledger; ``model=None`` uses the tested window's."""

    since_us: int = 0
    until_us: int = 0
    model: str | None = None


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    ks_pvalue: float = 0.01
    ks_statistic: float = 0.1
    js: float = 0.1
    chi2_pvalue: float = 0.01
    linf: float = 0.1
    min_count: int = 30


@dataclass
class FeatureDrift:
    name: str
    role: str  # "input" | "output"
    kind: str  # "numeric" | "categorical"
    count: int  # window values (finite / non-NULL)
    missing: int  # window rows without one
    reference_count: int
    verdict: str
    reasons: list[str] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)


@dataclass
class DriftReport:
    window: dict[str, Any]
    reference: dict[str, Any]
    rows: int
    verdict: str
    thresholds: Thresholds
    features: list[FeatureDrift]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))  # NaN → None, ±inf → "Infinity" / "-Infinity"


_KEYS = itertools.count()


@dataclass
class _Column:
    """One analysed column and its reference. Extracted as ``n{key}`` (numeric source),
    ``t{key}`` (text source) and ``p{key}`` (request parameter, categorical inputs)."""

    name: str
    role: str  # "input" | "output"
    kind: str  # "numeric" | "categorical"
    key: int = field(default_factory=lambda: next(_KEYS))  # unique: a column alias
    ref_count: int = 0
    edges: np.ndarray | None = None  # numeric: bins, and the reference's counts and values
    ref_bins: np.ndarray | None = None
    ref_sample: stats.Counted | None = None
    ref_mean: float = math.nan
    ref_std: float = math.nan
    ref_freq: dict[str, int] = field(default_factory=dict)  # categorical
    two_sample: bool = False  # the reference is a sample too (a window): χ² of a 2×k table
    per_record: bool = False  # counted once per record (a request parameter), not per row

    @property
    def numeric_source(self) -> bool:  # outputs are categorical from numbers too (label)
        return self.kind == "numeric" or self.role == "output"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _rows(filters: Filters) -> str:
    """The window's rows as the ``decisions`` view has them (the four row lists unnested
    side by side, the request parameters repeated), with the records' parameters `p` and
    `r`, the row's number in its record; as an SQL subquery over `entries`."""
    where, _ = filters.where()
    return ("(SELECT unnest(inputs) AS i, unnest(inputs_text) AS it, unnest(outputs) AS o, "
            "unnest(outputs_text) AS ot, unnest(generate_series(1, greatest(len(inputs), "
            "len(inputs_text), len(outputs), len(outputs_text)))) AS r, parameters AS p "
            f"FROM entries WHERE {where} AND status = 'OK')")


def _size(con: duckdb.DuckDBPyConnection, filters: Filters) -> tuple[int, int]:
    """(rows, records with a row) of the window, without unnesting."""
    where, params = filters.where()
    rows = "greatest(len(inputs), len(inputs_text), len(outputs), len(outputs_text))"
    found = con.execute(f"SELECT coalesce(sum({rows}), 0)::BIGINT, count(*) FILTER "
                        f"(WHERE {rows} > 0) FROM entries WHERE {where} AND status = 'OK'",
                        params).fetchall()[0]
    return int(found[0]), int(found[1])


def _scan(con: duckdb.DuckDBPyConnection, filters: Filters
          ) -> dict[tuple[str, str], stats.Counted]:
    """Every numeric column of the window's rows, by (role, name), its finite values
    counted: one scan of ``inputs`` and ``outputs`` and a `GROUP BY` in DuckDB, so that
    only the distinct values reach Python. A column whose values are all missing is there,
    empty. Reading these nested columns is what a window costs: they are read once."""
    where, params = filters.where()
    rows = f"FROM entries WHERE {where} AND status = 'OK'"
    table = con.sql(
        "SELECT s, e.key AS k, e.value AS v, count(*)::BIGINT AS c FROM ("
        f"SELECT 0 AS s, unnest(map_entries(i)) AS e FROM (SELECT unnest(inputs) AS i {rows}) "
        "UNION ALL "
        f"SELECT 1 AS s, unnest(map_entries(o)) AS e FROM (SELECT unnest(outputs) AS o {rows})"
        ") GROUP BY ALL ORDER BY s, k, v", params=params + params).to_arrow_table()
    out: dict[tuple[str, str], stats.Counted] = {}
    if not table.num_rows:
        return out
    source = table.column("s").to_numpy()
    names = table.column("k").combine_chunks().dictionary_encode()
    code = names.indices.to_numpy()
    values = table.column("v").to_numpy(zero_copy_only=False)  # NULL → NaN
    counts = table.column("c").to_numpy()
    group = np.flatnonzero((np.diff(source) != 0) | (np.diff(code) != 0)) + 1
    starts = np.concatenate([[0], group])
    ends = np.concatenate([group, [source.size]])
    dictionary = names.dictionary.to_pylist()
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        v, c = values[start:end], counts[start:end]
        finite = np.isfinite(v)
        role = "input" if source[start] == 0 else "output"
        out[(role, str(dictionary[code[start]]))] = stats.Counted(
            v[finite].astype(np.float64), c[finite].astype(np.int64))
    return out


def _samples(scan: dict[tuple[str, str], stats.Counted], columns: list[_Column]
             ) -> dict[int, stats.Counted]:
    """Per numeric-source column key, its counted values from the window's scan."""
    return {c.key: scan.get((c.role, c.name), stats.Counted.empty()) for c in columns
            if c.numeric_source}


def _categories(con: duckdb.DuckDBPyConnection, filters: Filters, columns: list[_Column],
                samples: dict[int, stats.Counted], keys: dict[str, list[str]]
                ) -> dict[int, dict[str, int]]:
    """Per categorical column key, {category: count}: text values and request parameters
    from one scan of the rows (only for names the window has in those sources), numbers (a
    label) from the column's counted values, keyed by :func:`category_key`."""
    select: list[str] = []
    asked: list[tuple[_Column, str]] = []
    for col in columns:
        name = _lit(col.name)
        if col.role == "input":
            if col.name in keys["inputs_text"]:
                select.append(f"histogram(it[{name}])")
                asked.append((col, "text"))
            if col.name in keys["parameters"]:  # once per record: on its first row
                select.append(f"histogram(p[{name}]) FILTER (WHERE r = 1)")
                asked.append((col, "parameter"))
        elif col.name in keys["outputs_text"]:
            select.append(f"histogram(ot[{name}])")
            asked.append((col, "text"))
    found: dict[tuple[int, str], dict[str, int]] = {}
    if select:
        _, params = filters.where()
        row = con.execute(f"SELECT {', '.join(select)} FROM {_rows(filters)}",
                          params).fetchall()[0]
        for (col, source), counts in zip(asked, row, strict=True):
            found[(col.key, source)] = {str(k): int(v) for k, v in (counts or {}).items()}
    out: dict[int, dict[str, int]] = {}
    for col in columns:
        text = found.get((col.key, "text"), {})
        if col.role == "input":
            parameter = found.get((col.key, "parameter"), {})
            out[col.key] = text or parameter
            if not text and parameter:
                col.per_record = True
            continue
        out[col.key] = dict(text)
        sample = samples.get(col.key)
        if sample is not None:
            for number, count in zip(sample.values.tolist(), sample.counts.tolist(),
                                     strict=True):
                key = category_key(float(number))
                out[col.key][key] = out[col.key].get(key, 0) + int(count)
    return out


def _select(available: dict[str, tuple[str, ...]], wanted: list[str] | None, role: str
            ) -> list[_Column]:
    """Columns to analyse among ``available`` {name: kinds}, all of them by default."""
    # once each: a name asked for twice would be analysed, and listed, twice
    wanted = list(dict.fromkeys(available if wanted is None else wanted))
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise InvalidInput(f"{role}s {unknown} are not in the reference; it has "
                           f"{sorted(available)}")
    return [_Column(name, role, kind) for name in wanted for kind in available[name]]


def _kinds(profile: ColumnProfile, role: str) -> tuple[str, ...]:
    """Inputs are analysed as numeric or categorical; outputs (label) may be both."""
    if profile.numeric is not None and (role == "input" or profile.categorical is None):
        return ("numeric",)
    if profile.numeric is not None:
        return ("numeric", "categorical")
    return ("categorical",) if profile.categorical is not None else ()


def _from_baseline(baseline: Baseline, features: list[str] | None,
                   outputs: list[str] | None) -> list[_Column]:
    inputs = {k: v for k, v in baseline.columns.items() if k != baseline.label}
    columns = []
    for role, profiles, wanted in (("input", inputs, features),
                                   ("output", baseline.outputs, outputs)):
        available = {name: _kinds(p, role) for name, p in profiles.items()}
        for col in _select(available, wanted, role):
            profile = profiles[col.name]
            col.ref_count = profile.count
            if col.kind == "numeric" and profile.numeric is not None:
                num = profile.numeric
                col.edges = np.asarray(num.edges, np.float64)
                if not col.edges[0] == -col.edges[-1] == -np.inf:
                    raise InvalidInput(f"baseline edges of {col.name} must run -inf to +inf")
                col.ref_bins = np.asarray(num.counts, np.int64)
                col.ref_sample = stats.Counted.of(num.sample)
                col.ref_mean = num.mean
                col.ref_std = math.nan if num.std is None else num.std
            elif profile.categorical is not None:
                col.ref_freq = dict(profile.categorical)
            columns.append(col)
    return columns


_SOURCES = {"inputs": "inputs[1]", "inputs_text": "inputs_text[1]", "outputs": "outputs[1]",
            "outputs_text": "outputs_text[1]", "parameters": "parameters"}
_TEXT_SOURCES = ("inputs_text", "outputs_text", "parameters")  # without the numbers' columns


def window_columns(con: duckdb.DuckDBPyConnection, filters: Filters,
                   only: tuple[str, ...] = tuple(_SOURCES)) -> dict[str, list[str]]:
    """Column names present in a window, per source (inputs, inputs_text, outputs,
    outputs_text: the first row of each record; parameters), sorted; `only` those sources."""
    where, params = filters.where()
    sources = {name: _SOURCES[name] for name in only}
    # the distinct key lists first (one per model signature, about): cheap to flatten
    select = ", ".join(f"list_distinct(flatten(list(DISTINCT map_keys({expr}))))"
                       for expr in sources.values())
    row = con.execute(f"SELECT {select} FROM entries WHERE {where} AND status = 'OK'",
                      params).fetchall()[0]
    return {src: sorted(keys or []) for src, keys in zip(sources, row, strict=True)}


def _from_window(con: duckdb.DuckDBPyConnection, filters: Filters, bins: int,
                 features: list[str] | None, outputs: list[str] | None) -> list[_Column]:
    """Columns of a reference window: edges are the quantile edges of its values; a numeric
    output is also categorical when its values are integers with few distinct values."""
    scan = _scan(con, filters)
    keys = {"inputs": sorted(n for r, n in scan if r == "input"),
            "outputs": sorted(n for r, n in scan if r == "output"),
            **window_columns(con, filters, _TEXT_SOURCES)}
    inputs: dict[str, tuple[str, ...]] = {
        k: ("categorical",) for k in keys["inputs_text"] + keys["parameters"]}
    inputs.update({k: ("numeric",) for k in keys["inputs"]})
    outs: dict[str, tuple[str, ...]] = {k: ("categorical",) for k in keys["outputs_text"]}
    outs.update({k: ("numeric", "categorical") for k in keys["outputs"]})
    columns = _select(inputs, features, "input") + _select(outs, outputs, "output")
    samples = _samples(scan, columns)
    keep = []
    for col in columns:
        sample = samples.get(col.key)
        if col.kind == "numeric":
            assert sample is not None
            col.ref_sample, col.ref_count = sample, sample.size
            if sample.size:
                col.edges = stats.quantile_edges(sample.expanded(), bins)
                col.ref_bins = sample.bins(col.edges)
                col.ref_mean, col.ref_std = sample.mean(), sample.std()
        elif col.role == "output" and col.name in keys["outputs"] and not (
            sample is not None and sample.size and np.all(sample.values == np.round(
                sample.values)) and sample.values.size <= MAX_CATEGORIES
        ):
            continue
        col.two_sample = True
        keep.append(col)
    categorical = [c for c in keep if c.kind == "categorical"]
    counted = _categories(con, filters, categorical, samples, keys) if categorical else {}
    for col in categorical:
        col.ref_freq = counted[col.key]
        col.ref_count = sum(col.ref_freq.values())
    return keep


def drift_report(
    con: duckdb.DuckDBPyConnection, reference: Baseline | Window, *, since_us: int = 0,
    until_us: int = 0, model: str = "", features: list[str] | None = None,
    outputs: list[str] | None = None, thresholds: Thresholds | None = None, bins: int = 10,
    columns: list[str] | None = None,
) -> DriftReport:
    """Drift of the window ``[since_us, until_us)`` (model name or SHA-256 prefix
    ``model``) against ``reference``. ``features`` / ``outputs`` restrict the analysed
    input / output columns (default: every one the reference has; the baseline's label
    column is not an input); ``columns`` restricts both at once, by name. ``bins`` only
    applies to a reference window (quantile edges of its values). ``con`` may be
    read-only."""
    t = thresholds or Thresholds()
    filters = Filters(since_us=since_us, until_us=until_us, model=model)
    ref_info: dict[str, Any]
    if isinstance(reference, Baseline):
        analysed = _from_baseline(reference, features, outputs)
        ref_info = {"kind": "baseline", "sha256": reference.sha256, "source": reference.source}
    else:
        ref_filters = Filters(since_us=reference.since_us, until_us=reference.until_us,
                              model=model if reference.model is None else reference.model)
        analysed = _from_window(con, ref_filters, bins, features, outputs)
        ref_info = {"kind": "window", "since_us": ref_filters.since_us,
                    "until_us": ref_filters.until_us, "model": ref_filters.model}
    if columns is not None:
        analysed = _only(analysed, columns)
    rows, records = _size(con, filters)
    minimised = _minimised(con, filters)
    if isinstance(reference, Window):  # hashed values on either side are not comparable
        minimised |= _minimised(con, ref_filters)
    live = [c for c in analysed if c.ref_count > 0]
    samples = _samples(_scan(con, filters), analysed) if rows else {}
    categorical = [c for c in live if c.kind == "categorical"]
    counted = (_categories(con, filters, categorical, samples,
                           window_columns(con, filters, _TEXT_SOURCES))
               if rows and categorical else {})

    def analyse(col: _Column) -> FeatureDrift:
        sample = samples.get(col.key, stats.Counted.empty()) if col.kind == "numeric" else None
        agg: Any = None if sample is not None else counted.get(col.key, {})
        count = sample.size if sample is not None else sum(agg.values())
        base = records if col.per_record else rows
        result = FeatureDrift(col.name, col.role, col.kind, int(count), base - int(count),
                              col.ref_count, "ok")
        if col.role == "input" and col.name in minimised:
            result.verdict = "minimised"  # stored hashed or empty: not the values sent
        elif count == 0:
            result.verdict = "no_data"
        elif col.ref_count == 0:
            result.verdict = "no_reference"
        else:
            result.statistics, result.reasons = (
                _numeric(col, sample, t) if sample is not None
                else _categorical(col, agg, t))
            if col.per_record:
                result.statistics["counted_per"] = "record"
            if count < t.min_count or col.ref_count < t.min_count:
                result.verdict = "insufficient_data"
            elif result.reasons:
                result.verdict = "drift"
        return result

    results = [analyse(col) for col in analysed]  # over distinct values: no pool needed
    window = {"since_us": since_us, "until_us": until_us, "model": model}
    return DriftReport(window, ref_info, rows, _overall(rows, live, results), t, results)


def _overall(rows: int, live: list[_Column], results: list[FeatureDrift]) -> str:
    """The report's verdict: `ok` only when some column was judged and none drifted."""
    verdicts = {r.verdict for r in results}
    if rows == 0:
        return "no_data"
    if not live:
        return "no_reference"
    if "drift" in verdicts:
        return "drift"
    if "ok" in verdicts:
        return "ok"
    return "insufficient_data" if "insufficient_data" in verdicts else "no_data"


def _only(analysed: list[_Column], names: list[str]) -> list[_Column]:
    """The analysed columns named in `names` (inputs or outputs); InvalidInput for a name
    the reference does not have."""
    have = {c.name for c in analysed}
    unknown = [n for n in names if n not in have]
    if unknown:
        raise InvalidInput(f"columns {unknown} are not in the reference; it has "
                           f"{sorted(have)}")
    wanted = set(names)
    return [c for c in analysed if c.name in wanted]


def _minimised(con: duckdb.DuckDBPyConnection, filters: Filters) -> set[str]:
    """Columns the window's records store hashed or redacted (their `detail` says so):
    their stored values are not the ones sent. `columns` names every SQL column of the
    minimised tensors and parameters; the tensor and parameter names are included too."""
    where, params = filters.where()
    lists = " || ".join(f"coalesce(CAST(json_extract(detail, '$.minimised.{key}') AS "
                        "VARCHAR[]), [])" for key in ("columns", "hashed", "redacted"))
    row = con.execute(
        f"SELECT list_distinct(flatten(list(DISTINCT {lists}))) FROM entries "
        f"WHERE {where} AND status = 'OK' AND detail LIKE '%\"minimised\"%'", params
    ).fetchall()
    return set(row[0][0] or []) if row else set()


def _numeric(col: _Column, sample: stats.Counted, t: Thresholds
             ) -> tuple[dict[str, Any], list[str]]:
    assert col.ref_bins is not None and col.ref_sample is not None and col.edges is not None
    ks = stats.ks_2samp_counted(sample, col.ref_sample)
    bins = sample.bins(col.edges)
    mean, std = sample.mean(), sample.std()
    ref_std = col.ref_std if col.ref_std else math.nan  # a constant reference: no unit
    s: dict[str, Any] = {
        "psi": stats.psi(col.ref_bins, bins),
        "js_distance": stats.js_distance(col.ref_bins, bins),
        "ks_statistic": ks.statistic,
        "ks_pvalue": ks.pvalue,
        "wasserstein": stats.wasserstein1_counted(sample, col.ref_sample),
        "mean": mean, "reference_mean": col.ref_mean, "mean_shift": mean - col.ref_mean,
        "mean_shift_in_std": (mean - col.ref_mean) / ref_std,
        "std": std, "reference_std": col.ref_std, "std_shift": std - col.ref_std,
        "std_shift_in_std": (std - col.ref_std) / ref_std,
        "edges": col.edges.tolist(), "counts": bins.tolist(),
        "reference_counts": col.ref_bins.tolist(), "reference_sample": col.ref_sample.size,
    }
    # PSI and JS are effect sizes: on a small window sampling noise alone exceeds them, so
    # they count only when the binned counts also differ significantly (χ², same bins).
    binned = (stats.chi2_contingency(np.vstack([col.ref_bins, bins])) if col.two_sample
              else stats.chi2_goodness_of_fit(bins, col.ref_bins))
    s["binned_chi2_pvalue"] = binned.pvalue
    significant = binned.pvalue < t.chi2_pvalue
    reasons = [name for name, hit in (
        ("psi", s["psi"] > t.psi and significant),
        ("ks", ks.pvalue < t.ks_pvalue and ks.statistic > t.ks_statistic),
        ("js", s["js_distance"] > t.js and significant),
    ) if hit]
    return s, reasons


def _categorical(col: _Column, counts: dict[str, int], t: Thresholds
                 ) -> tuple[dict[str, Any], list[str]]:
    categories = sorted(set(col.ref_freq) | set(counts))
    ref = np.array([col.ref_freq.get(c, 0) for c in categories], np.float64)
    win = np.array([counts.get(c, 0) for c in categories], np.float64)
    gof = stats.chi2_goodness_of_fit(win, ref)
    if col.two_sample:  # both are samples: a test of homogeneity of the 2×k table
        test: Any = stats.chi2_contingency(np.vstack([ref, win]))
    else:
        test = gof
    linf = stats.linf_distance(ref, win)
    s = {
        "chi2_statistic": test.statistic, "chi2_pvalue": test.pvalue, "chi2_dof": test.dof,
        "chi2_test": "two_sample" if col.two_sample else "goodness_of_fit",
        "linf": linf, "unseen_categories": [categories[i] for i in gof.unseen_categories],
        "categories": {c: {"count": int(w), "reference_count": int(r)}
                       for c, w, r in zip(categories, win, ref, strict=True)},
    }
    return s, ["chi2_linf"] if test.pvalue < t.chi2_pvalue and linf > t.linf else []
