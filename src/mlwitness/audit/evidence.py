"""Evidence that holds outside the ledger: its checkpoints, proofs read from its Merkle tree
(ledger/tree.py, ledger/checkpoints.py), and the health detail (Status) that says whether
checkpoints are issued and published.

Proofs are for tree sizes up to the latest checkpoint's: those are the trees a verifier can
hold a signed head of. Nothing here asks the auditor to trust the answer — each carries
what `evidence/check.py` (or any RFC 9162 verifier) needs to check it against a checkpoint
the auditor keeps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlwitness.audit import bundle
from mlwitness.audit.results import (
    ArchiveStatus,
    CheckpointInfo,
    CheckpointStatus,
    ConsistencyProofResult,
    EvidenceBundle,
    InclusionProofResult,
    LedgerStatus,
    PublisherStatus,
    Status,
    no_archive,
)
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import InvalidInput
from mlwitness.ledger import checkpoints, tree
from mlwitness.ledger.checkpoints import Checkpointer, CheckpointRow
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.writer import LedgerWriter

if TYPE_CHECKING:  # the audit-server's --archive alone has a fleet (and imports it)
    from mlwitness.archive.fleet import Fleet

StatusSource = Callable[[], Status]


class Evidence:
    """`status` gives the health detail (None: worked out from the ledger file, as the
    standalone audit-server reads it); `max_model_bytes` caps the model a bundle carries."""

    def __init__(self, reader: LedgerReader, trail: Trail,
                 status: StatusSource | None = None, *, max_model_bytes: int = 16 << 20
                 ) -> None:
        self.reader = reader
        self.trail = trail
        self._status = status or (lambda: stored_status(reader))
        self.max_model_bytes = max_model_bytes

    def checkpoint(self, asker: Asker, size: int = 0) -> CheckpointInfo:
        with self.trail.audited(asker, size=size) as summary:
            if size < 0:
                raise InvalidInput(f"size must be positive (0: the latest), got {size}")
            con = self.reader.stored_cursor()
            try:
                row = checkpoints.for_size(con, size)
            finally:
                con.close()
            summary.update(size=row.size)
            return info(row)

    def inclusion_proof(self, asker: Asker, request_id: str = "", seq: int = 0,
                        tree_size: int = 0) -> InclusionProofResult:
        with self.trail.audited(asker, request_id=request_id, seq=seq,
                                tree_size=tree_size) as summary:
            if request_id:
                seq = self.reader.get(request_id, rows=False).record.seq
            elif seq <= 0:
                raise InvalidInput(f"give a request id or a positive seq (got seq {seq})")
            con = self.reader.stored_cursor()
            try:
                proof = checkpoints.prove_record(con, seq, tree_size)
            finally:
                con.close()
            inclusion = proof.inclusion
            summary.update(seq=inclusion.seq, tree_size=inclusion.tree_size)
            return InclusionProofResult(
                seq=inclusion.seq, leaf_index=inclusion.leaf_index,
                tree_size=inclusion.tree_size, chain_hash=inclusion.chain_hash.hex(),
                leaf_hash=inclusion.leaf_hash.hex(), hashes=[h.hex() for h in inclusion.hashes],
                root_hash=inclusion.root.hex(), checkpoint=info(proof.checkpoint))

    def evidence(self, asker: Asker, request_id: str = "", seq: int = 0,
                 with_model: bool = False) -> EvidenceBundle:
        """The evidence bundle of one record (audit/bundle.py), proven in the latest
        checkpoint; refused for an erased record, as every question about its content."""
        with self.trail.audited(asker, request_id=request_id, seq=seq,
                                with_model=with_model) as summary:
            if request_id:
                seq = self.reader.get(request_id, rows=False).record.seq
            elif seq <= 0:
                raise InvalidInput(f"give a request id or a positive seq (got seq {seq})")
            found = bundle.build(self.reader, seq, with_model=with_model,
                                 max_model_bytes=self.max_model_bytes)
            data = bundle.dumps(found)
            tree_size = int(found["record"]["proof"]["tree_size"])
            summary.update(seq=seq, tree_size=tree_size, bytes=len(data))
            return EvidenceBundle(data=data, total_bytes=len(data),
                                  sha256=hashlib.sha256(data).hexdigest(), seq=seq,
                                  tree_size=tree_size)

    def consistency_proof(self, asker: Asker, from_size: int, to_size: int = 0
                          ) -> ConsistencyProofResult:
        with self.trail.audited(asker, from_size=from_size, to_size=to_size) as summary:
            if to_size < 0:
                raise InvalidInput(f"to size must be positive (0: the latest), got {to_size}")
            con = self.reader.stored_cursor()
            try:
                newest = checkpoints.for_size(con, 0)
                to_size = to_size or newest.size
                proof = tree.consistency(con, from_size, to_size, newest.size)
                ends = (checkpoints.at_size(con, from_size), checkpoints.at_size(con, to_size))
            finally:
                con.close()
            summary.update(from_size=from_size, to_size=to_size)
            return ConsistencyProofResult(
                from_size=proof.old_size, to_size=proof.new_size,
                from_root=proof.old_root.hex(), to_root=proof.new_root.hex(),
                hashes=[h.hex() for h in proof.hashes],
                from_checkpoint=info(ends[0]), to_checkpoint=info(ends[1]))

    def status(self, asker: Asker) -> Status:
        with self.trail.audited(asker) as summary:
            status = self._status()
            summary.update(state=status.checkpoints.state, size=status.checkpoints.size,
                           publisher=status.publisher.state)
            return status


def info(row: CheckpointRow | None) -> CheckpointInfo:
    """A checkpoint row as the API shows it (size 0: none)."""
    if row is None:
        return CheckpointInfo(0, "", "", False, "", "", 0, 0)
    parsed, signatures = checkpoints.read_note(row.note)
    return CheckpointInfo(size=row.size, root_hash=row.root.hex(), note=row.note,
                          signed=bool(signatures), origin=parsed.origin,
                          key_id=checkpoints.key_names(signatures), created_us=row.created_us,
                          published_us=row.published_us or 0)


def _age(us: int, now_us: int) -> float:
    return max(0.0, (now_us - us) / 1e6) if us else 0.0


def live_status(ledger: LedgerWriter, checkpointer: Checkpointer | None,
                archive: Callable[[], ArchiveStatus] | None = None) -> StatusSource:
    """The sidecar's health detail, from its writer, checkpointer, publisher and (with
    --archive) its shipper."""

    def status() -> Status:
        parts = _parts()
        return Status(*parts, archive() if archive is not None else no_archive())

    def _parts() -> tuple[LedgerStatus, CheckpointStatus, PublisherStatus]:
        now = time.time_ns() // 1000
        head_seq, head_hash = ledger.head
        state = LedgerStatus(chain_id=ledger.chain_id, head_seq=head_seq,
                             head_hash=head_hash.hex(), loaded_seq=ledger.loaded_seq,
                             healthy=ledger.healthy, writable=True)
        if checkpointer is None:
            return (state, _no_checkpoints("off", "--checkpoint-interval is 0: no "
                                               "tree, no checkpoints"), _no_publisher())
        row = checkpointer.latest
        parts = _row_parts(row, now)
        marks = CheckpointStatus(
            state=checkpointer.state, detail=checkpointer.detail,
            tree_size=checkpointer.tree_size, **parts, origin=checkpointer.origin,
            key_id=checkpointer.key_id, failures=checkpointer.failures,
            last_error=checkpointer.last_error)
        publisher = checkpointer.publisher
        if publisher is None:
            return state, marks, _no_publisher("off")
        return state, marks, PublisherStatus(
            directory=str(publisher.directory), state=publisher.state,
            last_error=publisher.last_error, failures=publisher.failures,
            published_size=publisher.published_size, published_us=publisher.published_us,
            age_s=_age(publisher.published_us, now))

    return status


def stored_status(reader: LedgerReader) -> Status:
    """The health detail a ledger file gives (the standalone audit-server's)."""
    now = time.time_ns() // 1000
    con = reader.stored_cursor()
    try:
        meta = dict(con.execute("SELECT key, value FROM ledger_meta").fetchall())
        head = con.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchall()
        row = checkpoints.latest(con)
        built = tree.built_size(con) if row is not None else 0
    finally:
        con.close()
    seq, digest = (int(head[0][0]), bytes(head[0][1]).hex()) if head else (0, "")
    ledger = LedgerStatus(chain_id=meta.get("chain_id", ""), head_seq=seq, head_hash=digest,
                          loaded_seq=seq, healthy=True, writable=False)
    if row is None:
        return Status(ledger, _no_checkpoints("read-only", "the ledger file holds no "
                                              "checkpoint"), _no_publisher())
    parsed, signatures = checkpoints.read_note(row.note)
    marks = CheckpointStatus(state="read-only", detail="a ledger file read by the audit-server"
                             ": checkpoints are issued by `mlwitness serve`", tree_size=built,
                             **_row_parts(row, now), origin=parsed.origin,
                             key_id=checkpoints.key_names(signatures), failures=0,
                             last_error="")
    return Status(ledger, marks, _no_publisher())


def _row_parts(row: CheckpointRow | None, now: int) -> dict[str, Any]:
    if row is None:
        return {"size": 0, "root_hash": "", "created_us": 0, "age_s": 0.0, "signed": False}
    return {"size": row.size, "root_hash": row.root.hex(), "created_us": row.created_us,
            "age_s": _age(row.created_us, now), "signed": row.signed}


def _no_checkpoints(state: str, detail: str) -> CheckpointStatus:
    return CheckpointStatus(state=state, detail=detail, tree_size=0, size=0, root_hash="",
                            created_us=0, age_s=0.0, signed=False, origin="", key_id="",
                            failures=0, last_error="")


def _no_publisher(state: str = "off") -> PublisherStatus:
    return PublisherStatus(directory="", state=state, last_error="", failures=0,
                           published_size=0, published_us=0, age_s=0.0)


def fleet_status(fleet: Fleet, url: str) -> StatusSource:
    """The health detail of `audit-server --archive`: the chains it serves, and the
    problems of the archive it left out (named by `mlwitness archive verify`)."""

    def status() -> Status:
        ledger = LedgerStatus(chain_id="", head_seq=0, head_hash="", loaded_seq=0,
                              healthy=True, writable=False)
        marks = _no_checkpoints("read-only", "an archive read by the audit-server: each "
                                "segment's manifest carries its chain's checkpoint")
        problems = fleet.problems
        archive = no_archive("fleet", url, len(fleet.chains))
        if problems:
            archive = dataclasses.replace(
                archive, failures=len(problems),
                last_error=f"{len(problems)} problems, e.g. {problems[0]}")
        return Status(ledger, marks, _no_publisher(), archive)

    return status
