"""Reading an ONNX model's nodes from its bytes (mlwitness.model.onnx_graph), checked against
the `onnx` package's own reading of the same models: scikit-learn pipelines converted by
skl2onnx, and hand-built nodes with every attribute kind (tensors, packed and unpacked
repeated fields, negative integers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.ensemble import (
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from mlwitness.explain.trees import TreeEnsemble
from mlwitness.model.external_data import NotProtobuf
from mlwitness.model.onnx_graph import NotATreePipeline, read_graph, tree_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:Field onnx.AttributeProto.ints:DeprecationWarning")

REPO = Path(__file__).resolve().parents[3]
OPSETS = {"": 17, "ai.onnx.ml": 3}


def _credit() -> Any:
    path = REPO / "examples" / "credit" / "build_model.py"
    spec = importlib.util.spec_from_file_location("graph_credit_builder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    builder = _credit()
    rows = builder.make_dataset(1500, 3)
    return builder.feature_matrix(rows), rows["approved"]


def _plain(value: Any) -> Any:
    """onnx's attribute value in the shapes onnx_graph gives."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        array = numpy_helper.to_array(value)
        return ([v.decode() if isinstance(v, bytes) else v for v in array.ravel()]
                if array.dtype == object else array)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, np.ndarray):
        return isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype and np.array_equal(
            ours, theirs)
    if isinstance(theirs, list):
        return isinstance(ours, list) and len(ours) == len(theirs) and all(
            _same(a, b) for a, b in zip(ours, theirs, strict=True))
    if isinstance(theirs, float):  # FLOAT attributes are float32 on the wire
        return isinstance(ours, float) and np.float32(ours) == np.float32(theirs)
    return type(ours) is type(theirs) and ours == theirs


def assert_read_like_onnx(model: onnx.ModelProto) -> None:
    graph = read_graph(model.SerializeToString())
    initializers = {t.name for t in model.graph.initializer}
    assert graph.inputs == tuple(i.name for i in model.graph.input if i.name not in initializers)
    assert graph.outputs == tuple(o.name for o in model.graph.output)
    assert len(graph.nodes) == len(model.graph.node)
    for ours, theirs in zip(graph.nodes, model.graph.node, strict=True):
        assert (ours.op_type, ours.domain, ours.name, ours.inputs, ours.outputs) == (
            theirs.op_type, "" if theirs.domain == "ai.onnx" else theirs.domain, theirs.name,
            tuple(theirs.input), tuple(theirs.output))
        expected = {a.name: _plain(helper.get_attribute_value(a)) for a in theirs.attribute}
        assert sorted(ours.attributes) == sorted(expected)
        for name, value in expected.items():
            assert _same(ours.attributes[name], value), (theirs.op_type, name)


def _convert(model: Any, n: int, double: bool = False, **options: Any) -> onnx.ModelProto:
    kind = DoubleTensorType if double else FloatTensorType
    return convert_sklearn(model, initial_types=[("input", kind([None, n]))],
                           options={id(model): options} if options else None,
                           target_opset=OPSETS)


def test_converted_models_read_like_the_onnx_package(data: tuple) -> None:
    x, y = data
    models = [
        _convert(Pipeline([("s", StandardScaler()), ("clf", GradientBoostingClassifier(
            n_estimators=8, max_depth=2, random_state=0))]).fit(x, y), 6),
        _convert(RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(x, y),
                 6, zipmap=False),
        _convert(RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0).fit(
            x.astype(np.float64), x[:, 0]), 6, double=True),
    ]
    for model in models:
        assert_read_like_onnx(model)
    labels = [read_graph(m.SerializeToString()).class_labels() for m in models]
    assert labels == [(0, 1), (0, 1), None]  # a regressor names no classes


