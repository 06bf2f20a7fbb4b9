"""Data minimisation: `--hash-inputs` / `--redact-inputs` on request parameters and on model
inputs.

The caller's answer must not change; the stored request must no longer hold the value (the
stored value is its SHA-256 hex, or empty); the record's `detail` says what was minimised
and the SHA-256 of the exact bytes received (captured here by sending them on a raw gRPC
channel); the chain still verifies. Replay still works when only a parameter was minimised,
and must fail with a clear status when the model needs the minimised input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from models import AFFINE_B, AFFINE_W
from security_support import (
    Served,
    add_token,
    audit_stub,
    bearer,
    serve,
    sidecars,
    status_of,
    triton,
)
from sidecar import raw_rpc

from mlwitness.codec import encode_inputs, tensor_from_array
from mlwitness.errors import ConfigError
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.wire import inference as pb

NAME = "Jane Q. Applicant"
CATEGORIES = [b"red", b"green", b"magenta"]  # none of these can occur in hex digests

Start = Callable[..., Served]


@pytest.fixture
def started() -> Iterator[Start]:
    with sidecars() as start:
        yield start


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, model_paths: dict[str, Path]
               ) -> dict[str, Path]:
    """affine.onnx (served as `affine`) and strings.onnx (served as `strings`)."""
    root = tmp_path_factory.mktemp("minimise-models")
    out = {}
    for name, key in (("affine", "affine_fp32"), ("strings", "strings")):
        out[name] = root / f"{name}.onnx"
        out[name].write_bytes(model_paths[key].read_bytes())
    return out


def stored(value: bytes, mode: str) -> str:
    """What the ledger keeps of a minimised value."""
    return hashlib.sha256(value).hexdigest() if mode == "hash" else ""


def flags(mode: str, *names: str) -> dict[str, list[str]]:
    return {"hash_inputs" if mode == "hash" else "redact_inputs": list(names)}


def affine_request(request_id: str, x: np.ndarray, name: str = NAME) -> bytes:
    request = pb.ModelInferRequest(model_name="affine", id=request_id)
    request.parameters["customer_name"].string_param = name
    request.parameters["channel"].string_param = "branch"  # not minimised
    encode_inputs(request, [tensor_from_array("x", x)], raw=True)
    return request.SerializeToString()


def strings_request(request_id: str, raw: bool) -> bytes:
    request = pb.ModelInferRequest(model_name="strings", id=request_id)
    encode_inputs(request, [tensor_from_array("category", np.array(CATEGORIES, object))],
                  raw=raw)
    return request.SerializeToString()


def send(served: Served, payload: bytes, metadata: Any = None) -> bytes:
    with grpc.insecure_channel(served.address) as channel:
        return raw_rpc(channel, "ModelInfer", payload, metadata=metadata)


def entry(served: Served, request_id: str) -> dict[str, Any]:
    names = ("request", "detail", "status", "inputs", "inputs_text", "parameters", "seq")
    row = served.query(f"SELECT {', '.join(names)} FROM entries WHERE request_id = ?",
                       [request_id])
    assert len(row) == 1, row
    out = dict(zip(names, row[0], strict=True))
    out["request"] = bytes(out["request"])
    out["detail"] = json.loads(out["detail"]) if out["detail"] else {}
    return out


def audit(served: Served, method: str, request: Any) -> Any:
    channel, stub = audit_stub(served.audit_address)
    with channel:
        return getattr(stub, method)(request, timeout=30)


def replay(served: Served, request_id: str) -> apb.ReplayResponse:
    return audit(served, "Replay", apb.ReplayRequest(ref=apb.RecordRef(request_id=request_id)))


# ── a request parameter ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("mode", ["hash", "redact"])
def test_minimised_parameter_leaves_answer_and_replay_intact(
        started: Start, models_dir: dict[str, Path], tmp_path: Path, mode: str) -> None:
    plain = started(models_dir["affine"], tmp_path / "plain.duckdb", audit=False)
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb",
                     **flags(mode, "customer_name"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    payload = affine_request("p-1", x)
    answer = send(served, payload)
    assert answer == send(plain, payload)  # the caller gets exactly the same bytes
    outputs = pb.ModelInferResponse.FromString(answer)
    np.testing.assert_array_equal(
        np.frombuffer(outputs.raw_output_contents[0], np.float32).reshape(2, 2),
        x @ AFFINE_W + AFFINE_B)

    e = entry(served, "p-1")
    assert NAME.encode() not in e["request"]
    kept = pb.ModelInferRequest.FromString(e["request"])
    assert kept.parameters["customer_name"].string_param == stored(NAME.encode(), mode)
    assert kept.parameters["channel"].string_param == "branch"
    assert kept.raw_input_contents[0] == x.tobytes()  # the model's input is untouched
    assert e["parameters"] == {"customer_name": stored(NAME.encode(), mode),
                               "channel": "branch"}
    assert e["detail"] == {
        "minimised": {"hashed": ["customer_name"] if mode == "hash" else [],
                      "redacted": ["customer_name"] if mode == "redact" else [],
                      "columns": ["customer_name"]},
        "received_sha256": hashlib.sha256(payload).hexdigest()}
    assert entry(plain, "p-1")["request"] == payload  # without the flag: as received

    assert audit(served, "VerifyLedger", apb.VerifyLedgerRequest()).ok
    result = replay(served, "p-1")
    assert result.bit_identical
    assert [d.identical for d in result.outputs] == [True, True]


def test_hashed_parameter_through_tritonclient(started: Start, models_dir: dict[str, Path],
                                               tmp_path: Path) -> None:
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
                     hash_inputs=["customer_name"])
    x = np.ones((1, 4), np.float32)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    with triton(served.address) as client:
        y = client.infer("affine", [tensor], request_id="t-1",
                         parameters={"customer_name": NAME}).as_numpy("y")
    np.testing.assert_array_equal(y, x @ AFFINE_W + AFFINE_B)
    e = entry(served, "t-1")
    assert NAME.encode() not in e["request"]
    assert e["parameters"] == {"customer_name": hashlib.sha256(NAME.encode()).hexdigest()}


# ── a BYTES model input ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("raw", [True, False], ids=["raw-contents", "typed-contents"])
@pytest.mark.parametrize("mode", ["hash", "redact"])
def test_minimised_bytes_input_is_not_stored(started: Start, models_dir: dict[str, Path],
                                             tmp_path: Path, mode: str, raw: bool) -> None:
    plain = started(models_dir["strings"], tmp_path / "plain.duckdb", audit=False)
    served = started(models_dir["strings"], tmp_path / "ledger.duckdb",
                     **flags(mode, "category"))
    payload = strings_request("s-1", raw)
    answer = send(served, payload)
    assert answer == send(plain, payload)
    outputs = {t.name: i for i, t in enumerate(pb.ModelInferResponse.FromString(answer).outputs)}
    assert set(outputs) == {"code", "echo"}

    e = entry(served, "s-1")
    for value in CATEGORIES:
        assert value not in e["request"]
    kept = pb.ModelInferRequest.FromString(e["request"])
    assert [(t.name, t.datatype, list(t.shape)) for t in kept.inputs] == [
        ("category", "BYTES", [3])]
    assert bool(kept.raw_input_contents) == raw  # re-encoded the way it came
    assert e["inputs_text"] == [{"category": stored(v, mode)} for v in CATEGORIES]
    assert e["detail"] == {
        "minimised": {"hashed": ["category"] if mode == "hash" else [],
                      "redacted": ["category"] if mode == "redact" else [],
                      "columns": ["category"]},  # the SQL columns the tensor becomes
        "received_sha256": hashlib.sha256(payload).hexdigest()}
    assert audit(served, "VerifyLedger", apb.VerifyLedgerRequest()).ok


# ── replay of a record whose minimised input the model uses ───────────────────────────


def test_replay_without_the_numeric_input_is_a_failed_precondition(
        started: Start, models_dir: dict[str, Path], tmp_path: Path) -> None:
    """A redacted FP32 input is stored as empty BYTES of the same shape: replay refuses
    with FAILED_PRECONDITION naming the minimised input, before running the model."""
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", redact_inputs=["x"])
    x = np.full((1, 4), 7.0, np.float32)
    send(served, affine_request("r-1", x))
    e = entry(served, "r-1")
    assert x.tobytes() not in e["request"]
    assert e["inputs"] == [{}]  # no numeric column left
    assert e["inputs_text"] == [{f"x_{i}": "" for i in range(4)}]
    code = status_of(lambda: replay(served, "r-1"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    ((status, message),) = served.query("SELECT status, message FROM audit_log "
                                        "WHERE detail->>'rpc' = 'Replay'")
    assert status == "FAILED_PRECONDITION" and "x were stored hashed or redacted" in message


def test_replay_without_the_bytes_input_fails_clearly(
        started: Start, models_dir: dict[str, Path], tmp_path: Path) -> None:
    served = started(models_dir["strings"], tmp_path / "ledger.duckdb",
                     hash_inputs=["category"])
    send(served, strings_request("r-2", raw=True))
    code = status_of(lambda: replay(served, "r-2"))
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


# ── refused calls are minimised too ────────────────────────────────────────────────────


def test_refused_calls_do_not_keep_the_value(started: Start, models_dir: dict[str, Path],
                                             tmp_path: Path) -> None:
    access = tmp_path / "inference-access.toml"
    token = add_token(access, "app", "caller")
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
                     hash_inputs=["customer_name"], inference_access=access)
    good = affine_request("q-1", np.ones((1, 4), np.float32))
    wrong_shape = affine_request("q-2", np.ones((1, 5), np.float32))
    with grpc.insecure_channel(served.address) as channel:
        unauthenticated = status_of(lambda: raw_rpc(channel, "ModelInfer", good))
        invalid = status_of(lambda: raw_rpc(channel, "ModelInfer", wrong_shape,
                                            metadata=bearer(token)))
    assert unauthenticated == grpc.StatusCode.UNAUTHENTICATED
    assert invalid == grpc.StatusCode.INVALID_ARGUMENT
    rows = served.query("SELECT status, request, detail FROM entries WHERE kind = 'infer' "
                        "ORDER BY seq")
    assert [r[0] for r in rows] == ["UNAUTHENTICATED", "INVALID_ARGUMENT"]
    for (_, request, detail), sent in zip(rows, (good, wrong_shape), strict=True):
        assert NAME.encode() not in bytes(request)
        assert json.loads(detail)["received_sha256"] == hashlib.sha256(sent).hexdigest()


def test_serve_refuses_a_name_both_hashed_and_redacted(models_dir: dict[str, Path],
                                                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both redacted and hashed: customer_name"):
        serve(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
              hash_inputs=["customer_name"], redact_inputs=["customer_name"])


@pytest.mark.parametrize("settings", [
    {"redact_inputs": ["x_1"]},
    {"hash_inputs": ["income"], "features": ["income", "debt", "fico", "age"]},
])
def test_serve_refuses_a_column_name_that_minimisation_would_silently_skip(
    models_dir: dict[str, Path], tmp_path: Path, settings: dict[str, Any]
) -> None:
    """Minimisation rewrites whole tensors: a --features column name matched nothing and
    the value was stored in clear. Start-up refuses it and names the tensor."""
    with pytest.raises(ConfigError, match="is a column of input tensor 'x', not a tensor"):
        serve(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False, **settings)
