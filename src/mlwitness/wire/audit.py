"""gRPC servicer of the audit API (mlwitness.audit.v1): decode, call the core, encode.

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
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.verify import expected_head, verify
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.wire.security import identify
from mlwitness.wire.status import parse, rpc, stream_rpc

SERVICE = "mlwitness.audit.v1.AuditService"


def rows(items: list[dict[str, Any]]) -> list[apb.Row]:
    return [row(item) for item in items]


def row(item: dict[str, Any]) -> apb.Row:
    values = []
    for name, value in item.items():
        if isinstance(value, str):
            values.append(apb.Value(name=name, text=value))
        else:
            values.append(apb.Value(name=name, number=float(value)))
    return apb.Row(values=values)


def _ref(ref: apb.RecordRef) -> dict[str, Any]:
    return {"request_id": ref.request_id, "seq": ref.seq}


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
        request = parse(apb.GetRecordRequest, raw)
        result = await asyncio.to_thread(self.service.get_record,
                                         asker,
                                         **_ref(request.ref))
        result["inputs"], result["outputs"] = rows(result["inputs"]), rows(result["outputs"])
        return apb.RecordDetail(**result).SerializeToString()

    async def ListRecords(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("ListRecords", raw, context)
        r = parse(apb.ListRecordsRequest, raw)
        filters = Filters(r.since_us, r.until_us, r.model, r.status, r.caller, r.metadata)
        items, token = await asyncio.to_thread(
            self.service.list_records, asker, filters,
            r.page_size, r.page_token)
        for item in items:
            item["first_output"] = row(item["first_output"])
        return apb.ListRecordsResponse(
            records=[apb.RecordSummary(**item) for item in items], next_page_token=token
        ).SerializeToString()

    async def Replay(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Replay", raw, context)
        r = parse(apb.ReplayRequest, raw)
        asker = _without_upload(asker, r)
        result = await asyncio.to_thread(
            self.service.replay, asker, **_ref(r.ref),
            candidate_sha256=r.candidate_sha256, candidate_onnx=r.candidate_onnx)
        for key in ("recorded_outputs", "replayed_outputs"):
            result[key] = rows(result[key])
        result["outputs"] = [apb.OutputDiff(**d) for d in result["outputs"]]
        result["environment_differences"] = [
            apb.EnvDifference(**d) for d in result["environment_differences"]]
        return apb.ReplayResponse(**result).SerializeToString()

    async def WhatIf(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("WhatIf", raw, context)
        r = parse(apb.WhatIfRequest, raw)
        result = await asyncio.to_thread(
            self.service.what_if, asker,
            [(o.feature, o.value) for o in r.overrides], **_ref(r.ref), row=r.row,
            all_rows=r.all_rows)
        for key in ("original_inputs", "counterfactual_inputs", "original_outputs",
                    "counterfactual_outputs"):
            result[key] = rows(result[key])
        return apb.WhatIfResponse(**result).SerializeToString()

    async def Sensitivity(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Sensitivity", raw, context)
        r = parse(apb.SensitivityRequest, raw)
        result = await asyncio.to_thread(
            self.service.sensitivity, asker, r.feature,
            **_ref(r.ref), start=r.start, stop=r.stop, steps=r.steps, scale=r.scale,
            values=list(r.values), row=r.row, output=r.output,
            threshold=r.threshold if r.HasField("threshold") else None)
        result["points"] = [apb.SensitivityPoint(value=p["value"], outputs=row(p["outputs"]),
                                                 decision=p["decision"])
                            for p in result["points"]]
        result["flips"] = [apb.DecisionFlip(**f) for f in result["flips"]]
        return apb.SensitivityResponse(**result).SerializeToString()

    async def ReplayRange(self, raw: bytes, context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[bytes]:
        asker = await self._asker("ReplayRange", raw, context)
        r = parse(apb.ReplayRangeRequest, raw)
        asker = _without_upload(asker, r)
        events = self.service.replay_range(
            asker,
            Filters(r.since_us, r.until_us, r.model), r.candidate_sha256, r.candidate_onnx,
            r.max_listed)
        done: dict[str, Any] = {}
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(asyncio.to_thread(next, events, done))
                event = await asyncio.shield(step)
                step = None
                if event is done:
                    return
                yield _event(event).SerializeToString()
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
        asked = {"expect_seq": r.expect_seq, "expect_hash": r.expect_hash} if (
            r.expect_seq or r.expect_hash) else {}
        with self.service.audited(asker, **asked) as summary:
            head = expected_head(r.expect_seq, r.expect_hash) if asked else None
            cursor = await asyncio.to_thread(self.service.reader.cursor)  # sees all acked
            report = await asyncio.to_thread(verify, self.ledger_path, con=cursor,
                                             expect_head=head)
            summary.update(ok=report.ok, records=report.records, head_seq=report.head_seq)
        return apb.VerifyLedgerResponse(
            ok=report.ok, records=report.records, journal_records=report.journal_records,
            head_seq=report.head_seq, head_hash=report.head_hash,
            first_bad_seq=report.first_bad_seq or 0,
            problems=[f"seq {p.seq}: {p.what}" if p.seq else p.what for p in report.problems],
            decoded_checked=report.decoded_checked,
            decoded_not_covered=report.decoded_not_covered, notes=report.notes(),
        ).SerializeToString()

    async def Violations(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Violations", raw, context)
        r = parse(apb.ViolationsRequest, raw)
        report = await asyncio.to_thread(
            self.service.violations, asker,
            since_us=r.since_us, until_us=r.until_us, model=r.model)
        return apb.ViolationsResponse(
            calls=report["calls"], calls_with_violations=report["calls_with_violations"],
            refused=report["refused"],
            violations=[apb.ViolationCount(**v) for v in report["violations"]],
            rate_breaches=[apb.RateBreach(**b) for b in report["rate_breaches"]],
            rates_now=[apb.RateState(**state) for state in report["rates_now"]],
        ).SerializeToString()

    async def GetGuards(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("GetGuards", raw, context)
        parse(apb.GetGuardsRequest, raw)
        state = await asyncio.to_thread(self.service.get_guards,
                                        asker)
        return _guards(state).SerializeToString()

    async def SetGuards(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("SetGuards", raw, context)
        r = parse(apb.SetGuardsRequest, raw)
        if bool(r.toml) == bool(r.json):
            raise InvalidInput("give the new guards as toml or as json (exactly one)")
        text, fmt = (r.toml, "toml") if r.toml else (r.json, "json")
        state = await asyncio.to_thread(self.service.set_guards,
                                        asker, text, fmt)
        return _guards(state).SerializeToString()


    async def Drift(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Drift", raw, context)
        r = parse(apb.DriftRequest, raw)
        result = await asyncio.to_thread(
            self.service.drift, asker, since_us=r.since_us,
            until_us=r.until_us, model=r.model, baseline=r.baseline,
            reference_since_us=r.reference_since_us, reference_until_us=r.reference_until_us,
            features=list(r.features))
        return apb.DriftResponse(**result).SerializeToString()

    async def Bias(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        asker = await self._asker("Bias", raw, context)
        r = parse(apb.BiasRequest, raw)
        result = await asyncio.to_thread(
            self.service.bias, asker, attribute=r.attribute,
            favorable=r.favorable, since_us=r.since_us, until_us=r.until_us, model=r.model,
            privileged=r.privileged, bins=list(r.bins))
        result["groups"] = [apb.BiasGroup(**g) for g in result["groups"]]
        return apb.BiasResponse(**result).SerializeToString()


def _guards(state: dict[str, Any]) -> apb.GuardsResponse:
    state = dict(state)
    state["rates_now"] = [apb.RateState(**r) for r in state.get("rates_now", [])]
    return apb.GuardsResponse(**state)


def _event(event: dict[str, Any]) -> apb.ReplayRangeEvent:
    if "progress" in event:
        return apb.ReplayRangeEvent(progress=apb.ReplayProgress(**event["progress"]))
    if "changed" in event:
        changed = dict(event["changed"])
        changed["inputs"] = row(changed["inputs"])
        return apb.ReplayRangeEvent(changed=apb.ChangedDecision(**changed))
    return apb.ReplayRangeEvent(summary=apb.ReplaySummary(**event["summary"]))


UNARY = ("GetRecord", "ListRecords", "Replay", "WhatIf", "Sensitivity", "VerifyLedger",
         "Violations", "GetGuards", "SetGuards", "Drift", "Bias")


def handler(servicer: AuditServicer) -> grpc.GenericRpcHandler:
    methods = {name: grpc.unary_unary_rpc_method_handler(rpc(getattr(servicer, name)))
               for name in UNARY}
    methods["ReplayRange"] = grpc.unary_stream_rpc_method_handler(
        stream_rpc(servicer.ReplayRange))
    return grpc.method_handlers_generic_handler(SERVICE, methods)
