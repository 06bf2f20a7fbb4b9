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

from mlwitness.audit import results as r
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
    r.Status: apb.StatusResponse,
    r.SeqRange: apb.SeqRange,
    r.EraseResult: apb.EraseResponse,
}
RESULTS = {message.DESCRIPTOR.full_name: result for result, message in MESSAGES.items()}


# ── answers → messages ─────────────────────────────────────────────────────────────────

def to_message(result: Any) -> Message:
    """An answer (or part of one) as the message `MESSAGES` names for its type."""
    message = MESSAGES[type(result)]
    return message(**{f.name: _wire(getattr(result, f.name))
                      for f in dataclasses.fields(result)})


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


def event_message(event: r.ReplayEvent) -> apb.ReplayRangeEvent:
    """A ReplayRange event in the oneof member that holds its message type."""
    message = to_message(event)
    member = next(f.name for f in apb.ReplayRangeEvent.DESCRIPTOR.oneofs_by_name["event"].fields
                  if f.message_type is message.DESCRIPTOR)
    return apb.ReplayRangeEvent(**{member: message})


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


def filters(request: apb.ListRecordsRequest | apb.ReplayRangeRequest) -> Filters:
    """The window of a ListRecords or ReplayRange request (the latter filters by model)."""
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
