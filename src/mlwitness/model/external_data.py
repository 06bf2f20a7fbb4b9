"""ONNX external data: refused before onnxruntime sees the bytes.

A TensorProto may keep its values in a file named by `external_data` (`location=...`,
with `data_location = EXTERNAL`). onnxruntime reads that file when it builds the session —
relative to the working directory when the model comes as bytes, which in the image is the
ledger's volume. An uploaded candidate with `location="hash.key"` got the hash key's bytes
back as an output; the same trick read the live journal. And a stored model whose weights
live outside the ledger is not evidence of what answered. So every model mlwitness runs must
be self-contained, and this module checks that on the protobuf wire format itself — the
`onnx` package is a development dependency only, and onnxruntime (1.32) has no session
option that turns external data off.

Every tensor onnxruntime could load is reached: the graph's initializers and sparse
initializers, tensor and sparse-tensor attributes of every node (a Constant's `value`), the
subgraphs of If / Loop / Scan at any depth, model-local functions (their nodes and default
attributes), and training-info graphs. A message field that appears more than once is
merged by protobuf parsers, so each appearance is checked: any sign of external data in any
of them refuses the model.
"""

from __future__ import annotations

from mlwitness.errors import FailedPrecondition

# Per message: field number → the message type of that (length-delimited) field, for the
# fields that can hold tensors, directly or further down. Numbers are onnx.proto's.
MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE, FUNCTION, TRAINING = range(8)
_CHILDREN: dict[int, dict[int, int]] = {
    MODEL: {7: GRAPH, 20: TRAINING, 25: FUNCTION},  # graph, training_info, functions
    TRAINING: {1: GRAPH, 2: GRAPH},  # initialization, algorithm
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},  # node, initializer, sparse_initializer
    NODE: {5: ATTRIBUTE},  # attribute
    # t, g, tensors, graphs, sparse_tensor, sparse_tensors
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    FUNCTION: {7: NODE, 11: ATTRIBUTE},  # node, attribute_proto (defaults)
    SPARSE: {1: TENSOR, 2: TENSOR},  # values, indices
    TENSOR: {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# The name field of the messages a refusal names the place by (a node: its name).
_NAMED = {GRAPH: 2, NODE: 3, FUNCTION: 1, TENSOR: _TENSOR_NAME}
_NODE_OP_TYPE = 4


class NotSelfContained(FailedPrecondition):
    """The model keeps tensor data outside its own bytes."""


class NotProtobuf(FailedPrecondition):
    """The bytes are not a protobuf message at all (truncated, or something else)."""


def check_self_contained(onnx: bytes) -> None:
    """Raise NotSelfContained if any tensor of the model refers to external data, or
    NotProtobuf if the bytes cannot be walked as protobuf."""
    stack: list[tuple[int, memoryview, str]] = [(MODEL, memoryview(onnx), "the model")]
    while stack:  # not recursive: nesting depth is the uploader's choice
        kind, data, where = stack.pop()
        found = fields(data)
        names = [_text(v) for f, w, v in found if w == 2 and f == _NAMED.get(kind)]
        if kind == NODE:  # nodes are often unnamed: their operator says enough
            ops = [_text(v) for f, w, v in found if w == 2 and f == _NODE_OP_TYPE]
            where = f"node {names[-1][:80]!r}" if names and names[-1] else \
                f"a {ops[-1][:40] if ops else ''} node in {where}"
        elif names and kind != TENSOR:
            where = f"{_KIND_NAMES[kind]} {names[-1][:80]!r}"
        if kind == TENSOR:
            if any((f == _TENSOR_EXTERNAL_DATA and w == 2)
                   or (f == _TENSOR_DATA_LOCATION and w == 0 and v == _EXTERNAL)
                   for f, w, v in found):
                name = names[-1][:80] if names else ""
                raise NotSelfContained(
                    f"tensor {name!r} in {where} keeps its data in an external file; "
                    "mlwitness runs only self-contained models (every weight inside the "
                    "ONNX bytes, so that the ledger holds all of it): save the model "
                    "without external data")
            continue
        children = _CHILDREN[kind]
        stack.extend((children[f], v, where) for f, w, v in found  # type: ignore[misc]
                     if w == 2 and f in children)


def fields(data: memoryview) -> list[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message: the integer of a
    varint, the bytes of a length-delimited or fixed-size (wire types 1, 5) field; groups
    are skipped. (`mlwitness.model.onnx_graph` reads a model's nodes with it.)"""
    out: list[tuple[int, int, int | memoryview]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _broken()
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((field, 0, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise _broken()
            out.append((field, 2, data[pos:pos + length]))
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _broken()
            out.append((field, wire, data[pos:pos + size]))
            pos += size
        elif wire == 3:  # a (deprecated) group: protobuf keeps it as an unknown field
            pos = _skip_group(data, pos, field)
        else:
            raise _broken()
    return out


def _skip_group(data: memoryview, pos: int, field: int) -> int:
    depth = [field]
    while depth:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 3:
            depth.append(number)
        elif wire == 4 and number == depth[-1]:
            depth.pop()
        else:
            raise _broken()
        if pos > len(data):
            raise _broken()
    return pos


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _broken()
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _text(value: int | memoryview) -> str:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, memoryview) else ""


def _broken() -> NotProtobuf:
    return NotProtobuf("INVALID_PROTOBUF: the bytes are not an ONNX model (a protobuf "
                       "message cut short, or something else)")


_KIND_NAMES = {GRAPH: "graph", FUNCTION: "function"}
