"""Data minimisation: `--hash-inputs` / `--redact-inputs` on request parameters and on model
inputs.

The caller's answer must not change; the stored request must no longer hold the value (the
stored value is its HMAC-SHA-256 hex under the hash key, or empty); the record's `detail`
says what was minimised and, with a key, the HMAC of the exact bytes received (captured
here by sending them on a raw gRPC channel); nothing unkeyed derived from a minimised
value is stored anywhere, so trying candidates against the record finds nothing; the chain
still verifies. Replay still works when only a parameter was minimised, and must fail with
a clear status when the model needs the minimised input. Hashing without a key, or with a
short one, is refused at start-up unless asked for by name.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
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

from mlwitness import settings as settings_mod
from mlwitness.codec import encode_inputs, tensor_from_array
from mlwitness.errors import ConfigError
from mlwitness.inference.minimise import Minimiser
from mlwitness.ledger import journal
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import inference as pb

NAME = "Jane Q. Applicant"
CATEGORIES = [b"red", b"green", b"magenta"]  # none of these can occur in hex digests
KEY = bytes(range(32))  # the hash key of these tests (kept off the ledger in production)

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


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hash.key"
    path.write_bytes(KEY)
    return path


def keyed(data: bytes) -> str:
    return hmac.new(KEY, data, hashlib.sha256).hexdigest()


def stored(value: bytes, mode: str) -> str:
    """What the ledger keeps of a minimised value."""
    return keyed(value) if mode == "hash" else ""


def flags(mode: str, *names: str, key: Path) -> dict[str, Any]:
    """Hashing with the key (the only way without --hash-inputs-unkeyed); redaction
    without one (so there is no proof of the original)."""
    if mode == "hash":
        return {"hash_inputs": list(names), "hash_key": key}
    return {"redact_inputs": list(names)}


def detail_of(mode: str, name: str, payload: bytes, columns: list[str]) -> dict[str, Any]:
    """The `detail` of a minimised record: with the key, the HMAC of the bytes received;
    without it, no digest of them at all."""
    note: dict[str, Any] = {"hashed": [name] if mode == "hash" else [],
                            "redacted": [name] if mode == "redact" else [],
                            "columns": columns}
    if mode == "hash":
        return {"minimised": {**note, "keyed": True}, "received_hmac_sha256": keyed(payload)}
    return {"minimised": note}


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
        started: Start, models_dir: dict[str, Path], tmp_path: Path, key_file: Path,
        mode: str) -> None:
    plain = started(models_dir["affine"], tmp_path / "plain.duckdb", audit=False)
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb",
                     **flags(mode, "customer_name", key=key_file))
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
    assert e["detail"] == detail_of(mode, "customer_name", payload, ["customer_name"])
    assert entry(plain, "p-1")["request"] == payload  # without the flag: as received

    assert audit(served, "VerifyLedger", apb.VerifyLedgerRequest()).ok
    result = replay(served, "p-1")
    assert result.bit_identical
    assert [d.identical for d in result.outputs] == [True, True]


def test_hashed_parameter_through_tritonclient(started: Start, models_dir: dict[str, Path],
                                               tmp_path: Path, key_file: Path) -> None:
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
                     hash_inputs=["customer_name"], hash_key=key_file)
    x = np.ones((1, 4), np.float32)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    with triton(served.address) as client:
        y = client.infer("affine", [tensor], request_id="t-1",
                         parameters={"customer_name": NAME}).as_numpy("y")
    np.testing.assert_array_equal(y, x @ AFFINE_W + AFFINE_B)
    e = entry(served, "t-1")
    assert NAME.encode() not in e["request"]
    assert e["parameters"] == {"customer_name": keyed(NAME.encode())}


# ── a BYTES model input ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("raw", [True, False], ids=["raw-contents", "typed-contents"])
@pytest.mark.parametrize("mode", ["hash", "redact"])
def test_minimised_bytes_input_is_not_stored(started: Start, models_dir: dict[str, Path],
                                             tmp_path: Path, key_file: Path, mode: str,
                                             raw: bool) -> None:
    plain = started(models_dir["strings"], tmp_path / "plain.duckdb", audit=False)
    served = started(models_dir["strings"], tmp_path / "ledger.duckdb",
                     **flags(mode, "category", key=key_file))
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
    # "columns": the SQL columns the tensor becomes
    assert e["detail"] == detail_of(mode, "category", payload, ["category"])
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


def test_traffic_replay_counts_a_record_without_its_input_as_failed_and_says_why(
        started: Start, models_dir: dict[str, Path], tmp_path: Path) -> None:
    """ReplayRange reads what was minimised too: the record whose model input was redacted
    fails with the reason Replay gives, instead of running the model on what is left."""
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", redact_inputs=["x"])
    send(served, affine_request("r-3", np.full((1, 4), 7.0, np.float32)))
    channel, stub = audit_stub(served.audit_address)
    with channel:
        events = list(stub.ReplayRange(apb.ReplayRangeRequest(), timeout=60))
    summary = events[-1].summary
    assert summary.records == 1 and summary.failed == 1 and summary.identical == 0
    assert any("x were stored hashed or redacted" in f for f in summary.failures), \
        list(summary.failures)


def test_replay_without_the_bytes_input_fails_clearly(
        started: Start, models_dir: dict[str, Path], tmp_path: Path, key_file: Path) -> None:
    served = started(models_dir["strings"], tmp_path / "ledger.duckdb",
                     hash_inputs=["category"], hash_key=key_file)
    send(served, strings_request("r-2", raw=True))
    code = status_of(lambda: replay(served, "r-2"))
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


# ── refused calls are minimised too ────────────────────────────────────────────────────


def test_refused_calls_do_not_keep_the_value(started: Start, models_dir: dict[str, Path],
                                             tmp_path: Path, key_file: Path) -> None:
    access = tmp_path / "inference-access.toml"
    token = add_token(access, "app", "caller")
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
                     hash_inputs=["customer_name"], hash_key=key_file,
                     inference_access=access)
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
    for (_, request, _), _sent in zip(rows, (good, wrong_shape), strict=True):
        assert NAME.encode() not in bytes(request)
    # refused before it was read (no token): only the keyed proof of what was sent
    assert json.loads(rows[0][2]) == {"refused_calls": 1, "received_bytes": len(good),
                                      "received_hmac_sha256": keyed(good)}
    # refused after it was read: minimised, with the keyed proof of what was sent
    invalid_detail = json.loads(rows[1][2])
    assert invalid_detail["received_hmac_sha256"] == keyed(wrong_shape)
    assert "received_sha256" not in invalid_detail


def test_serve_refuses_a_name_both_hashed_and_redacted(models_dir: dict[str, Path],
                                                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both redacted and hashed: customer_name"):
        serve(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
              hash_inputs=["customer_name"], redact_inputs=["customer_name"])


@pytest.mark.parametrize("settings", [
    {"redact_inputs": ["x_1"]},
    {"hash_inputs": ["income"], "hash_inputs_unkeyed": True,
     "features": ["income", "debt", "fico", "age"]},
])
def test_serve_refuses_a_column_name_that_minimisation_would_silently_skip(
    models_dir: dict[str, Path], tmp_path: Path, settings: dict[str, Any]
) -> None:
    """Minimisation rewrites whole tensors: a --features column name matched nothing and
    the value was stored in clear. Start-up refuses it and names the tensor."""
    with pytest.raises(ConfigError, match="is a column of input tensor 'x', not a tensor"):
        serve(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False, **settings)


# ── nothing to try candidates against ─────────────────────────────────────────────────

ACCOUNT = "4000173829"
BANDS = ("18-25", "26-40", "41-60", "61+")


def account_request(account: str, band: str) -> bytes:
    """What the client sends: an account number and an age band as request parameters
    (neither reaches the model), the affine model's input, a parameter kept in clear."""
    request = pb.ModelInferRequest(model_name="affine", id="acct-1")
    request.parameters["account"].string_param = account
    request.parameters["age_band"].string_param = band
    request.parameters["channel"].string_param = "branch"
    encode_inputs(request, [tensor_from_array("x", np.ones((1, 4), np.float32))], raw=True)
    return request.SerializeToString()


