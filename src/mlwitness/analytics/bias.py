"""Bias tests: does the favourable-outcome rate depend on a protected attribute?

Over the window's decision rows (as in :mod:`mlwitness.analytics.drift`: status OK, ``received_us``
in ``[since_us, until_us)``, model name or SHA-256 prefix), each row is put in a *group*
by ``attribute`` and marked favourable or not by ``favorable``; all counting is one DuckDB
query.

* ``attribute`` is looked up in ``inputs`` (numeric), then ``inputs_text``, then the
  request ``parameters`` (a value the caller passes without it reaching the model); the
  first source holding it in the window is used. Numeric attributes are grouped by exact
  value (labelled like ``"26"``; at most ``MAX_GROUPS`` = 100 groups), or with ``bins``
  (ascending cut points ``[c1, …, ck]``) into ``"<c1"``, ``"[c1, c2)"``, …, ``">=ck"``.
* ``favorable`` is ``COLUMN OP VALUE`` with OP one of ``= == != >= > <= <`` over
  ``outputs`` (numeric; e.g. ``label=1``, ``probabilities_1>=0.5``) or else
  ``outputs_text`` (``=`` / ``!=`` only).
* Rows without the attribute or the outcome (NULL, NaN, ±inf) are excluded and counted.

Statistics (:mod:`mlwitness.analytics.stats`): the k×2 table ``[[favourable, unfavourable], …]`` in
group order; Pearson χ² of independence (no continuity correction); Fisher's exact test
when k = 2; per group the rate with its 95 % Wilson interval, and the disparate-impact
ratio (``rate_g / rate_privileged``) and statistical-parity difference
(``rate_g − rate_privileged``) against the *privileged* group — by default the group with
the highest favourable rate among groups of at least ``MIN_REFERENCE_N`` = 30 rows (ties:
the larger group, then the first label; all groups when none is that big), so a group of
three lucky rows cannot be everyone's reference.

Verdict (:class:`BiasThresholds`): ``disparity`` when some group's ratio is below
``disparate_impact`` [0.8, the four-fifths rule] *and* that group's own difference from
the privileged group is significant: Fisher's exact test of the two groups' 2×2 table,
Holm-adjusted over the groups below the ratio, p < ``pvalue`` [0.01]. (The overall χ² is
reported but not used: it can be significant because of groups that are not the ones
below the ratio.) ``inconclusive`` when a ratio is below 0.8 but no such test is
significant (too few rows to tell); ``ok`` otherwise; ``no_data`` (empty window) and
``single_group`` (fewer than two groups: nothing to compare). Rows of one call share a
request-parameter attribute and are tested as independent rows: with large batches the
p-values are optimistic.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np

from mlwitness.analytics import stats
from mlwitness.analytics.baseline import category_key, json_safe
from mlwitness.analytics.drift import window_columns
from mlwitness.errors import InvalidInput
from mlwitness.ledger.filters import Filters

MAX_GROUPS = 100
MIN_REFERENCE_N = 30  # rows a group needs to be the default privileged (reference) group
# Matched against the stripped text, parts stripped after: no two adjacent parts can both
# take whitespace, so a caller's string of spaces costs linear time, not cubic.
_FAVORABLE = re.compile(r"([^=<>!]+)(==|=|!=|>=|<=|>|<)(.*)")
_ROWS = ("SELECT unnest(inputs) AS i, unnest(inputs_text) AS it, unnest(outputs) AS o, "
         "unnest(outputs_text) AS ot, parameters AS p FROM entries WHERE {where} "
         "AND status = 'OK'")


@dataclass(frozen=True)
class BiasThresholds:
    disparate_impact: float = 0.8
    pvalue: float = 0.01


@dataclass
class GroupOutcome:
    group: str
    n: int
    favorable: int
    rate: float
    rate_ci95: tuple[float, float]
    disparate_impact: float
    statistical_parity_difference: float
    pvalue: float = 1.0  # Fisher's exact test of this group against the privileged one
    pvalue_holm: float = 1.0  # the same, Holm-adjusted over the groups below the ratio


@dataclass
class BiasReport:
    attribute: str
    attribute_source: str
    favorable: str
    outcome_source: str
    window: dict[str, Any]
    rows: int  # decision rows in the window
    excluded: dict[str, int]  # missing_attribute, missing_outcome
    privileged: str
    groups: list[GroupOutcome]
    table: list[list[int]]  # per group: [favourable, unfavourable]
    chi2: dict[str, float] | None
    fisher: dict[str, float] | None
    verdict: str
    reasons: list[str] = field(default_factory=list)
    thresholds: BiasThresholds = field(default_factory=BiasThresholds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN → None, ±inf → "Infinity"/"-Infinity")."""
        return json_safe(asdict(self))


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _outcome(favorable: str, present: dict[str, list[str]]) -> tuple[str, str, str, list[Any]]:
    """(source, SQL predicate over one row, canonical text, params) of ``favorable``."""
    match = _FAVORABLE.fullmatch(favorable.strip())
    column, op, value = (part.strip() for part in match.groups()) if match else ("", "", "")
    if not column or not value:
        raise InvalidInput(f"favorable must look like label=1 or probabilities_1>=0.5, got "
                           f"{favorable!r}")
    op = "=" if op == "==" else op
    if column in present["outputs"]:
        try:
            number = float(value)
        except ValueError:
            raise InvalidInput(f"output {column!r} is numeric; {value!r} is not a number"
                               ) from None
        y = f"o[{_lit(column)}]"
        return "outputs", f"CASE WHEN isfinite({y}) THEN {y} {op} ? END", \
            f"{column}{op}{value}", [number]
    if column in present["outputs_text"]:
        if op not in ("=", "!="):
            raise InvalidInput(f"output {column!r} is text: only = and != apply")
        return "outputs_text", f"ot[{_lit(column)}] {op} ?", f"{column}{op}{value}", [value]
    raise InvalidInput(f"no output {column!r} in the window; outputs: "
                       f"{present['outputs'] + present['outputs_text']}")


