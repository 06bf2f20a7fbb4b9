"""Seldon MLServer 1.7.1 as a third-party Open Inference Protocol v2 upstream.

Pins down how a v2 server that nobody on this team wrote behaves on the wire (raw vs
typed contents, requested outputs, error status codes) so that forwarding-mode tests can
rely on it. MLServer runs from its own venv (scripts/setup_upstream_venv.sh) with the
runtime in tests/support/upstream/onnx_runtime.py; this process only talks gRPC to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
from upstream_server import UpstreamServer, run_mlserver, upstream_venv

pytestmark = pytest.mark.skipif(
    upstream_venv() is None,
    reason="MLServer venv (.venv-upstream) not set up: run scripts/setup_upstream_venv.sh",
)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_affine_model(path: Path) -> Path:
    """x FP32 [N, 4] -> y = x * 2 + 1."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    return _save(graph, path)


def build_counts_model(path: Path) -> Path:
    """k INT64 [N, 3] -> k3 = k * 3 (INT64 [N, 3]) and ksum = sum over axis 1 (INT64 [N])."""
    nodes = [
        helper.make_node("Mul", ["k", "three"], ["k3"]),
        helper.make_node("ReduceSum", ["k", "axis1"], ["ksum"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "counts",
        [helper.make_tensor_value_info("k", TensorProto.INT64, [None, 3])],
        [
            helper.make_tensor_value_info("k3", TensorProto.INT64, [None, 3]),
            helper.make_tensor_value_info("ksum", TensorProto.INT64, [None]),
        ],
        [
            numpy_helper.from_array(np.array(3, np.int64), "three"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    return _save(graph, path)


def run_local(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def affine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpstreamServer, Path]]:
    root = tmp_path_factory.mktemp("mlserver-affine")
    model = build_affine_model(root / "affine.onnx")
    with run_mlserver(model, "affine", root / "server") as server:
        yield server, model


@pytest.fixture(scope="module")
def counts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpstreamServer, Path]]:
    root = tmp_path_factory.mktemp("mlserver-counts")
    model = build_counts_model(root / "counts.onnx")
    with run_mlserver(model, "counts", root / "server") as server:
        yield server, model


@pytest.fixture
def client(affine: tuple[UpstreamServer, Path]) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(affine[0].grpc_address)
    yield c
    c.close()


@pytest.fixture
def stub(
    affine: tuple[UpstreamServer, Path],
) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(affine[0].grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def fp32_input(x: np.ndarray, name: str = "x", datatype: str = "FP32") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)  # tritonclient always sends raw_input_contents
    return inp


def test_server_metadata_and_model_metadata(
    client: grpcclient.InferenceServerClient, counts: tuple[UpstreamServer, Path]
) -> None:
    server = client.get_server_metadata()
    assert (server.name, server.version) == ("mlserver", "1.7.1")

    meta = client.get_model_metadata("affine")
    assert meta.name == "affine"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 4])]

    with grpcclient.InferenceServerClient(counts[0].grpc_address) as c:
        meta = c.get_model_metadata("counts")
    assert [(t.name, t.datatype) for t in meta.inputs] == [("k", "INT64")]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("k3", "INT64", [-1, 3]),
        ("ksum", "INT64", [-1]),
    ]


@pytest.mark.parametrize("batch", [1, 64])
def test_fp32_raw_infer_matches_onnxruntime(
    affine: tuple[UpstreamServer, Path], client: grpcclient.InferenceServerClient, batch: int
) -> None:
    x = (np.random.default_rng(batch).standard_normal((batch, 4)) * 100).astype(np.float32)
    result = client.infer("affine", [fp32_input(x)], request_id=f"req-{batch}")

    y = result.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (batch, 4)
    np.testing.assert_array_equal(y, run_local(affine[1], {"x": x})["y"])

    # Raw request -> MLServer answers raw too; the typed `contents` message is present but empty.
    response = result.get_response()
    assert response.id == f"req-{batch}"
    assert response.model_name == "affine"
    assert len(response.raw_output_contents) == 1
    assert len(response.raw_output_contents[0]) == batch * 4 * 4
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("y", "FP32", [batch, 4])
    assert len(out.contents.fp32_contents) == 0


def test_typed_request_gets_typed_response(
    affine: tuple[UpstreamServer, Path], stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    x = np.array([[0.1, -2.5, 3e7, 1e-30], [7.0, 8.0, -0.0, 123.456]], np.float32)
    request = service_pb2.ModelInferRequest(model_name="affine")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.flatten().tolist())

    response = stub.ModelInfer(request, timeout=10)

    assert len(response.raw_output_contents) == 0
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("y", "FP32", [2, 4])
    y = np.array(out.contents.fp32_contents, np.float32).reshape(out.shape)
    np.testing.assert_array_equal(y, run_local(affine[1], {"x": x})["y"])