def everything_kept(served: Served, request_id: str) -> tuple[str, bytes]:
    """The record as text (every column of its row) and as bytes (its request and response
    bytes and the whole journal, where records are framed before DuckDB has them)."""
    served.running.sync()
    names = [r[0] for r in served.query("SELECT column_name FROM (DESCRIBE entries)")]
    (row,) = served.query("SELECT * FROM entries WHERE request_id = ?", [request_id])
    text = json.dumps(dict(zip(names, row, strict=True)), default=repr)
    blobs = b"".join(v for v in row if isinstance(v, bytes | bytearray))
    blobs += b"".join(p.read_bytes().rstrip(b"\0")  # segments grow in zeroed MiBs
                      for p in sorted(journal.journal_dir(served.ledger_path).glob("*"))
                      if p.is_file())
    return text, blobs


def found(digest: bytes, text: str, blobs: bytes) -> bool:
    return digest.hex() in text or digest.hex().encode() in blobs or digest in blobs


@pytest.mark.parametrize("config", ["hash-and-redact", "redact-without-key",
                                    "redact-with-key"])
def test_trying_candidates_against_the_record_recovers_nothing(
        started: Start, models_dir: dict[str, Path], tmp_path: Path, key_file: Path,
        config: str) -> None:
    """The attack of the issue: everything but the minimised values is stored in clear,
    so with any unkeyed digest of the request (or of a value) one tries candidate account
    numbers × age bands until a digest matches. No such digest may be stored anywhere."""
    settings: dict[str, Any] = {
        "hash-and-redact": dict(hash_inputs=["account"], redact_inputs=["age_band"],
                                hash_key=key_file),
        "redact-without-key": dict(redact_inputs=["account", "age_band"]),
        "redact-with-key": dict(redact_inputs=["account", "age_band"], hash_key=key_file),
    }[config]
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
                     **settings)
    payload = account_request(ACCOUNT, "26-40")
    send(served, payload)
    text, blobs = everything_kept(served, "acct-1")
    assert ACCOUNT not in text and ACCOUNT.encode() not in blobs
    assert "branch" in text  # the rest is there in clear: what the attacker builds on

    base = int(ACCOUNT)
    tried = 0
    for account in (str(n) for n in range(base - 500, base + 500)):  # the true one inside
        for band in BANDS:
            for data in (account_request(account, band), account.encode(), band.encode()):
                tried += 1
                assert not found(hashlib.sha256(data).digest(), text, blobs), (account, band)
    assert tried == 1000 * 4 * 3
    detail = json.loads(served.query("SELECT detail FROM entries WHERE request_id = "
                                     "'acct-1'")[0][0])
    if config == "redact-without-key":
        assert detail == {"minimised": {"hashed": [], "redacted": ["account", "age_band"],
                                        "columns": ["account", "age_band"]}}
    else:  # the proof of the original is keyed
        assert detail["received_hmac_sha256"] == keyed(payload)
    if config == "hash-and-redact":
        assert served.query("SELECT parameters FROM entries WHERE request_id = 'acct-1'"
                            ) == [({"account": keyed(ACCOUNT.encode()), "age_band": "",
                                    "channel": "branch"},)]


