"""Record format 2 (ledger/record.py, docs/ledger.md "Record formats"): the hashed bytes
hold a salted commitment to the payload instead of the payload, the journal holds what
rebuilds the record, and format-1 records keep their bytes. The spec is rebuilt here by
hand (`spec_*`), not with the module under test: an evidence verifier in another language
works from the spec too."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import duckdb
import pytest

from mlwitness.ledger import journal
from mlwitness.ledger.record import (
    SALT_SIZE,
    Record,
    chain_hash,
    commitment,
    decode,
    encode,
    encodings,
)
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter, WriterOptions

CLEAR = ("kind", "request_id", "model_name", "model_version", "model_sha256", "env_id", "peer",
         "metadata", "status")


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def spec_payload(r: Record) -> bytes:
    return b"".join(lp(x) for x in (r.message.encode(), r.violations.encode(),
                                     r.detail.encode(), r.request, r.response))


def spec_commitment(r: Record) -> bytes:
    return hashlib.sha256(b"mlwitness-payload-v2" + r.salt + spec_payload(r)).digest()


def spec_head(r: Record, version: int, count: int) -> bytes:
    return struct.pack(">BqqqI", version, r.seq, r.received_us, r.responded_us, count)


def spec_clear(r: Record) -> bytes:
    return b"".join(lp(getattr(r, name).encode()) for name in CLEAR)


def sample(seq: int = 7, **fields: object) -> Record:
    values: dict = dict(
        kind="infer", request_id=f"app-{seq}", received_us=1_700_000_000_000_000 + seq,
        responded_us=1_700_000_000_000_500 + seq, model_name="credit", model_version="1",
        model_sha256="ab" * 32, env_id="cd" * 32, peer="ipv4:10.0.0.7:5123",
        metadata='{"x-caller": "loans"}', status="OK", message="", violations='{"n": 1}',
        detail='{"withheld_response": "AAEC"}', request=b"\x01request applicant=A-1093",
        response=b"\x02response", seq=seq, salt=bytes(range(16)))
    values.update(fields)
    return Record(**values)


def test_format2_hashed_bytes_carry_the_salted_commitment_not_the_payload() -> None:
    record = sample()
    stored, hashed = encodings(record)
    assert hashed == spec_head(record, 2, 10) + spec_clear(record) + lp(spec_commitment(record))
    assert stored == (spec_head(record, 2, 15) + spec_clear(record) + lp(record.salt)
                      + spec_payload(record))
    assert b"applicant=A-1093" not in hashed and b"applicant=A-1093" in stored
    assert encode(record) == hashed and commitment(record) == spec_commitment(record)


def test_format2_stored_bytes_give_back_the_record() -> None:
    record = sample()
    stored, hashed = encodings(record)
    back = decode(stored)
    assert back == record  # every field, format and salt included
    assert back.format == 2 and encode(back) == hashed


def test_each_salt_gives_another_commitment_and_hash() -> None:
    one, two = sample(salt=b"\x00" * 16), sample(salt=b"\x00" * 15 + b"\x01")
    assert commitment(one) != commitment(two)
    assert chain_hash(b"p" * 32, encode(one)) != chain_hash(b"p" * 32, encode(two))


def test_an_erased_record_hashes_as_before_through_its_stored_commitment() -> None:
    record = sample()
    before = encode(record)
    erased = sample(message="", violations="", detail="", request=b"", response=b"", salt=b"",
                    payload_commitment=commitment(record), erased_by=99)
    assert encode(erased) == before


def test_a_format1_record_keeps_its_bytes() -> None:
    """A format-1 record (as ledgers before format 2 hold them) decodes from, and hashes,
    its format-1 encoding: the payload inside it."""
    record = sample(salt=b"", format=1)
    v1 = spec_head(record, 1, 14) + spec_clear(record) + spec_payload(record)
    back = decode(v1)
    assert back.format == 1 and back.salt == b"" and back.request == record.request
    assert encode(back) == v1 and encodings(back) == (v1, v1)


@pytest.mark.parametrize("damage", ["hashed bytes", "short salt", "unknown version"])
def test_decode_refuses_what_is_no_stored_record(damage: str) -> None:
    record = sample()
    stored, hashed = encodings(record)
    data = {
        "hashed bytes": hashed,
        "short salt": (spec_head(record, 2, 15) + spec_clear(record) + lp(b"\x01" * 8)
                       + spec_payload(record)),
        "unknown version": b"\x03" + stored[1:],
    }[damage]
    with pytest.raises(ValueError):
        decode(data)


def test_a_format2_record_without_salt_or_commitment_cannot_be_hashed() -> None:
    with pytest.raises(ValueError, match="salt"):
        encode(sample(salt=b""))


# ── the writer, the journal, recovery ─────────────────────────────────────────────────


def call(i: int) -> Record:
    return Record(kind="infer", request_id=f"r{i}", received_us=i, responded_us=i + 1,
                  request=b"payload-%d" % i, response=b"answer", violations="{}")


def test_the_writer_salts_every_record_and_its_journal_frame_rebuilds_it(
        tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "l.duckdb", WriterOptions(load_interval_s=3600))
    writer.open()
    try:
        for i in range(1, 6):
            writer.append_blocking(call(i))
        framed = list(journal.read(journal.journal_dir(tmp_path / "l.duckdb")))
    finally:
        writer.close()
    assert [r.seq for r in framed] == [1, 2, 3, 4, 5]
    assert all(r.format == 2 and len(r.salt) == SALT_SIZE for r in framed)
    assert len({r.salt for r in framed}) == 5  # a salt of each record's own
    prev = framed[0].prev_hash
    for record in framed:  # what the journal holds gives each hash back
        assert record.prev_hash == prev
        assert record.hash == chain_hash(prev, encode(record)) == hashlib.sha256(
            prev + spec_head(record, 2, 10) + spec_clear(record)
            + lp(spec_commitment(record))).digest()
        prev = record.hash
    stored = duckdb.connect(str(tmp_path / "l.duckdb"), read_only=True).execute(
        "SELECT seq, format, salt, payload_commitment, erased_by FROM entries ORDER BY seq"
    ).fetchall()
    assert stored == [(r.seq, 2, r.salt, None, None) for r in framed]


def test_start_up_loads_a_format2_journal_tail(tmp_path: Path) -> None:
    """A journal tail of format-2 frames (what a crash leaves) is loaded at the next start,
    salts included, and the chain verifies through it."""
    path = tmp_path / "l.duckdb"
    writer = LedgerWriter(path)
    writer.open()
    writer.append_blocking(call(1))
    seq, prev = writer.head
    writer.close()
    tail = journal.Journal(journal.journal_dir(path))
    tail.open(seq + 1)
    frames, records = [], []
    for i in range(seq + 1, seq + 4):
        record = call(i)
        record.seq, record.salt = i, os.urandom(SALT_SIZE)
        stored, hashed = encodings(record)
        record.prev_hash, record.hash = prev, chain_hash(prev, hashed)
        prev = record.hash
        records.append(record)
        frames.append(journal.frame(record, stored, seq + 1))
    tail.append(b"".join(frames), seq + 1, seq + 3)
    tail.sync()
    tail.close()

    reopened = LedgerWriter(path)
    reopened.open()
    try:
        assert reopened.head == (4, records[-1].hash)
        rows = reopened.cursor().execute(
            "SELECT seq, format, salt, request FROM entries WHERE seq > 1 ORDER BY seq"
        ).fetchall()
    finally:
        reopened.close()
    assert rows == [(r.seq, 2, r.salt, r.request) for r in records]
    report = verify(path)
    assert report.ok, report.problems
    assert report.record_formats == {"2": 4}


# ── tampering with a format-2 record ───────────────────────────────────────────────────


def _closed_ledger(tmp_path: Path, count: int = 5) -> Path:
    path = tmp_path / "l.duckdb"
    writer = LedgerWriter(path)
    writer.open()
    for i in range(1, count + 1):
        writer.append_blocking(call(i))
    writer.close()
    return path


@pytest.mark.parametrize(("column", "value"), [
    ("request", b"payload-X"),  # one byte of the payload changed
    ("salt", b"\x00" * 16),
    ("violations", '{"n": 2}'),
    ("payload_commitment", b"\x11" * 32),  # a commitment set on a record that keeps its payload
])
def test_tampering_with_a_format2_record_is_caught_at_its_seq(
        tmp_path: Path, column: str, value: object) -> None:
    path = _closed_ledger(tmp_path)
    assert verify(path).ok
    con = duckdb.connect(str(path))
    con.execute(f"UPDATE entries SET {column} = ? WHERE seq = 3", [value])
    con.close()
    report = verify(path)
    assert not report.ok and report.first_bad_seq == 3, report.problems
