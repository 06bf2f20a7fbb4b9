"""An ONNX model's main graph read from its protobuf bytes, without the `onnx` package.

The audit service explains tree models from their trees (`tree` method of `mlwitness audit
explain`), and names a classifier's classes, by reading the nodes of the stored model:
their operator, inputs, outputs and attributes. The `onnx` package is a development
dependency only, so this walks the wire format itself, with the field reader of
`mlwitness.model.external_data` (the model has passed its self-containment check before it
gets here). Field numbers are onnx.proto's.

Attribute values, by the attribute's type (or, when the type field is missing, by the
field that is set): FLOAT → float, INT → int, STRING → str (UTF-8, invalid bytes replaced),
TENSOR → a numpy array (FLOAT, DOUBLE, INT32, INT64, STRING; None for another element
type), FLOATS / INTS / STRINGS / TENSORS → lists. Graph and sparse-tensor attributes are not
read (None). Repeated fields are read packed and unpacked, and a field that appears more
than once is merged as protobuf parsers merge it.

`tree_pipeline` says whether, and how, an output of the graph is the score of a tree
ensemble fed by the model input (the shapes skl2onnx writes: Scaler, Cast or Identity nodes
before a TreeEnsembleClassifier/Regressor, Identity or Cast after it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from mlwitness.model.external_data import NotProtobuf, fields

# ModelProto, GraphProto, NodeProto, ValueInfoProto, AttributeProto, TensorProto fields.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP, _NODE_ATTRIBUTE, _NODE_DOMAIN = (
    1, 2, 3, 4, 5, 7)
_VALUE_NAME = 1
_ATTR_NAME, _ATTR_F, _ATTR_I, _ATTR_S, _ATTR_T = 1, 2, 3, 4, 5
_ATTR_FLOATS, _ATTR_INTS, _ATTR_STRINGS, _ATTR_TENSORS, _ATTR_TYPE = 7, 8, 9, 10, 20
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_FLOATS, _TENSOR_INT32S, _TENSOR_STRINGS = 1, 2, 4, 5, 6
_TENSOR_INT64S, _TENSOR_NAME, _TENSOR_RAW, _TENSOR_DOUBLES = 7, 8, 9, 10
# AttributeProto.AttributeType
_FLOAT, _INT, _STRING, _TENSOR, _FLOATS, _INTS, _STRINGS, _TENSORS = 1, 2, 3, 4, 6, 7, 8, 9
# TensorProto.DataType: numpy dtype and the typed field holding the values
_ELEMENTS: dict[int, tuple[np.dtype, int]] = {
    1: (np.dtype("<f4"), _TENSOR_FLOATS), 11: (np.dtype("<f8"), _TENSOR_DOUBLES),
             6: (np.dtype("<i4"), _TENSOR_INT32S), 7: (np.dtype("<i8"), _TENSOR_INT64S)}
_STRING_TYPE = 8
ML_DOMAIN = "ai.onnx.ml"
TREE_ENSEMBLES = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
CLASSIFIERS = ("LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier")
# ONNX element types a Cast may convert a pipeline's features to, as numpy dtypes.
_CAST_TO: dict[int, np.dtype] = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}


@dataclass(frozen=True)
class Node:
    op_type: str
    domain: str  # "" for the default operator set
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Graph:
    """The main graph: its inputs (initializers left out), outputs and nodes in order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]

    @cached_property
    def _producers(self) -> dict[str, Node]:
        return {name: node for node in self.nodes for name in node.outputs if name}

    def producer(self, value: str) -> Node | None:
        """The node whose output `value` is (None: a graph input or an initializer)."""
        return self._producers.get(value)

    def class_labels(self) -> tuple[Any, ...] | None:
        """The class labels of the graph's one classifier node, in the order of its score
        columns; None when there is no classifier node or more than one."""
        found = [n for n in self.nodes if n.op_type in CLASSIFIERS and n.domain == ML_DOMAIN]
        if len(found) != 1:
            return None
        a = found[0].attributes
        labels = a.get("classlabels_strings") or a.get("classlabels_ints") or a.get(
            "classlabels_int64s")
        return tuple(labels) if labels else None


def read_graph(onnx: bytes) -> Graph:
    """The main graph of a model's bytes; NotProtobuf when they cannot be read as one."""
    graphs = [v for f, w, v in fields(memoryview(onnx)) if f == _MODEL_GRAPH and w == 2]
    if not graphs:
        raise NotProtobuf("the model has no graph")
    inputs: list[str] = []
    outputs: list[str] = []
    initializers: set[str] = set()
    nodes: list[Node] = []
    for graph in graphs:  # a repeated message field merges
        for f, w, v in fields(_view(graph)):
            if w != 2:
                continue
            if f == _GRAPH_NODE:
                nodes.append(_node(_view(v)))
            elif f in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                name = _last_text(_view(v), _VALUE_NAME)
                (inputs if f == _GRAPH_INPUT else outputs).append(name)
            elif f == _GRAPH_INITIALIZER:
                initializers.add(_last_text(_view(v), _TENSOR_NAME))
    return Graph(tuple(n for n in inputs if n not in initializers), tuple(outputs),
                 tuple(nodes))