def test_unkeyed_hashing_must_be_asked_for_and_keeps_no_proof(
        started: Start, models_dir: dict[str, Path], tmp_path: Path) -> None:
    """--hash-inputs-unkeyed: plain SHA-256 per value (documented as weak), and still no
    digest of the whole request."""
    served = started(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False,
                     hash_inputs=["account"], hash_inputs_unkeyed=True)
    payload = account_request(ACCOUNT, "26-40")
    send(served, payload)
    e = entry(served, "acct-1")
    assert e["parameters"]["account"] == hashlib.sha256(ACCOUNT.encode()).hexdigest()
    assert e["detail"] == {"minimised": {"hashed": ["account"], "redacted": [],
                                         "columns": ["account"]}}
    text, blobs = everything_kept(served, "acct-1")
    assert not found(hashlib.sha256(payload).digest(), text, blobs)


@pytest.mark.parametrize("settings, words", [
    ({"hash_inputs": ["account"]}, "--hash-inputs needs --hash-key"),
    ({"hash_inputs": ["account"], "hash_key": b"fifteen bytes.."}, "holds 15 bytes"),
    ({"redact_inputs": ["account"], "hash_key": b""}, "holds 0 bytes"),
    ({"hash_inputs": ["account"], "hash_key": KEY, "hash_inputs_unkeyed": True},
     "not both"),
])
def test_start_up_refuses_unkeyed_or_weakly_keyed_hashing(
        models_dir: dict[str, Path], tmp_path: Path, settings: dict[str, Any],
        words: str) -> None:
    if "hash_key" in settings:
        path = tmp_path / "hash.key"
        path.write_bytes(settings["hash_key"])
        settings = {**settings, "hash_key": path}
    with pytest.raises(ConfigError, match=words):
        serve(models_dir["affine"], tmp_path / "ledger.duckdb", audit=False, **settings)
    assert not (tmp_path / "ledger.duckdb").exists()  # refused before anything was opened


def test_the_minimiser_itself_refuses_a_missing_or_short_key() -> None:
    with pytest.raises(ConfigError, match="needs --hash-key"):
        Minimiser([], ["account"])
    with pytest.raises(ConfigError, match="at least 16"):
        Minimiser(["age_band"], [], key=b"short")
    assert Minimiser([], ["account"], unkeyed=True).proof(b"request") == {}
    assert Minimiser(["age_band"], []).proof(b"request") == {}
    assert Minimiser(["age_band"], [], key=KEY).proof(b"request") == {
        "received_hmac_sha256": keyed(b"request")}


def test_the_unkeyed_switch_comes_from_a_flag_or_the_environment() -> None:
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    given = settings_mod.build(parser.parse_args(["--hash-inputs", "account",
                                                  "--hash-inputs-unkeyed"]), env={})
    assert given.hash_inputs_unkeyed and given.hash_inputs == ["account"]
    assert settings_mod.build(parser.parse_args([]), env={
        "MLWITNESS_HASH_INPUTS_UNKEYED": "true"}).hash_inputs_unkeyed
    assert not settings_mod.build(parser.parse_args([]), env={}).hash_inputs_unkeyed
