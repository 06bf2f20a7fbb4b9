"""Reading the ledger: one record in full, pages of record summaries, and verification of
the whole chain (`mlwitness.ledger.verify`) through a cursor that sees every acknowledged
record; over a fleet (`archive`), verification of every chain in the archive."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwitness.archive import ObjectStore
from mlwitness.audit.results import RecordDetail, RecordPage, RecordSummary, Verification
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import InvalidInput
from mlwitness.ledger import environment
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.verify import expected_head, verify

if TYPE_CHECKING:
    from mlwitness.archive.verify import ArchiveReport


class Records:
    def __init__(self, reader: LedgerReader, trail: Trail,
                 archive: ObjectStore | None = None) -> None:
        self.reader = reader
        self.trail = trail
        self.archive = archive

    def get(self, asker: Asker, request_id: str = "", seq: int = 0) -> RecordDetail:
        with self.trail.audited(asker, request_id=request_id, seq=seq) as summary:
            stored = self.reader.get(request_id, seq)
            r = stored.record
            summary.update(seq=r.seq, status=r.status)
            env = self.reader.environment(r.env_id)
            return RecordDetail(
                seq=r.seq, request_id=r.request_id, kind=r.kind, received_us=r.received_us,
                responded_us=r.responded_us, model_name=r.model_name,
                model_version=r.model_version, model_sha256=r.model_sha256, env_id=r.env_id,
                environment_json=environment.canonical(env) if env else "", caller=r.peer,
                metadata_json=r.metadata, status=r.status, message=r.message,
                violations_json=r.violations, inputs=stored.inputs, outputs=stored.outputs,
                prev_hash=r.prev_hash.hex(), hash=r.hash.hex(),
                request_bytes=len(r.request), response_bytes=len(r.response),
            )

    def list(self, asker: Asker, filters: Filters, page_size: int, page_token: str
             ) -> RecordPage:
        with self.trail.audited(asker, filters=filters.__dict__,
                                page_token=page_token) as summary:
            items, token = self.reader.list(filters, page_size, page_token)
            summary.update(returned=len(items))
            return RecordPage([RecordSummary(**item) for item in items], token)

    async def verify(self, asker: Asker, ledger: Path, expect_seq: int = 0,
                     expect_hash: str = "") -> Verification:
        """Verify the ledger file at `ledger`; with a published head (both or neither),
        the record at `expect_seq` must have `expect_hash`. On the event loop, the work in
        threads: a caller who leaves mid-way is on the trail as CANCELLED."""
        asked: dict[str, Any] = {"expect_seq": expect_seq, "expect_hash": expect_hash} if (
            expect_seq or expect_hash) else {}
        if self.archive is not None:
            return await self._verify_archive(asker, self.archive, asked)
        with self.trail.audited(asker, **asked) as summary:
            head = expected_head(expect_seq, expect_hash) if asked else None
            cursor = await asyncio.to_thread(self.reader.cursor)  # sees all acknowledged
            report = await asyncio.to_thread(verify, ledger, con=cursor, expect_head=head)
            summary.update(ok=report.ok, records=report.records, head_seq=report.head_seq)
        return Verification(
            ok=report.ok, records=report.records, journal_records=report.journal_records,
            head_seq=report.head_seq, head_hash=report.head_hash,
            first_bad_seq=report.first_bad_seq or 0,
            problems=[f"seq {p.seq}: {p.what}" if p.seq else p.what for p in report.problems],
            decoded_checked=report.decoded_checked,
            decoded_not_covered=report.decoded_not_covered, notes=report.notes(),
            erased_records=report.erased_records,
        )

    async def _verify_archive(self, asker: Asker, store: ObjectStore,
                              asked: dict[str, Any]) -> Verification:
        """Every chain of the archive, from its objects (archive/verify.py): the problems
        name the chain, the first bad seq and the object."""
        # Imported on the first such question: it brings in pyarrow.parquet and its
        # filesystems, ~12 MiB a sidecar without an archive would hold for nothing
        from mlwitness.archive.verify import verify_archive

        with self.trail.audited(asker, **asked) as summary:
            if asked:
                raise InvalidInput("a fleet holds one chain per replica, each with its own "
                                   "head: check published heads with `mlwitness archive "
                                   "verify --expect-head CHAIN:SEQ:HASH`")
            report = await asyncio.to_thread(verify_archive, store)
            summary.update(ok=report.ok, records=report.records, chains=len(report.chains))
        return archive_verification(report)


def archive_verification(report: ArchiveReport) -> Verification:
    first = [c.first_bad for c in report.chains if c.first_bad is not None]
    seqs = [p.seq for p in first if p.seq is not None]
    notes = [f"chain {c.chain_id}: {c.segments} segments, records up to seq {c.head_seq}, "
             f"head {c.head_hash}" for c in report.chains]
    notes += [f"chain {c.chain_id}: {note}" for c in report.chains for note in c.notes]
    return Verification(
        ok=report.ok, records=report.records, journal_records=0, head_seq=0, head_hash="",
        first_bad_seq=min(seqs) if seqs else 0,
        problems=[str(p) for p in report.all_problems],
        decoded_checked=sum(c.decoded_checked for c in report.chains),
        decoded_not_covered=0, notes=notes, erased_records=0)
