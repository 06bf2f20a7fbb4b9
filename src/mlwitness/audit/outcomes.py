"""Writing what became of decisions: outcomes (one at a time or a batch of an import) and
reviews, each a record in the chain that references its decision (ledger/outcomes.py).

Only the sidecar, which owns the ledger, writes them: a standalone audit server reads its
ledger read-only and answers FAILED_PRECONDITION. A batch is resolved and checked whole
before anything is written — an unknown decision refuses the batch (NOT_FOUND), a bad
value too (INVALID_ARGUMENT) — and then written in one commit. Outcomes already on the
chain (same decision row, values and observed time: `outcome_key`) are skipped, so an
import run twice adds nothing; one lock makes "is it there yet" and "write it" one step.
The question's audit record keeps a summary, not the request bytes: the outcome and
review records hold everything that was sent.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlwitness.audit.results import OutcomesRecorded, ReviewRecorded
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import FailedPrecondition, InvalidInput, RecordNotFound
from mlwitness.ledger import outcomes
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record
from mlwitness.ledger.schema import BATCH_SIZE

MAX_OUTCOMES = 10_000  # a call's batch
MAX_VALUES = 100  # named values in one outcome or review
MAX_TEXT = 10_000  # characters of a text value, a reason, a source
LISTED = 5  # unknown decisions named in a refusal

AppendGroup = Callable[[list[Record]], None]


@dataclass(frozen=True)
class OutcomeIn:
    """One outcome as asked: the decision by request id or seq, its row, the values."""

    request_id: str = ""
    seq: int = 0
    row: int = 0
    values: Mapping[str, outcomes.Value] = dataclasses.field(default_factory=dict)
    observed_us: int = 0  # 0: now
    line: int = 0  # of an imported file, for messages

    def where(self) -> str:
        at = f"line {self.line}: " if self.line else ""
        which = f"seq {self.seq}" if self.seq else f"request id {self.request_id!r}"
        return f"{at}{which}"


def check_values(values: Mapping[str, Any], what: str) -> dict[str, outcomes.Value]:
    if not values:
        raise InvalidInput(f"{what}: give at least one value (e.g. defaulted=1)")
    if len(values) > MAX_VALUES:
        raise InvalidInput(f"{what}: at most {MAX_VALUES} values")
    out: dict[str, outcomes.Value] = {}
    for name, value in values.items():
        if not name or any(ord(c) < 32 for c in name) or len(name) > 200:
            raise InvalidInput(f"{what}: value names must be 1-200 printable characters")
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise InvalidInput(f"{what}: {name} is longer than {MAX_TEXT} characters")
        elif not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidInput(f"{what}: {name} must be a finite number or text")
        out[name] = outcomes.plain(value)
    return out


def _text(text: str, what: str, *, required: bool) -> str:
    if required and not text.strip():
        raise InvalidInput(f"give {what}")
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{what} is longer than {MAX_TEXT} characters")
    return text


class Outcomes:
    """`append` commits a group of records on the ledger the decisions are on (None: a
    standalone audit server, which may not write it)."""

    def __init__(self, reader: LedgerReader, trail: Trail,
                 append: AppendGroup | None) -> None:
        self.reader = reader
        self.trail = trail
        self.append = append
        self._lock = threading.Lock()

    def _writable(self) -> AppendGroup:
        if self.append is None:
            raise FailedPrecondition(
                "this audit server reads its ledger read-only: record outcomes and reviews "
                "on the audit port of the sidecar that writes the ledger")
        return self.append

    def record_outcomes(self, asker: Asker, items: Sequence[OutcomeIn], source: str = ""
                        ) -> OutcomesRecorded:
        asker = dataclasses.replace(asker, raw=b"")  # the records keep what was sent
        with self.trail.audited(asker, outcomes=len(items), source=source) as summary:
            append = self._writable()
            if not items:
                raise InvalidInput("no outcomes given")
            if len(items) > MAX_OUTCOMES:
                raise InvalidInput(f"{len(items)} outcomes in one call; at most "
                                   f"{MAX_OUTCOMES} (send them in batches)")
            source = _text(source, "the source", required=False)
            checked = []
            for item in items:
                if item.observed_us < 0:
                    raise InvalidInput(f"{item.where()}: observed time must be positive")
                if item.row < 0:
                    raise InvalidInput(f"{item.where()}: row must be 0 or more")
                checked.append(dataclasses.replace(
                    item, values=check_values(item.values, item.where())))
            with self._lock:
                result = self._write(append, asker.caller, checked, source)
            summary.update(recorded=result.recorded, duplicates=result.duplicates,
                           first_seq=result.first_seq, last_seq=result.last_seq)
            return result

    def _write(self, append: AppendGroup, caller: str, items: list[OutcomeIn],
               source: str) -> OutcomesRecorded:
        con = self.reader.cursor()  # every acknowledged record: earlier batches too
        decisions = resolve(con, items)
        seqs = sorted({d.seq for d in decisions})
        known: dict[tuple[int, int], set[str]] = {}
        for dseq, drow, key in con.execute(
            "SELECT TRY_CAST(json_extract_string(detail, '$.decision.seq') AS BIGINT) AS dseq, "
            "TRY_CAST(json_extract_string(detail, '$.decision.row') AS BIGINT), "
            "json_extract_string(detail, '$.key') FROM entries "
            "WHERE kind = 'outcome' AND json_valid(detail) "
            "AND dseq IN (SELECT unnest(?::BIGINT[]))",
            [seqs]).fetchall():
            known.setdefault((dseq, drow), set()).add(key)
        records: list[Record] = []
        duplicates = superseding = 0
        now = time.time_ns() // 1000
        for item, decision in zip(items, decisions, strict=True):
            # Keyed by the time given, or by none: an outcome sent again without a time
            # is the same outcome, whenever it is sent.
            key = outcomes.outcome_key(decision.seq, decision.row, item.values,
                                       item.observed_us)
            seen = known.setdefault((decision.seq, decision.row), set())
            if key in seen:
                duplicates += 1
                continue
            superseding += bool(seen)
            seen.add(key)
            records.append(outcomes.outcome_record(
                decision, item.values, item.observed_us or now, caller=caller, source=source,
                key=key))
        if records:
            append(records)
        return OutcomesRecorded(
            recorded=len(records), duplicates=duplicates, superseding=superseding,
            first_seq=records[0].seq if records else 0,
            last_seq=records[-1].seq if records else 0)

    def record_review(self, asker: Asker, decision_made: Mapping[str, Any], reason: str, *,
                      request_id: str = "", seq: int = 0, row: int = 0) -> ReviewRecorded:
        asker = dataclasses.replace(asker, raw=b"")
        with self.trail.audited(asker, request_id=request_id, seq=seq, row=row) as summary:
            append = self._writable()
            item = OutcomeIn(request_id, seq, row)
            made = check_values(decision_made, f"{item.where()}: the decision made")
            reason = _text(reason, "a reason for the review (--reason)", required=True)
            if row < 0:
                raise InvalidInput("row must be 0 or more")
            with self._lock:
                con = self.reader.cursor()
                decision = resolve(con, [item])[0]
                model = _model_decision(con, decision)
                unknown = sorted(set(made) - set(model))
                if unknown:
                    raise InvalidInput(f"{item.where()} has no output {unknown[0]!r} to "
                                       f"decide; its outputs: {sorted(model)}")
                record = outcomes.review_record(decision, made, reason, reviewer=asker.caller)
                append([record])
            overrides = any(_differs(made[k], model[k]) for k in made)
            summary.update(seq=record.seq, decision_seq=decision.seq, overrides=overrides)
            return ReviewRecorded(seq=record.seq, decision_seq=decision.seq,
                                  reviewer=asker.caller, overrides=overrides)


def _differs(made: Any, model: Any) -> bool:
    if isinstance(made, str) or isinstance(model, str):
        return str(made) != str(model)
    return float(made) != float(model)


def _model_decision(con: Any, decision: outcomes.Decision) -> dict[str, Any]:
    """The decision row's outputs by name (numbers and text)."""
    found = con.execute("SELECT outputs[?], outputs_text[?] FROM entries WHERE seq = ?",
                        [decision.row + 1, decision.row + 1, decision.seq]).fetchall()
    numeric, text = found[0] if found else (None, None)
    return {**dict(numeric or {}), **dict(text or {})}