def test_every_attribute_kind_reads_like_the_onnx_package() -> None:
    tensors = [numpy_helper.from_array(np.array([[1.5, -2.0]], np.float32), "f"),
               numpy_helper.from_array(np.array([1e300, -0.0]), "d"),
               numpy_helper.from_array(np.array([-3, 2**40], np.int64), "i"),
               numpy_helper.from_array(np.array([-7], np.int32), "j"),
               helper.make_tensor("s", TensorProto.STRING, [2], [b"ab", "é".encode()]),
               helper.make_tensor("typed", TensorProto.FLOAT, [3], [0.25, 1.0, -4.0])]
    node = helper.make_node(
        "Anything", ["a", "b"], ["c"], name="n1", domain="some.domain",
        f=0.1, i=-5, s="text", t=tensors[0], floats=[1.0, -2.5], ints=[-1, 0, 2**62],
        strings=["x", "yz"], tensors=tensors)
    node.attribute.append(helper.make_attribute("empty_ints", [],
                                                attr_type=onnx.AttributeProto.INTS))
    unpacked = helper.make_node("Other", ["c"], ["d"])
    attr = helper.make_attribute("loose", [3, -4])
    attr.type = onnx.AttributeProto.INTS
    unpacked.attribute.append(attr)
    graph = helper.make_graph(
        [node, unpacked], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1]),
                                helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.ones(1, np.float32), "b")])
    model = helper.make_model(graph)
    assert_read_like_onnx(model)
    read = read_graph(model.SerializeToString())
    assert read.inputs == ("a",)  # an initializer is not an input
    assert read.nodes[0].attributes["ints"] == [-1, 0, 2**62]
    assert read.producer("c") is read.nodes[0] and read.producer("a") is None


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_packed_repeated_fields_are_read() -> None:
    """onnx writes repeated numbers unpacked (proto2); other writers pack them."""
    ints = _field(1, b"p") + _field(8, b"".join(_varint(v) for v in (-1, 5, 2**40))) \
        + _varint(20 << 3) + _varint(7)  # type INTS
    floats = _field(1, b"q") + _field(7, np.array([0.5, -3.0], "<f4").tobytes()) \
        + _varint(20 << 3) + _varint(6)  # type FLOATS
    doubles = _field(2, _varint(11)) + _field(10, np.array([0.1, 2.0], "<f8").tobytes())
    tensor = _field(1, b"t") + _field(5, doubles) + _varint(20 << 3) + _varint(4)
    node = _field(4, b"Op") + _field(5, ints) + _field(5, floats) + _field(5, tensor)
    (read,) = read_graph(_field(7, _field(1, node))).nodes
    assert read.attributes["p"] == [-1, 5, 2**40]
    assert read.attributes["q"] == [0.5, -3.0]
    assert read.attributes["t"].tolist() == [0.1, 2.0]
    with pytest.raises(NotProtobuf, match="cut short"):
        read_graph(_field(7, _field(1, _field(4, b"Op") + _field(5, _field(1, b"p") + _field(
            8, b"\x80")))))


def test_bytes_that_are_not_a_model_are_refused() -> None:
    with pytest.raises(NotProtobuf):
        read_graph(b"\x0a\xff\xff")
    with pytest.raises(NotProtobuf, match="no graph"):
        read_graph(b"")


def _run(model: onnx.ModelProto, rows: np.ndarray, output: int) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": rows})[output]


def _without_post_transform(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.op_type.startswith("TreeEnsemble"))
    kept = [a for a in node.attribute if a.name != "post_transform"]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("post_transform", "NONE")])
    return out


def test_a_scaler_before_the_trees_is_followed_and_matches_onnxruntime(data: tuple) -> None:
    """The demo v2 shape: Scaler → TreeEnsembleClassifier → Identity. The pipeline's
    features, fed to the ensemble read from the bytes, give onnxruntime's raw scores."""
    x, y = data
    pipe = Pipeline([("s", StandardScaler()), ("clf", GradientBoostingClassifier(
        n_estimators=20, max_depth=2, random_state=0))]).fit(x.astype(np.float64), y)
    onx = convert_sklearn(pipe, initial_types=[("input", FloatTensorType([None, 6]))],
                          options={id(pipe.named_steps["clf"]): {"zipmap": False}},
                          target_opset=OPSETS)
    graph = read_graph(onx.SerializeToString())
    pipeline = tree_pipeline(graph, "probabilities")
    assert [type(s).__name__ for s in pipeline.steps] == ["Affine"]
    ensemble = TreeEnsemble.from_attributes(pipeline.node.op_type, pipeline.node.attributes)
    margin = _run(_without_post_transform(onx), x, 1)[:, 1]
    np.testing.assert_allclose(ensemble.raw_scores(pipeline.features(x))[:, 0], margin,
                               rtol=0, atol=1e-5)
    with pytest.raises(NotATreePipeline, match="predicted label"):
        tree_pipeline(graph, "label")
    with pytest.raises(NotATreePipeline, match="no output"):
        tree_pipeline(graph, "nope")


def test_graphs_other_than_scaler_cast_identity_before_the_trees_are_refused(
    data: tuple
) -> None:
    x, y = data
    pipe = Pipeline([("n", Normalizer()), ("clf", RandomForestClassifier(
        n_estimators=2, max_depth=2, random_state=0))]).fit(x, y)
    onx = convert_sklearn(pipe, initial_types=[("input", FloatTensorType([None, 6]))],
                          options={id(pipe.named_steps["clf"]): {"zipmap": False}},
                          target_opset=OPSETS)
    with pytest.raises(NotATreePipeline, match="Normalizer node sits between"):
        tree_pipeline(read_graph(onx.SerializeToString()), "probabilities")
    linear = _convert(Pipeline([("s", StandardScaler())]).fit(x), 6)
    with pytest.raises(NotATreePipeline, match="not from a TreeEnsemble"):
        tree_pipeline(read_graph(linear.SerializeToString()), linear.graph.output[0].name)