def _group(attribute: str, present: dict[str, list[str]], bins: list[float] | None
           ) -> tuple[str, str, list[Any]]:
    """(source, SQL group expression, params) of ``attribute``."""
    aliases = {"inputs": "i", "inputs_text": "it", "parameters": "p"}  # searched in order
    source = next((s for s in aliases if attribute in present[s]), "")
    if not source:
        raise InvalidInput(f"attribute {attribute!r} is in no input or request parameter of "
                           f"the window; inputs: {present['inputs'] + present['inputs_text']}, "
                           f"parameters: {present['parameters']}")
    value = f"{aliases[source]}[{_lit(attribute)}]"
    if source != "inputs":
        return source, value, []
    if not bins:
        return source, f"CASE WHEN isfinite({value}) THEN {value} END", []
    cases = " ".join(f"WHEN {value} < ? THEN {k}" for k in range(len(bins)))
    return source, (f"CASE WHEN {value} IS NULL OR NOT isfinite({value}) THEN NULL {cases} "
                    f"ELSE {len(bins)} END"), [float(b) for b in bins]


def _check_bins(bins: list[float] | None) -> None:
    """Before any SQL is built: k cut points make k + 1 groups and one CASE branch each,
    so 20,000 of them would build (and plan) a 20,000-branch query to refuse afterwards."""
    if not bins:
        return
    if len(bins) + 1 > MAX_GROUPS:
        raise InvalidInput(f"{len(bins)} bins make {len(bins) + 1} groups; at most "
                           f"{MAX_GROUPS} groups ({MAX_GROUPS - 1} cut points)")
    if not all(math.isfinite(b) for b in bins):
        raise InvalidInput("bins must be finite numbers")
    if any(b >= c for b, c in zip(bins, bins[1:], strict=False)):
        raise InvalidInput(f"bins must be strictly increasing, got {bins}")


def _label(value: Any, bins: list[float] | None) -> str:
    if isinstance(value, str):
        return value
    if not bins:
        return category_key(float(value))
    k, cut = int(value), [category_key(float(b)) for b in bins]
    return f"<{cut[0]}" if k == 0 else f">={cut[-1]}" if k == len(cut) else \
        f"[{cut[k - 1]}, {cut[k]})"


