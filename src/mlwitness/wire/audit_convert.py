"""The audit API's messages ⇄ the audit service's arguments and answers.

Answers (`mlwitness.audit.results`) become protobuf by field name: each dataclass names
the message it fills in `MESSAGES`, and every field of it is a field of that message (a
`Row`, a mapping of names to numbers or text, is an `apb.Row`). `from_message` is the
inverse. tests/unit/wire/test_audit_convert.py round-trips every answer and fails when a
field of either side is renamed, added or dropped without the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from mlwitness.analytics.outcomes import QualityQuery
from mlwitness.audit import results as r
from mlwitness.audit.explain import ExplainOptions
from mlwitness.audit.outcomes import OutcomeIn
from mlwitness.audit.report import DEFAULT_REPLAY_SAMPLE, ReportQuery
from mlwitness.ledger.erasure import Selector
from mlwitness.ledger.filters import Filters
from mlwitness.protocol import audit_pb2 as apb

MESSAGES: dict[type, type[Message]] = {
    r.RecordDetail: apb.RecordDetail,
    r.RecordSummary: apb.RecordSummary,
    r.RecordPage: apb.ListRecordsResponse,
    r.Verification: apb.VerifyLedgerResponse,
    r.OutputDiff: apb.OutputDiff,
    r.EnvDifference: apb.EnvDifference,
    r.ReplayResult: apb.ReplayResponse,
    r.WhatIfResult: apb.WhatIfResponse,
    r.SensitivityPoint: apb.SensitivityPoint,
    r.DecisionFlip: apb.DecisionFlip,
    r.SensitivityResult: apb.SensitivityResponse,
    r.ReplayProgress: apb.ReplayProgress,
    r.ChangedDecision: apb.ChangedDecision,
    r.ReplaySummary: apb.ReplaySummary,
    r.DriftResult: apb.DriftResponse,
    r.BiasGroup: apb.BiasGroup,
    r.BiasResult: apb.BiasResponse,
    r.ViolationCount: apb.ViolationCount,
    r.RateBreach: apb.RateBreach,
    r.RateState: apb.RateState,
    r.ViolationsResult: apb.ViolationsResponse,
    r.GuardsState: apb.GuardsResponse,
    r.CheckpointInfo: apb.CheckpointResponse,
    r.InclusionProofResult: apb.InclusionProofResponse,
    r.ConsistencyProofResult: apb.ConsistencyProofResponse,
    r.LedgerStatus: apb.LedgerStatus,
    r.CheckpointStatus: apb.CheckpointStatus,
    r.PublisherStatus: apb.PublisherStatus,
    r.ArchiveStatus: apb.ArchiveStatus,
    r.Status: apb.StatusResponse,
    r.SeqRange: apb.SeqRange,
    r.EraseResult: apb.EraseResponse,
    r.FeatureAttribution: apb.FeatureAttribution,
    r.ReasonCode: apb.ReasonCode,
    r.TieGroup: apb.TieGroup,
    r.FeatureFlip: apb.FeatureFlip,
    r.PairFlip: apb.PairFlip,
    r.ExplainResult: apb.ExplainResponse,
    r.ExplainedDecision: apb.ExplainedDecision,
    r.ExplainRangeSummary: apb.ExplainRangeSummary,
    r.OutcomesRecorded: apb.RecordOutcomesResponse,
    r.ReviewRecorded: apb.RecordReviewResponse,
    r.QualityResult: apb.QualityResponse,
    r.ReportChunk: apb.ReportChunk,
    r.EvidenceBundle: apb.EvidenceChunk,
}
RESULTS = {message.DESCRIPTOR.full_name: result for result, message in MESSAGES.items()}


# ── answers → messages ─────────────────────────────────────────────────────────────────

def to_message(result: Any) -> Message:
    """An answer (or part of one) as the message `MESSAGES` names for its type."""
    message = MESSAGES[type(result)]
    return message(**{name: _wire(getattr(result, name)) for name in _names(type(result))})


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(answer: type) -> tuple[str, ...]:
    """An answer type's field names (ExplainRange converts thousands of answers a second)."""
    names = _NAMES.get(answer)
    if names is None:
        names = _NAMES[answer] = tuple(f.name for f in dataclasses.fields(answer))
    return names


def _wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_message(value)
    if isinstance(value, Mapping):
        return row(value)
    if isinstance(value, list | tuple):
        return [_wire(item) for item in value]
    return value


def row(values: r.Row) -> apb.Row:
    """Text stays text (BYTES tensors); anything else is a number."""
    return apb.Row(values=[apb.Value(name=name, text=value) if isinstance(value, str)
                           else apb.Value(name=name, number=float(value))  # type: ignore[arg-type]
                           for name, value in values.items()])


def event_message(event: r.ReplayEvent | r.ExplainEvent,
                  wrapper: type[Message] = apb.ReplayRangeEvent) -> Message:
    """A streamed event (of ReplayRange, or of ExplainRange with that `wrapper`) in the
    oneof member of `wrapper` that holds its message type."""
    message = to_message(event)
    member = next(f.name for f in wrapper.DESCRIPTOR.oneofs_by_name["event"].fields
                  if f.message_type is message.DESCRIPTOR)
    return wrapper(**{member: message})


