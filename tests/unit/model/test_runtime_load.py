"""`is_not_a_model`: bytes that are no model at all (a copy cut short, an empty file) told
apart from a model onnxruntime cannot run, without the server reading onnxruntime's words."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from mlwitness.model.runtime import OnnxModel, is_not_a_model


def load_error(onnx: bytes) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: B017 — whatever OnnxModel raises
        OnnxModel(onnx)
    return caught.value


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_model_cut_short_is_not_a_model(affine_model: Path, cut: float) -> None:
    whole = affine_model.read_bytes()
    assert is_not_a_model(load_error(whole[: int(len(whole) * cut)]))


def test_bytes_with_no_graph_are_not_a_model() -> None:
    assert is_not_a_model(load_error(b"\x08\x08"))  # ir_version 8 and nothing else


def test_a_whole_model_onnxruntime_cannot_run_is_a_model() -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.invalid")], "unknown-op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("example.invalid", 1)])
    assert not is_not_a_model(load_error(model.SerializeToString()))
