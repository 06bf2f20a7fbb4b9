"""Small hand-built ONNX models for tests (``onnx.helper`` only, no sklearn).

Every builder writes one model to ``path`` and returns ``path``. The models use default-domain
opset 17, ai.onnx.ml opset 3 and IR version 8, all of which onnxruntime >= 1.14 can load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ML_OPSET = 3
IR_VERSION = 8

# Weights of build_affine_fp32: dyadic rationals, so float32 results are exact.
AFFINE_W = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25], [2.0, -0.5]], dtype=np.float32)
AFFINE_B = np.array([0.5, -1.0], dtype=np.float32)
COLOR_CODES: dict[str, int] = {"red": 0, "green": 1, "blue": 2}

ValueInfo = tuple[str, int, Sequence[int | str | None]]


def _value_infos(specs: Sequence[ValueInfo]) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in specs]


def _save(
    path: Path,
    name: str,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[ValueInfo],
    outputs: Sequence[ValueInfo],
    initializers: Sequence[onnx.TensorProto] = (),
) -> Path:
    """Assemble, check and write a single-graph model."""
    graph = helper.make_graph(
        list(nodes), name, _value_infos(inputs), _value_infos(outputs), list(initializers)
    )
    model = helper.make_model(
        graph,
        producer_name="mlwitness-tests",
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    )
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def build_affine_fp32(path: Path) -> Path:
    """x FLOAT [N,4] -> y FLOAT [N,2] = x @ AFFINE_W + AFFINE_B; score FLOAT [N] = y.sum(1)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("ReduceSum", ["y", "axes"], ["score"], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(AFFINE_W, "W"),
        numpy_helper.from_array(AFFINE_B, "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    return _save(
        path,
        "affine_fp32",
        nodes,
        [("x", TensorProto.FLOAT, [None, 4])],
        [("y", TensorProto.FLOAT, [None, 2]), ("score", TensorProto.FLOAT, [None])],
        inits,
    )


def build_all_dtypes(path: Path) -> Path:
    """f64 DOUBLE[N,3], i32 INT32[N,2], i64 INT64[N], flag BOOL[N] -> f64*2, i32+1, i64*3, !flag."""
    nodes = [
        helper.make_node("Mul", ["f64", "two_f64"], ["f64_out"]),
        helper.make_node("Add", ["i32", "one_i32"], ["i32_out"]),
        helper.make_node("Mul", ["i64", "three_i64"], ["i64_out"]),
        helper.make_node("Not", ["flag"], ["flag_out"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, dtype=np.float64), "two_f64"),
        numpy_helper.from_array(np.array(1, dtype=np.int32), "one_i32"),
        numpy_helper.from_array(np.array(3, dtype=np.int64), "three_i64"),
    ]
    return _save(
        path,
        "all_dtypes",
        nodes,
        [
            ("f64", TensorProto.DOUBLE, [None, 3]),
            ("i32", TensorProto.INT32, [None, 2]),
            ("i64", TensorProto.INT64, [None]),
            ("flag", TensorProto.BOOL, [None]),
        ],
        [
            ("f64_out", TensorProto.DOUBLE, [None, 3]),
            ("i32_out", TensorProto.INT32, [None, 2]),
            ("i64_out", TensorProto.INT64, [None]),
            ("flag_out", TensorProto.BOOL, [None]),
        ],
        inits,
    )


def build_strings(path: Path) -> Path:
    """category STRING [N] -> code INT64 [N] (red/green/blue -> 0/1/2, else -1); echo = category."""
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["category"],
            ["code"],
            domain="ai.onnx.ml",
            keys_strings=list(COLOR_CODES),
            values_int64s=list(COLOR_CODES.values()),
            default_int64=-1,
        ),
        helper.make_node("Identity", ["category"], ["echo"]),
    ]
    return _save(
        path,
        "strings",
        nodes,
        [("category", TensorProto.STRING, [None])],
        [("code", TensorProto.INT64, [None]), ("echo", TensorProto.STRING, [None])],
    )


def build_fixed_shape(path: Path) -> Path:
    """x FLOAT [1,3] (static batch of 1) -> y FLOAT [1,3] = Relu(x)."""
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    return _save(
        path,
        "fixed_shape",
        nodes,
        [("x", TensorProto.FLOAT, [1, 3])],
        [("y", TensorProto.FLOAT, [1, 3])],
    )


def build_fp16(path: Path) -> Path:
    """h FLOAT16 [N,2] -> h_out FLOAT16 [N,2] = h + h."""
    nodes = [helper.make_node("Add", ["h", "h"], ["h_out"])]
    return _save(
        path,
        "fp16",
        nodes,
        [("h", TensorProto.FLOAT16, [None, 2])],
        [("h_out", TensorProto.FLOAT16, [None, 2])],
    )


def build_shared_batch(path: Path) -> Path:
    """a FLOAT [N,2], b FLOAT [N,1] -> z FLOAT [N,2] = a * b. Both inputs name their batch
    dim N, as exporters do: a request must give it one size."""
    nodes = [helper.make_node("Mul", ["a", "b"], ["z"])]
    return _save(
        path,
        "shared_batch",
        nodes,
        [("a", TensorProto.FLOAT, ["N", 2]), ("b", TensorProto.FLOAT, ["N", 1])],
        [("z", TensorProto.FLOAT, ["N", 2])],
    )


def build_argmax_rows(path: Path) -> Path:
    """x FLOAT [N,M] -> best INT64 [N] = the column of each row's largest value. Both dims
    are dynamic; onnxruntime cannot take the arg-max of a row with no columns (M = 0)."""
    nodes = [helper.make_node("ArgMax", ["x"], ["best"], axis=1, keepdims=0)]
    return _save(
        path,
        "argmax_rows",
        nodes,
        [("x", TensorProto.FLOAT, ["N", "M"])],
        [("best", TensorProto.INT64, ["N"])],
    )


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "affine_fp32": build_affine_fp32,
    "all_dtypes": build_all_dtypes,
    "strings": build_strings,
    "fixed_shape": build_fixed_shape,
    "fp16": build_fp16,
    "shared_batch": build_shared_batch,
    "argmax_rows": build_argmax_rows,
}
