"""What became of a decision and what a person did about it: `outcome` and `review` records.

Both are ordinary records in the hash chain, each referencing one row of one answered call
by its seq *and* hash, so that a reference cannot be moved to another decision without
breaking the chain, and `verify` can check that it names a real decision
(`reference_problems`). Their `detail` JSON:

    outcome  {"decision": {"seq", "hash", "request_id", "row"}, "values": {name: value},
              "observed_us": µs, "key": hex, "source": text}
    review   {"decision": {…}, "reviewer": identity, "decision_made": {name: value},
              "reason": text}

`values` and `decision_made` hold numbers or text. `key` is the SHA-256 of the outcome's
decision, row, values and observed time (`outcome_key`; time 0 when none was given, the
record's `observed_us` then being when it was recorded): importing the same outcome again
finds it on the chain and adds nothing. Nothing is ever replaced: a later outcome (or
review) of the same decision row supersedes the earlier one in the `decisions` view, and
both stay on the chain. `reviewer` is the identity mlwitness established for the caller
(token, certificate or peer), never metadata the caller sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlwitness.ledger.record import Record

OUTCOME = "outcome"
REVIEW = "review"
KINDS = (OUTCOME, REVIEW)

Value = float | int | str


@dataclass(frozen=True)
class Decision:
    """One row of one answered inference record, as an outcome or review names it."""

    seq: int
    hash: str  # hex
    request_id: str
    row: int
    model_name: str = ""
    model_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "request_id": self.request_id,
                "row": self.row}


def plain(value: Value) -> Value:
    """A value as stored: integral numbers as integers (so 1.0 from a CSV file and 1 from
    the command line are one outcome), other numbers as floats, text as it is."""
    if not isinstance(value, str | int | float) and hasattr(value, "item"):
        value = value.item()  # a numpy scalar
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and math.isfinite(value) and float(value).is_integer() \
            and abs(value) < 2**53:
        return int(value)
    return value


def outcome_key(decision_seq: int, row: int, values: Mapping[str, Value],
                observed_us: int) -> str:
    """The identity of an outcome: the same decision row, values and time give the same
    key, whichever way (file, command, RPC) they arrive."""
    canonical = json.dumps([decision_seq, row, {k: plain(v) for k, v in values.items()},
                            observed_us], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _record(kind: str, decision: Decision, caller: str, detail: dict[str, Any]) -> Record:
    now = time.time_ns() // 1000
    return Record(kind=kind, request_id=uuid.uuid4().hex, received_us=now, responded_us=now,
                  model_name=decision.model_name, model_sha256=decision.model_sha256,
                  peer=caller, detail=json.dumps(detail, sort_keys=True))


def outcome_record(decision: Decision, values: Mapping[str, Value], observed_us: int, *,
                   caller: str, source: str = "", key: str = "") -> Record:
    """An outcome record (not yet chained: the writer assigns seq and hashes). `key`
    defaults to `outcome_key` of what it holds."""
    stored = {k: plain(v) for k, v in values.items()}
    return _record(OUTCOME, decision, caller, {
        "decision": decision.to_dict(), "values": stored, "observed_us": observed_us,
        "key": key or outcome_key(decision.seq, decision.row, stored, observed_us),
        **({"source": source} if source else {})})


def review_record(decision: Decision, decision_made: Mapping[str, Value], reason: str, *,
                  reviewer: str) -> Record:
    """A review record: `reviewer` is the authenticated identity of whoever asked."""
    return _record(REVIEW, decision, reviewer, {
        "decision": decision.to_dict(), "reviewer": reviewer,
        "decision_made": {k: plain(v) for k, v in decision_made.items()}, "reason": reason})


# ── verification: each reference names a real decision ───────────────────────────────

_REFERENCES = """
SELECT o.seq, o.kind, o.ok, o.dseq, o.dhash, o.drow, d.seq IS NOT NULL, d.kind, d.status,
       lower(hex(d.hash)), {batch_size}