def _view(value: int | memoryview) -> memoryview:
    assert isinstance(value, memoryview)
    return value


def _text(value: int | memoryview) -> str:
    return bytes(_view(value)).decode("utf-8", "replace")


def _last_text(data: memoryview, number: int) -> str:
    found = [_text(v) for f, w, v in fields(data) if f == number and w == 2]
    return found[-1] if found else ""


def _node(data: memoryview) -> Node:
    inputs: list[str] = []
    outputs: list[str] = []
    name = op_type = domain = ""
    attributes: dict[str, Any] = {}
    for f, w, v in fields(data):
        if w != 2:
            continue
        if f == _NODE_INPUT:
            inputs.append(_text(v))
        elif f == _NODE_OUTPUT:
            outputs.append(_text(v))
        elif f == _NODE_NAME:
            name = _text(v)
        elif f == _NODE_OP:
            op_type = _text(v)
        elif f == _NODE_DOMAIN:
            domain = _text(v)
        elif f == _NODE_ATTRIBUTE:
            key, value = _attribute(_view(v))
            attributes[key] = value
    return Node(op_type, "" if domain == "ai.onnx" else domain, name, tuple(inputs),
                tuple(outputs), attributes)


def _attribute(data: memoryview) -> tuple[str, Any]:
    found = fields(data)
    name = ""
    kind = 0
    for f, w, v in found:
        if f == _ATTR_NAME and w == 2:
            name = _text(v)
        elif f == _ATTR_TYPE and w == 0:
            kind = int(v)  # type: ignore[arg-type]
    if not kind:  # old models: the field that is set says the type
        present = {f for f, _, _ in found}
        kind = next((k for f, k in ((_ATTR_FLOATS, _FLOATS), (_ATTR_INTS, _INTS),
                                    (_ATTR_STRINGS, _STRINGS), (_ATTR_TENSORS, _TENSORS),
                                    (_ATTR_F, _FLOAT), (_ATTR_I, _INT), (_ATTR_S, _STRING),
                                    (_ATTR_T, _TENSOR)) if f in present), 0)
    if kind == _FLOAT:
        values = _floats(found, _ATTR_F)
        return name, values[-1] if values else 0.0
    if kind == _INT:
        ints = _ints(found, _ATTR_I)
        return name, ints[-1] if ints else 0
    if kind == _STRING:
        texts = [_text(v) for f, w, v in found if f == _ATTR_S and w == 2]
        return name, texts[-1] if texts else ""
    if kind == _TENSOR:
        tensors = [v for f, w, v in found if f == _ATTR_T and w == 2]
        return name, _tensor(_view(tensors[-1])) if tensors else None
    if kind == _FLOATS:
        return name, _floats(found, _ATTR_FLOATS)
    if kind == _INTS:
        return name, _ints(found, _ATTR_INTS)
    if kind == _STRINGS:
        return name, [_text(v) for f, w, v in found if f == _ATTR_STRINGS and w == 2]
    if kind == _TENSORS:
        return name, [_tensor(_view(v)) for f, w, v in found if f == _ATTR_TENSORS and w == 2]
    return name, None  # graphs, sparse tensors, type protos: not read here


def _floats(found: Sequence[tuple[int, int, Any]], number: int, size: int = 4) -> list[float]:
    """A repeated float (size 4) or double (size 8) field: packed and unpacked parts."""
    code = "<f" if size == 4 else "<d"
    out: list[float] = []
    for f, w, v in found:
        if f != number:
            continue
        if w == 2:
            if len(v) % size:
                raise NotProtobuf("a packed float field of the model is cut short")
            out.extend(np.frombuffer(bytes(v), dtype=code).tolist())
        elif w == (5 if size == 4 else 1):
            out.append(struct.unpack(code, bytes(v))[0])
    return out


def _ints(found: Sequence[tuple[int, int, Any]], number: int) -> list[int]:
    """A repeated int64 (or int32) field, packed or not, as signed integers."""
    out: list[int] = []
    for f, w, v in found:
        if f != number:
            continue
        if w == 0:
            out.append(_signed(v))
        elif w == 2:
            data = _view(v)
            pos = 0
            while pos < len(data):  # varints one after another
                value = shift = 0
                while True:
                    if pos >= len(data) or shift > 63:
                        raise NotProtobuf("a packed integer field of the model is cut short")
                    byte = data[pos]
                    pos += 1
                    value |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                out.append(_signed(value))
    return out