# ── messages → answers ─────────────────────────────────────────────────────────────────

def from_message(message: Message) -> Any:
    """The answer a message holds: the inverse of `to_message`."""
    result = RESULTS[message.DESCRIPTOR.full_name]
    return result(**{f.name: _domain(message, f.name) for f in dataclasses.fields(result)})


def _domain(message: Message, name: str) -> Any:
    field = message.DESCRIPTOR.fields_by_name[name]
    value = getattr(message, name)
    if field.message_type is None:
        return list(value) if field.is_repeated else value
    item = row_values if field.message_type is apb.Row.DESCRIPTOR else from_message
    return [item(v) for v in value] if field.is_repeated else item(value)


def row_values(message: apb.Row) -> dict[str, object]:
    return {v.name: getattr(v, v.WhichOneof("kind") or "number") for v in message.values}


# ── requests → arguments ───────────────────────────────────────────────────────────────

def ref(message: apb.RecordRef) -> dict[str, Any]:
    """Which record, as the service's `request_id=` and `seq=` arguments."""
    return {"request_id": message.request_id, "seq": message.seq}


def filters(request: apb.ListRecordsRequest | apb.ReplayRangeRequest
            | apb.ExplainRangeRequest) -> Filters:
    """The window of a ListRecords, ExplainRange or ReplayRange request (the last filters
    by model only)."""
    if isinstance(request, apb.ReplayRangeRequest):
        return Filters(request.since_us, request.until_us, request.model)
    return Filters(request.since_us, request.until_us, request.model, request.status,
                   request.caller, request.metadata)


def selector(request: apb.EraseRequest) -> Selector:
    """Which records an Erase request names (the parameter's value as sent)."""
    return Selector(request.request_id, request.parameter, request.value, request.since_us,
                    request.until_us)


def overrides(request: apb.WhatIfRequest) -> list[tuple[str, float]]:
    return [(o.feature, o.value) for o in request.overrides]


def explain_options(message: apb.ExplainOptions) -> ExplainOptions:
    return ExplainOptions(**{f.name: getattr(message, f.name)
                             for f in dataclasses.fields(ExplainOptions)})


def named_values(values: Any) -> dict[str, float | str]:
    """Repeated `Value`s as {name: number or text}; a value set to neither is refused."""
    from mlwitness.errors import InvalidInput

    out: dict[str, float | str] = {}
    for v in values:
        kind = v.WhichOneof("kind")
        if kind is None:
            raise InvalidInput(f"value {v.name!r} has neither a number nor text")
        if v.name in out:
            raise InvalidInput(f"value {v.name!r} is given twice")
        out[v.name] = getattr(v, kind)
    return out


def outcomes(request: apb.RecordOutcomesRequest) -> list[OutcomeIn]:
    return [OutcomeIn(request_id=o.decision.request_id, seq=o.decision.seq, row=o.row,
                      values=named_values(o.values), observed_us=o.observed_us, line=o.line)
            for o in request.outcomes]


def quality_query(request: apb.QualityRequest) -> QualityQuery:
    return QualityQuery(
        label=request.label, since_us=request.since_us, until_us=request.until_us,
        model=request.model, positive=request.positive or "1", decision=request.decision,
        score=request.score, by=request.by, bins=tuple(request.bins),
        reference=request.reference, confidence=request.confidence or 0.95,
        calibration_bins=request.calibration_bins or 10)


def report_query(request: apb.ReportRequest) -> ReportQuery:
    quality = QualityQuery(label=request.label, positive=request.positive or "1",
                           decision=request.decision, score=request.score, by=request.by)
    return ReportQuery(
        since_us=request.since_us, until_us=request.until_us, model=request.model,
        favorable=request.favorable, attributes=tuple(request.attributes), quality=quality,
        baseline=request.baseline,
        replay_sample=(request.replay_sample if request.HasField("replay_sample")
                       else DEFAULT_REPLAY_SAMPLE),
        seed=request.seed, command=request.command, bucket=request.bucket or "day",
        verify_decoded=request.verify_decoded)


EVIDENCE_CHUNK = 1 << 20  # well under gRPC's default 4 MiB message limit


def evidence_chunks(bundle: r.EvidenceBundle) -> list[apb.EvidenceChunk]:
    """A bundle as the Evidence stream sends it: its bytes in chunks of EVIDENCE_CHUNK, the
    last one also carrying the whole's size, SHA-256, record and tree size."""
    data = bundle.data
    head = [apb.EvidenceChunk(data=data[at:at + EVIDENCE_CHUNK])
            for at in range(0, len(data) - EVIDENCE_CHUNK, EVIDENCE_CHUNK)]
    tail = dataclasses.replace(bundle, data=data[len(head) * EVIDENCE_CHUNK:])
    return [*head, to_message(tail)]
