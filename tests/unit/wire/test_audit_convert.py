"""The audit service's answers ⇄ the audit API's messages (mlwitness.wire.audit_convert).

Every answer type is built with a distinct, non-default value in every field (from its
type hints, so a field added later is covered too), turned into its message, checked to
fill every field of that message, and turned back into an equal answer. The field names of
each answer and its message must be the same set: renaming a proto field fails here, not
when an auditor first calls the RPC.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from mlwitness.audit import results
from mlwitness.ledger.filters import Filters
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.wire import audit_convert as convert

ANSWERS = [cls for _, cls in vars(results).items()
           if isinstance(cls, type) and dataclasses.is_dataclass(cls)
           and cls.__module__ == results.__name__]


def sample(hint: Any, counter: itertools.count) -> Any:
    """A value of type `hint`, distinct from every other sample and from the default."""
    n = next(counter) + 1
    origin = typing.get_origin(hint)
    if hint is bool:
        return True
    if hint is int:
        return n
    if hint is float:
        return n + 0.25
    if hint is str:
        return f"text {n}"
    if hint is bytes:
        return f"bytes {n}".encode()
    if origin is Mapping:  # a Row
        return {f"number{n}": n + 0.5, f"text{n}": f"value {n}"}
    if origin is Sequence:
        (item,) = typing.get_args(hint)
        return [sample(item, counter), sample(item, counter)]
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: sample(hints[f.name], counter)
                       for f in dataclasses.fields(hint)})
    raise AssertionError(f"no sample for {hint!r}: teach this test the new type")


def unfilled(message: Message, path: str = "") -> list[str]:
    """Fields of `message` (and of its sub-messages) left at their defaults."""
    missing = []
    for field in message.DESCRIPTOR.fields:
        name = f"{path}{field.name}"
        value = getattr(message, field.name)
        if field.is_repeated:
            if not value:
                missing.append(name)
            elif field.message_type is not None:
                missing += [m for item in value for m in unfilled(item, f"{name}[].")]
        elif field.message_type is not None:
            missing += unfilled(value, f"{name}.") if message.HasField(field.name) else [name]
        elif field.containing_oneof is not None:
            continue  # Value.number or Value.text: one of them, by design
        elif value == field.default_value:
            missing.append(name)
    return missing


def name_mismatches(answer: type, message: Descriptor) -> list[str]:
    ours = {f.name for f in dataclasses.fields(answer)}
    theirs = {f.name for f in message.fields}
    return ([f"{answer.__name__}.{n} is not a field of {message.full_name}"
             for n in sorted(ours - theirs)]
            + [f"{message.full_name}.{n} has no field in {answer.__name__}"
               for n in sorted(theirs - ours)])


def test_every_answer_names_its_message() -> None:
    assert set(ANSWERS) == set(convert.MESSAGES)


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda c: c.__name__)
def test_answer_and_message_have_the_same_field_names(answer: type) -> None:
    assert name_mismatches(answer, convert.MESSAGES[answer].DESCRIPTOR) == []


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda c: c.__name__)
def test_every_answer_round_trips_filling_every_field(answer: type) -> None:
    value = sample(answer, itertools.count())
    message = convert.to_message(value)
    assert type(message) is convert.MESSAGES[answer]
    assert unfilled(message) == []
    assert convert.from_message(message) == value
    again = type(message).FromString(message.SerializeToString())
    assert convert.from_message(again) == value


def test_every_rpc_answers_with_a_converted_message() -> None:
    """Each RPC's response type, and every message inside one, has its answer type (the
    ReplayRange event is the oneof of three; Row and Value are the rows)."""
    converted = {m.DESCRIPTOR.full_name for m in convert.MESSAGES.values()}
    rows = {apb.Row.DESCRIPTOR.full_name, apb.Value.DESCRIPTOR.full_name}
    event = apb.ReplayRangeEvent.DESCRIPTOR

    def inside(descriptor: Descriptor) -> set[str]:
        found = {descriptor.full_name}
        for field in descriptor.fields:
            if field.message_type is not None and field.message_type.full_name not in found:
                found |= inside(field.message_type)
        return found

    service = apb.DESCRIPTOR.services_by_name["AuditService"]
    answered = set().union(*(inside(m.output_type) for m in service.methods))
    assert answered - rows - {event.full_name} == converted


@pytest.mark.parametrize("kind", [results.ReplayProgress, results.ChangedDecision,
                                  results.ReplaySummary], ids=lambda c: c.__name__)
def test_a_replay_range_event_goes_in_its_oneof_member(kind: type) -> None:
    event = sample(kind, itertools.count())
    message = convert.event_message(event)
    member = message.WhichOneof("event")
    assert type(getattr(message, member)) is convert.MESSAGES[kind]
    assert convert.from_message(getattr(message, member)) == event


def test_rows_keep_text_as_text_and_numbers_as_numbers() -> None:
    message = convert.row({"income": 45000, "ratio": 0.25, "band": "18-25", "nan": float("nan")})
    assert [v.WhichOneof("kind") for v in message.values] == ["number", "number", "text", "number"]
    back = convert.row_values(message)
    assert back["income"] == 45000.0 and back["band"] == "18-25"
    assert back["nan"] != back["nan"]  # NaN stays NaN


def renamed(message: type[Message], old: str, new: str) -> type[Message]:
    """`message` as it would be generated after renaming its field `old` to `new`."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(apb.DESCRIPTOR.serialized_pb)
    proto.package = "renamed.test"
    proto.ClearField("service")
    (target,) = [m for m in proto.message_type if m.name == message.DESCRIPTOR.name]
    (field,) = [f for f in target.field if f.name == old]
    field.name = new
    field.json_name = new
    for m in proto.message_type:
        for f in m.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(".mlwitness.audit.v1.", ".renamed.test.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"renamed.test.{message.DESCRIPTOR.name}"))


def test_a_renamed_proto_field_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    changed = renamed(apb.RecordSummary, "latency_us", "latency_micros")
    assert name_mismatches(results.RecordSummary, changed.DESCRIPTOR) == [
        "RecordSummary.latency_us is not a field of renamed.test.RecordSummary",
        "renamed.test.RecordSummary.latency_micros has no field in RecordSummary"]
    monkeypatch.setitem(convert.MESSAGES, results.RecordSummary, changed)
    with pytest.raises(ValueError, match="latency_us"):
        convert.to_message(sample(results.RecordSummary, itertools.count()))


def test_requests_become_the_service_arguments() -> None:
    assert convert.ref(apb.RecordRef(seq=7)) == {"request_id": "", "seq": 7}
    assert convert.ref(apb.RecordRef(request_id="a1")) == {"request_id": "a1", "seq": 0}
    listed = apb.ListRecordsRequest(since_us=1, until_us=2, model="m", status="OK",
                                    caller="token:alice", metadata="bob")
    assert convert.filters(listed) == Filters(1, 2, "m", "OK", "token:alice", "bob")
    assert convert.filters(apb.ReplayRangeRequest(since_us=3, until_us=4, model="m")) == \
        Filters(3, 4, "m")
    what_if = apb.WhatIfRequest(overrides=[apb.Override(feature="income", value=45000),
                                           apb.Override(feature="1", value=0.2)])
    assert convert.overrides(what_if) == [("income", 45000.0), ("1", 0.2)]