def _signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor(data: memoryview) -> np.ndarray | list[str] | None:
    found = fields(data)
    kinds = _ints(found, _TENSOR_TYPE)
    kind = kinds[-1] if kinds else 0
    dims = _ints(found, _TENSOR_DIMS)
    if kind == _STRING_TYPE:
        return [_text(v) for f, w, v in found if f == _TENSOR_STRINGS and w == 2]
    if kind not in _ELEMENTS:
        return None
    dtype, typed = _ELEMENTS[kind]
    raw = [bytes(v) for f, w, v in found if f == _TENSOR_RAW and w == 2]
    if raw:
        if len(raw[-1]) % dtype.itemsize:
            raise NotProtobuf("a tensor's raw data is not a whole number of elements")
        array = np.frombuffer(raw[-1], dtype=dtype).copy()
    elif typed in (_TENSOR_FLOATS, _TENSOR_DOUBLES):
        array = np.asarray(_floats(found, typed, dtype.itemsize), dtype=dtype)
    else:
        array = np.asarray(_ints(found, typed), dtype=dtype)
    if dims and int(np.prod(dims)) == array.size:
        array = array.reshape(dims)
    return array


# ── tree ensembles fed by the model input ──────────────────────────────────────────────

class NotATreePipeline(ValueError):
    """The output is not a tree ensemble's score of the model input; says why."""


@dataclass(frozen=True)
class Affine:
    """A Scaler node: ``y = (x - offset) * scale`` per feature, computed in x's type
    (onnxruntime keeps offset and scale as float32) and returned as float32."""

    offset: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        offset, scale = self.offset.astype(x.dtype), self.scale.astype(x.dtype)
        if offset.size not in (1, x.shape[-1]) or scale.size not in (1, x.shape[-1]):
            raise NotATreePipeline(f"the Scaler has {offset.size} offsets and {scale.size} "
                                   f"scales for {x.shape[-1]} features")
        return ((x - offset) * scale).astype(np.float32)


@dataclass(frozen=True)
class Cast:
    """A Cast node (`dtype`), or an Identity (None)."""

    dtype: np.dtype | None

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return x if self.dtype is None else x.astype(self.dtype)


@dataclass(frozen=True)
class TreePipeline:
    """`node` (a TreeEnsembleClassifier/Regressor) gets the model input after `steps`;
    the explained graph output is its score output (`scores`), passed on unchanged."""

    node: Node
    steps: tuple[Affine | Cast, ...]
    scores: str

    def features(self, x: np.ndarray) -> np.ndarray:
        """Rows of the model input as the ensemble receives them."""
        for step in self.steps:
            x = step.apply(x)
        return x


_PASS_THROUGH = ("Identity", "Cast")


def tree_pipeline(graph: Graph, output: str) -> TreePipeline:
    """How graph output `output` is a tree ensemble's score; NotATreePipeline otherwise."""
    if output not in graph.outputs:
        raise NotATreePipeline(f"the model has no output {output!r}")
    value, node = output, graph.producer(output)
    while node is not None and node.op_type in _PASS_THROUGH and node.domain == "":
        value, node = node.inputs[0], graph.producer(node.inputs[0])
    if node is None or node.op_type not in TREE_ENSEMBLES or node.domain != ML_DOMAIN:
        what = "the model input" if node is None else f"a {node.op_type} node"
        raise NotATreePipeline(f"output {output!r} comes from {what}, not from a "
                               f"{' or '.join(TREE_ENSEMBLES)} (through Identity or Cast "
                               "nodes only)")
    index = 1 if node.op_type == "TreeEnsembleClassifier" else 0
    if len(node.outputs) <= index or node.outputs[index] != value:
        raise NotATreePipeline(f"output {output!r} is the {node.op_type}'s predicted label, "
                               "not its scores")
    steps: list[Affine | Cast] = []
    value = node.inputs[0] if node.inputs else ""
    before = graph.producer(value)
    while before is not None:
        steps.append(_step(before))
        value = before.inputs[0] if before.inputs else ""
        before = graph.producer(value)
    if len(graph.inputs) != 1 or value != graph.inputs[0]:
        raise NotATreePipeline("the tree ensemble is not fed by the model's one input")
    return TreePipeline(node, tuple(reversed(steps)), node.outputs[index])


def _step(node: Node) -> Affine | Cast:
    if node.op_type == "Scaler" and node.domain == ML_DOMAIN:
        offset = np.asarray(node.attributes.get("offset") or [0.0], dtype=np.float32)
        scale = np.asarray(node.attributes.get("scale") or [1.0], dtype=np.float32)
        return Affine(offset, scale)
    if node.op_type == "Cast" and node.domain == "":
        to = node.attributes.get("to")
        if not isinstance(to, int) or to not in _CAST_TO:
            raise NotATreePipeline(f"a Cast to ONNX element type {to} feeds the trees; "
                                   "only casts to float and double are followed")
        return Cast(_CAST_TO[to])
    if node.op_type == "Identity" and node.domain == "":
        return Cast(None)
    raise NotATreePipeline(f"a {node.op_type} node sits between the model input and the "
                           "trees; only Scaler, Cast and Identity nodes are followed")

