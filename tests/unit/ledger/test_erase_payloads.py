"""Erasure at the ledger (ledger/erasure.py, LedgerWriter.erase): an admin record first,
then the payloads gone — from DuckDB's rows, its file's blocks and the journal — while
the chain verifies; a stop between the two is completed at the next start; verify counts
erased records by erasure and fails an erasure the chain does not state."""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import numpy as np
import pytest

from mlwitness.codec import encode_inputs, encode_outputs, tensor_from_array
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.ledger import erasure, journal
from mlwitness.ledger.erasure import Selector
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record, commitment
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.protocol import inference as pb

SECRET = "ZQ-PAYLOAD-7731"  # a value found nowhere but in the payload of the erased calls


def call(i: int, applicant: str) -> Record:
    """A ModelInfer record as the sidecar makes it (bytes; tensors decoded from them)."""
    x = tensor_from_array("x", np.array([[float(i), 2.0]], np.float32))
    request = pb.ModelInferRequest(model_name="m", id=f"r{i}")
    request.parameters["applicant"].string_param = applicant
    encode_inputs(request, [x], raw=True)
    response = pb.ModelInferResponse(model_name="m", id=f"r{i}")
    encode_outputs(response, [tensor_from_array("y", np.array([i], np.int64))], raw=True)
    return Record(request_id=f"r{i}", received_us=1000 * i, responded_us=1000 * i + 1,
                  model_name="m", request=request.SerializeToString(),
                  response=response.SerializeToString(), message=f"note {applicant}")


def open_writer(path: Path) -> LedgerWriter:
    writer = LedgerWriter(path, WriterOptions(load_interval_s=0.05),
                          decoder=decode_record_tensors)
    writer.open()
    return writer


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """Six calls: r2 and r5 by the applicant SECRET."""
    path = tmp_path / "l.duckdb"
    writer = open_writer(path)
    for i in range(1, 7):
        writer.append_blocking(call(i, SECRET if i in (2, 5) else f"A-{i:04d}"))
    writer.close()
    return path


def erase(writer: LedgerWriter, selector: Selector, reason: str = "GDPR Art. 17 request 1",
          *, compact: bool = True) -> erasure.Erased:
    found = erasure.matching(writer.cursor(), selector.check())
    record = erasure.admin_record("token:dpo", selector, reason, found.erasable)
    return writer.erase(record, compact=compact)


def ledger_bytes(path: Path) -> bytes:
    """Every byte mlwitness keeps beside the ledger: the file, DuckDB's WAL, the journal."""
    found = [p for p in path.parent.rglob("*") if p.is_file() and p.name.startswith(path.name)]
    return b"".join(p.read_bytes() for p in found)


def test_erasing_by_parameter_keeps_the_chain_and_says_who_why(ledger: Path) -> None:
    writer = open_writer(ledger)
    try:
        done = erase(writer, Selector(parameter="applicant", value=SECRET))
        assert (done.records, done.compacted) == (2, True)
        report = verify(ledger, con=writer.cursor())
        reader = LedgerReader(writer.cursor, writer.sync)
        with pytest.raises(FailedPrecondition) as refused:
            reader.get(seq=2)
        kept = reader.get_as_stored(seq=2).record
        window = [r.seq for batch in reader.window(Filters()) for r in batch]
        admin = reader.get(seq=done.admin_seq).record
    finally:
        writer.close()
    assert report.ok, report.problems
    assert report.erased == {str(done.admin_seq): 2} and report.erased_records == 2
    assert any(f"2 records erased by admin record seq {done.admin_seq} (GDPR Art. 17 "
               "request 1)" in note for note in report.notes())
    assert refused.value.message.startswith(
        f"record seq 2 was erased by admin record seq {done.admin_seq}: GDPR Art. 17 request 1")
    assert (kept.request, kept.response, kept.message, kept.salt) == (b"", b"", "", b"")
    assert len(kept.payload_commitment) == 32 and kept.erased_by == done.admin_seq
    assert window == [1, 3, 4, 6]  # replays of a range leave erased calls out
    assert (admin.kind, admin.peer) == ("admin", "token:dpo")
    stated = erasure.parse(admin)
    assert stated is not None and (stated.runs, stated.reason) == (((2, 2), (5, 5)),
                                                                 "GDPR Art. 17 request 1")
    assert verify(ledger).ok  # and offline, from the closed file


def test_erased_payloads_are_gone_from_the_file_and_the_journal(ledger: Path) -> None:
    """DuckDB leaves what an UPDATE replaced in its file's blocks; the erasure rewrites
    the file (Database.compact) and overwrites the journal segments that held it."""
    assert SECRET.encode() in ledger_bytes(ledger)  # checkpointed into the file at close
    writer = open_writer(ledger)
    try:
        writer.append_blocking(call(7, SECRET))  # in the live journal, and loaded
        writer.sync()
        done = erase(writer, Selector(parameter="applicant", value=SECRET))
        assert done.records == 3 and done.journal_segments >= 1
        assert SECRET.encode() not in ledger_bytes(ledger)  # while it runs
        writer.append_blocking(call(8, "A-0008"))  # and it goes on
    finally:
        writer.close()
    assert SECRET.encode() not in ledger_bytes(ledger)
    report = verify(ledger)
    assert report.ok and report.erased_records == 3 and report.head_seq == 9


