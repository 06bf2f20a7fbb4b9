"""Erasing records: an admin's question that deletes the payload of inference records —
a data subject's request (GDPR Art. 17), a retention period that ended — and keeps their
place in the chain (`mlwitness.ledger.erasure` says how).

One erasure at a time, and all or nothing as asked: a selector that matches a format-1
record (its payload is inside the bytes its hash covers) or more than
erasure.MAX_RECORDS records is refused whole. A parameter's value is matched as the
records store it (a parameter `--hash-inputs` minimises, by its HMAC under the hash key)
and kept nowhere: not in the erasure's admin record, nor in the audit trail's record of
the question (`mlwitness.wire.audit` drops it from the bytes kept).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from mlwitness.audit.results import EraseResult, SeqRange
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import FailedPrecondition, InvalidInput, RecordNotFound
from mlwitness.ledger import erasure
from mlwitness.ledger.erasure import Selector
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record

# Carries out an erasure on the ledger's writer (LedgerWriter.erase): the admin record,
# whether to compact the DuckDB file.
Eraser = Callable[[Record, bool], erasure.Erased]
# A request parameter's value as the records store it (Minimiser.stored_parameter): None
# when no record keeps it (redacted).
StoredValue = Callable[[str, str], "str | None"]


class Erasures:
    def __init__(self, reader: LedgerReader, trail: Trail, erase: Eraser | None,
                 stored_value: StoredValue | None = None) -> None:
        self.reader = reader
        self.trail = trail
        self._erase = erase
        self._stored_value = stored_value
        self._lock = threading.Lock()  # one erasure at a time: each selects what it erases

    def as_stored(self, selector: Selector) -> Selector:
        """The selector with its parameter value as the records store it. InvalidInput
        for a parameter no record keeps (`--redact-inputs`)."""
        if not selector.parameter or self._stored_value is None:
            return selector
        stored = self._stored_value(selector.parameter, selector.value)
        if stored is None:
            raise InvalidInput(f"request parameter {selector.parameter!r} is redacted "
                               "(--redact-inputs): no record keeps its value to select by; "
                               "select by request id or time range")
        return dataclasses.replace(selector, value=stored)

    def erase(self, asker: Asker, selector: Selector, reason: str, *, dry_run: bool = False,
              compact: bool = True) -> EraseResult:
        try:
            stored, refused = self.as_stored(selector), None
        except InvalidInput as exc:
            stored, refused = dataclasses.replace(selector, value=""), exc
        kept_reason = reason[: erasure.MAX_REASON_CHARS]
        with self.trail.audited(asker, selector=stored.described(), reason=kept_reason,
                                dry_run=dry_run, compact=compact) as summary, self._lock:
            if refused is not None:
                raise refused
            stored.check()
            reason = erasure.check_reason(reason)
            if not dry_run and self._erase is None:
                raise FailedPrecondition("erasing needs the sidecar that writes the ledger; "
                                         "this audit server opens it read-only")
            found = erasure.matching(self.reader.cursor(), stored)
            summary.update(matched=found.total)
            if not found.total:
                raise RecordNotFound(f"no inference record matches {stored.described()}")
            if found.format1:
                raise FailedPrecondition(
                    f"{len(found.format1)} of the {found.total} matching records (seq "
                    f"{erasure.listed(found.format1)}) are record format 1, written before "
                    "this version: their payload is inside the bytes their hashes cover, so "
                    "erasing it would break the chain from there on. Nothing was erased; "
                    "narrow the selector to records written since (format 2)")
            notes = _already(found.erased)
            runs = [SeqRange(a, b) for a, b in erasure.ranges(found.erasable)]
            if dry_run or not found.erasable:
                summary.update(erased=0, would_erase=len(found.erasable))
                return EraseResult(dry_run, found.total, len(found.erasable) if dry_run else 0,
                                   len(found.erased), 0, runs if dry_run else [], False, 0,
                                   notes)
            assert self._erase is not None
            record = erasure.admin_record(asker.caller, stored, reason, found.erasable)
            done = self._erase(record, compact)
            summary.update(erased=done.records, admin_seq=done.admin_seq)
            return EraseResult(False, found.total, done.records, len(found.erased),
                               done.admin_seq, runs, done.compacted, done.journal_segments,
                               notes)


def _already(erased: dict[int, int]) -> list[str]:
    by: dict[int, list[int]] = {}
    for seq, admin in erased.items():
        by.setdefault(admin, []).append(seq)
    return [f"{len(seqs)} matching records were erased before, by admin record seq {admin} "
            f"(seq {erasure.listed(seqs)})" for admin, seqs in sorted(by.items())]
