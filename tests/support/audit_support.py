"""Fixtures and helpers for the audit-service tests (tests/test_audit_*.py).

Real things only: the demo credit model trained by examples/credit/build_model.py (v1, and
the v2 candidate whose decisions differ on a few % of rows),
`mlwitness.server.sidecar.Sidecar` on 127.0.0.1 with its ledger under a tmp dir,
tritonclient as the inference caller, the generated audit stub (or the `mlwitness`
command) as the auditor, and onnxruntime called directly for the expected answers.

`recorded_ledger(tmp_path_factory)` records known traffic once per session into a ledger
that is then closed; tests work on copies of it (`AuditLedger.copy`, `sidecar_on_copy`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from sidecar import (
    Served,
    mlwitness_command,
    raw_rpc,
    start_with_audit_port,
)
from tritonclient.utils import np_to_triton_dtype

from mlwitness.codec import decode_outputs, encode_inputs, tensor_from_array
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import audit_pb2_grpc
from mlwitness.protocol import inference as pb

REPO = Path(__file__).resolve().parents[2]
CREDIT_BUILDER = REPO / "examples" / "credit" / "build_model.py"
START_TIMEOUT_S = 30.0


# ── models ─────────────────────────────────────────────────────────────────────────────


@cache
def credit_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_credit_builder", CREDIT_BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CreditModels:
    """credit.onnx (v1, logistic regression) and credit_v2.onnx (gradient boosting): one
    input `input` FP32 [N, 6], outputs `label` INT64 [N] and `probabilities` FP32 [N, 2]."""

    v1: Path
    v2: Path
    features: tuple[str, ...]

    @property
    def sha_v1(self) -> str:
        return sha256_file(self.v1)

    @property
    def sha_v2(self) -> str:
        return sha256_file(self.v2)

    def rows(self, n: int, seed: int) -> np.ndarray:
        builder = credit_builder()
        return builder.feature_matrix(builder.make_dataset(n, seed))


def build_credit_models(out_dir: Path) -> CreditModels:
    builder = credit_builder()
    v1 = builder.train_and_export(out_dir, n_rows=2000, seed=7).model
    v2 = builder.train_and_export(out_dir, n_rows=2000, seed=7, variant="v2").model
    return CreditModels(v1, v2, tuple(builder.FEATURES))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@cache
def _session(onnx: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the sidecar and the audit service run it
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def ort_run(model: Path | bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model run directly by onnxruntime: the expected answer."""
    onnx = model if isinstance(model, bytes) else Path(model).read_bytes()
    session = _session(onnx)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def credit_run(model: Path | bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    return ort_run(model, {"input": np.ascontiguousarray(x, dtype=np.float32)})


# ── audit API values ───────────────────────────────────────────────────────────────────


def values(row: apb.Row) -> dict[str, Any]:
    """A Row as {name: float or str}."""
    return {v.name: (v.text if v.WhichOneof("kind") == "text" else v.number) for v in row.values}


def credit_row(x_row: np.ndarray, features: tuple[str, ...]) -> dict[str, float]:
    """What the audit API shows for one input row: float32 values widened to float."""
    return {name: float(v) for name, v in zip(features, x_row.astype(np.float32), strict=True)}


def credit_output_rows(outputs: dict[str, np.ndarray]) -> list[dict[str, float]]:
    label, probs = outputs["label"], outputs["probabilities"]
    return [{"label": float(label[i]), "probabilities_0": float(probs[i, 0]),
             "probabilities_1": float(probs[i, 1])} for i in range(len(label))]


def rpc_error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    """The RpcError a unary call raises (fails the test when it does not)."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30, **kwargs)
    return info.value


def ref(request_id: str = "", seq: int = 0) -> apb.RecordRef:
    return apb.RecordRef(seq=seq) if seq else apb.RecordRef(request_id=request_id)


# ── a sidecar with its audit port ──────────────────────────────────────────────────────


@dataclass
class AuditedSidecar(Served):
    """A running sidecar (inference and audit ports) and clients of both."""

    client: grpcclient.InferenceServerClient
    inference_channel: grpc.Channel
    channel: grpc.Channel  # to the audit port
    stub: audit_pb2_grpc.AuditServiceStub

    def infer(self, x: np.ndarray, request_id: str, caller: str = "",
              model_name: str = "credit") -> dict[str, np.ndarray]:
        """One credit-model ModelInfer call through tritonclient (raw contents)."""
        return self.infer_tensors(model_name, request_id, caller,
                                  input=np.ascontiguousarray(x, dtype=np.float32))

    def infer_tensors(self, model_name: str, request_id: str, caller: str = "",
                      outputs: list[str] | None = None,
                      **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """One ModelInfer call through tritonclient with these named inputs (and, if given,
        only these outputs requested)."""
        inputs = []
        for name, array in arrays.items():
            data = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            data.set_data_from_numpy(array)
            inputs.append(data)
        headers = {"x-caller": caller} if caller else None
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        result = self.client.infer(model_name, inputs, request_id=request_id, headers=headers,
                                   outputs=requested, client_timeout=30)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}

    def infer_typed(self, x: np.ndarray, request_id: str, caller: str = "",
                    model_name: str = "credit") -> dict[str, np.ndarray]:
        """One ModelInfer call with typed contents (fp32_contents), sent as bytes."""
        request = pb.ModelInferRequest(model_name=model_name, id=request_id)
        encode_inputs(request, [tensor_from_array("input", x.astype(np.float32))], raw=False)
        metadata = [("x-caller", caller)] if caller else None
        raw = raw_rpc(self.inference_channel, "ModelInfer", request.SerializeToString(),
                      metadata=metadata)
        return {t.name: t.array for t in decode_outputs(pb.ModelInferResponse.FromString(raw))}

    def stop(self) -> None:
        self.client.close()
        self.channel.close()
        self.inference_channel.close()
        super().stop()


def start_audited_sidecar(model: Path, ledger: Path, **overrides: Any) -> AuditedSidecar:
    """A sidecar on 127.0.0.1 (inference port 0) with its audit server on a free port.

    Settings.audit_port = 0 disables the audit server and the sidecar has no other way to
    bind an ephemeral audit port, so this takes a port that was free a moment ago and
    retries with another if someone took it in between."""
    values_: dict[str, Any] = dict(model=Path(model), ledger=Path(ledger), host="127.0.0.1",
                                   port=0, metrics_port=0, durability="write",
                                   drain_timeout=5.0, model_name="credit",
                                   features=list(credit_builder().FEATURES))
    values_.update(overrides)
    running = start_with_audit_port(values_)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.sidecar.audit_port}")
    return AuditedSidecar(running, grpcclient.InferenceServerClient(running.address),
                          grpc.insecure_channel(running.address), channel,
                          audit_pb2_grpc.AuditServiceStub(channel))


# ── the recorded ledger every audit test reads ─────────────────────────────────────────


@dataclass(frozen=True)
class Call:
    """One ModelInfer call made while recording, as the caller saw it."""

    request_id: str
    x: np.ndarray
    caller: str
    model: Path
    model_name: str
    outputs: dict[str, np.ndarray] | None  # None: refused
    typed: bool = False


@dataclass
class StoredEntry:
    seq: int
    request_id: str
    received_us: int
    model_name: str
    model_sha256: str
    status: str
    peer: str
    metadata: str


@dataclass
class AuditLedger:
    """A closed ledger holding known traffic: session A served credit v1 as `credit`, then
    session B served credit v2 as `credit_v2` on the same ledger."""

    path: Path
    models: CreditModels
    calls: list[Call]
    entries: dict[str, StoredEntry] = field(default_factory=dict)  # by request id

    @property
    def ok_calls(self) -> list[Call]:
        return [c for c in self.calls if c.outputs is not None]

    def call(self, request_id: str) -> Call:
        return next(c for c in self.calls if c.request_id == request_id)

    def copy(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "ledger.duckdb"
        shutil.copyfile(self.path, target)
        return target

    def changed_rows(self, calls: list[Call] | None = None) -> list[tuple[str, int, str, str]]:
        """(request id, row, recorded label, v2 label) wherever v2 decides differently,
        computed with onnxruntime directly."""
        changed = []
        for c in calls if calls is not None else self.ok_calls:
            assert c.outputs is not None
            new = credit_run(self.models.v2, c.x)["label"]
            for row, (a, b) in enumerate(zip(c.outputs["label"], new, strict=True)):
                if a != b:
                    changed.append((c.request_id, row, str(int(a)), str(int(b))))
        return changed


A_BATCHES = (1, 3, 5, 7, 9, 11)
A_CALLERS = ("alice", "bob", "carol")


def record_traffic(directory: Path, models: CreditModels) -> AuditLedger:
    ledger = directory / "ledger.duckdb"
    calls: list[Call] = []
    x_all = models.rows(400, seed=2024)
    offset = 0

    def take(n: int) -> np.ndarray:
        nonlocal offset
        offset += n
        return x_all[offset - n:offset]

    side = start_audited_sidecar(models.v1, ledger, model_name="credit")
    try:
        for i in range(24):
            x = take(A_BATCHES[i % len(A_BATCHES)])
            caller = A_CALLERS[i % len(A_CALLERS)]
            rid = f"a{i:02d}"
            calls.append(Call(rid, x, caller, models.v1, "credit", side.infer(x, rid, caller)))
        x = take(2)
        calls.append(Call("a-typed", x, "alice", models.v1, "credit",
                          side.infer_typed(x, "a-typed", "alice"), typed=True))
        for rid in ("bad0", "bad1"):  # refused: 5 columns, the model takes 6
            bad = np.ones((2, 5), np.float32)
            with pytest.raises(Exception, match="INVALID_ARGUMENT|shape|input"):
                side.infer(bad, rid, "mallory")
            calls.append(Call(rid, bad, "mallory", models.v1, "credit", None))
    finally:
        side.stop()
    side = start_audited_sidecar(models.v2, ledger, model_name="credit_v2")
    try:
        for i in range(8):
            x = take(3)
            rid = f"b{i:02d}"
            calls.append(Call(rid, x, "alice", models.v2, "credit_v2",
                              side.infer(x, rid, "alice", model_name="credit_v2")))
    finally:
        side.stop()
    result = AuditLedger(ledger, models, calls)
    for row in read_only(ledger, "SELECT seq, request_id, received_us, model_name, model_sha256, "
                         "status, peer, metadata FROM entries WHERE kind = 'infer' ORDER BY seq"):
        result.entries[row[1]] = StoredEntry(*row)
    assert list(result.entries) == [c.request_id for c in calls]
    return result


def read_only(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


_SESSION: dict[str, Any] = {}


def credit_models(factory: pytest.TempPathFactory) -> CreditModels:
    """The credit models, built once per test session."""
    if "models" not in _SESSION:
        _SESSION["models"] = build_credit_models(factory.mktemp("audit-models"))
    return _SESSION["models"]


def recorded_ledger(factory: pytest.TempPathFactory) -> AuditLedger:
    """The recorded ledger, built once per test session; copy it before use."""
    if "ledger" not in _SESSION:
        _SESSION["ledger"] = record_traffic(factory.mktemp("audit-ledger"),
                                            credit_models(factory))
    return _SESSION["ledger"]


@contextlib.contextmanager
def sidecar_on_copy(factory: pytest.TempPathFactory, ledger: AuditLedger,
                    **overrides: Any) -> Iterator[AuditedSidecar]:
    """A sidecar serving credit v1 on a copy of the recorded ledger, audit port open."""
    path = ledger.copy(factory.mktemp("audit-sidecar"))
    side = start_audited_sidecar(ledger.models.v1, path, **overrides)
    try:
        yield side
    finally:
        side.stop()


# ── processes: `mlwitness audit-server` and `mlwitness audit …` ───────────────────────


@dataclass
class AuditServerProcess:
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    stderr_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ready['audit_port']}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}


@contextlib.contextmanager
def audit_server(ledger: Path, *flags: str, log_dir: Path | None = None
                 ) -> Iterator[AuditServerProcess]:
    """`mlwitness audit-server --ledger LEDGER --audit-port 0`; SIGTERM on exit (the exit
    code is then in `.process.returncode`)."""
    stderr_path = (log_dir or ledger.parent) / f"audit-server-{time.monotonic_ns()}.stderr"
    args = [*mlwitness_command(), "audit-server", "--ledger", str(ledger), "--host",
            "127.0.0.1", "--audit-port", "0", *flags]
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=err, env=_clean_env())
    try:
        ready = _ready_line(process, stderr_path)
        yield AuditServerProcess(process, ready, stderr_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def _ready_line(process: subprocess.Popen[bytes], stderr_path: Path) -> dict[str, Any]:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            if time.monotonic() > deadline:
                raise RuntimeError("audit-server printed no ready line")
            if not selector.select(0.2):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"audit-server exited ({process.wait(5)}): "
                                   + stderr_path.read_text(errors="replace")[-2000:])
            buffer += chunk
    ready = json.loads(buffer.split(b"\n", 1)[0])
    assert ready["event"] == "ready", ready
    return ready


def run_cli(target: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`mlwitness audit --target TARGET ARGS…` as a subprocess."""
    return subprocess.run([*mlwitness_command(), "audit", "--target", target, *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=_clean_env())


def stub_for(address: str) -> tuple[grpc.Channel, audit_pb2_grpc.AuditServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, audit_pb2_grpc.AuditServiceStub(channel)