def test_nan_passes_through(
    affine: tuple[UpstreamServer, Path], client: grpcclient.InferenceServerClient
) -> None:
    x = np.array([[np.nan, np.inf, -np.inf, 1.5]], np.float32)
    y = client.infer("affine", [fp32_input(x)]).as_numpy("y")
    np.testing.assert_array_equal(y, run_local(affine[1], {"x": x})["y"])  # NaN == NaN here


@pytest.mark.parametrize("batch", [1, 64])
def test_int64_infer_and_requested_outputs(counts: tuple[UpstreamServer, Path], batch: int) -> None:
    server, model = counts
    k = np.random.default_rng(batch).integers(-(2**40), 2**40, size=(batch, 3), dtype=np.int64)
    expected = run_local(model, {"k": k})
    inp = grpcclient.InferInput("k", list(k.shape), "INT64")
    inp.set_data_from_numpy(k)
    with grpcclient.InferenceServerClient(server.grpc_address) as c:
        everything = c.infer("counts", [inp])
        subset = c.infer("counts", [inp], outputs=[grpcclient.InferRequestedOutput("ksum")])

    assert [o.name for o in everything.get_response().outputs] == ["k3", "ksum"]
    for name in ("k3", "ksum"):
        got = everything.as_numpy(name)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected[name])
    assert list(everything.get_output("ksum").shape) == [batch]

    # The requested subset is honoured: only `ksum` comes back.
    assert [o.name for o in subset.get_response().outputs] == ["ksum"]
    assert subset.as_numpy("k3") is None
    np.testing.assert_array_equal(subset.as_numpy("ksum"), expected["ksum"])


X1 = np.ones((1, 4), np.float32)

# (call, gRPC status, fragment of MLServer's message) as MLServer 1.7.1 answers them.
ERROR_CASES = {
    "unknown_model": (
        lambda c: c.infer("no-such-model", [fp32_input(X1)]),
        grpc.StatusCode.NOT_FOUND,
        "Model no-such-model with version  not found",
    ),
    "unknown_version": (
        lambda c: c.infer("affine", [fp32_input(X1)], model_version="7"),
        grpc.StatusCode.NOT_FOUND,
        "Model affine with version 7 not found",
    ),
    "metadata_unknown_model": (
        lambda c: c.get_model_metadata("no-such-model"),
        grpc.StatusCode.NOT_FOUND,
        "Model no-such-model with version  not found",
    ),
    # ModelReady is not wrapped in MLServer's error handler: the exception escapes to grpc.
    "ready_unknown_model": (
        lambda c: c.is_model_ready("no-such-model"),
        grpc.StatusCode.UNKNOWN,
        "Unexpected <class 'mlserver.errors.ModelNotFound'>: Model no-such-model",
    ),
    "wrong_input_name": (
        lambda c: c.infer("affine", [fp32_input(X1, name="z")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'affine' has no input 'z'",
    ),
    "wrong_datatype": (
        lambda c: c.infer("affine", [fp32_input(X1.astype(np.float64), datatype="FP64")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': datatype FP64, expected FP32",
    ),
    "wrong_shape": (
        lambda c: c.infer("affine", [fp32_input(np.ones((2, 3), np.float32))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': shape [2, 3], expected [-1, 4]",
    ),
    "unknown_requested_output": (
        lambda c: c.infer(
            "affine", [fp32_input(X1)], outputs=[grpcclient.InferRequestedOutput("nope")]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'affine' has no output(s) ['nope']",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_status_codes(client: grpcclient.InferenceServerClient, case: str) -> None:
    call, code, message = ERROR_CASES[case]
    with pytest.raises(InferenceServerException) as info:
        call(client)
    assert info.value.status() == str(code), info.value
    assert message in info.value.message()


def test_raw_contents_shorter_than_shape_is_internal(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    # MLServer's own raw decoding (struct.unpack) fails before the runtime runs.
    request = service_pb2.ModelInferRequest(model_name="affine")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "unpack requires a buffer of 32 bytes"


def test_typed_contents_shorter_than_shape_is_invalid_argument(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="affine")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot reshape array of size 4 into shape (2,4)" in info.value.details()


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="InvalidModelURI") as info,
        run_mlserver(tmp_path / "missing.onnx", "broken", tmp_path / "server", timeout_s=30),
    ):
        pass
    # MLServer exits (with code 0) when a model fails to load; the helper notices at once.
    assert "mlserver exited" in str(info.value)
    assert time.monotonic() - started < 20


def test_stops_on_exit(tmp_path: Path) -> None:
    model = build_affine_model(tmp_path / "affine.onnx")
    with run_mlserver(model, "one-shot", tmp_path / "server") as server:
        with grpcclient.InferenceServerClient(server.grpc_address) as c:
            assert c.is_model_ready("one-shot")
        process = server.process
        stopping = time.monotonic()
    assert process.poll() is not None
    assert time.monotonic() - stopping < 10  # SIGTERM was enough, no kill needed
    assert server.log_path.read_text().strip()
