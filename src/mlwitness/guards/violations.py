"""Guard violations and rate-bound breaches over a window of the ledger, in SQL.

Each inference record's `violations` column is JSON written by the inline checks:
{"guards": sha, "violations": [{guard, column, kind, row, value, bound}, …] (the first
100), "counts": [{guard, column, kind, n}, …] (all), "unlisted": k, "refused": true,
"unchecked": why, "rate_breaches": [{guard, state, estimate, low, high, min, max, n, …}, …]}.
"""

from __future__ import annotations

from typing import Any

import duckdb

from mlwitness.ledger.filters import Filters

_VIOLATION = '[{"guard": "VARCHAR", "column": "VARCHAR", "kind": "VARCHAR", "n": "BIGINT"}]'
# A record's violations counted by guard, column and kind: its "counts" (every one, while
# "violations" lists the first 100), or for records written before counts were kept, its
# listed violations one by one. "refused" marks a call refused for them (enforce mode);
# older records had no mark, and their refusals are the non-OK ones with violations.
_COUNTS = ("COALESCE(json_extract(NULLIF(violations, ''), '$.counts'), "
           "json_extract(NULLIF(violations, ''), '$.violations'))")
_REFUSED = ("COALESCE(json_extract(NULLIF(violations, ''), '$.refused')::BOOLEAN, "
            "json_extract(NULLIF(violations, ''), '$.counts') IS NULL AND status <> 'OK')")
_BREACH = ('[{"guard": "VARCHAR", "state": "VARCHAR", "estimate": "DOUBLE", "low": "DOUBLE", '
           '"high": "DOUBLE", "min": "DOUBLE", "max": "DOUBLE", "n": "BIGINT"}]')


def violations_report(con: duckdb.DuckDBPyConnection, *, since_us: int = 0, until_us: int = 0,
                      model: str = "") -> dict[str, Any]:
    where, params = Filters(since_us, until_us, model).where()
    calls, with_violations, refused = con.execute(
        f"""SELECT count(*),
                   count(*) FILTER (WHERE json_array_length({_COUNTS}) > 0),
                   count(*) FILTER (WHERE json_array_length({_COUNTS}) > 0 AND {_REFUSED})
            FROM entries WHERE {where}""", params).fetchall()[0]
    counts = con.execute(
        f"""WITH v AS (
                SELECT seq, {_REFUSED} AS refused,
                       unnest(from_json({_COUNTS}, '{_VIOLATION}')) AS v
                FROM entries WHERE {where})
            SELECT v.guard, v.column, v.kind, sum(COALESCE(v.n, 1))::BIGINT,
                   count(DISTINCT seq) FILTER (WHERE refused), min(seq), max(seq)
            FROM v GROUP BY ALL ORDER BY 4 DESC, 1, 2, 3""", params).fetchall()
    breaches = con.execute(
        f"""WITH b AS (
                SELECT seq, received_us, unnest(from_json(
                    json_extract(NULLIF(violations, ''), '$.rate_breaches'), '{_BREACH}')) AS b
                FROM entries WHERE {where})
            SELECT seq, received_us, b.guard, b.state, b.estimate, b.low, b.high, b.min, b.max,
                   b.n
            FROM b ORDER BY seq""", params).fetchall()
    keys = ("guard", "column", "kind", "count", "refused", "first_seq", "last_seq")
    breach_keys = ("seq", "received_us", "guard", "state", "estimate", "low", "high", "min",
                   "max", "n")
    return {
        "calls": int(calls or 0),
        "calls_with_violations": int(with_violations or 0),
        "refused": int(refused or 0),
        "violations": [dict(zip(keys, row, strict=True)) for row in counts],
        "rate_breaches": [dict(zip(breach_keys, row, strict=True)) for row in breaches],
    }


def violations_over_time(con: duckdb.DuckDBPyConnection, *, bucket_us: int, since_us: int = 0,
                         until_us: int = 0, model: str = "") -> list[tuple[int, str, int]]:
    """(bucket start µs, guard, violations) over the window, in buckets of `bucket_us`
    counted from the epoch: each record's counted violations, and its rate breaches under
    the rate guard's name."""
    where, params = Filters(since_us, until_us, model).where()
    rows = con.execute(
        f"""WITH v AS (
                SELECT received_us, unnest(from_json({_COUNTS}, '{_VIOLATION}')) AS v
                FROM entries WHERE {where}),
            b AS (
                SELECT received_us, unnest(from_json(
                    json_extract(NULLIF(violations, ''), '$.rate_breaches'), '{_BREACH}')) AS b
                FROM entries WHERE {where})
            SELECT start, guard, sum(n)::BIGINT FROM (
                SELECT received_us // ? * ? AS start, v.guard AS guard, COALESCE(v.n, 1) AS n
                FROM v
                UNION ALL
                SELECT received_us // ? * ? AS start, b.guard AS guard, 1 AS n FROM b)
            GROUP BY ALL ORDER BY 1, 2""",
        [*params, *params, bucket_us, bucket_us, bucket_us, bucket_us]).fetchall()
    return [(int(start), str(guard), int(n)) for start, guard, n in rows]
