"""ModelInfer through a real sidecar equals onnxruntime called directly, bit for bit.

Callers: `tritonclient.grpc` (raw contents) and hand-built typed requests (tritonclient's
own `service_pb2` classes, and mlwitness's) sent as bytes on a plain gRPC channel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from conftest import SLOW_IO, CreditModel, SidecarFactory, SlowModel
from sidecar import RunningSidecar, raw_rpc, read_ledger
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from mlwitness.codec import decode_outputs, encode_inputs, tensor_from_array
from mlwitness.inference.backends.embedded import INLINE_ELEMENTS
from mlwitness.protocol import inference as pb

HEX32 = re.compile(r"^[0-9a-f]{32}$")

# v2 datatype -> (typed contents field, numpy dtype)
TYPED = {
    "BOOL": ("bool_contents", np.bool_),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", object),
}
DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(object): "BYTES",
}


def onnxruntime_outputs(
    path: Path, feeds: dict[str, np.ndarray], names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """The model run directly, configured as the sidecar runs it (1 intra-op thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = names or [o.name for o in session.get_outputs()]
    ort_feeds = {
        k: (v.astype(str) if v.dtype == object else v) for k, v in feeds.items()
    }  # onnxruntime wants str for tensor(string)
    results = session.run(names, ort_feeds)
    out = {}
    for name, value in zip(names, results, strict=True):
        value = np.asarray(value)
        if value.dtype.kind in "OU":  # strings come back as str; the wire carries UTF-8 bytes
            value = np.array([v.encode() for v in value.ravel()], dtype=object).reshape(value.shape)
        out[name] = value
    return out


def assert_bit_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if want.dtype != object:
        assert got.tobytes() == want.tobytes()
    else:
        assert got.ravel().tolist() == want.ravel().tolist()


# ── inputs for each model of tests/support/models.py ───────────────────────────────────

SAMPLES: dict[str, Callable[[int, np.random.Generator], dict[str, np.ndarray]]] = {
    "affine_fp32": lambda n, rng: {"x": (rng.standard_normal((n, 4)) * 1000).astype(np.float32)},
    "all_dtypes": lambda n, rng: {
        "f64": rng.standard_normal((n, 3)) * 1e12,
        "i32": rng.integers(-(2**30), 2**30, size=(n, 2), dtype=np.int32),
        "i64": rng.integers(-(2**60), 2**60, size=n, dtype=np.int64),
        "flag": rng.random(n) < 0.5,
    },
    "strings": lambda n, rng: {
        "category": np.array(
            [["red", "green", "blue", "grün", "", "purple"][i] for i in rng.integers(0, 6, n)],
            dtype=object,
        )
    },
    "fp16": lambda n, rng: {"h": (rng.standard_normal((n, 2)) * 100).astype(np.float16)},
    "fixed_shape": lambda n, rng: {"x": rng.standard_normal((1, 3)).astype(np.float32)},
}

CASES = [
    (name, batch)
    for name in SAMPLES
    for batch in ((1,) if name == "fixed_shape" else (1, 64, 3000))
] + [("affine_fp32", 20_000)]  # 80,000 elements: the backend runs it off the event loop


def triton_inputs(feeds: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), DATATYPE[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def typed_request(
    model: str, feeds: dict[str, np.ndarray], outputs: list[str] = (), request_id: str = ""
) -> service_pb2.ModelInferRequest:
    """A typed-contents request built with tritonclient's generated classes."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, array in feeds.items():
        datatype = DATATYPE[array.dtype]
        field, _ = TYPED[datatype]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        values = array.ravel().tolist()
        if datatype == "BYTES":
            values = [v.encode() if isinstance(v, str) else v for v in values]
        getattr(tensor.contents, field).extend(values)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def typed_outputs(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode typed output contents independently of mlwitness's codec."""
    assert len(response.raw_output_contents) == 0, "asked typed, got raw"
    out = {}
    for tensor in response.outputs:
        field, dtype = TYPED[tensor.datatype]
        values = list(getattr(tensor.contents, field))
        out[tensor.name] = np.array(values, dtype=dtype).reshape(tuple(tensor.shape))
    return out


# ── raw contents (tritonclient) ────────────────────────────────────────────────────────


@pytest.mark.parametrize(("name", "batch"), CASES)
def test_raw_outputs_equal_onnxruntime_bit_for_bit(
    make_sidecar: SidecarFactory, model_paths: dict[str, Path], name: str, batch: int
) -> None:
    sidecar = make_sidecar(model_paths[name])
    feeds = SAMPLES[name](batch, np.random.default_rng(batch))
    expected = onnxruntime_outputs(model_paths[name], feeds)

    with grpcclient.InferenceServerClient(sidecar.address) as client:
        result = client.infer(name, triton_inputs(feeds), request_id=f"{name}-{batch}")

    response = result.get_response()
    assert [o.name for o in response.outputs] == list(expected)
    assert len(response.raw_output_contents) == len(expected)  # raw asked, raw answered
    for output, want in expected.items():
        assert_bit_equal(result.as_numpy(output), want)


def test_credit_model_raw_batch_equals_onnxruntime(
    make_sidecar: SidecarFactory, credit_model: CreditModel
) -> None:
    sidecar = make_sidecar(credit_model.path)
    x = credit_model.features(200, seed=3)
    expected = onnxruntime_outputs(credit_model.path, {"input": x})

    with grpcclient.InferenceServerClient(sidecar.address) as client:
        result = client.infer("credit", triton_inputs({"input": x}))

    assert_bit_equal(result.as_numpy("label"), expected["label"])
    assert_bit_equal(result.as_numpy("probabilities"), expected["probabilities"])
    assert set(expected["label"].tolist()) == {0, 1}  # the sample exercises both answers


def test_special_float_values_survive_bit_for_bit(
    client: grpcclient.InferenceServerClient, affine_model: Path
) -> None:
    x = np.array(
        [[np.nan, np.inf, -np.inf, -0.0], [np.float32(1e-45), 3.4e38, -3.4e38, 0.1]], np.float32
    )
    result = client.infer("affine_fp32", triton_inputs({"x": x}))
    expected = onnxruntime_outputs(affine_model, {"x": x})
    for output in ("y", "score"):
        assert result.as_numpy(output).tobytes() == expected[output].tobytes()


# ── typed contents ─────────────────────────────────────────────────────────────────────

TYPED_CASES = [(name, batch) for name, batch in CASES if name != "fp16"]  # FP16: raw only


@pytest.mark.parametrize(("name", "batch"), TYPED_CASES)
def test_typed_outputs_equal_onnxruntime_bit_for_bit(
    make_sidecar: SidecarFactory, model_paths: dict[str, Path], name: str, batch: int
) -> None:
    sidecar = make_sidecar(model_paths[name])
    feeds = SAMPLES[name](batch, np.random.default_rng(100 + batch))
    expected = onnxruntime_outputs(model_paths[name], feeds)

    with grpc.insecure_channel(sidecar.address) as channel:
        answer = raw_rpc(channel, "ModelInfer", typed_request(name, feeds).SerializeToString())

    response = service_pb2.ModelInferResponse.FromString(answer)
    got = typed_outputs(response)
    assert list(got) == list(expected)
    for output, want in expected.items():
        assert_bit_equal(got[output], want)


def test_typed_request_built_with_mlwitness_classes(
    make_sidecar: SidecarFactory, credit_model: CreditModel
) -> None:
    sidecar = make_sidecar(credit_model.path)
    x = credit_model.features(64, seed=11)
    request = pb.ModelInferRequest(model_name="credit", id="ours-1")
    encode_inputs(request, [tensor_from_array("input", x)], raw=False)
    assert len(request.raw_input_contents) == 0

    with grpc.insecure_channel(sidecar.address) as channel:
        answer = raw_rpc(channel, "ModelInfer", request.SerializeToString())

    response = pb.ModelInferResponse.FromString(answer)
    assert response.id == "ours-1"
    assert len(response.raw_output_contents) == 0
    got = {t.name: t.array for t in decode_outputs(response)}
    expected = onnxruntime_outputs(credit_model.path, {"input": x})
    for output, want in expected.items():
        assert_bit_equal(got[output], want)


# ── requested outputs, ids, versions ───────────────────────────────────────────────────


def test_requested_output_subset_returns_only_that_output(
    client: grpcclient.InferenceServerClient, affine_model: Path
) -> None:
    x = SAMPLES["affine_fp32"](64, np.random.default_rng(5))["x"]
    result = client.infer(
        "affine_fp32", triton_inputs({"x": x}), outputs=[grpcclient.InferRequestedOutput("score")]
    )
    assert [o.name for o in result.get_response().outputs] == ["score"]
    assert result.as_numpy("y") is None
    assert_bit_equal(result.as_numpy("score"), onnxruntime_outputs(affine_model, {"x": x})["score"])


def test_typed_requested_outputs_come_back_in_requested_order(
    sidecar: RunningSidecar, channel: grpc.Channel, affine_model: Path
) -> None:
    x = SAMPLES["affine_fp32"](3, np.random.default_rng(6))
    request = typed_request("affine_fp32", x, outputs=["score", "y"])
    response = service_pb2.ModelInferResponse.FromString(
        raw_rpc(channel, "ModelInfer", request.SerializeToString())
    )
    got = typed_outputs(response)
    assert list(got) == ["score", "y"]
    expected = onnxruntime_outputs(affine_model, x)
    for output in ("score", "y"):
        assert_bit_equal(got[output], expected[output])


def test_response_echoes_the_callers_request_id(
    sidecar: RunningSidecar, client: grpcclient.InferenceServerClient
) -> None:
    x = np.ones((1, 4), np.float32)
    result = client.infer("affine_fp32", triton_inputs({"x": x}), request_id="caller-id-42")
    assert result.get_response().id == "caller-id-42"
    assert sidecar.query("SELECT request_id FROM records") == [("caller-id-42",)]


def test_sidecar_assigns_and_returns_an_id_when_the_caller_sends_none(
    sidecar: RunningSidecar, client: grpcclient.InferenceServerClient
) -> None:
    x = np.ones((2, 4), np.float32)
    first = client.infer("affine_fp32", triton_inputs({"x": x})).get_response().id
    second = client.infer("affine_fp32", triton_inputs({"x": x})).get_response().id
    assert HEX32.match(first) and HEX32.match(second)
    assert first != second
    rows = sidecar.query("SELECT request_id FROM records ORDER BY seq")
    assert rows == [(first,), (second,)]


@pytest.mark.parametrize("version", ["", "1"])
def test_empty_or_served_version_selects_the_served_model(
    client: grpcclient.InferenceServerClient, version: str
) -> None:
    x = np.ones((1, 4), np.float32)
    result = client.infer("affine_fp32", triton_inputs({"x": x}), model_version=version)
    response = result.get_response()
    assert (response.model_name, response.model_version) == ("affine_fp32", "1")


def test_model_name_setting_renames_the_served_model(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    sidecar = make_sidecar(affine_model, model_name="scorer", model_version="2024-06")
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        result = client.infer(
            "scorer", triton_inputs({"x": np.ones((1, 4), np.float32)}), model_version="2024-06"
        )
        assert client.is_model_ready("scorer", "2024-06")
    assert result.get_response().model_version == "2024-06"
    assert sidecar.query("SELECT model_name, model_version FROM records") == [("scorer", "2024-06")]


# ── the other protocol RPCs ────────────────────────────────────────────────────────────


def test_model_metadata_describes_the_onnx_graph(
    client: grpcclient.InferenceServerClient,
) -> None:
    meta = client.get_model_metadata("affine_fp32")
    assert (meta.name, list(meta.versions), meta.platform) == ("affine_fp32", ["1"], "onnx_onnxv1")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("y", "FP32", [-1, 2]),
        ("score", "FP32", [-1]),
    ]


def test_model_metadata_lists_every_datatype(
    make_sidecar: SidecarFactory, model_paths: dict[str, Path]
) -> None:
    sidecar = make_sidecar(model_paths["all_dtypes"])
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        meta = client.get_model_metadata("all_dtypes")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("f64", "FP64", [-1, 3]),
        ("i32", "INT32", [-1, 2]),
        ("i64", "INT64", [-1]),
        ("flag", "BOOL", [-1]),
    ]


def test_server_live_ready_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready("affine_fp32") is True
    assert client.is_model_ready("affine_fp32", "1") is True
    meta = client.get_server_metadata()
    assert meta.name == "mlwitness"


def test_metadata_calls_are_not_recorded(
    sidecar: RunningSidecar, client: grpcclient.InferenceServerClient
) -> None:
    client.get_model_metadata("affine_fp32")
    client.is_server_ready()
    client.infer("affine_fp32", triton_inputs({"x": np.ones((1, 4), np.float32)}))
    assert sidecar.query("SELECT count(*) FROM entries") == [(1,)]


def test_a_deadline_passing_during_the_first_model_run_is_recorded_as_such(
    make_sidecar: SidecarFactory, slow_model: SlowModel
) -> None:
    # A fresh sidecar does not know what a run costs yet. Its first run once went inline on
    # the event loop, which then saw the caller's deadline only after recording OK: the
    # ledger claimed an answer the caller never got, and every other call waited meanwhile.
    sidecar = make_sidecar(slow_model.path)
    x = np.ones((INLINE_ELEMENTS // SLOW_IO, SLOW_IO), np.float32)  # small enough for inline
    runs_for = len(x) * slow_model.seconds_per_row
    assert runs_for > 0.2, "the slow model is too fast here to outlast a deadline"
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow", [tensor], request_id="late", client_timeout=runs_for / 4)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert client.is_server_live(client_timeout=0.5)  # the model runs off the loop
    sidecar.stop()  # waits for the run to end and its record to land
    assert read_ledger(sidecar.ledger_path,
                       "SELECT status FROM records WHERE request_id = 'late'") == [
        ("DEADLINE_EXCEEDED",)
    ]
