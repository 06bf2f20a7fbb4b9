"""`mlwitness audit --json` (mlwitness.cli.answers): one JSON form for every answer, with
integers as JSON numbers, and docs/audit-json.md showing each command's shape."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, struct_pb2, wrappers_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from json_shape import INTEGERS, shape_problems

from mlwitness import cli
from mlwitness.analytics.bias import BiasReport
from mlwitness.analytics.drift import DriftReport
from mlwitness.cli.answers import as_json, dumps
from mlwitness.protocol import audit_pb2 as apb

DOC = Path(__file__).resolve().parents[3] / "docs" / "audit-json.md"
MESSAGES = [getattr(apb, name) for name in apb.DESCRIPTOR.message_types_by_name]


def filled(message: Message, counter: itertools.count, depth: int = 0) -> Message:
    """`message` with a non-default value in every field it can hold at once (the first
    member of each oneof), integers beyond 2^32 where the type allows."""
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) is not None:
            continue
        if field.message_type is not None:
            if depth < 3:
                inner = getattr(message, field.name).add() if field.is_repeated else \
                    getattr(message, field.name)
                filled(inner, counter, depth + 1)
                if not field.is_repeated and not inner.ListFields():
                    inner.SetInParent()
            continue
        values = [_scalar(field, next(counter) + 1) for _ in range(2)]
        if field.is_repeated:
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, values[0])
    return message


def _scalar(field: FieldDescriptor, n: int) -> Any:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                FieldDescriptor.TYPE_SFIXED64):
        return 2**40 + n
    if kind in INTEGERS:
        return n
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return n + 0.5
    if kind == FieldDescriptor.TYPE_BOOL:
        return True
    if kind == FieldDescriptor.TYPE_BYTES:
        return bytes([n % 256, 255])
    if kind == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    return f"text {n}"


def protobuf_json_with_numbers(message: Message) -> dict[str, Any]:
    """protobuf's own JSON mapping, with the int64 strings it prints turned into numbers
    and its base64 bytes into hex: the two ways mlwitness differs from it."""
    return _numbers(MessageToDict(message, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True),
                    message.DESCRIPTOR)


def _numbers(value: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    out = dict(value)
    for name, item in value.items():
        field = descriptor.fields_by_name[name]
        if field.message_type is not None:
            out[name] = ([_numbers(v, field.message_type) for v in item] if field.is_repeated
                         else _numbers(item, field.message_type))
        elif field.type in INTEGERS:
            out[name] = [int(v) for v in item] if field.is_repeated else int(item)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            out[name] = ([base64.b64decode(v).hex() for v in item] if field.is_repeated
                         else base64.b64decode(item).hex())
    return out


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.DESCRIPTOR.name)
def test_every_message_prints_as_protobuf_json_but_with_integers_as_numbers(
    message: type[Message]
) -> None:
    full = filled(message(), itertools.count())
    printed = as_json(full)
    assert printed == protobuf_json_with_numbers(full)
    assert shape_problems(printed, message.DESCRIPTOR) == []
    assert shape_problems(as_json(message()), message.DESCRIPTOR) == []
    assert json.loads(dumps(printed)) == printed


def test_int64_is_a_number_where_protobuf_prints_a_string() -> None:
    summary = apb.RecordSummary(seq=5, received_us=1796652050085119, latency_us=124)
    assert MessageToDict(summary)["seq"] == "5"  # the problem this module exists for
    printed = as_json(summary)
    assert (printed["seq"], printed["received_us"], printed["latency_us"]) == (
        5, 1796652050085119, 124)
    assert '"seq": 5,' in dumps(printed)
    big = wrappers_pb2.UInt64Value(value=2**64 - 1)
    assert as_json(big) == {"value": 2**64 - 1}


def test_unset_presence_fields_are_left_out_and_the_rest_are_zero() -> None:
    printed = as_json(apb.RecordSummary())
    assert "first_output" not in printed
    assert printed["seq"] == 0 and printed["request_id"] == ""
    row = apb.Row(values=[apb.Value(name="a", number=0.0), apb.Value(name="b", text="")])
    assert as_json(row) == {"values": [{"name": "a", "number": 0.0},
                                       {"name": "b", "text": ""}]}


def test_non_finite_numbers_as_in_the_reports() -> None:
    diff = apb.OutputDiff(max_abs_diff=math.inf, max_rel_diff=-math.inf)
    row = apb.Row(values=[apb.Value(name="score", number=math.nan)])
    assert (as_json(diff)["max_abs_diff"], as_json(diff)["max_rel_diff"]) == (
        "Infinity", "-Infinity")
    assert as_json(row) == {"values": [{"name": "score", "number": None}]}
    assert "NaN" not in dumps(as_json(row))
    assert json.loads(dumps({"x": [math.nan, math.inf]})) == {"x": [None, "Infinity"]}


def test_enums_by_name_bytes_as_hex_maps_as_objects_floats_shortest() -> None:
    field = descriptor_pb2.FieldDescriptorProto(
        name="seq", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    printed = as_json(field)
    assert (printed["type"], printed["label"], printed["number"]) == (
        "TYPE_INT64", "LABEL_REPEATED", 2)
    assert as_json(wrappers_pb2.BytesValue(value=b"\x00\xab")) == {"value": "00ab"}
    assert as_json(wrappers_pb2.FloatValue(value=0.1)) == {"value": 0.1}
    struct = struct_pb2.Struct(fields={"n": struct_pb2.Value(number_value=3)})
    assert as_json(struct) == {"fields": {"n": {"number_value": 3.0}}}


# ── docs/audit-json.md: a section per command, and its example has the command's shape ─

def audit_commands() -> list[str]:
    parser = cli.parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    (audit_commands,) = [a for a in commands.choices["audit"]._actions
                         if isinstance(a, argparse._SubParsersAction)]
    return list(audit_commands.choices)


def examples() -> dict[str, str]:
    """{command: the text of its first code block} from docs/audit-json.md."""
    found = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading = re.match(r"`mlwitness audit ([\w-]+)`", section)
        block = re.search(r"```jsonl?\n(.*?)```", section, flags=re.S)
        assert heading and block, f"a section without a command or an example: {section[:60]}"
        found[heading[1]] = block[1]
    return found


def report_keys(report: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(report))


def example_problems(command: str, text: str) -> list[str]:
    single = {"show": apb.RecordDetail, "replay": apb.ReplayResponse,
              "whatif": apb.WhatIfResponse, "sensitivity": apb.SensitivityResponse,
              "verify": apb.VerifyLedgerResponse, "violations": apb.ViolationsResponse,
              "guards": apb.GuardsResponse, "status": apb.StatusResponse,
              "checkpoint": apb.CheckpointResponse, "prove": apb.InclusionProofResponse,
              "consistency": apb.ConsistencyProofResponse,
              "erase": apb.EraseResponse}
    if command in single:
        return shape_problems(json.loads(text), single[command].DESCRIPTOR)
    if command == "records":
        return [p for item in json.loads(text)
                for p in shape_problems(item, apb.RecordSummary.DESCRIPTOR)]
    if command == "replay-range":
        events = {"changed": apb.ChangedDecision, "summary": apb.ReplaySummary}
        lines = [json.loads(line) for line in text.splitlines()]
        return [p for line in lines for kind, value in line.items()
                for p in shape_problems(value, events[kind].DESCRIPTOR)]
    reports = {"drift": DriftReport, "bias": BiasReport}
    if command in reports:
        keys = sorted(json.loads(text))
        return [] if keys == report_keys(reports[command]) else [f"keys {keys}"]
    return [f"no shape known for `audit {command}`: teach this test"]


def test_every_audit_command_has_its_json_documented() -> None:
    assert sorted(examples()) == sorted(audit_commands())


@pytest.mark.parametrize("command", audit_commands())
def test_the_documented_example_has_the_commands_shape(command: str) -> None:
    assert example_problems(command, examples()[command]) == []
