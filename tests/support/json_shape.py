"""Does a JSON value have the shape `mlwitness audit … --json` promises for a message?

Written from the promise (docs/audit-json.md), not from the code that prints it: keys are
the proto's field names; every field without presence is there, one with presence (a
sub-message, a oneof member) may be left out; integers of every width are JSON integers,
never strings; doubles are numbers, null (NaN) or "Infinity"/"-Infinity"; enums are names;
bytes are hex.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

INTEGERS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64,
            FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64}
FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


def shape_problems(value: Any, descriptor: Descriptor, path: str = "$") -> list[str]:
    """Why `value` is not `descriptor`'s message as the CLI prints it ([] when it is)."""
    if not isinstance(value, dict):
        return [f"{path}: expected an object for {descriptor.full_name}, got {value!r}"]
    fields = {f.name: f for f in descriptor.fields}
    problems = [f"{path}.{k}: not a field of {descriptor.full_name}"
                for k in value if k not in fields]
    for name, field in fields.items():
        where = f"{path}.{name}"
        if name not in value:
            if not field.has_presence:
                problems.append(f"{where}: missing")
            continue
        item = value[name]
        if field.is_repeated and not _is_map(field):
            if not isinstance(item, list):
                problems.append(f"{where}: expected a list, got {item!r}")
                continue
            for i, element in enumerate(item):
                problems += _one(element, field, f"{where}[{i}]")
        else:
            problems += _one(item, field, where)
    return problems


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _one(value: Any, field: FieldDescriptor, where: str) -> list[str]:
    kind = field.type
    if _is_map(field):
        if not isinstance(value, dict):
            return [f"{where}: expected an object (map), got {value!r}"]
        inner = field.message_type.fields_by_name["value"]
        return [p for k, v in value.items() for p in _one(v, inner, f"{where}[{k!r}]")]
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return shape_problems(value, field.message_type, where)
    if kind in INTEGERS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind in FLOATS:
        ok = (isinstance(value, int | float) and not isinstance(value, bool)) or value in (
            None, "Infinity", "-Infinity")
    elif kind == FieldDescriptor.TYPE_BOOL:
        ok = isinstance(value, bool)
    elif kind == FieldDescriptor.TYPE_STRING:
        ok = isinstance(value, str)
    elif kind == FieldDescriptor.TYPE_BYTES:
        ok = isinstance(value, str) and re.fullmatch(r"(?:[0-9a-f]{2})*", value) is not None
    elif kind == FieldDescriptor.TYPE_ENUM:
        ok = isinstance(value, str) and value in field.enum_type.values_by_name
    else:
        ok = False
    return [] if ok else [f"{where}: {value!r} is not a {_type_name(kind)}"]


def _type_name(kind: int) -> str:
    if kind in INTEGERS:
        return "JSON integer"
    if kind in FLOATS:
        return "JSON number"
    return {FieldDescriptor.TYPE_BOOL: "boolean", FieldDescriptor.TYPE_STRING: "string",
            FieldDescriptor.TYPE_BYTES: "hex string",
            FieldDescriptor.TYPE_ENUM: "enum name"}.get(kind, f"type {kind}")
