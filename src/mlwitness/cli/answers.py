"""The audit service's answers as JSON, the same way for every `mlwitness audit` command.

A message becomes an object keyed by the proto's field names, walked by its descriptor
rather than with protobuf's own JSON mapping, which prints 64-bit integers as strings
(`"seq": "5"`). Here every integer is a JSON number; a field without presence is always
there (zero, "", false, []), one with presence (a sub-message, a oneof member) only when
set; enums are their names; bytes are hex; NaN is null and ±infinity "Infinity" /
"-Infinity", as in the drift and bias reports. docs/audit-json.md shows each command's.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def as_json(message: Message) -> dict[str, Any]:
    """`message` as JSON-ready Python values (see above)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and not message.HasField(field.name):
            continue
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {_key(k): _value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out


def dumps(value: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN tokens) of `as_json` values, or of any JSON-ready value:
    a non-finite number in it is written as above."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return _number(value) if isinstance(value, float) else value


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _key(key: Any) -> str:
    return str(key).lower() if isinstance(key, bool) else str(key)


def _value(field: FieldDescriptor, value: Any) -> Any:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return as_json(value)
    if kind == FieldDescriptor.TYPE_ENUM:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if kind == FieldDescriptor.TYPE_BYTES:
        return bytes(value).hex()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return _number(_shortest_float32(value))
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return _number(value)
    return value  # integers of every width, bools and strings as they are


def _number(value: float) -> float | str | None:
    if math.isfinite(value):
        return value
    return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _shortest_float32(value: float) -> float:
    """A float field's value with the fewest digits that still read back as the same
    float32 (0.1, not 0.10000000149011612)."""
    if not math.isfinite(value):
        return value
    exact = struct.pack("<f", value)
    for digits in range(6, 10):
        shorter = float(f"{value:.{digits}g}")
        if struct.pack("<f", shorter) == exact:
            return shorter
    return value
