"""gRPC servicer of the audit API (mlwitness.audit.v1): decode, call the core, encode
(`mlwitness.wire.audit_convert` holds the conversions).

The core's work (DuckDB queries, onnxruntime runs) runs in worker threads so that audit
questions never stall the inference port's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc
from google.protobuf.message import Message

from mlwitness.audit.results import ReportChunk
from mlwitness.audit.service import Asker, AuditService
from mlwitness.auth import Authenticator
from mlwitness.errors import InvalidInput, MlwitnessError
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.wire import audit_convert as convert
from mlwitness.wire.security import identify
from mlwitness.wire.status import parse, rpc, stream_rpc

SERVICE = "mlwitness.audit.v1.AuditService"


def _without_upload(asker: Asker, request: Any) -> Asker:
    """The question as the audit trail keeps it: an uploaded candidate's bytes replaced by
    `sha256:<hex>` of them. The model store holds those bytes once the candidate has run;
    the trail must not take another copy of every upload (three 3 MiB ones filled a small
    volume, and then every inference call failed)."""
    if not request.candidate_onnx:
        return asker
    kept = type(request)()
    kept.CopyFrom(request)
    kept.candidate_onnx = b"sha256:" + hashlib.sha256(request.candidate_onnx).hexdigest(
        ).encode()
    return dataclasses.replace(asker, raw=kept.SerializeToString())


def _erase_as_kept(asker: Asker, request: apb.EraseRequest) -> Asker:
    """The Erase question as the audit trail keeps it: without the parameter's value,
    which identifies the person whose data is erased (a minimised parameter's, in clear):
    kept, it would outlive the erasure on the ledger."""
    if not request.value:
        return asker
    kept = apb.EraseRequest()
    kept.CopyFrom(request)
    kept.value = ""
    return dataclasses.replace(asker, raw=kept.SerializeToString())


class AuditServicer:
    def __init__(self, service: AuditService, ledger_path: Any,
                 auth: Authenticator | None = None, *, mtls: bool = False) -> None:
        self.service = service
        self.ledger_path = ledger_path
        self.auth = auth or Authenticator(None, required_role="auditor")
        self.mtls = mtls

    async def _asker(self, name: str, raw: bytes, context: grpc.aio.ServicerContext) -> Asker:
        """Who asks — checked before the request is even read. A refused question is
        recorded too, tallied (AuditService.refuse)."""
        try:
            caller, _ = identify(self.auth, context, name, mtls=self.mtls)
        except MlwitnessError as exc:
            who = getattr(exc, "caller", "") or context.peer() or ""
            await self.service.refuse(Asker(caller=who, rpc=name, raw=raw), exc)
            raise
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        return Asker(caller=caller, rpc=name, raw=raw, deadline=deadline)

    async def GetRecord(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("GetRecord", raw, context)
        r = parse(apb.GetRecordRequest, raw)
        result = await asyncio.to_thread(self.service.get_record, asker, **convert.ref(r.ref))
        return convert.to_message(result).SerializeToString()

    async def ListRecords(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("ListRecords", raw, context)
        r = parse(apb.ListRecordsRequest, raw)
        page = await asyncio.to_thread(self.service.list_records, asker, convert.filters(r),
                                       r.page_size, r.page_token)
        return convert.to_message(page).SerializeToString()

    async def Replay(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Replay", raw, context)
        r = parse(apb.ReplayRequest, raw)
        asker = _without_upload(asker, r)
        result = await asyncio.to_thread(
            self.service.replay, asker, **convert.ref(r.ref),
            candidate_sha256=r.candidate_sha256, candidate_onnx=r.candidate_onnx)
        return convert.to_message(result).SerializeToString()

    async def WhatIf(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("WhatIf", raw, context)
        r = parse(apb.WhatIfRequest, raw)
        result = await asyncio.to_thread(
            self.service.what_if, asker, convert.overrides(r), **convert.ref(r.ref),
            row=r.row, all_rows=r.all_rows)
        return convert.to_message(result).SerializeToString()

    async def Sensitivity(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Sensitivity", raw, context)
        r = parse(apb.SensitivityRequest, raw)
        result = await asyncio.to_thread(
            self.service.sensitivity, asker, r.feature,
            **convert.ref(r.ref), start=r.start, stop=r.stop, steps=r.steps, scale=r.scale,
            values=list(r.values), row=r.row, output=r.output,
            threshold=r.threshold if r.HasField("threshold") else None)
        return convert.to_message(result).SerializeToString()

    async def ReplayRange(self, raw: bytes, context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[bytes]:
        asker = await self._asker("ReplayRange", raw, context)
        r = parse(apb.ReplayRangeRequest, raw)
        asker = _without_upload(asker, r)
        events = self.service.replay_range(asker, convert.filters(r), r.candidate_sha256,
                                           r.candidate_onnx, r.max_listed)
        async for message in _stream(events, apb.ReplayRangeEvent):
            yield message

    async def Explain(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Explain", raw, context)
        r = parse(apb.ExplainRequest, raw)
        result = await asyncio.to_thread(
            self.service.explain, asker, convert.explain_options(r.options),
            **convert.ref(r.ref), row=r.row, flips=not r.no_flips, pairs=list(r.pairs))
        return convert.to_message(result).SerializeToString()

    async def ExplainRange(self, raw: bytes, context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[bytes]:
        asker = await self._asker("ExplainRange", raw, context)
        r = parse(apb.ExplainRangeRequest, raw)
        events = self.service.explain_range(asker, convert.filters(r),
                                            convert.explain_options(r.options))
        async for message in _stream(events, apb.ExplainRangeEvent):
            yield message

    async def VerifyLedger(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("VerifyLedger", raw, context)
        r = parse(apb.VerifyLedgerRequest, raw)
        result = await self.service.verify(asker, self.ledger_path, r.expect_seq,
                                           r.expect_hash)
        return convert.to_message(result).SerializeToString()

    async def Violations(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Violations", raw, context)
        r = parse(apb.ViolationsRequest, raw)
        result = await asyncio.to_thread(
            self.service.violations, asker,
            since_us=r.since_us, until_us=r.until_us, model=r.model)
        return convert.to_message(result).SerializeToString()

    async def GetGuards(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("GetGuards", raw, context)
        parse(apb.GetGuardsRequest, raw)
        state = await asyncio.to_thread(self.service.get_guards, asker)
        return convert.to_message(state).SerializeToString()

    async def SetGuards(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("SetGuards", raw, context)
        r = parse(apb.SetGuardsRequest, raw)
        if bool(r.toml) == bool(r.json):
            raise InvalidInput("give the new guards as toml or as json (exactly one)")
        text, fmt = (r.toml, "toml") if r.toml else (r.json, "json")
        state = await asyncio.to_thread(self.service.set_guards, asker, text, fmt)
        return convert.to_message(state).SerializeToString()

    async def Drift(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Drift", raw, context)
        r = parse(apb.DriftRequest, raw)
        result = await asyncio.to_thread(
            self.service.drift, asker, since_us=r.since_us,
            until_us=r.until_us, model=r.model, baseline=r.baseline,
            reference_since_us=r.reference_since_us, reference_until_us=r.reference_until_us,
            features=list(r.features))
        return convert.to_message(result).SerializeToString()

    async def Bias(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Bias", raw, context)
        r = parse(apb.BiasRequest, raw)
        result = await asyncio.to_thread(
            self.service.bias, asker, attribute=r.attribute,
            favorable=r.favorable, since_us=r.since_us, until_us=r.until_us, model=r.model,
            privileged=r.privileged, bins=list(r.bins))
        return convert.to_message(result).SerializeToString()

    async def GetCheckpoint(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("GetCheckpoint", raw, context)
        r = parse(apb.GetCheckpointRequest, raw)
        result = await asyncio.to_thread(self.service.get_checkpoint, asker, r.size)
        return convert.to_message(result).SerializeToString()

    async def InclusionProof(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("InclusionProof", raw, context)
        r = parse(apb.InclusionProofRequest, raw)
        result = await asyncio.to_thread(self.service.inclusion_proof, asker,
                                         **convert.ref(r.ref), tree_size=r.tree_size)
        return convert.to_message(result).SerializeToString()

    async def ConsistencyProof(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("ConsistencyProof", raw, context)
        r = parse(apb.ConsistencyProofRequest, raw)
        result = await asyncio.to_thread(self.service.consistency_proof, asker, r.from_size,
                                         r.to_size)
        return convert.to_message(result).SerializeToString()

    async def Evidence(self, raw: bytes, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[bytes]:
        asker = await self._asker("Evidence", raw, context)
        r = parse(apb.EvidenceRequest, raw)
        result = await asyncio.to_thread(self.service.evidence, asker, **convert.ref(r.ref),
                                         with_model=r.with_model)
        for message in convert.evidence_chunks(result):
            yield message.SerializeToString()

    async def Status(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Status", raw, context)
        parse(apb.StatusRequest, raw)
        result = await asyncio.to_thread(self.service.status, asker)
        return convert.to_message(result).SerializeToString()

    async def Erase(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Erase", raw, context)
        r = parse(apb.EraseRequest, raw)
        asker = _erase_as_kept(asker, r)
        result = await asyncio.to_thread(self.service.erase, asker, convert.selector(r),
                                         r.reason,
                                         dry_run=r.dry_run, compact=not r.no_compact)
        return convert.to_message(result).SerializeToString()

    async def RecordOutcomes(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("RecordOutcomes", raw, context)
        r = parse(apb.RecordOutcomesRequest, raw)
        result = await asyncio.to_thread(self.service.record_outcomes, asker,
                                         convert.outcomes(r), r.source)
        return convert.to_message(result).SerializeToString()

    async def RecordReview(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("RecordReview", raw, context)
        r = parse(apb.RecordReviewRequest, raw)
        result = await asyncio.to_thread(
            self.service.record_review, asker, convert.named_values(r.decision_made),
            r.reason, **convert.ref(r.decision), row=r.row)
        return convert.to_message(result).SerializeToString()

    async def Quality(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Quality", raw, context)
        r = parse(apb.QualityRequest, raw)
        result = await asyncio.to_thread(self.service.quality, asker,
                                         convert.quality_query(r))
        return convert.to_message(result).SerializeToString()

    async def Report(self, raw: bytes, context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[bytes]:
        asker = await self._asker("Report", raw, context)
        r = parse(apb.ReportRequest, raw)
        made = await asyncio.to_thread(self.service.report, asker, convert.report_query(r))
        for start in range(0, len(made.html), REPORT_CHUNK):
            part = ReportChunk(html=made.html[start:start + REPORT_CHUNK])
            yield convert.to_message(part).SerializeToString()
        last = ReportChunk(sha256=made.sha256, size=len(made.html), head_seq=made.head_seq)
        yield convert.to_message(last).SerializeToString()


# A streamed question's events are made and encoded in a worker thread, several per trip
# to it: up to STREAM_BATCH, or what STREAM_WAIT_S brings (ExplainRange makes thousands a
# second; a trip per event, and encoding on the event loop, cost the loop's other calls).
STREAM_BATCH = 256
STREAM_WAIT_S = 0.02


async def _stream(events: Generator[Any, None, None], wrapper: type[Message]
                  ) -> AsyncIterator[bytes]:
    """A streamed question's events as serialized `wrapper` messages."""

    def step() -> tuple[list[bytes], bool, Exception | None]:
        """(encoded events, whether the stream ended, the error that ended it)."""
        out: list[bytes] = []
        started = time.monotonic()
        try:
            for event in events:
                out.append(convert.event_message(event, wrapper).SerializeToString())
                if len(out) >= STREAM_BATCH or time.monotonic() - started >= STREAM_WAIT_S:
                    return out, False, None
        except Exception as exc:  # noqa: BLE001 — raised after what came before it is sent
            return out, True, exc
        return out, True, None

    pending: asyncio.Future | None = None
    try:
        while True:
            pending = asyncio.ensure_future(asyncio.to_thread(step))
            messages, ended, error = await asyncio.shield(pending)
            pending = None
            for message in messages:
                yield message
            if error is not None:
                raise error
            if ended:
                return
    finally:
        # Cancelled: let the worker thread finish its step, then close the generator off
        # the loop, so the question's trail record (CANCELLED) is written there.
        if pending is not None:
            with contextlib.suppress(BaseException):  # its outcome no longer matters
                await pending
        await asyncio.to_thread(events.close)


REPORT_CHUNK = 1 << 20  # bytes of the report a message: well under gRPC's 4 MiB default

UNARY = ("GetRecord", "ListRecords", "Replay", "WhatIf", "Sensitivity", "VerifyLedger",
         "Violations", "GetGuards", "SetGuards", "Drift", "Bias", "GetCheckpoint",
         "InclusionProof", "ConsistencyProof", "Status", "Erase", "Explain", "RecordOutcomes",
         "RecordReview", "Quality")
STREAMS = ("ReplayRange", "ExplainRange", "Report", "Evidence")


def handler(servicer: AuditServicer) -> grpc.GenericRpcHandler:
    methods = {name: grpc.unary_unary_rpc_method_handler(rpc(getattr(servicer, name)))
               for name in UNARY}
    for name in STREAMS:
        methods[name] = grpc.unary_stream_rpc_method_handler(
            stream_rpc(getattr(servicer, name)))
    return grpc.method_handlers_generic_handler(SERVICE, methods)
