"""Decisions joined with what became of them, from the ledger: the arrays that
:mod:`.quality` and :mod:`.review` judge.

Over the window's decision rows (as drift and bias: answered calls, ``received_us`` in
``[since_us, until_us)``, a model by name or SHA-256 prefix) one DuckDB query reads, per row:

* the model's **score** for the positive outcome: output ``score`` (default
  ``probabilities_1``), used where finite and within [0, 1];
* the model's **decision**: the rule ``decision`` (``COLUMN OP VALUE`` over the outputs, as
  bias's favourable outcome: ``label=1``), or by default ``score >= threshold`` (0.5);
* the **final decision**: the same rule over the outputs with the latest review's
  ``decision_made`` put over them (a row without review keeps the model's);
* the **truth**: the latest outcome of that row (by seq) that has the value ``label``,
  positive when it equals ``positive`` (as numbers when both are numbers: 1 = 1.0);
* the **group** (with ``by``): an input, text input or request parameter, grouped as bias
  groups it (exact values, or ``bins``).

:func:`quality_answer` turns them into every figure: coverage (decision rows with an
outcome, so nobody reads quality off 3 % coverage), label delay, the quality report over
the rows with an outcome and a score (by group too), and review against the model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow.compute as pc
from numpy.typing import NDArray

from mlwitness.analytics.baseline import json_safe
from mlwitness.analytics.bias import check_bins, group_expression, group_label
from mlwitness.analytics.drift import window_columns
from mlwitness.analytics.intervals import Estimate
from mlwitness.analytics.quality import (
    GroupQuality,
    LabelDelay,
    QualityReport,
    coverage,
    group_rates,
    label_delay,
    quality,
)
from mlwitness.analytics.review import ReviewAgreement, review_agreement
from mlwitness.errors import InvalidInput
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.schema import BATCH_SIZE

DEFAULT_SCORE = "probabilities_1"
MAX_GROUPS = 100
_RULE = re.compile(r"([^=<>!]+)(==|=|!=|>=|<=|>|<)(.*)")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Rule:
    """``COLUMN OP VALUE`` over a decision's outputs: the model's positive decision."""

    column: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str, what: str = "decision") -> Rule:
        match = _RULE.fullmatch(text.strip())
        column, op, value = (p.strip() for p in match.groups()) if match else ("", "", "")
        if not column or not value:
            raise InvalidInput(f"{what} must look like label=1 or probabilities_1>=0.5, got "
                               f"{text!r}")
        return cls(column, "=" if op == "==" else op, value)

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value}"

    def sql(self, present: dict[str, list[str]]) -> tuple[str, str]:
        """(the model's decision, the final decision): SQL over one decision row (``o``,
        ``ot``: its outputs) and its latest review's ``decision_made`` (``rv.dm``, JSON)."""
        col = _lit(self.column)
        if self.column in present["outputs"]:
            number = _number(self.value)
            if number is None:
                raise InvalidInput(f"output {self.column!r} is numeric; {self.value!r} is "
                                   "not a number")
            x, reviewed = f"o[{col}]", f"TRY_CAST(rv.dm->>{col} AS DOUBLE)"
            final = f"COALESCE({reviewed}, {x})"
            return (f"CASE WHEN isfinite({x}) THEN {x} {self.op} {number!r} END",
                    f"CASE WHEN isfinite({final}) THEN {final} {self.op} {number!r} END")
        if self.column in present["outputs_text"]:
            if self.op not in ("=", "!="):
                raise InvalidInput(f"output {self.column!r} is text: only = and != apply")
            value = _lit(self.value)
            return (f"ot[{col}] {self.op} {value}",
                    f"COALESCE(rv.dm->>{col}, ot[{col}]) {self.op} {value}")
        raise InvalidInput(f"no output {self.column!r} in the window; outputs: "
                           f"{present['outputs'] + present['outputs_text']}")


@dataclass(frozen=True)
class QualityQuery:
    label: str
    since_us: int = 0
    until_us: int = 0
    model: str = ""
    positive: str = "1"
    decision: str = ""  # a Rule; "" = score >= threshold
    score: str = ""  # "" = DEFAULT_SCORE
    threshold: float = 0.5
    by: str = ""
    bins: tuple[float, ...] = ()
    reference: str = ""
    confidence: float = 0.95
    calibration_bins: int = 10


@dataclass
class Rows:
    """One entry per decision row in the window (in no particular order)."""

    received_us: NDArray[np.int64]
    score: NDArray[np.float64]  # NaN: no usable score
    pred: NDArray[np.int8]  # the model's decision: 1, 0, or -1 (undefined)
    final: NDArray[np.int8]  # after review
    reviewed: NDArray[np.bool_]
    truth: NDArray[np.int8]  # 1, 0, or -1 (no outcome)
    observed_us: NDArray[np.float64]  # NaN: no outcome
    group: NDArray[np.int64]  # index into `groups`; -1 without a group
    groups: tuple[str, ...] = ()
    decision: str = ""  # the rule as applied, e.g. "label=1" or "probabilities_1>=0.5"
    score_column: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.received_us.size)

    def take(self, mask: NDArray[np.bool_]) -> Rows:
        return Rows(self.received_us[mask], self.score[mask], self.pred[mask],
                    self.final[mask], self.reviewed[mask], self.truth[mask],
                    self.observed_us[mask], self.group[mask], self.groups, self.decision,
                    self.score_column, self.notes)