def bias_report(
    con: duckdb.DuckDBPyConnection, *, attribute: str, favorable: str, since_us: int = 0,
    until_us: int = 0, model: str = "", privileged: str | None = None,
    bins: list[float] | None = None, thresholds: BiasThresholds | None = None,
) -> BiasReport:
    """Favourable-outcome rates per ``attribute`` group in the window, their tests and
    ratios (see the module docstring). ``privileged`` names a group label."""
    t = thresholds or BiasThresholds()
    _check_bins(bins)
    filters = Filters(since_us=since_us, until_us=until_us, model=model)
    window = {"since_us": since_us, "until_us": until_us, "model": model}
    where, params = filters.where()
    records = con.execute(f"SELECT count(*) FROM entries WHERE {where} AND status = 'OK'",
                          params).fetchall()[0][0]
    if records == 0:
        return BiasReport(attribute, "", favorable, "", window, 0, {}, "", [], [], None, None,
                          "no_data", thresholds=t)
    present = window_columns(con, filters)
    out_source, predicate, canonical, out_params = _outcome(favorable, present)
    attr_source, group, group_params = _group(attribute, present, bins)
    result = con.execute(
        f"SELECT g, count(fav) AS n, count(*) FILTER (WHERE fav) AS favorable, "
        f"avg(fav::INTEGER) AS rate, count(*) FILTER (WHERE fav IS NULL) AS no_outcome "
        f"FROM (SELECT {group} AS g, {predicate} AS fav FROM ({_ROWS.format(where=where)})) "
        f"GROUP BY g ORDER BY g NULLS LAST",
        [*group_params, *out_params, *params],
    ).fetchall()
    rows = sum(int(r[1] + r[4]) for r in result)
    excluded = {"missing_attribute": sum(r[1] + r[4] for r in result if r[0] is None),
                "missing_outcome": sum(r[4] for r in result if r[0] is not None)}
    counted = [(_label(r[0], bins), int(r[1]), int(r[2]), r[3]) for r in result
               if r[0] is not None and r[1] > 0]
    if len(counted) > MAX_GROUPS:
        raise InvalidInput(f"attribute {attribute!r} has {len(counted)} distinct values; "
                           f"group a numeric attribute with bins (at most {MAX_GROUPS} groups)")
    table = [[fav, n - fav] for _, n, fav, _ in counted]
    labels = [label for label, *_ in counted]
    if privileged is None:  # the highest rate among groups big enough to be a reference
        sized = [c for c in counted if c[1] >= MIN_REFERENCE_N] or counted
        best = max(sized, key=lambda c: (c[3], c[1]), default=None)
        privileged = best[0] if best else ""
    elif privileged not in labels:
        raise InvalidInput(f"privileged group {privileged!r} is not among the groups {labels}")
    report = BiasReport(attribute, attr_source, canonical, out_source, window, rows, excluded,
                        privileged, [], table, None, None, "ok", thresholds=t)
    if len(counted) < 2:
        report.verdict = "single_group"
        report.groups = [_outcome_of(c, c) for c in counted]
        return report
    reference = counted[labels.index(privileged)]
    report.groups = [_outcome_of(c, reference) for c in counted]
    chi2 = stats.chi2_contingency(np.array(table))
    report.chi2 = {"statistic": chi2.statistic, "pvalue": chi2.pvalue, "dof": chi2.dof}
    if len(counted) == 2:
        fisher = stats.fisher_exact_2x2(np.array(table))
        report.fisher = {"odds_ratio": fisher.statistic, "pvalue": fisher.pvalue}
    flagged = [g for g in report.groups if g.group != privileged
               and not math.isnan(g.disparate_impact) and g.disparate_impact < t.disparate_impact]
    for g in report.groups:
        if g.group != privileged:
            g.pvalue = stats.fisher_exact_2x2(np.array(
                [[g.favorable, g.n - g.favorable],
                 [reference[2], reference[1] - reference[2]]])).pvalue
    _holm(flagged)
    significant = any(g.pvalue_holm < t.pvalue for g in flagged)
    report.reasons = [r for r, hit in (("four_fifths", bool(flagged)),
                                       ("significant", significant)) if hit]
    report.verdict = ("disparity" if significant else "inconclusive" if flagged else "ok")
    return report


def _holm(groups: list[GroupOutcome]) -> None:
    """Holm's step-down adjustment of the groups' p-values (each against the privileged
    group), in place: the k-th smallest of m is multiplied by m − k + 1, kept monotone."""
    running = 0.0
    for k, g in enumerate(sorted(groups, key=lambda g: g.pvalue)):
        running = max(running, min(1.0, (len(groups) - k) * g.pvalue))
        g.pvalue_holm = running


def _outcome_of(group: tuple[str, int, int, float], privileged: tuple[str, int, int, float]
                ) -> GroupOutcome:
    label, n, fav, rate = group
    _, n_p, fav_p, _ = privileged
    return GroupOutcome(
        label, n, fav, float(rate), stats.wilson_interval(fav, n),
        stats.disparate_impact(fav, n, fav_p, n_p),
        stats.statistical_parity_difference(fav, n, fav_p, n_p),
    )


# The quality questions (analytics/outcomes.py) group decision rows as bias does.
group_expression = _group
check_bins = _check_bins
group_label = _label
