"""The inference service: every ModelInfer call becomes exactly one ledger record.

    bytes in → parse → size limits → model and input names → decode inputs → backend
             → record → bytes out

Answered, refused and failed calls are all recorded. The response leaves only after its
record is durable; if the ledger cannot take it, the caller gets UNAVAILABLE and no
prediction. A call that fails after the model ran keeps the response it would have had
as withheld, not sent (ledger/tensors.py), so that every decoded column of a record is read
from its hashed bytes. The exception: calls refused before they are read (no credentials) are
tallied, one record per caller and reason an interval (refusals.py). What a request's
tensors would cost is judged from the parsed message before any is decoded, and large
requests are parsed and decoded in a worker thread, so that one caller's big request does
not hold up the others. Nothing here knows about gRPC: the servicer hands in bytes and a
Caller.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from mlwitness.codec import INLINE_BYTES, Tensor, check_sizes, decode_inputs
from mlwitness.errors import (
    DeadlineExceeded,
    InvalidInput,
    LedgerUnavailable,
    MlwitnessError,
    ModelNotFound,
    TooLarge,
)
from mlwitness.guards.checks import InlineChecks
from mlwitness.inference.backends import Backend, Call
from mlwitness.inference.minimise import Minimiser
from mlwitness.inference.refusals import Refusals, sha256_proof
from mlwitness.ledger.record import Record
from mlwitness.ledger.tensors import parameter_text, withhold
from mlwitness.ledger.writer import LedgerWriter
from mlwitness.protocol import inference as pb

log = logging.getLogger(__name__)
DRAIN_SLACK_S = 0.05  # a drain-end cancellation may land this early
T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    peer: str = ""
    metadata: tuple[tuple[str, str], ...] = ()  # the keys chosen for the record
    forward: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # to the upstream

    def metadata_json(self) -> str:
        if not self.metadata:
            return ""
        text = _METADATA_JSON.get(self.metadata)
        if text is None:
            text = json.dumps(dict(self.metadata), sort_keys=True)
            if len(_METADATA_JSON) >= METADATA_CACHE:
                _METADATA_JSON.clear()  # e.g. a trace id per call: a cache of nothing
            _METADATA_JSON[self.metadata] = text
        return text


# A caller sends the same recorded metadata (user agent, caller name) call after call:
# its JSON text is made once, not per call. Bounded, as values may differ on every call.
METADATA_CACHE = 256
_METADATA_JSON: dict[tuple[tuple[str, str], ...], str] = {}


def _now_us() -> int:
    return time.time_ns() // 1000


_ID_PREFIX = uuid.uuid4().hex[:16]  # per process: ids stay unique across restarts
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id for a caller that sent none: random per process, then a counter
    (cheaper than uuid4 on every call, and still unique across restarts)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"  # 32 hex digits, like a UUID's


class InferenceService:
    def __init__(
        self,
        *,
        backend: Backend,
        ledger: LedgerWriter,
        model_name: str,
        model_version: str,
        model_sha256: Callable[[], str],
        env_id: str,
        max_request_bytes: int,
        max_string_elements: int | None = None,
        observe: Callable[[str, float], None] | None = None,
        checks: InlineChecks | None = None,
        minimiser: Minimiser | None = None,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.model_name = model_name
        self.model_version = model_version
        self.model_sha256 = model_sha256
        self.env_id = env_id
        self.max_request_bytes = max_request_bytes
        self.max_string_elements = max_string_elements  # BYTES elements in one request
        self.observe = observe  # metrics: (status, seconds) per call, once it is recorded
        self.checks = checks  # guards; None when no guard file is configured
        self.minimiser = minimiser  # inputs stored hashed or redacted
        # Set at SIGTERM to when the drain ends: gRPC cancels the calls left then.
        self.drain_deadline: float | None = None
        self.refusals = Refusals(ledger.append, self._blank)

    def check_model(self, name: str, version: str) -> None:
        if name != self.model_name:
            raise ModelNotFound(f"unknown model '{name}'; this sidecar serves "
                                f"'{self.model_name}'")
        if version and version != self.model_version:
            raise ModelNotFound(f"model '{name}' has no version '{version}'; served version: "
                                f"'{self.model_version}' (or leave the version empty)")

    async def infer(self, raw: bytes, caller: Caller, timeout: float | None = None) -> bytes:
        """Answer one ModelInfer call with the response bytes, or raise MlwitnessError.
        Either way the call is on the ledger before this returns."""
        record = Record(
            received_us=_now_us(),
            model_name=self.model_name,
            model_version=self.model_version,
            model_sha256=self.model_sha256(),
            env_id=self.env_id,
            peer=caller.peer,
            metadata=caller.metadata_json(),
            request=raw,
        )
        started = time.monotonic()
        try:
            response = await self._infer(raw, caller, timeout, record)
        except MlwitnessError as exc:
            await self._record_failure(record, exc.status, exc.message)
            raise
        except asyncio.CancelledError:  # the caller's deadline passed, or it cancelled
            status, message = self._cancelled(started, timeout)
            await asyncio.shield(self._record_failure(record, status, message))
            raise
        except Exception:
            log.exception("ModelInfer failed unexpectedly")
            await self._record_failure(record, "INTERNAL", "internal error")
            raise
        if timeout is not None and time.monotonic() - started >= timeout:
            # It ran past the caller's deadline without yielding (an inline model run), so
            # the caller already has DEADLINE_EXCEEDED: the record must not say OK.
            error = DeadlineExceeded("the caller's deadline passed before the answer")
            withhold(record, response)
            await self._record_failure(record, error.status, error.message)
            raise error
        record.response = response
        record.responded_us = _now_us()
        if self.minimiser is not None:
            self.minimiser.apply(record)
        if record.outputs is None:  # not decoded on the way (forwarding without guards):
            record.inputs = None  # so both are read back from its bytes, not only outputs
        await self._append(record, "OK", started, timeout)
        return response

    def _cancelled(self, started: float, timeout: float | None) -> tuple[str, str]:
        """(status, message) of a call whose task was cancelled: what its caller got."""
        if timeout is not None and time.monotonic() - started >= timeout - 0.05:
            return "DEADLINE_EXCEEDED", "the caller's deadline passed before the answer"
        if self._drained():  # gRPC cancels what is left when the drain times out; the
            # caller is told UNAVAILABLE "Cancelling all calls"
            return ("UNAVAILABLE", "Cancelling all calls: the sidecar shut down before the "
                    "answer (--drain-timeout passed)")
        return "CANCELLED", "the caller cancelled the call"

    async def refuse(self, raw: bytes, caller: Caller, error: MlwitnessError) -> None:
        """Record a call refused before it is read (e.g. missing credentials): the first of
        its caller, status and message in an interval at once, the rest in one tally record
        at the interval's end (see refusals.py)."""
        # Who was refused and what they sent (its size and a digest: keyed under the hash
        # key with minimisation, see refusals.py), not the bytes themselves: an
        # unauthenticated caller must not be able to fill the ledger.
        record = self._blank()
        record.peer, record.metadata = caller.peer, caller.metadata_json()
        record.status, record.message = error.status, error.message
        prove = self.minimiser.proof if self.minimiser is not None else sha256_proof
        proof = prove(raw) if len(raw) <= INLINE_BYTES else await _in_thread(prove, raw)
        if self.refusals.tally(record, len(raw), proof):
            if self.observe is not None:
                self.observe(error.status, (_now_us() - record.received_us) / 1e6)
            return
        await self._record_failure(record, error.status, error.message)

    def _blank(self) -> Record:
        """A record of this sidecar's model, received now, under an assigned id."""
        return Record(request_id=new_request_id(), received_us=_now_us(),
                      model_name=self.model_name, model_version=self.model_version,
                      model_sha256=self.model_sha256(), env_id=self.env_id)

    async def close(self) -> None:
        """Record the refusals tallied so far: at shutdown, once no call is left."""
        await self.refusals.close()

    def _drained(self) -> bool:
        """Whether a cancellation now is the drain's end (not a caller giving up)."""
        return (self.drain_deadline is not None
                and asyncio.get_running_loop().time() >= self.drain_deadline - DRAIN_SLACK_S)

    async def _record_failure(self, record: Record, status: str, message: str) -> None:
        record.status, record.message = status, message
        record.request_id = record.request_id or new_request_id()
        record.responded_us = _now_us()
        if self.minimiser is not None:
            self.minimiser.apply(record)
        await self._append(record, status)

    async def _append(self, record: Record, status: str, started: float | None = None,
                      timeout: float | None = None) -> None:
        """Append the call's record, then count the call in the metrics under the status
        its caller gets: UNAVAILABLE when the ledger refused the record (an alert on
        UNAVAILABLE must fire exactly then).

        A caller that leaves (cancel, deadline) while its record waits for the group
        commit gets CANCELLED or DEADLINE_EXCEEDED, not this answer. The record is still
        in the open batch (no seq, not hashed yet), so it is made to say so, its response
        kept as withheld (ledger/tensors.py), not as sent. (Once committed it stands: a
        caller that leaves in the instant between the commit and the answer's delivery is
        recorded OK, as when the network loses an answer that was sent.)"""
        try:
            await self.ledger.append(record)
        except LedgerUnavailable:
            status = "UNAVAILABLE"
            raise
        except asyncio.CancelledError:
            if record.seq == 0:  # not yet chained: it goes in as what the caller got
                record.status, record.message = self._cancelled(
                    started if started is not None else time.monotonic(), timeout)
                if status == "OK":
                    withhold(record, record.response)
                    record.response = b""
                status = record.status
            raise
        finally:
            if self.observe is not None:
                self.observe(status, (record.responded_us - record.received_us) / 1e6)

    async def _infer(
        self, raw: bytes, caller: Caller, timeout: float | None, record: Record
    ) -> bytes:
        if len(raw) > self.max_request_bytes:
            raise self._too_large(record, len(raw), TooLarge(
                f"request of {len(raw)} bytes exceeds the limit of {self.max_request_bytes} "
                "bytes (--max-request-bytes)"))
        size = len(raw)
        request = _parse(raw) if size <= INLINE_BYTES else await _in_thread(_parse, raw)
        record.request_id = request.id or new_request_id()
        record.model_name = request.model_name
        if request.parameters:
            record.parameters = parameter_text(request.parameters)
        if request.model_version:
            record.model_version = request.model_version
        try:  # before anything else reads the tensors: what they would cost
            check_sizes(request, size=len(raw), max_strings=self.max_string_elements)
        except TooLarge as exc:
            raise self._too_large(record, len(raw), exc) from None
        self.check_model(request.model_name, request.model_version)
        self.backend.admit(request)
        checks = self.checks
        inputs: list[Tensor] | None = None
        undecodable = ""
        if self._reads_tensors():
            try:
                inputs = (decode_inputs(request, size=size) if size <= INLINE_BYTES
                          else await _in_thread(decode_inputs, request, size=size))
            except InvalidInput as exc:
                if self.backend.mode == "embedded":
                    raise
                inputs = None  # the upstream judges the request; we keep its bytes
                undecodable = exc.message
        record.inputs = inputs
        verdict = None
        if checks is not None:
            if inputs is not None:
                self.backend.check(request, inputs)  # a malformed call is refused as such
            withheld = self.minimiser.names if self.minimiser is not None else frozenset()
            verdict = checks.before(inputs, record.parameters, withheld=withheld,
                                    unchecked=undecodable)
            try:
                checks.refuse(verdict, verdict.counts)
            finally:
                record.violations = verdict.to_json()
        result = await self.backend.infer(
            Call(request, raw, inputs, record.request_id, timeout, caller.forward,
                 checked=checks is not None, decode_outputs=checks is not None)
        )
        record.outputs = result.outputs
        if checks is not None and verdict is not None:
            try:
                checks.refuse(verdict, checks.after(verdict, result.outputs or []).counts)
            except Exception:  # the model ran: its answer is kept, as not sent
                withhold(record, result.response)
                raise
            finally:
                record.violations = verdict.to_json()
        return result.response

    def _reads_tensors(self) -> bool:
        """Whether this call's tensors are decoded on its way: to run the model, or for
        the guards. Otherwise (forwarding without guards) nothing on the way reads them
        (the minimiser decodes what it needs): the table builder decodes them from the
        record's bytes, as it does for every record (ledger/tensors.py), off the request
        path."""
        return self.backend.mode == "embedded" or self.checks is not None

    @staticmethod
    def _too_large(record: Record, size: int, error: TooLarge) -> TooLarge:
        """A call refused for its size is recorded without its bytes (that is what the
        limits are for: neither kept nor decoded again to tabulate), with their count."""
        record.request = b""
        record.detail = json.dumps({"received_bytes": size})
        return error


def _parse(raw: bytes) -> Any:
    try:
        return pb.ModelInferRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(f"the request is not a valid ModelInferRequest: {exc}") from exc


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a worker thread: for a request of more than INLINE_BYTES,
    so that parsing or decoding it does not hold up every other caller (a 12 MiB request of
    500,000 tensors took the loop 3.8 s). Smaller ones are handled inline by the caller (a
    thread hop costs more, and so does a coroutine per step on every call)."""
    return await asyncio.to_thread(fn, *args, **kwargs)
