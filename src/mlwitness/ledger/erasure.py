"""Erasure: the payload of format-2 records deleted, their place in the chain kept.

A format-2 record's hash covers a salted commitment to its payload (record.py), so the
payload — request, response, violations, message, detail — can be deleted later: the
record keeps its commitment instead (`payload_commitment`), and its hash, every later hash
and every proof built on them stay valid. An erasure is, in order:

1. an admin record on the chain saying who erased what and why (`admin_record`: detail
   `{"action": "erase", "selector": …, "reason": …, "seqs": [[first, last], …],
   "count": n}`; a parameter's value is not kept in it, `Selector.described`). Once
   it is durable the erasure happens: if not now, at the next start (`pending`, run by
   the writer as it opens the ledger);
2. one DuckDB transaction (`apply`) that stores each record's commitment and the admin
   record's seq (`erased_by`) and blanks its payload, its salt and its decoded columns
   (`inputs`, …, `parameters`: they are derived from the payload);
3. what the writer does after (ledger/writer.py): the journal segments that may still
   hold the records are overwritten and deleted, DuckDB is checkpointed and, unless told
   otherwise, its file rewritten without the blocks that held them.

Only format-2 inference records are erased: a format-1 record's payload is inside the
bytes its hash covers (erasing it would break the chain from there on), and audit and
admin records are the ledger's own account of what happened.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.ledger.record import (
    FORMAT_V2,
    Record,
    chain_hash,
    commitment,
    hashed_v2,
)

log = logging.getLogger(__name__)

ACTION = "erase"
MAX_RECORDS = 100_000  # records one erasure may take
MAX_REASON_CHARS = 1000
MAX_SELECTOR_CHARS = 1024  # a request id, a parameter name or value
LISTED = 10  # seqs named in a refusal
_CHUNK = 2048  # records read and updated at a time

# Decoded columns as an erased record keeps them: as the writer stores them for a record
# with no tensors (rows.without_decoded), which is also what verify derives from blank
# bytes, so an erased record's decoded columns keep verifying.
_BLANK = """
    request = ''::BLOB, response = ''::BLOB, message = '', violations = '', detail = '',
    salt = NULL, inputs = []::MAP(VARCHAR, DOUBLE)[], inputs_text = []::MAP(VARCHAR, VARCHAR)[],
    outputs = []::MAP(VARCHAR, DOUBLE)[], outputs_text = []::MAP(VARCHAR, VARCHAR)[],
    parameters = NULL
"""


@dataclass(frozen=True)
class Selector:
    """Which inference records: by request id, or by a request parameter's value (as the
    records store it: for a parameter `--hash-inputs` minimises, its HMAC) and/or a time
    range of receipt, [since_us, until_us). The parts given must all match."""

    request_id: str = ""
    parameter: str = ""
    value: str = ""
    since_us: int = 0
    until_us: int = 0

    def check(self) -> Selector:
        if self.value and not self.parameter:
            raise InvalidInput("a parameter value needs the parameter's name: KEY=VALUE")
        if not (self.request_id or self.parameter or self.since_us or self.until_us):
            raise InvalidInput("say which records to erase: a request id, a request parameter "
                               "(KEY=VALUE) or a time range (since/until); an empty selector "
                               "would take every record")
        if self.request_id and (self.parameter or self.since_us or self.until_us):
            raise InvalidInput("a request id names the records to erase by itself: give it "
                               "alone, or select by parameter and time range instead")
        for name, text in (("request id", self.request_id), ("parameter", self.parameter),
                           ("parameter value", self.value)):
            _check_text(name, text, MAX_SELECTOR_CHARS)
        if self.since_us < 0 or self.until_us < 0:
            raise InvalidInput("since and until are µs since the epoch: not negative")
        if self.since_us and self.until_us and self.until_us <= self.since_us:
            raise InvalidInput("until must be after since (the range is [since, until))")
        return self

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = ["kind = 'infer'"]
        params: list[Any] = []
        if self.request_id:
            clauses.append("request_id = ?")
            params.append(self.request_id)
        if self.parameter:
            clauses.append("list_contains(map_extract(parameters, ?), ?)")
            params += [self.parameter, self.value]
        if self.since_us:
            clauses.append("received_us >= ?")
            params.append(self.since_us)
        if self.until_us:
            clauses.append("received_us < ?")
            params.append(self.until_us)
        return " AND ".join(clauses), params

    def described(self) -> dict[str, Any]:
        """The parts given, as the admin record (and the audit trail) keeps them: a
        parameter by its name alone. Its value identifies the person whose data is erased
        (an applicant number); kept here, it would outlive the erasure on the chain. The
        reason names the request instead (e.g. its ticket number)."""
        out: dict[str, Any] = {}
        if self.request_id:
            out["request_id"] = self.request_id
        if self.parameter:
            out["parameter"] = self.parameter
        if self.since_us:
            out["since_us"] = self.since_us
        if self.until_us:
            out["until_us"] = self.until_us
        return out


def check_reason(reason: str) -> str:
    """Why, as the admin record keeps it: required, at most MAX_REASON_CHARS characters,
    no control characters (it is printed in refusals and terminals)."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("give the reason for the erasure (e.g. \"GDPR Art. 17 request "
                           "2026-118\"): it is kept on the chain with who erased what")
    _check_text("reason", reason, MAX_REASON_CHARS)
    return reason


