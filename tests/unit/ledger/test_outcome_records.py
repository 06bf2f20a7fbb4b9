"""Outcome and review records: on the chain, referencing a decision by seq and hash, shown
in the `decisions` view (latest outcome, final decision, reviewer), and checked by verify."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest

from mlwitness.codec import tensor_from_array
from mlwitness.ledger import outcomes, schema
from mlwitness.ledger.record import Record
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter

SHA = "ab" * 32


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[LedgerWriter]:
    w = LedgerWriter(tmp_path / "ledger.duckdb")
    w.open()
    yield w
    w.close()


def decision(writer: LedgerWriter, request_id: str = "app-42", *, status: str = "OK",
             kind: str = "infer") -> Record:
    """An answered call of two rows (labels 0 and 1)."""
    record = Record(
        kind=kind, request_id=request_id, received_us=1_000_000, responded_us=1_000_100,
        model_name="credit", model_sha256=SHA, status=status,
        inputs=[tensor_from_array("x", np.array([[1, 2], [3, 4]], np.float32))],
        outputs=[tensor_from_array("label", np.array([0, 1], np.int64)),
                 tensor_from_array("probabilities",
                                   np.array([[0.75, 0.25], [0.25, 0.75]], np.float32))])
    writer.append_blocking(record)
    return record


def ref(record: Record, row: int = 0, digest: str | None = None) -> outcomes.Decision:
    return outcomes.Decision(record.seq, digest or record.hash.hex(), record.request_id, row,
                             record.model_name, record.model_sha256)


def reference_problems(writer: LedgerWriter) -> list[tuple[int, str]]:
    writer.sync()
    return outcomes.reference_problems(writer.cursor(), "")


def test_outcomes_and_reviews_are_chained_and_the_decisions_view_shows_the_latest(
        writer: LedgerWriter) -> None:
    d = decision(writer)
    writer.append_group([outcomes.outcome_record(ref(d, 1), {"defaulted": 1.0}, 5_000_000,
                                                 caller="token:loans"),
                         outcomes.review_record(ref(d, 1), {"label": 0}, "income verified",
                                                reviewer="token:bob")])
    writer.append_blocking(outcomes.outcome_record(ref(d, 1), {"defaulted": 0}, 6_000_000,
                                                   caller="token:loans"))
    writer.sync()
    rows = writer.cursor().execute(
        "SELECT row, final_decision->>'label', outcome->>'defaulted', "
        "epoch_us(outcome_observed_at), reviewed_by FROM decisions ORDER BY row").fetchall()
    assert rows == [(0, "0.0", None, None, None), (1, "0", "0", 6_000_000, "token:bob")]
    kept = writer.cursor().execute(
        'SELECT seq, decision_seq, row, "values"::VARCHAR, reported_by FROM outcomes '
        "ORDER BY seq").fetchall()
    assert kept == [(2, 1, 1, '{"defaulted":1}', "token:loans"),
                    (4, 1, 1, '{"defaulted":0}', "token:loans")]  # superseded, not erased
    review = writer.cursor().execute(
        "SELECT decision_seq, row, decision_made::VARCHAR, reason, reviewer FROM reviews"
    ).fetchall()
    assert review == [(1, 1, '{"label":0}', "income verified", "token:bob")]
    assert reference_problems(writer) == []
    writer.close()
    report = verify(writer.path)
    assert report.head_seq == 4
    assert not [p for p in report.problems if "outcome" in p.what or "review" in p.what]


def test_verify_names_references_that_do_not_name_their_decision(writer: LedgerWriter) -> None:
    d = decision(writer)
    refused = decision(writer, "app-43", status="INVALID_ARGUMENT")
    writer.append_group([
        outcomes.outcome_record(ref(d, 0, digest="00" * 32), {"y": 1}, 1, caller="a"),
        outcomes.review_record(ref(refused), {"label": 1}, "r", reviewer="b"),
        outcomes.outcome_record(outcomes.Decision(99, SHA, "nope", 0), {"y": 1}, 1, caller="a"),
        outcomes.outcome_record(ref(d, 2), {"y": 1}, 1, caller="a"),
        Record(kind="outcome", request_id="x", detail="not json"),
    ])
    problems = reference_problems(writer)
    assert [seq for seq, _ in problems] == [3, 4, 5, 6, 7]
    assert "hash that is not that record's" in problems[0][1]
    assert problems[1][1].startswith("review references seq 2, which is not an answered call")
    assert "not an earlier record" in problems[2][1]  # seq 99 > its own seq
    assert "row 2 of decision seq 1, which has 2 rows" in problems[3][1]
    assert "does not reference a decision" in problems[4][1]


def test_outcome_keys_are_the_same_for_the_same_outcome_however_it_is_written() -> None:
    key = outcomes.outcome_key(7, 0, {"defaulted": 1.0}, 5)
    assert key == outcomes.outcome_key(7, 0, {"defaulted": 1}, 5)
    assert key == outcomes.outcome_key(7, 0, {"defaulted": True}, 5)
    assert key != outcomes.outcome_key(7, 1, {"defaulted": 1}, 5)
    assert key != outcomes.outcome_key(7, 0, {"defaulted": 1}, 6)
    assert key != outcomes.outcome_key(7, 0, {"defaulted": "1"}, 5)


def test_over_several_chains_an_outcome_meets_only_its_own_chains_decision(
        tmp_path: Path) -> None:
    """The archive's fleet holds many ledgers in one table: seq 1 is in every chain."""
    paths = []
    for name, with_outcome in (("a", True), ("b", False)):
        w = LedgerWriter(tmp_path / f"{name}.duckdb")
        w.open()
        d = decision(w, f"{name}-1")
        if with_outcome:
            w.append_blocking(outcomes.outcome_record(ref(d, 0), {"defaulted": 1}, 5,
                                                      caller="t"))
        w.close()
        paths.append((name, w.path))
    con = duckdb.connect()
    for name, path in paths:
        con.execute(f"ATTACH '{path}' AS {name} (READ_ONLY)")
    con.execute("CREATE TABLE entries AS " + " UNION ALL ".join(
        f"SELECT '{name}' AS chain_id, * FROM {name}.main.entries" for name, _ in paths))
    con.execute(schema.views(chains=True))
    rows = con.execute("SELECT chain_id, seq, row, outcome->>'defaulted' FROM decisions "
                       "ORDER BY ALL").fetchall()
    assert rows == [("a", 1, 0, "1"), ("a", 1, 1, None), ("b", 1, 0, None), ("b", 1, 1, None)]
    assert con.execute("SELECT chain_id, decision_seq FROM outcomes").fetchall() == [("a", 1)]