def _empty(q: QualityQuery) -> Rows:
    i8 = np.empty(0, np.int8)
    return Rows(np.empty(0, np.int64), np.empty(0), i8, i8, np.empty(0, bool), i8,
                np.empty(0), np.empty(0, np.int64), (), q.decision, q.score)


def _json_path_free(name: str, what: str) -> str:
    if not name or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"{what} must be a non-empty name without control characters")
    return name


def fetch(con: duckdb.DuckDBPyConnection, q: QualityQuery) -> Rows:
    """Every decision row of the window with its score, decisions, review and outcome
    (without a label, none: the rows still carry the decisions and reviews)."""
    if q.label:
        _json_path_free(q.label, "the outcome label (e.g. defaulted)")
    check_bins(list(q.bins) or None)
    filters = Filters(q.since_us, q.until_us, q.model)
    where, params = filters.where()
    low, high, records = con.execute(
        f"SELECT min(seq), max(seq), count(*) FROM entries WHERE {where} AND status = 'OK'",
        params).fetchall()[0]
    if not records:
        return _empty(q)
    present = window_columns(con, filters)
    score = q.score or DEFAULT_SCORE
    if score not in present["outputs"]:
        raise InvalidInput(f"no numeric output {score!r} in the window to read the model's "
                           f"score from; name one with score (--score): "
                           f"{present['outputs']}")
    s = f"o[{_lit(score)}]"
    score_sql = f"CASE WHEN {s} >= 0 AND {s} <= 1 THEN {s} END"
    if q.decision:
        rule = Rule.parse(q.decision)
        pred_sql, final_sql = rule.sql(present)
        decision = str(rule)
    else:
        rv = f"TRY_CAST(rv.dm->>{_lit(score)} AS DOUBLE)"
        pred_sql = f"CASE WHEN isfinite({s}) THEN {s} >= {q.threshold!r} END"
        final_sql = (f"CASE WHEN isfinite(COALESCE({rv}, {s})) THEN COALESCE({rv}, {s}) >= "
                     f"{q.threshold!r} END")
        decision = f"{score}>={q.threshold:g}"
    positive = _number(q.positive)
    truth = (f"TRY_CAST(oc.v AS DOUBLE) = {positive!r}" if positive is not None
             else f"oc.v = {_lit(q.positive)}")
    group_sql, group_params, unnested = "NULL", list[Any](), ""
    if q.by:
        source, group_sql, group_params = group_expression(q.by, present,
                                                           list(q.bins) or None)
        unnested = {"inputs": ", unnest(inputs) AS i", "inputs_text":
                    ", unnest(inputs_text) AS it", "parameters": ", parameters AS p"}[source]
    sql = f"""
        WITH d AS (
            SELECT seq, received_us, unnest(range({BATCH_SIZE})) AS row,
                   unnest(outputs) AS o, unnest(outputs_text) AS ot{unnested}
            FROM entries WHERE {where} AND status = 'OK'),
        parsed AS MATERIALIZED (  -- each outcome's JSON parsed once, not once per use
            SELECT seq, json_extract_string(detail, ['$.decision.seq', '$.decision.row',
                       '$.values.' || to_json(?::VARCHAR), '$.observed_us']) AS j
            FROM entries WHERE kind = 'outcome' AND json_valid(detail)),
        oc AS (
            SELECT dseq, drow, arg_max(v, seq) AS v, arg_max(obs, seq) AS obs FROM (
                SELECT seq, TRY_CAST(j[1] AS BIGINT) AS dseq, TRY_CAST(j[2] AS BIGINT) AS drow,
                       j[3] AS v, TRY_CAST(j[4] AS BIGINT) AS obs FROM parsed)
            WHERE v IS NOT NULL AND dseq BETWEEN ? AND ?
            GROUP BY dseq, drow),
        rv AS (
            SELECT dseq, drow, arg_max(dm, seq) AS dm FROM (
                SELECT seq, TRY_CAST(json_extract_string(detail, '$.decision.seq') AS BIGINT)
                           AS dseq,
                       TRY_CAST(json_extract_string(detail, '$.decision.row') AS BIGINT)
                           AS drow,
                       json_extract(detail, '$.decision_made') AS dm
                FROM entries WHERE kind = 'review' AND json_valid(detail))
            WHERE dseq BETWEEN ? AND ?
            GROUP BY dseq, drow)
        SELECT d.received_us,
               COALESCE({score_sql}, 'NaN'::DOUBLE) AS score,
               COALESCE(({pred_sql})::TINYINT, -1) AS pred,
               COALESCE(({final_sql})::TINYINT, -1) AS final,
               rv.dm IS NOT NULL AS reviewed,
               CASE WHEN oc.v IS NULL THEN -1 ELSE COALESCE(({truth})::TINYINT, 0) END
                   AS truth,
               COALESCE(oc.obs::DOUBLE, 'NaN'::DOUBLE) AS observed_us,
               {group_sql} AS g
        FROM d LEFT JOIN oc ON oc.dseq = d.seq AND oc.drow = d.row
               LEFT JOIN rv ON rv.dseq = d.seq AND rv.drow = d.row"""
    try:  # (no ORDER BY: the figures need none, and sorting a million rows cost half)
        table = con.sql(sql, params=[*params, q.label, low, high, low, high,
                                     *group_params]).to_arrow_table()
    except duckdb.Error as exc:
        raise InvalidInput(f"cannot evaluate the quality query: {exc}") from None
    # parameters in order: the window's (d), then the label and seq ranges, then the
    # group's: the group expression comes last in the SELECT list

    def column(name: str, dtype: Any) -> NDArray[Any]:
        return np.asarray(table.column(name).to_numpy(), dtype)

    codes, names = _codes(table.column("g"), q)
    return Rows(column("received_us", np.int64), column("score", float),
                column("pred", np.int8), column("final", np.int8), column("reviewed", bool),
                column("truth", np.int8), column("observed_us", float), codes, names,
                decision, score)