def _check_text(name: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise InvalidInput(f"the {name} is {len(text)} characters long; at most {limit}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in text):
        raise InvalidInput(f"the {name} holds control or format characters; give plain text")


# ── selecting ──────────────────────────────────────────────────────────────────────────


@dataclass
class Matches:
    """The inference records a selector matches: to erase (format 2, not yet erased),
    format 1 (not erasable) and already erased ({seq: by})."""

    erasable: list[int] = field(default_factory=list)
    format1: list[int] = field(default_factory=list)
    erased: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.erasable) + len(self.format1) + len(self.erased)


def matching(cursor: Any, selector: Selector, limit: int = MAX_RECORDS) -> Matches:
    """The records `selector` matches; InvalidInput when they are more than `limit`."""
    where, params = selector.where()
    (count,) = cursor.execute(f"SELECT count(*) FROM entries WHERE {where}", params).fetchone()
    if count > limit:
        raise InvalidInput(f"the selector matches {count} records; one erasure takes at most "
                           f"{limit}: narrow it (e.g. by a time range) and erase in parts")
    found = Matches()
    for seq, fmt, by in cursor.execute(
            f"SELECT seq, coalesce(format, 1), erased_by FROM entries WHERE {where} "
            "ORDER BY seq", params).fetchall():
        if by is not None:
            found.erased[seq] = by
        elif fmt != FORMAT_V2:
            found.format1.append(seq)
        else:
            found.erasable.append(seq)
    return found


def ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted seqs as [first, last] runs: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    out: list[list[int]] = []
    for seq in sorted(seqs):
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def listed(seqs: Iterable[int], limit: int = LISTED) -> str:
    """Seqs for a message: "4, 9-12, 30" (the first `limit` runs, then "…")."""
    runs = ranges(seqs)
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (", …" if len(runs) > limit else "")


# ── the admin record and what it says ──────────────────────────────────────────────────


def admin_record(caller: str, selector: Selector, reason: str, seqs: list[int]) -> Record:
    """The admin record of an erasure: who (`peer`), what and why (`detail`)."""
    now = time.time_ns() // 1000
    detail = json.dumps({"action": ACTION, "selector": selector.described(),
                         "reason": reason, "seqs": ranges(seqs), "count": len(seqs)},
                        sort_keys=True)
    return Record(kind="admin", request_id=uuid.uuid4().hex, received_us=now,
                  responded_us=now, peer=caller, detail=detail)


@dataclass(frozen=True)
class Erased:
    """What an erasure did: the admin record's seq, the records erased, the journal
    segments overwritten, whether the DuckDB file was rewritten (Database.compact)."""

    admin_seq: int
    records: int
    journal_segments: int
    compacted: bool


@dataclass(frozen=True)
class Erasure:
    """What an erase admin record says: its seq, the reason and the seqs it erases."""

    seq: int
    reason: str
    runs: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.runs)

    def covers(self, seq: int) -> bool:
        at = bisect.bisect_right(self.runs, (seq, float("inf"))) - 1
        return at >= 0 and self.runs[at][0] <= seq <= self.runs[at][1]

    def holds_any(self, first: int, last: int) -> bool:
        """Whether it erases any seq in first..last."""
        at = bisect.bisect_left(self.runs, (first, -1))
        if at > 0 and self.runs[at - 1][1] >= first:
            return True
        return at < len(self.runs) and self.runs[at][0] <= last

    def seqs(self) -> Iterator[int]:
        for first, last in self.runs:
            yield from range(first, last + 1)


def parse(record: Record) -> Erasure | None:
    """The erasure an admin record states, or None when it is no (well-formed) erasure."""
    if record.kind != "admin" or '"erase"' not in record.detail:
        return None
    try:
        detail = json.loads(record.detail)
    except ValueError:
        return None
    if not isinstance(detail, dict) or detail.get("action") != ACTION:
        return None
    runs = detail.get("seqs")
    if not isinstance(runs, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(type(s) is int for s in r)
            and 0 < r[0] <= r[1] < record.seq for r in runs):
        return None
    ordered = tuple(sorted((a, b) for a, b in runs))
    if any(ordered[i][1] >= ordered[i + 1][0] for i in range(len(ordered) - 1)):
        return None
    return Erasure(record.seq, str(detail.get("reason", "")), ordered)


