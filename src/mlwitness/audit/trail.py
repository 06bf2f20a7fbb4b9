"""The audit trail: every question an auditor asks is itself a record on a ledger.

A question is appended as a record of kind "audit" (who asked, the exact request bytes,
what, when, and a summary of the answer), in the same hash chain as the decisions when the
sidecar serves it. Questions refused before they are read (no or unknown credentials, a
role too low) are tallied instead (`mlwitness.inference.refusals`): the first of a caller,
status, message and RPC in an interval at once, the rest in one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mlwitness.codec import INLINE_BYTES
from mlwitness.errors import MlwitnessError
from mlwitness.inference.refusals import Refusals, sha256_proof
from mlwitness.ledger import environment
from mlwitness.ledger.reader import detail_json
from mlwitness.ledger.record import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asker:
    """Who asks, the bytes of the question (for the audit trail), and by when the answer
    is wanted (a time.monotonic() value; None: no deadline)."""

    caller: str = ""
    rpc: str = ""
    raw: bytes = b""
    deadline: float | None = None


class Trail:
    """Appends audit records through `append` (None: questions are answered, not kept)."""

    def __init__(self, append: Callable[[Record], None] | None,
                 fingerprint: dict[str, Any]) -> None:
        self.append = append
        self.env_id = environment.env_id(fingerprint)
        self.refusals = Refusals(self._append_async, self._refusal)

    @contextlib.contextmanager
    def audited(self, asker: Asker, *, record_id: str = "", **what: Any
                ) -> Iterator[dict[str, Any]]:
        """Run a question; append it, with `summary` filled in by the block, to the ledger.
        `record_id` is the audit record's request id (default: a new one), for answers
        that name the record holding them."""
        summary: dict[str, Any] = {}
        record = Record(kind="audit", request_id=record_id or uuid.uuid4().hex,
                        received_us=time.time_ns() // 1000, peer=asker.caller,
                        request=asker.raw, env_id=self.env_id)
        try:
            yield summary
        except MlwitnessError as exc:
            record.status, record.message = exc.status, exc.message
            raise
        except Exception:
            record.status, record.message = "INTERNAL", "internal error"
            raise
        except BaseException:  # cancelled: the task, or a streamed question's generator
            record.status, record.message = "CANCELLED", "the caller cancelled the question"
            raise
        finally:
            record.responded_us = time.time_ns() // 1000
            record.detail = detail_json(rpc=asker.rpc, request=what, result=summary)
            if self.append is not None:
                self.append(record)

    # ── questions refused before they are read ─────────────────────────────────────────

    async def refuse(self, asker: Asker, error: MlwitnessError) -> None:
        """Record a question refused before it is read: who, which RPC, the size and
        SHA-256 of what was sent (not the bytes: an anonymous caller must not make the
        ledger keep large blobs), tallied per caller, status, message and RPC so that a
        flood of them costs a few records. The caller's answer is the refusal, whether or
        not the record can be written."""
        record = self._refusal()
        record.peer, record.status, record.message = asker.caller, error.status, error.message
        raw = asker.raw
        proof = (await asyncio.to_thread(sha256_proof, raw) if len(raw) > INLINE_BYTES
                 else sha256_proof(raw))
        if self.refusals.tally(record, len(raw), proof, rpc=asker.rpc):
            return
        record.responded_us = time.time_ns() // 1000
        try:
            await self._append_async(record)
        except MlwitnessError as exc:
            log.warning("a refused %s question could not be recorded: %s", asker.rpc,
                        exc.message)

    async def close_refusals(self) -> None:
        """Record the refusals tallied so far: at shutdown, once no question is left."""
        await self.refusals.close()

    def _refusal(self) -> Record:
        now = time.time_ns() // 1000
        return Record(kind="audit", request_id=uuid.uuid4().hex, received_us=now,
                      responded_us=now, env_id=self.env_id)

    async def _append_async(self, record: Record) -> None:
        if self.append is not None:
            await asyncio.to_thread(self.append, record)