def _codes(values: Any, q: QualityQuery) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Group codes into the sorted group labels; -1 for rows without a group. Arrow's
    dictionary encoding does a million strings in milliseconds (numpy's unique, seconds)."""
    if not q.by:
        return np.full(len(values), -1, np.int64), ()
    encoded = pc.dictionary_encode(values.combine_chunks())
    dictionary = encoded.dictionary.to_pylist()
    keep = [k for k, v in enumerate(dictionary)
            if v is not None and not (isinstance(v, float) and not math.isfinite(v))]
    if len(keep) > MAX_GROUPS:
        raise InvalidInput(f"{q.by!r} has {len(keep)} distinct values; group a numeric "
                           f"attribute with bins (at most {MAX_GROUPS} groups)")
    ordered = sorted(keep, key=lambda k: dictionary[k])
    remap = np.full(len(dictionary) + 1, -1, np.int64)  # the last: rows without a value
    remap[ordered] = np.arange(len(ordered))
    indices = pc.fill_null(encoded.indices, len(dictionary)).to_numpy()
    labels = tuple(group_label(dictionary[k], list(q.bins) or None) for k in ordered)
    return remap[np.asarray(indices, np.int64)], labels


# ── the answer ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class QualityAnswer:
    window: dict[str, Any]
    label: str
    positive: str
    decision: str  # the model's positive decision, as applied
    score: str
    by: str
    decisions: int  # decision rows in the window
    with_outcome: int
    coverage: Estimate
    label_delay: LabelDelay
    quality: QualityReport | None  # None without rows that have an outcome and a score
    reviews: ReviewAgreement
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def quality_answer(rows: Rows, q: QualityQuery) -> QualityAnswer:
    """Every figure from the fetched rows (see the module docstring)."""
    has = rows.truth >= 0
    notes = list(rows.notes)
    usable = has & np.isfinite(rows.score)
    if q.decision:
        usable &= rows.pred >= 0
    if int(has.sum()) > int(usable.sum()):
        notes.append(f"{int(has.sum() - usable.sum()):,} rows with an outcome have no usable "
                     f"score ({rows.score_column} within [0, 1]) or decision: left out of "
                     "the quality figures")
    report = None
    if usable.any():
        u = rows.take(usable)
        grouped = u.group >= 0
        if q.by and not grouped.all():
            notes.append(f"{int((~grouped).sum()):,} rows without {q.by!r} are left out of "
                         "the figures by group")
        report = quality(u.truth, u.score, u.pred if q.decision else None,
                         threshold=q.threshold, bins=q.calibration_bins,
                         confidence=q.confidence)
        if q.by:
            report = dataclasses.replace(report, groups=_by_group(u.take(grouped), q))
    decided = rows.pred >= 0
    reviews = review_agreement(rows.pred[decided], np.where(rows.final[decided] >= 0,
                                                            rows.final[decided],
                                                            rows.pred[decided]),
                               rows.reviewed[decided], confidence=q.confidence)
    return QualityAnswer(
        window={"since_us": q.since_us, "until_us": q.until_us, "model": q.model},
        label=q.label, positive=q.positive, decision=rows.decision or q.decision,
        score=rows.score_column or q.score or DEFAULT_SCORE, by=q.by, decisions=rows.n,
        with_outcome=int(has.sum()), coverage=coverage(has, q.confidence),
        label_delay=label_delay(rows.received_us[has], rows.observed_us[has]),
        quality=report, reviews=reviews, notes=tuple(notes))


def _by_group(g: Rows, q: QualityQuery) -> GroupQuality:
    if q.reference and q.reference not in g.groups:
        raise InvalidInput(f"reference group {q.reference!r} is not among the groups "
                           f"{list(g.groups)}")
    pred = g.pred if q.decision else (g.score >= q.threshold).astype(np.int8)
    return group_rates(g.truth, pred, g.group, g.groups, reference=q.reference or None,
                       confidence=q.confidence)