def resolve(con: Any, items: Sequence[OutcomeIn]) -> list[outcomes.Decision]:
    """The decision row each item names: an answered inference call (by seq, or by the one
    answered call with that request id) and a row it has. Refuses the whole batch: unknown
    decisions (NOT_FOUND, the first few named), ambiguous or unanswered ones
    (FAILED_PRECONDITION), rows it does not have (INVALID_ARGUMENT)."""
    columns = (f"seq, kind, status, lower(hex(hash)), request_id, model_name, model_sha256, "
               f"{BATCH_SIZE}")
    seqs = sorted({i.seq for i in items if i.seq})
    ids = sorted({i.request_id for i in items if not i.seq})
    by_seq = {row[0]: row for row in con.execute(
        f"SELECT {columns} FROM entries WHERE seq IN (SELECT unnest(?::BIGINT[]))",
        [seqs]).fetchall()} if seqs else {}
    by_id: dict[str, list[tuple]] = {}
    for row in con.execute(
        f"SELECT {columns} FROM entries WHERE kind = 'infer' AND request_id IN "
        "(SELECT unnest(?::VARCHAR[])) ORDER BY seq", [ids]).fetchall() if ids else []:
        by_id.setdefault(row[4], []).append(row)
    missing = [i for i in items if not (by_seq.get(i.seq) if i.seq else by_id.get(i.request_id))]
    if missing:
        named = "; ".join(i.where() for i in missing[:LISTED])
        more = f" and {len(missing) - LISTED} more" if len(missing) > LISTED else ""
        raise RecordNotFound(f"no recorded decision for {named}{more}: nothing was recorded")
    out = []
    for item in items:
        out.append(_decision(item, by_seq[item.seq] if item.seq else
                             _one_answered(item, by_id[item.request_id])))
    return out


def _one_answered(item: OutcomeIn, rows: list[tuple]) -> tuple:
    answered = [r for r in rows if r[2] == "OK"]
    if len(answered) == 1:
        return answered[0]
    if not answered:
        return rows[0]  # judged (and refused) as not a decision below
    listed = ", ".join(f"seq:{r[0]}" for r in answered[:LISTED])
    raise FailedPrecondition(f"{item.where()} names more than one answered call ({listed}); "
                             "give the decision by seq:N: nothing was recorded")


def _decision(item: OutcomeIn, row: tuple) -> outcomes.Decision:
    seq, kind, status, digest, request_id, model_name, model_sha256, size = row
    if kind != "infer":
        raise FailedPrecondition(f"{item.where()} is an {kind} record, not a decision: "
                                 "nothing was recorded")
    if status != "OK":
        raise FailedPrecondition(f"{item.where()} (seq {seq}) was not answered ({status}): "
                                 "it made no decision; nothing was recorded")
    if size and item.row >= size:
        raise InvalidInput(f"{item.where()}: row {item.row}, but the call has {size} "
                           f"row{'s' if size != 1 else ''}: nothing was recorded")
    return outcomes.Decision(seq, digest, request_id, item.row, model_name, model_sha256)
