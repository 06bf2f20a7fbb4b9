"""Ledger verification: recompute the hash chain and the stored model bytes' hashes.

The chain covers every field of every record (see `record.encode`), so changing any byte
of a stored record, deleting a record or reordering records breaks it at the first
affected seq. Records still in the journal (acknowledged, not yet loaded into DuckDB) are
verified as the chain's continuation. A ledger truncated at its end still forms a valid
chain: compare the reported head with one published earlier (`expect_head`) to catch that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlwitness.ledger import journal, schema
from mlwitness.ledger.record import Record, chain_hash, encode, genesis_hash

_COLUMNS = (
    "seq, kind, request_id, received_us, responded_us, model_name, model_version, "
    "model_sha256, env_id, peer, metadata, status, message, violations, detail, "
    "request, response, prev_hash, hash"
)


@dataclass
class Problem:
    seq: int | None
    what: str


@dataclass
class VerifyReport:
    ledger: str
    records: int = 0
    journal_records: int = 0
    models: int = 0
    environments: int = 0
    head_seq: int = 0
    head_hash: str = ""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["first_bad_seq"] = self.first_bad_seq
        return data


def _stored_records(con, batch: int = 5000) -> Iterator[Record]:
    cursor = con.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq")
    while rows := cursor.fetchmany(batch):
        for row in rows:
            yield Record(
                seq=row[0],
                kind=row[1],
                request_id=row[2],
                received_us=row[3],
                responded_us=row[4],
                model_name=row[5],
                model_version=row[6],
                model_sha256=row[7],
                env_id=row[8],
                peer=row[9],
                metadata=row[10],
                status=row[11],
                message=row[12],
                violations=row[13],
                detail=row[14],
                request=bytes(row[15]),
                response=bytes(row[16]),
                prev_hash=bytes(row[17]),
                hash=bytes(row[18]),
            )


def verify(path: Path, *, expect_head: tuple[int, str] | None = None,
           con: Any = None) -> VerifyReport:
    """Verify the ledger file at `path` and its journal tail. The file is opened read-only
    unless `con`, a cursor on it (e.g. from the process that writes it), is given."""
    report = VerifyReport(ledger=str(path))
    # The journal first: a live writer loads records into DuckDB and only then deletes
    # their journal segment, so read in this order every record is in one or the other.
    tail: list[Record] = []
    unreadable: Exception | None = None
    try:
        tail.extend(journal.read(journal.journal_dir(path)))
    except Exception as exc:  # damaged journal: report it, don't crash the verifier
        unreadable = exc
    own = con is None
    if own:
        con = schema.connect(path, read_only=True)
    try:
        meta = dict(con.execute("SELECT key, value FROM ledger_meta").fetchall())
        chain_id = meta.get("chain_id", "")
        prev = genesis_hash(chain_id)
        expected_seq = 1
        for record in _stored_records(con):
            problem = _check(record, expected_seq, prev)
            if problem is not None and not report.problems:
                report.problems.append(problem)
            report.records += 1
            expected_seq = record.seq + 1
            prev = record.hash
        _check_models(con, report)
    finally:
        if own:
            con.close()
    for record in tail:
        if record.seq < expected_seq:
            continue
        problem = _check(record, expected_seq, prev)
        if problem is not None and not report.problems:
            report.problems.append(Problem(problem.seq, f"journal: {problem.what}"))
        report.journal_records += 1
        expected_seq = record.seq + 1
        prev = record.hash
    if unreadable is not None:
        report.problems.append(Problem(expected_seq, f"journal unreadable: {unreadable}"))
    report.head_seq = expected_seq - 1
    report.head_hash = prev.hex()
    if expect_head is not None:
        seq, digest = expect_head
        if report.head_seq < seq:
            report.problems.append(
                Problem(report.head_seq + 1, f"records after seq {report.head_seq} are missing; "
                        f"expected the chain to reach seq {seq}")
            )
        elif report.head_seq == seq and report.head_hash != digest.lower():
            report.problems.append(Problem(seq, "chain head differs from the expected hash"))
    return report


def _check(record: Record, expected_seq: int, prev: bytes) -> Problem | None:
    if record.seq != expected_seq:
        if record.seq > expected_seq:
            return Problem(expected_seq, f"record seq {expected_seq} is missing "
                           f"(next stored record is seq {record.seq})")
        return Problem(record.seq, f"seq {record.seq} appears out of order or twice")
    if record.prev_hash != prev:
        return Problem(record.seq, "prev_hash does not match the previous record's hash "
                       "(a record was removed, inserted or reordered before it)")
    if chain_hash(record.prev_hash, encode(record)) != record.hash:
        return Problem(record.seq, "content does not match its hash (the record was altered)")
    return None


def _check_models(con, report: VerifyReport) -> None:
    """Stored model bytes and environment fingerprints must match their ids, and every id a
    record names must be stored. A problem names the first record that relies on it."""
    first_use = _first_use(con, "model_sha256")
    stored = set()
    for sha, onnx in con.execute("SELECT sha256, onnx FROM models ORDER BY sha256").fetchall():
        report.models += 1
        stored.add(sha)
        if hashlib.sha256(bytes(onnx)).hexdigest() != sha:
            report.problems.append(Problem(first_use.get(sha), f"model {sha}: stored bytes do "
                                           "not match their SHA-256"))
    _report_missing(report, first_use, stored, "model {} is not in the model store")
    first_use = _first_use(con, "env_id")
    stored = set()
    for env_id, fingerprint in con.execute(
        "SELECT env_id, fingerprint FROM environments ORDER BY env_id"
    ).fetchall():
        report.environments += 1
        stored.add(env_id)
        if hashlib.sha256(fingerprint.encode()).hexdigest() != env_id:
            report.problems.append(Problem(first_use.get(env_id), f"environment {env_id}: "
                                           "fingerprint does not match its id"))
    _report_missing(report, first_use, stored, "environment {} is not in the ledger")


def _first_use(con, column: str) -> dict[str, int]:
    return dict(con.execute(
        f"SELECT {column}, min(seq) FROM entries WHERE {column} <> '' GROUP BY {column}"
    ).fetchall())


def _report_missing(
    report: VerifyReport, first_use: dict[str, int], stored: set[str], what: str
) -> None:
    for key, seq in sorted(first_use.items(), key=lambda item: item[1]):
        if key not in stored:
            report.problems.append(Problem(seq, what.format(key) + f" (named by seq {seq})"))