# ── doing it ───────────────────────────────────────────────────────────────────────────


def apply(con: Any, erasure: Erasure) -> int:
    """Erase the records `erasure` lists that are format 2 and still hold their payload,
    in the caller's transaction: each keeps its payload commitment (computed from the
    payload and salt it holds) and `erased_by`, and loses its payload, salt and decoded
    columns. Returns how many were erased. A record whose stored bytes no longer match its
    hash (altered before the erasure) is erased too, with a warning: verify keeps naming
    it, since the commitment of altered bytes cannot give its hash."""
    con.register("_erase_seqs", pa.table({"seq": pa.array(list(erasure.seqs()), pa.int64())}))
    try:
        reader = con.sql(
            "SELECT e.seq, kind, request_id, received_us, responded_us, model_name, "
            "model_version, model_sha256, env_id, peer, metadata, status, message, violations, "
            "detail, request, response, prev_hash, hash, salt FROM entries e "
            "JOIN _erase_seqs s ON e.seq = s.seq WHERE e.format = 2 AND e.erased_by IS NULL "
            "AND e.payload_commitment IS NULL ORDER BY e.seq").to_arrow_reader(_CHUNK)
        updates: list[pa.Table] = []
        for batch in reader:
            seqs, commitments = [], []
            for row in batch.to_pylist():
                record = Record(
                    kind=row["kind"], request_id=row["request_id"],
                    received_us=row["received_us"], responded_us=row["responded_us"],
                    model_name=row["model_name"], model_version=row["model_version"],
                    model_sha256=row["model_sha256"], env_id=row["env_id"], peer=row["peer"],
                    metadata=row["metadata"], status=row["status"], message=row["message"],
                    violations=row["violations"], detail=row["detail"],
                    request=row["request"], response=row["response"], seq=row["seq"],
                    salt=row["salt"] or b"")
                try:
                    digest = commitment(record)
                except ValueError:
                    log.warning("record seq %d is format 2 without a salt; erased with a "
                                "commitment verify will not accept", record.seq)
                    digest = bytes(32)
                if chain_hash(row["prev_hash"], hashed_v2(record, digest)) != row["hash"]:
                    log.warning("record seq %d does not match its hash (altered before its "
                                "erasure by admin record seq %d); it is erased all the same, "
                                "and verify keeps naming it", record.seq, erasure.seq)
                seqs.append(record.seq)
                commitments.append(digest)
            updates.append(pa.table({"seq": pa.array(seqs, pa.int64()),
                                     "commitment": pa.array(commitments, pa.binary())}))
    finally:
        con.unregister("_erase_seqs")
    count = 0
    for table in updates:
        con.register("_erase_commitments", table)
        try:
            con.execute(f"UPDATE entries SET {_BLANK}, payload_commitment = c.commitment, "
                        "erased_by = ? FROM _erase_commitments c WHERE entries.seq = c.seq",
                        [erasure.seq])
        finally:
            con.unregister("_erase_commitments")
        count += table.num_rows
    return count


def erasures(con: Any) -> list[Erasure]:
    """Every erasure the ledger's admin records state, oldest first."""
    found = []
    for seq, kind, detail in con.execute(
            "SELECT seq, kind, detail FROM entries WHERE kind = 'admin' AND detail LIKE "
            "'%\"erase\"%' ORDER BY seq").fetchall():
        stated = parse(Record(kind=kind, detail=detail, seq=seq))
        if stated is not None:
            found.append(stated)
    return found


def pending(con: Any) -> list[Erasure]:
    """The erasures not all of whose records are erased (the writer stopped between the
    admin record and its transaction, or records they list are gone: `apply` takes what
    is left, which may be nothing)."""
    done = dict(con.execute("SELECT erased_by, count(*) FROM entries WHERE erased_by IS NOT "
                            "NULL GROUP BY erased_by").fetchall())
    return [stated for stated in erasures(con) if done.get(stated.seq, 0) < stated.count]


def refusal(cursor: Any, seq: int, erased_by: int) -> FailedPrecondition:
    """What a question about an erased record answers: by whom and why it was erased."""
    found = cursor.execute("SELECT kind, detail FROM entries WHERE seq = ?",
                           [erased_by]).fetchall()
    stated = parse(Record(kind=found[0][0], detail=found[0][1], seq=erased_by)) \
        if found else None
    why = f": {stated.reason}" if stated is not None and stated.reason else ""
    return FailedPrecondition(f"record seq {seq} was erased by admin record seq "
                              f"{erased_by}{why}; its request, response and decoded values "
                              "are gone (its place in the hash chain remains)")