def test_erasing_by_request_id_and_by_time_range(ledger: Path) -> None:
    writer = open_writer(ledger)
    try:
        first = erase(writer, Selector(request_id="r3"), compact=False)
        second = erase(writer, Selector(since_us=4000, until_us=6000), compact=False)
        rows = writer.cursor().execute(
            "SELECT seq, erased_by FROM entries WHERE erased_by IS NOT NULL ORDER BY seq"
        ).fetchall()
        report = verify(ledger, con=writer.cursor())
    finally:
        writer.close()
    assert rows == [(3, first.admin_seq), (4, second.admin_seq), (5, second.admin_seq)]
    assert report.ok and report.erased == {str(first.admin_seq): 1, str(second.admin_seq): 2}


def test_an_erasure_a_stop_interrupted_is_completed_at_the_next_start(
        ledger: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = open_writer(ledger)
    try:  # the admin record is on the chain; the stop comes before its transaction
        record = erasure.admin_record("token:dpo", Selector(request_id="r4"), "retention",
                                      [4])
        writer.append_blocking(record)
    finally:
        writer.close()
    assert not verify(ledger).erased
    with caplog.at_level(logging.WARNING):
        writer = open_writer(ledger)
        writer.close()
    assert f"completed the erasure of admin record seq {record.seq}: 1 records" in caplog.text
    report = verify(ledger)
    assert report.ok and report.erased == {str(record.seq): 1}


def test_verify_fails_an_erasure_the_chain_does_not_state(ledger: Path) -> None:
    """Someone with write access blanks a payload and stores its commitment (the chain
    still holds): no admin record states that erasure, so verify names the record."""
    con = duckdb.connect(str(ledger))
    row = con.execute("SELECT kind, request_id, received_us, responded_us, model_name, "
                      "message, violations, detail, request, response, salt FROM entries "
                      "WHERE seq = 3").fetchone()
    record = Record(kind=row[0], request_id=row[1], received_us=row[2], responded_us=row[3],
                    model_name=row[4], message=row[5], violations=row[6], detail=row[7],
                    request=row[8], response=row[9], salt=row[10], seq=3)
    con.execute("UPDATE entries SET request = ''::BLOB, response = ''::BLOB, message = '', "
                "salt = NULL, inputs = [], outputs = [], parameters = NULL, "
                "payload_commitment = ?, erased_by = 6 WHERE seq = 3", [commitment(record)])
    con.close()
    report = verify(ledger)
    assert not report.ok and report.first_bad_seq == 3
    assert any("admin record seq 6 states no erasure of it" in p.what for p in report.problems)


def test_only_format2_inference_records_are_selected_and_limits_hold(ledger: Path) -> None:
    con = duckdb.connect(str(ledger))
    con.execute("UPDATE entries SET format = NULL WHERE seq = 1")  # as a format-1 row reads
    found = erasure.matching(con, Selector(since_us=1))
    with pytest.raises(InvalidInput, match="matches 6 records; one erasure takes at most 5"):
        erasure.matching(con, Selector(since_us=1), limit=5)
    con.close()
    assert (found.format1, found.erasable) == ([1], [2, 3, 4, 5, 6])


@pytest.mark.parametrize(("selector", "words"), [
    (Selector(), "empty selector would take every record"),
    (Selector(request_id="r1", since_us=5), "give it alone"),
    (Selector(value="x"), "needs the parameter's name"),
    (Selector(request_id="r\x00"), "control or format characters"),
    (Selector(parameter="p" * 2000), "at most 1024"),
    (Selector(since_us=10, until_us=10), "until must be after since"),
])
def test_a_selector_must_say_which_records(selector: Selector, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        selector.check()


@pytest.mark.parametrize(("reason", "words"), [
    ("  ", "give the reason"),
    ("x" * 1001, "at most 1000"),
    ("ok\x1b[2Jcleared", "control or format characters"),
    ("right\u202eleft", "control or format characters"),
])
def test_a_reason_is_required_short_and_plain(reason: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        erasure.check_reason(reason)


def test_an_erasure_states_its_seqs_as_runs() -> None:
    record = erasure.admin_record("me", Selector(request_id="x"), "why", [9, 3, 4, 5, 12])
    record.seq = 20
    stated = erasure.parse(record)
    assert stated is not None and stated.runs == ((3, 5), (9, 9), (12, 12))
    assert stated.count == 5 and [s for s in range(1, 14) if stated.covers(s)] == [
        3, 4, 5, 9, 12]
    assert stated.holds_any(6, 8) is False and stated.holds_any(6, 9) is True
    assert erasure.listed(range(1, 40, 2), limit=3) == "1, 3, 5, …"
    record.seq = 4  # an erasure of records after its own admin record states nothing
    assert erasure.parse(record) is None
    assert not journal.ERASING.endswith(journal.SUFFIX)  # never read back as a segment
