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
from collections.abc import AsyncIterator
from typing import Any

import grpc

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
        done = object()
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(asyncio.to_thread(next, events, done))
                event = await asyncio.shield(step)
                step = None
                if event is done:
                    return
                yield convert.event_message(event).SerializeToString()
        finally:
            # Cancelled: let the replay thread finish its step, then close the generator
            # off the loop, so the question's trail record (CANCELLED) is written there.
            if step is not None:
                with contextlib.suppress(BaseException):  # its outcome no longer matters
                    await step
            await asyncio.to_thread(events.close)

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


UNARY = ("GetRecord", "ListRecords", "Replay", "WhatIf", "Sensitivity", "VerifyLedger",
         "Violations", "GetGuards", "SetGuards", "Drift", "Bias", "GetCheckpoint",
         "InclusionProof", "ConsistencyProof", "Status", "Erase")


def handler(servicer: AuditServicer) -> grpc.GenericRpcHandler:
    methods = {name: grpc.unary_unary_rpc_method_handler(rpc(getattr(servicer, name)))
               for name in UNARY}
    methods["ReplayRange"] = grpc.unary_stream_rpc_method_handler(
        stream_rpc(servicer.ReplayRange))
    return grpc.method_handlers_generic_handler(SERVICE, methods)