FROM (SELECT seq, kind,
             json_valid(detail) AS ok,
             CASE WHEN json_valid(detail) THEN
                 TRY_CAST(json_extract_string(detail, '$.decision.seq') AS BIGINT) END AS dseq,
             CASE WHEN json_valid(detail) THEN
                 json_extract_string(detail, '$.decision.hash') END AS dhash,
             CASE WHEN json_valid(detail) THEN
                 TRY_CAST(json_extract_string(detail, '$.decision.row') AS BIGINT) END AS drow
      FROM {where}entries WHERE kind IN ('outcome', 'review')) o
LEFT JOIN {where}entries d ON d.seq = o.dseq
ORDER BY o.seq
"""


def reference_problems(con: Any, where: str, tail: Iterable[Record] = (), *,
                       archived: int = 0) -> list[tuple[int, str]]:
    """(seq, what) for each outcome or review whose reference does not name an earlier
    answered call by its seq and hash (with a row it has). `where` is the catalog prefix
    of the stored tables; `tail` the journal's records not yet in them; records up to
    `archived` were deleted locally once archived (a reference to one is not checked
    here: `mlwitness archive verify` has them)."""
    from mlwitness.ledger.schema import BATCH_SIZE  # (schema imports nothing of ours)

    problems: list[tuple[int, str]] = []
    batch_size = BATCH_SIZE.replace("len(", "len(d.")
    for row in con.execute(_REFERENCES.format(where=where, batch_size=batch_size)).fetchall():
        seq, own, ok, dseq, dhash, drow, found, kind, status, digest, size = row
        what = _problem(seq, ok, dseq, dhash, drow, found and (kind, status, digest, size))
        if what and not (not found and dseq is not None and dseq <= archived):
            problems.append((seq, f"{own} {what}"))
    infer = {}
    for record in tail:
        if record.kind == "infer":
            infer[record.seq] = ("infer", record.status, record.hash.hex(), None)
        elif record.kind in KINDS:
            problems += _tail_problem(con, where, record, infer, archived)
    return problems


def _tail_problem(con: Any, where: str, record: Record, infer: dict[int, tuple],
                  archived: int) -> list[tuple[int, str]]:
    try:
        detail = json.loads(record.detail)
        ref = detail["decision"]
        dseq, dhash, drow = int(ref["seq"]), str(ref["hash"]), int(ref["row"])
    except (ValueError, KeyError, TypeError):
        return [(record.seq, f"{record.kind} does not reference a decision (decision seq, "
                             "hash and row)")]
    target: Any = infer.get(dseq)
    if target is None:
        found = con.execute(f"SELECT kind, status, lower(hex(hash)) FROM {where}entries "
                            "WHERE seq = ?", [dseq]).fetchall()
        if not found and dseq <= archived:
            return []
        target = (*found[0], None) if found else False
    what = _problem(record.seq, True, dseq, dhash, drow, target)
    return [(record.seq, f"{record.kind} {what}")] if what else []


def _problem(seq: int, ok: bool, dseq: Any, dhash: Any, drow: Any, target: Any) -> str:
    """Why a reference is wrong ("" when it is right). `target`: (kind, status, hash hex,
    rows or None when unknown) of the record at dseq, or False when there is none."""
    if not ok or dseq is None or dhash is None or drow is None:
        return "does not reference a decision (decision seq, hash and row)"
    if dseq >= seq:
        return f"references seq {dseq}, which is not an earlier record"
    if not target:
        return f"references decision seq {dseq}, which is not on the ledger"
    kind, status, digest, rows = target
    if kind != "infer" or status != "OK":
        return f"references seq {dseq}, which is not an answered call ({kind}, {status})"
    if digest != str(dhash).lower():
        return (f"references decision seq {dseq} with a hash that is not that record's "
                "(the reference was moved to another decision, or the decision rewritten)")
    if drow < 0 or (rows and drow >= rows):
        return f"references row {drow} of decision seq {dseq}, which has {rows} rows"
    return ""
