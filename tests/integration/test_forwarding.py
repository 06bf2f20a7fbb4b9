"""Forwarding mode in front of Seldon MLServer, a v2 server nobody here wrote.

The caller must notice no difference from calling MLServer directly, except the ledger:
same outputs, same bytes, same error codes and messages; an unreachable upstream is
UNAVAILABLE quickly; the caller's deadline travels upstream; a replaced model file is
pinned by its new hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from conftest import SidecarFactory, SlowModel
from sidecar import RunningSidecar, closed_port, raw_rpc, read_ledger
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException
from upstream_server import UpstreamServer, run_mlserver, upstream_venv

from mlwitness.ledger.verify import verify

pytestmark = pytest.mark.skipif(
    upstream_venv() is None,
    reason="MLServer venv (.venv-upstream) not set up: run scripts/setup_upstream_venv.sh",
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")
MODEL = "affine_fp32"


@pytest.fixture(scope="module")
def mlserver(
    tmp_path_factory: pytest.TempPathFactory, affine_model: Path
) -> Iterator[UpstreamServer]:
    root = tmp_path_factory.mktemp("mlserver")
    with run_mlserver(affine_model, MODEL, root / "server") as server:
        yield server


@pytest.fixture(scope="module")
def slow_mlserver(
    tmp_path_factory: pytest.TempPathFactory, slow_model: SlowModel
) -> Iterator[UpstreamServer]:
    root = tmp_path_factory.mktemp("mlserver-slow")
    with run_mlserver(slow_model.path, "slow", root / "server") as server:
        yield server


@pytest.fixture
def front(
    make_sidecar: SidecarFactory, mlserver: UpstreamServer, affine_model: Path
) -> RunningSidecar:
    """The sidecar forwarding to MLServer, pinning the file MLServer serves."""
    return make_sidecar(affine_model, upstream=mlserver.grpc_address)


def triton_input(x: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def raw_request(x: np.ndarray, request_id: str = "", model: str = MODEL) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def call(address: str, payload: bytes, timeout: float = 10.0) -> bytes:
    with grpc.insecure_channel(address) as channel:
        return raw_rpc(channel, "ModelInfer", payload, timeout=timeout)


def error_of(address: str, payload: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(address, payload)
    return info.value


def sample(batch: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, 4)) * 1000).astype(np.float32)


def wait_for_rows(sidecar: RunningSidecar, sql: str, within_s: float = 3.0) -> list[tuple]:
    """The caller may hear DEADLINE_EXCEEDED from its own gRPC before the sidecar has
    recorded the call: poll (bounded) until the record is there."""
    for _ in range(int(within_s / 0.05)):
        rows = sidecar.query(sql)
        if rows:
            return rows
        time.sleep(0.05)
    return sidecar.query(sql)


# ── answers ────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("batch", [1, 64, 2000])
def test_forwarded_outputs_equal_the_upstream_called_directly(
    front: RunningSidecar, mlserver: UpstreamServer, affine_model: Path, batch: int
) -> None:
    x = sample(batch, seed=batch)
    results = {}
    for name, address in (("front", front.address), ("direct", mlserver.grpc_address)):
        with grpcclient.InferenceServerClient(address) as client:
            results[name] = client.infer(MODEL, triton_input(x), request_id=f"fw-{batch}")
    session = ort.InferenceSession(str(affine_model), providers=["CPUExecutionProvider"])
    y, score = session.run(["y", "score"], {"x": x})
    for output, want in (("y", y), ("score", score)):
        got = results["front"].as_numpy(output)
        np.testing.assert_array_equal(got, results["direct"].as_numpy(output))
        assert got.tobytes() == results["direct"].as_numpy(output).tobytes()
        assert got.tobytes() == want.tobytes()
    assert results["front"].get_response().id == f"fw-{batch}"


@pytest.mark.parametrize("typed", [False, True])
def test_forwarded_response_bytes_are_the_upstreams_bytes(
    front: RunningSidecar, mlserver: UpstreamServer, typed: bool
) -> None:
    x = sample(8, seed=3)
    request = service_pb2.ModelInferRequest(model_name=MODEL, id=f"same-bytes-{typed}")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    if typed:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        request.raw_input_contents.append(x.tobytes())
    payload = request.SerializeToString()

    via_front = call(front.address, payload)
    direct = call(mlserver.grpc_address, payload)

    assert via_front == direct
    response = service_pb2.ModelInferResponse.FromString(via_front)
    assert (len(response.raw_output_contents) == 0) == typed  # answered the way asked
    rows = front.query(
        "SELECT request, response, status FROM entries WHERE request_id = ?",
        [f"same-bytes-{typed}"],
    )
    assert [(bytes(a), bytes(b), s) for a, b, s in rows] == [(payload, via_front, "OK")]


def test_forwarding_assigns_an_id_when_the_caller_sends_none(
    front: RunningSidecar, mlserver: UpstreamServer
) -> None:
    payload = raw_request(sample(2))
    via_front = service_pb2.ModelInferResponse.FromString(call(front.address, payload))
    direct = service_pb2.ModelInferResponse.FromString(call(mlserver.grpc_address, payload))
    assert HEX32.match(via_front.id)
    assert front.query("SELECT request_id FROM records") == [(via_front.id,)]
    via_front.id = direct.id = ""  # apart from the id, the upstream's answer unchanged
    assert via_front == direct


def test_forwarded_model_metadata_is_the_upstreams(
    front: RunningSidecar, mlserver: UpstreamServer
) -> None:
    answers = []
    for address in (front.address, mlserver.grpc_address):
        with grpcclient.InferenceServerClient(address) as client:
            answers.append(client.get_model_metadata(MODEL))
    assert answers[0] == answers[1]
    assert [(t.name, t.datatype, list(t.shape)) for t in answers[0].inputs] == [
        ("x", "FP32", [-1, 4])
    ]


def test_forwarded_calls_are_recorded_with_decoded_inputs_and_outputs(
    front: RunningSidecar, affine_model: Path
) -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, -1.0, 8.0]], np.float32)
    call(front.address, raw_request(x, "fw-decoded"))
    rows = front.query(
        "SELECT status, batch_size, inputs[2]['x_3'], outputs[1]['score'] FROM records "
        "WHERE request_id = 'fw-decoded'"
    )
    session = ort.InferenceSession(str(affine_model), providers=["CPUExecutionProvider"])
    (score,) = session.run(["score"], {"x": x})
    assert rows == [("OK", 2, 8.0, float(score[0]))]


# ── upstream errors ────────────────────────────────────────────────────────────────────

X1 = np.ones((1, 4), np.float32)


def _with(build: Callable[[service_pb2.ModelInferRequest], None]) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    build(request)
    return request.SerializeToString()


def _raw(name: str, datatype: str, shape: list[int], data: bytes):
    def build(request: service_pb2.ModelInferRequest) -> None:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)

    return build


def _unknown_output(request: service_pb2.ModelInferRequest) -> None:
    _raw("x", "FP32", [1, 4], X1.tobytes())(request)
    request.outputs.add(name="nope")


# MLServer's own refusals (see tests/integration/test_upstream_server.py), forwarded untouched.
UPSTREAM_ERRORS = {
    "wrong_input_name": _with(_raw("z", "FP32", [1, 4], X1.tobytes())),
    "wrong_datatype": _with(_raw("x", "FP64", [1, 4], X1.astype(np.float64).tobytes())),
    "wrong_shape": _with(_raw("x", "FP32", [2, 3], np.ones(6, np.float32).tobytes())),
    "unknown_requested_output": _with(_unknown_output),
    # Undecodable for mlwitness too: forwarded anyway, the upstream judges (INTERNAL here).
    "raw_shorter_than_shape": _with(_raw("x", "FP32", [2, 4], X1.tobytes())),
}


@pytest.mark.parametrize("case", list(UPSTREAM_ERRORS))
def test_upstream_errors_come_back_unchanged_and_are_recorded(
    front: RunningSidecar, mlserver: UpstreamServer, case: str
) -> None:
    request = service_pb2.ModelInferRequest.FromString(UPSTREAM_ERRORS[case])
    request.id = f"upstream-error-{case}"
    payload = request.SerializeToString()

    direct = error_of(mlserver.grpc_address, payload)
    via_front = error_of(front.address, payload)

    assert direct.code() != grpc.StatusCode.OK
    assert (via_front.code(), via_front.details()) == (direct.code(), direct.details())
    rows = front.query(
        "SELECT status, message, request FROM entries WHERE request_id = ?", [request.id]
    )
    assert [(s, m, bytes(r)) for s, m, r in rows] == [
        (direct.code().name, direct.details(), payload)
    ]


def test_unknown_model_is_refused_by_the_sidecar_before_forwarding(
    front: RunningSidecar,
) -> None:
    error = error_of(front.address, raw_request(X1, "fw-unknown", model="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nope'" in error.details()
    assert front.query("SELECT status FROM records WHERE request_id = 'fw-unknown'") == [
        ("NOT_FOUND",)
    ]


# ── unreachable and slow upstreams ─────────────────────────────────────────────────────


def test_unreachable_upstream_is_unavailable_quickly_and_recorded(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    sidecar = make_sidecar(affine_model, upstream=f"127.0.0.1:{closed_port()}")
    for i in range(2):  # first call and a later one (channel in backoff): both fast
        started = time.monotonic()
        with (
            grpcclient.InferenceServerClient(sidecar.address) as client,
            pytest.raises(InferenceServerException) as info,
        ):
            client.infer(MODEL, triton_input(X1), request_id=f"down-{i}", client_timeout=10)
        assert time.monotonic() - started < 2
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    rows = sidecar.query("SELECT request_id, status FROM records ORDER BY seq")
    assert rows == [("down-0", "UNAVAILABLE"), ("down-1", "UNAVAILABLE")]


def test_callers_deadline_is_propagated_to_the_upstream(
    make_sidecar: SidecarFactory, slow_mlserver: UpstreamServer, slow_model: SlowModel
) -> None:
    sidecar = make_sidecar(slow_model.path, upstream=slow_mlserver.grpc_address)
    x = slow_model.input(seconds=2.0)
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow", triton_input(x), request_id="deadline", client_timeout=0.5)
        assert time.monotonic() - started < 2
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # The sidecar gave up when the caller did, not when the upstream finished (≥ 1 s):
    # the record says so, with a latency near the caller's 0.5 s.
    rows = wait_for_rows(
        sidecar, "SELECT status, latency_us FROM records WHERE request_id = 'deadline'"
    )
    assert len(rows) == 1
    status, latency_us = rows[0]
    assert status == "DEADLINE_EXCEEDED"
    assert 0.3e6 < latency_us < 1.5e6


def test_upstream_timeout_applies_when_the_caller_sets_no_deadline(
    make_sidecar: SidecarFactory, slow_mlserver: UpstreamServer, slow_model: SlowModel
) -> None:
    sidecar = make_sidecar(
        slow_model.path, upstream=slow_mlserver.grpc_address, upstream_timeout=0.5
    )
    payload = service_pb2.ModelInferRequest(model_name="slow", id="no-deadline")
    x = slow_model.input(seconds=2.0)
    payload.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    payload.raw_input_contents.append(x.tobytes())
    started = time.monotonic()
    with grpc.insecure_channel(sidecar.address) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            payload.SerializeToString()
        )  # no timeout at all
    assert time.monotonic() - started < 2
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_rows(
        sidecar, "SELECT status FROM records WHERE request_id = 'no-deadline'"
    ) == [("DEADLINE_EXCEEDED",)]


# ── the model file changes while serving ───────────────────────────────────────────────


@pytest.mark.parametrize("how", ["rename_over", "overwrite_in_place"])
def test_replaced_model_file_is_pinned_by_its_new_hash(
    make_sidecar: SidecarFactory,
    mlserver: UpstreamServer,
    model_paths: dict[str, Path],
    tmp_path: Path,
    how: str,
) -> None:
    served = tmp_path / "served.onnx"  # the shared-volume file the upstream serves
    shutil.copyfile(model_paths[MODEL], served)
    old_bytes = served.read_bytes()
    new_bytes = model_paths["all_dtypes"].read_bytes()  # a new version lands on the volume
    sidecar = make_sidecar(
        served, model_name=MODEL, upstream=mlserver.grpc_address, model_poll_interval=0.2
    )
    call(sidecar.address, raw_request(X1, "before"))

    if how == "rename_over":
        staged = tmp_path / "staged.onnx"
        staged.write_bytes(new_bytes)
        os.replace(staged, served)
    else:
        served.write_bytes(new_bytes)

    new_sha = __import__("hashlib").sha256(new_bytes).hexdigest()
    seen = False
    for i in range(200):  # ≤ 10 s; with a 0.2 s poll it takes two polls on a quiet machine
        call(sidecar.address, raw_request(X1, f"after-{i}"))
        (sha,) = sidecar.query("SELECT model_sha256 FROM records ORDER BY seq DESC LIMIT 1")[0]
        if sha == new_sha:
            seen = True
            break
        time.sleep(0.05)
    assert seen, "the new model hash never appeared on records"

    call(sidecar.address, raw_request(X1, "later"))
    rows = sidecar.query("SELECT request_id, model_sha256 FROM records ORDER BY seq")
    old_sha = __import__("hashlib").sha256(old_bytes).hexdigest()
    assert rows[0] == ("before", old_sha)
    switched = [i for i, (_, sha) in enumerate(rows) if sha == new_sha][0]
    assert all(sha == old_sha for _, sha in rows[:switched])
    assert all(sha == new_sha for _, sha in rows[switched:])  # never back
    stored = dict(
        (sha, bytes(onnx)) for sha, onnx in sidecar.query("SELECT sha256, onnx FROM models")
    )
    assert stored == {old_sha: old_bytes, new_sha: new_bytes}



def test_a_model_file_caught_half_copied_is_not_pinned(
    make_sidecar: SidecarFactory, mlserver: UpstreamServer, model_paths: dict[str, Path],
    tmp_path: Path,
) -> None:
    """`cp` stalled half-way: the bytes are not a whole ONNX model, so records keep the
    old hash (and the store never holds the fragment) until the copy is complete."""
    served = tmp_path / "served.onnx"
    shutil.copyfile(model_paths[MODEL], served)
    old_sha = hashlib.sha256(served.read_bytes()).hexdigest()
    new_bytes = model_paths["all_dtypes"].read_bytes()
    sidecar = make_sidecar(served, model_name=MODEL, upstream=mlserver.grpc_address,
                           model_poll_interval=0.2)
    for stage, data in (("empty", b""), ("half", new_bytes[: len(new_bytes) // 2])):
        served.write_bytes(data)  # cp truncates first, then writes
        for i in range(10):  # 1 s: five poll intervals
            call(sidecar.address, raw_request(X1, f"{stage}-{i}"))
            time.sleep(0.1)
    assert {sha for (sha,) in sidecar.query("SELECT model_sha256 FROM records")} == {old_sha}
    served.write_bytes(new_bytes)
    new_sha = hashlib.sha256(new_bytes).hexdigest()
    for i in range(40):  # ≤ 4 s
        call(sidecar.address, raw_request(X1, f"whole-{i}"))
        if sidecar.query("SELECT model_sha256 FROM records ORDER BY seq DESC LIMIT 1")[0][0] \
                == new_sha:
            break
        time.sleep(0.1)
    stored = {sha for (sha,) in sidecar.query("SELECT sha256 FROM models")}
    assert stored == {old_sha, new_sha}

# ── guards in front of an upstream ─────────────────────────────────────────────────────


def _fp32_in_fp64_contents(request_id: str, x0: float) -> bytes:
    """FP32 values sent in `contents.fp64_contents`: mlwitness cannot decode them (the
    protocol puts FP32 in fp32_contents), while MLServer takes the first field that is set."""
    request = service_pb2.ModelInferRequest(model_name=MODEL, id=request_id)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp64_contents.extend([x0, 0.0, 0.0, 0.0])
    return request.SerializeToString()


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_inputs_the_guards_cannot_read_are_refused_in_enforce_and_marked_in_observe(
    make_sidecar: SidecarFactory, mlserver: UpstreamServer, affine_model: Path,
    tmp_path: Path, mode: str,
) -> None:
    guards = tmp_path / "guards.toml"
    guards.write_text("version = 1\n[features.x_0]\nmin = 0.0\n")
    front = make_sidecar(affine_model, upstream=mlserver.grpc_address, guards=guards,
                         guard_mode=mode)
    payload = _fp32_in_fp64_contents("sneaky", -1000.0)
    assert call(mlserver.grpc_address, payload)  # the upstream itself would answer it
    if mode == "enforce":
        err = error_of(front.address, payload)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "refused by guards: the inputs could not be decoded" in err.details()
        assert "fp64_contents" in err.details() or "FP32" in err.details(), err.details()
    else:
        assert service_pb2.ModelInferResponse.FromString(call(front.address, payload)).outputs
    ((status, violations),) = wait_for_rows(
        front, "SELECT status, violations FROM entries WHERE request_id = 'sneaky'")
    verdict = json.loads(violations)
    assert status == ("INVALID_ARGUMENT" if mode == "enforce" else "OK")
    assert verdict["unchecked"] and verdict.get("refused", False) == (mode == "enforce")


def test_an_output_guard_refusal_keeps_the_upstreams_answer_as_withheld(
    make_sidecar: SidecarFactory, mlserver: UpstreamServer, affine_model: Path,
    tmp_path: Path,
) -> None:
    """The upstream answered; the guard refused the answer. The record sends nothing and
    stores no response, but keeps the upstream's bytes as withheld: its decoded outputs are
    read from them, so verify covers them."""
    guards = tmp_path / "guards.toml"
    guards.write_text("version = 1\n[outputs.score]\nmax = -1e30\n")  # every answer breaks it
    front = make_sidecar(affine_model, upstream=mlserver.grpc_address, guards=guards,
                         guard_mode="enforce")
    payload = raw_request(sample(3), "refused-answer")
    direct = call(mlserver.grpc_address, payload)
    assert error_of(front.address, payload).code() == grpc.StatusCode.INVALID_ARGUMENT
    front.stop()
    ((response, detail, outputs),) = read_ledger(
        front.ledger_path, "SELECT response, detail, outputs FROM entries "
        "WHERE request_id = 'refused-answer'")
    assert bytes(response) == b""
    assert base64.b64decode(json.loads(detail)["withheld_response"]) == direct
    answer = service_pb2.ModelInferResponse.FromString(direct)
    score = np.frombuffer(answer.raw_output_contents[1], np.float32)
    assert [row["score"] for row in outputs] == score.tolist()
    report = verify(front.ledger_path)
    assert report.ok and report.not_covered == [], (report.problems, report.not_covered)


def test_a_minimised_request_the_sidecar_cannot_decode_keeps_its_parameters(
    make_sidecar: SidecarFactory, mlserver: UpstreamServer, affine_model: Path,
    tmp_path: Path,
) -> None:
    """The upstream answers a request mlwitness cannot decode; its input is to be hashed,
    so no value can be picked out of it: the record keeps the request without inputs, its
    parameters minimised, and verify covers every decoded column."""
    key = tmp_path / "hash.key"
    key.write_bytes(b"k" * 32)
    front = make_sidecar(affine_model, upstream=mlserver.grpc_address,
                         hash_inputs=["x", "customer"], hash_key=key)
    request = service_pb2.ModelInferRequest.FromString(
        _fp32_in_fp64_contents("no-inputs", 3.0))
    request.parameters["customer"].string_param = "Jane Q. Applicant"
    request.parameters["channel"].string_param = "web"
    assert service_pb2.ModelInferResponse.FromString(
        call(front.address, request.SerializeToString())).outputs
    front.stop()
    ((stored, detail, parameters, outputs),) = read_ledger(
        front.ledger_path, "SELECT request, detail, parameters, outputs FROM entries "
        "WHERE request_id = 'no-inputs'")
    kept = service_pb2.ModelInferRequest.FromString(bytes(stored))
    assert (len(kept.inputs), kept.parameters["channel"].string_param) == (0, "web")
    assert b"Jane" not in bytes(stored)
    assert parameters == {"channel": "web",
                          "customer": kept.parameters["customer"].string_param}
    assert json.loads(detail)["minimised"] == "inputs dropped: undecodable"
    assert len(outputs) == 1  # the upstream's answer, as sent
    report = verify(front.ledger_path)
    assert report.ok and report.not_covered == [], (report.problems, report.not_covered)
