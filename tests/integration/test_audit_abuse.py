"""Audit questions that attack the server: external data, huge or looping candidates.

Real things only: candidate models built here with `onnx.helper` (each takes the credit
model's input, `input` FP32 [N, 6], so a recorded call can be replayed on it), a sidecar
(in this process) or `mlwitness audit-server` (a process of its own, whose memory is read
from /proc) on a copy of the recorded ledger, and the generated audit stub as the auditor.

* A tensor with ONNX external data (`location="hash.key"`) made onnxruntime read that file
  from the working directory and hand it back as an output. Every such model — uploaded or
  stored, the tensor an initializer, inside an If branch, or a Constant's attribute — is
  refused before onnxruntime sees it, and the file's bytes appear in no answer and no
  record. onnxruntime's own words on a model it cannot load are not passed on.
* An upload over --max-candidate-bytes is refused naming the limit; a candidate that fails
  is not stored; one that ran is, and the audit record names it by hash, not by its bytes.
* A 218-byte ConstantOfShape candidate that asks for 768 MiB fails RESOURCE_EXHAUSTED and
  the server's own peak memory stays where it was; a looping candidate is stopped at the
  caller's deadline or at --audit-run-timeout, and the question's record then says so
  (written only once the run has ended).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import onnx
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    audit_server,
    ref,
    rpc_error,
    sidecar_on_copy,
    start_audited_sidecar,
    stub_for,
)
from onnx import TensorProto, helper, numpy_helper

from mlwitness.codec import encode_inputs, encode_outputs, tensor_from_array
from mlwitness.errors import ConfigError
from mlwitness.ledger import journal, store
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.model.external_data import NotProtobuf, NotSelfContained, check_self_contained
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import inference as pb
from mlwitness.settings import Settings

try:
    from tests import models
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import models

SECRET = b"mlwitness-test-secret-7f3a9c1e55d0b2"  # what "hash.key" holds here
FOUND_BY = 30.0  # seconds to wait for a question's record (written when its run has ended)


# ── candidate models ───────────────────────────────────────────────────────────────────


def credit_shaped(nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto],
                  initializers: list[onnx.TensorProto] = ()) -> bytes:  # type: ignore[assignment]
    """A model taking the credit model's input (unused) and giving `outputs`."""
    graph = helper.make_graph(
        nodes, "candidate", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                           [None, 6])],
        outputs, list(initializers))
    return helper.make_model(graph, ir_version=models.IR_VERSION,
                             opset_imports=[helper.make_opsetid("", models.OPSET)]
                             ).SerializeToString()


def external(name: str, location: str = "hash.key") -> onnx.TensorProto:
    """A UINT8 tensor whose values onnxruntime would read from the file `location`."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[len(SECRET)])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


LEAK = helper.make_tensor_value_info("leak", TensorProto.UINT8, [len(SECRET)])


def leaking(where: str) -> bytes:
    """A candidate that outputs the external file's bytes, the tensor `where`."""
    if where == "initializer":
        return credit_shaped([helper.make_node("Identity", ["w"], ["leak"])], [LEAK],
                             [external("w")])
    if where == "constant attribute":
        return credit_shaped([helper.make_node("Constant", [], ["leak"], value=external("c"))],
                             [LEAK])
    assert where == "if branch"
    then = helper.make_graph([helper.make_node("Identity", ["inner"], ["leak"])], "then", [],
                             [LEAK], [external("inner")])
    other = helper.make_graph([helper.make_node("Identity", ["zeros"], ["leak"])], "else", [],
                              [LEAK], [numpy_helper.from_array(
                                  np.zeros(len(SECRET), np.uint8), "zeros")])
    return credit_shaped(
        [helper.make_node("If", ["yes"], ["leak"], then_branch=then, else_branch=other)],
        [LEAK], [numpy_helper.from_array(np.array(True), "yes")])


def constant_of_shape(elements: int = 192 << 20) -> bytes:
    """Tiny bytes, a huge output: `elements` float32 ones (768 MiB by default)."""
    return credit_shaped(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"],
                          value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array([elements], np.int64), "shape")])


def looping() -> bytes:
    """A Loop of 10^12 iterations adding 1: runs for hours unless stopped."""
    acc = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Add", ["acc", "one"], ["acc_out"])], "body",
        [acc("i", TensorProto.INT64, []), acc("cond", TensorProto.BOOL, []),
         acc("acc", TensorProto.FLOAT, [1])],
        [acc("cond_out", TensorProto.BOOL, []), acc("acc_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    return credit_shaped(
        [helper.make_node("Loop", ["trips", "", "start"], ["y"], body=body)],
        [acc("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(10 ** 12, np.int64), "trips"),
         numpy_helper.from_array(np.zeros(1, np.float32), "start")])


def summing(salt: float) -> bytes:
    """A harmless candidate that runs on credit inputs; `salt` makes its bytes unique."""
    return credit_shaped(
        [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
         helper.make_node("Add", ["total", "salt"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(salt, np.float32), "salt")])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ── what the server kept ───────────────────────────────────────────────────────────────


def everything_stored(side: AuditedSidecar) -> bytes:
    """Every record (all columns), every stored model and the journal, as bytes."""
    side.running.sync()
    parts = [repr(side.query("SELECT * FROM entries")).encode()]
    parts += [bytes(row[0]) for row in side.query("SELECT onnx FROM models")]
    parts += [p.read_bytes().rstrip(b"\0") for p in
              sorted(journal.journal_dir(side.ledger_path).glob("*")) if p.is_file()]
    return b"\n".join(parts)


def trail(side: AuditedSidecar, rpc: str) -> list[tuple[str, str, bytes]]:
    """(status, message, request bytes) of the audit records of `rpc`, oldest first."""
    rows = side.query("SELECT status, message, request, detail FROM entries "
                      "WHERE kind = 'audit' ORDER BY seq")
    return [(s, m, bytes(r)) for s, m, r, d in rows if json.loads(d)["rpc"] == rpc]


def wait_for_trail(side: AuditedSidecar, rpc: str, count: int) -> list[tuple[str, str, bytes]]:
    """The audit records of `rpc` once there are `count`: a question's record is written
    when the question ends, so this returns only after its model run has stopped."""
    deadline = time.monotonic() + FOUND_BY
    while True:
        found = trail(side, rpc)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def stored_models(side: AuditedSidecar, sha256: str) -> list[tuple[str, bytes]]:
    return [(n, bytes(o)) for n, o in side.query("SELECT name, onnx FROM models "
                                                 "WHERE sha256 = ?", [sha256])]


@pytest.fixture
def secret_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A secret key file in the working directory, as in the image (its working directory
    is the ledger's volume, where the hash key or the journal lie)."""
    (tmp_path / "hash.key").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "hash.key"


# ── external data ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("where", ["initializer", "if branch", "constant attribute"])
def test_an_uploaded_candidate_with_external_data_is_refused_and_reads_nothing(
    audit_sidecar: AuditedSidecar, secret_in_cwd: Path, where: str
) -> None:
    onnx_bytes = leaking(where)
    err = rpc_error(audit_sidecar.stub.Replay,
                    apb.ReplayRequest(ref=ref("a16"), candidate_onnx=onnx_bytes))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "external file" in err.details() and "self-contained" in err.details()
    assert SECRET not in err.details().encode()
    events = audit_sidecar.stub.ReplayRange(apb.ReplayRangeRequest(candidate_onnx=onnx_bytes),
                                            timeout=60)
    with pytest.raises(grpc.RpcError) as streamed:
        list(events)
    assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_models(audit_sidecar, sha(onnx_bytes)) == []
    assert SECRET not in everything_stored(audit_sidecar)


def test_a_stored_model_with_external_data_is_refused_by_hash(
    tmp_path_factory: pytest.TempPathFactory, audit_ledger: AuditLedger, secret_in_cwd: Path
) -> None:
    """A model already in the store (put there by hand, or by an older version) is
    checked as well before onnxruntime loads it."""
    onnx_bytes = leaking("initializer")
    copy = audit_ledger.copy(tmp_path_factory.mktemp("stored-external"))
    con = duckdb.connect(str(copy))
    store.put_model(con, onnx_bytes, "candidate", "", {})
    con.close()
    side = start_audited_sidecar(audit_ledger.models.v1, copy)
    try:
        err = rpc_error(side.stub.Replay, apb.ReplayRequest(ref=ref("a16"),
                                                            candidate_sha256=sha(onnx_bytes)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert "external file" in err.details() and SECRET not in err.details().encode()
        with pytest.raises(grpc.RpcError) as streamed:
            list(side.stub.ReplayRange(apb.ReplayRangeRequest(
                candidate_sha256=sha(onnx_bytes)), timeout=60))
        assert streamed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        side.running.sync()
        answers = repr(side.query("SELECT * FROM entries WHERE kind = 'audit'")).encode()
        assert SECRET not in answers
    finally:
        side.stop()


def test_onnxruntimes_words_on_a_model_it_cannot_load_are_not_passed_on(
    audit_sidecar: AuditedSidecar,
) -> None:
    """They can name files and paths; the caller gets the status code and fixed words."""
    onnx_bytes = credit_shaped([helper.make_node("NoSuchOperator", ["input"], ["y"],
                                                 name="node-named-PrivateMarker")],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    err = rpc_error(audit_sidecar.stub.Replay,
                    apb.ReplayRequest(ref=ref("a16"), candidate_onnx=onnx_bytes))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INVALID_GRAPH" in err.details() and "does not implement" in err.details()
    assert "ONNXRuntimeError" not in err.details() and "PrivateMarker" not in err.details()


def test_the_check_walks_every_place_a_tensor_can_hide() -> None:
    inner = helper.make_graph([helper.make_node("Constant", [], ["leak"], value=external("deep"))],
                              "deepest", [], [LEAK])
    plain = helper.make_graph([helper.make_node("Identity", ["zeros"], ["leak"])], "plain", [],
                              [LEAK], [numpy_helper.from_array(np.zeros(len(SECRET), np.uint8),
                                                               "zeros")])
    for _ in range(25):  # If inside If inside … (protobuf parses ~100 levels)
        inner = helper.make_graph([helper.make_node("If", ["yes"], ["leak"], then_branch=plain,
                                                    else_branch=inner)], "nest", [], [LEAK],
                                  [numpy_helper.from_array(np.array(True), "yes")])
    nested = helper.make_model(inner).SerializeToString()
    sparse = onnx.SparseTensorProto(values=external("values"), dims=[len(SECRET)])
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([0], np.int64), "indices"))
    function = helper.make_function("local", "Leak", [], ["leak"], [helper.make_node(
        "Constant", [], ["leak"], value=external("in_function"))],
        [helper.make_opsetid("", models.OPSET)])
    only_location = external("location_only")
    del only_location.external_data[:]
    cases = {
        "an If 25 deep": nested,
        "sparse initializer value": credit_shaped([helper.make_node(
            "Constant", [], ["leak"], sparse_value=sparse)], [LEAK]),
        "model-local function": helper.make_model(
            helper.make_graph([helper.make_node("Leak", [], ["leak"], domain="local")], "g",
                              [], [LEAK]), functions=[function],
            opset_imports=[helper.make_opsetid("", models.OPSET),
                           helper.make_opsetid("local", 1)]).SerializeToString(),
        "data_location alone": credit_shaped([helper.make_node("Identity", ["location_only"],
                                                               ["leak"])], [LEAK],
                                             [only_location]),
    }
    for what, onnx_bytes in cases.items():
        with pytest.raises(NotSelfContained, match="keeps its data in an external file"):
            check_self_contained(onnx_bytes)
            pytest.fail(what)
    for broken in (b"not a model", leaking("initializer")[:-5], b"\x08"):
        with pytest.raises(NotProtobuf, match="INVALID_PROTOBUF"):
            check_self_contained(broken)
    check_self_contained(summing(1.0))  # a self-contained model passes


def test_every_model_of_the_test_zoo_is_self_contained(model_paths: dict[str, Path],
                                                       audit_ledger: AuditLedger) -> None:
    for path in [*model_paths.values(), audit_ledger.models.v1, audit_ledger.models.v2]:
        check_self_contained(path.read_bytes())


def test_running_models_does_not_need_the_onnx_package() -> None:
    """`onnx` is a development dependency: the check and the sandbox read the wire format."""
    code = ("import sys; import mlwitness.server.sidecar, mlwitness.model.sandbox, "
            "mlwitness.model.external_data; "
            "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ── candidate storage ──────────────────────────────────────────────────────────────────


def test_an_upload_over_the_size_limit_is_refused_naming_it(
    tmp_path_factory: pytest.TempPathFactory, audit_ledger: AuditLedger
) -> None:
    onnx_bytes = audit_ledger.models.v2.read_bytes()
    assert len(onnx_bytes) > 4096
    with sidecar_on_copy(tmp_path_factory, audit_ledger, max_candidate_bytes=4096) as side:
        err = rpc_error(side.stub.Replay, apb.ReplayRequest(ref=ref("a16"),
                                                            candidate_onnx=onnx_bytes))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4096 bytes (--max-candidate-bytes)" in err.details()
        with pytest.raises(grpc.RpcError) as streamed:
            list(side.stub.ReplayRange(apb.ReplayRangeRequest(candidate_onnx=onnx_bytes),
                                       timeout=60))
        assert streamed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ((status, _, request),) = trail(side, "Replay")
        assert status == "RESOURCE_EXHAUSTED" and len(request) < 200  # not the upload
        kept = apb.ReplayRequest.FromString(request)
        assert kept.candidate_onnx == f"sha256:{sha(onnx_bytes)}".encode()
        assert kept.ref.request_id == "a16"


def test_a_candidate_that_fails_is_not_kept_and_the_trail_names_it_by_hash(
    audit_sidecar: AuditedSidecar, model_paths: dict[str, Path]
) -> None:
    """The affine model loads but cannot take the credit input: nothing of it is stored,
    by Replay or by ReplayRange (every record fails on it)."""
    onnx_bytes = model_paths["affine_fp32"].read_bytes()
    before = len(trail(audit_sidecar, "Replay"))
    err = rpc_error(audit_sidecar.stub.Replay, apb.ReplayRequest(ref=ref("a16"),
                                                                 candidate_onnx=onnx_bytes))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot take record seq" in err.details() and "unknown input 'input'" in \
        err.details()
    events = list(audit_sidecar.stub.ReplayRange(
        apb.ReplayRangeRequest(candidate_onnx=onnx_bytes), timeout=60))
    summary = events[-1].summary
    assert summary.records == summary.failed > 0
    assert stored_models(audit_sidecar, sha(onnx_bytes)) == []
    for rpc, message in (("Replay", apb.ReplayRequest), ("ReplayRange", apb.ReplayRangeRequest)):
        status, _, request = trail(audit_sidecar, rpc)[-1]
        kept = message.FromString(request)
        assert kept.candidate_onnx == f"sha256:{sha(onnx_bytes)}".encode()
        assert onnx_bytes not in request
    assert len(trail(audit_sidecar, "Replay")) == before + 1
    # by its hash it is unknown: the worker that loaded it must not answer for the store
    err = rpc_error(audit_sidecar.stub.Replay, apb.ReplayRequest(
        ref=ref("a16"), candidate_sha256=sha(onnx_bytes)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not in the ledger's model store" in err.details()
    with pytest.raises(grpc.RpcError) as streamed:
        list(audit_sidecar.stub.ReplayRange(apb.ReplayRangeRequest(
            candidate_sha256=sha(onnx_bytes)), timeout=60))
    assert streamed.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("rpc", ["Replay", "ReplayRange"])
def test_a_candidate_that_ran_is_kept_once_and_the_trail_holds_its_hash(
    audit_sidecar: AuditedSidecar, rpc: str
) -> None:
    onnx_bytes = summing(salt=float(len(rpc)))  # a model of its own per RPC
    if rpc == "Replay":
        answer = audit_sidecar.stub.Replay(apb.ReplayRequest(ref=ref("a16"),
                                                             candidate_onnx=onnx_bytes),
                                           timeout=60)
        assert answer.replayed_model_sha256 == sha(onnx_bytes)
    else:
        events = list(audit_sidecar.stub.ReplayRange(
            apb.ReplayRangeRequest(candidate_onnx=onnx_bytes), timeout=60))
        assert events[-1].summary.failed == 0
    assert stored_models(audit_sidecar, sha(onnx_bytes)) == [("candidate", onnx_bytes)]
    status, _, request = trail(audit_sidecar, rpc)[-1]
    assert status == "OK" and onnx_bytes not in request
    message = apb.ReplayRequest if rpc == "Replay" else apb.ReplayRangeRequest
    assert message.FromString(request).candidate_onnx == f"sha256:{sha(onnx_bytes)}".encode()


# ── memory and time ────────────────────────────────────────────────────────────────────


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes: the most resident memory it has ever had."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_a_tiny_candidate_asking_for_gigabytes_fails_and_the_server_stays_small(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    """218 bytes that ask for 192 Mi floats (768 MiB): RESOURCE_EXHAUSTED naming the
    limit; the audit server's own peak memory does not move; it goes on answering."""
    onnx_bytes = constant_of_shape()
    assert len(onnx_bytes) < 300
    copy = audit_ledger.copy(tmp_path / "copy")
    with audit_server(copy, log_dir=tmp_path) as server:
        channel, stub = stub_for(server.address)
        with channel:
            stub.Replay(apb.ReplayRequest(ref=ref("a16")), timeout=60)  # warm: all imported
            before = peak_rss(server.process.pid)
            err = rpc_error(stub.Replay, apb.ReplayRequest(ref=ref("a16"),
                                                           candidate_onnx=onnx_bytes))
            after = peak_rss(server.process.pid)
            assert stub.Replay(apb.ReplayRequest(ref=ref("a16")), timeout=60).bit_identical
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "--audit-memory-bytes" in err.details()
    assert after - before < 64 << 20, (before, after)


@pytest.fixture
def timed_sidecar(tmp_path_factory: pytest.TempPathFactory, audit_ledger: AuditLedger
                  ) -> Iterator[AuditedSidecar]:
    with sidecar_on_copy(tmp_path_factory, audit_ledger, audit_run_timeout=2.0) as side:
        yield side


def test_a_looping_candidate_is_stopped_at_the_callers_deadline(
    audit_sidecar: AuditedSidecar,
) -> None:
    """The caller gives up after 2 s; the run must end then too (it used to run on, a
    core burning, after the call had ended). The question's record, written only when its
    run has ended, appears; the next question is answered."""
    onnx_bytes = looping()
    replays = len(trail(audit_sidecar, "Replay"))
    with pytest.raises(grpc.RpcError) as info:
        audit_sidecar.stub.Replay(apb.ReplayRequest(ref=ref("a16"), candidate_onnx=onnx_bytes),
                                  timeout=2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    found = wait_for_trail(audit_sidecar, "Replay", replays + 1)
    assert len(found) == replays + 1, "the run went on after the caller's deadline"
    assert found[-1][0] == "DEADLINE_EXCEEDED" and "deadline" in found[-1][1]

    ranges = len(trail(audit_sidecar, "ReplayRange"))
    with pytest.raises(grpc.RpcError) as streamed:
        list(audit_sidecar.stub.ReplayRange(apb.ReplayRangeRequest(candidate_onnx=onnx_bytes),
                                            timeout=2))
    assert streamed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    found = wait_for_trail(audit_sidecar, "ReplayRange", ranges + 1)
    assert len(found) == ranges + 1 and found[-1][0] == "DEADLINE_EXCEEDED"

    assert stored_models(audit_sidecar, sha(onnx_bytes)) == []
    assert audit_sidecar.stub.Replay(apb.ReplayRequest(ref=ref("a16")),
                                     timeout=60).bit_identical


def test_a_run_longer_than_the_run_timeout_is_stopped_naming_the_limit(
    timed_sidecar: AuditedSidecar,
) -> None:
    """No deadline from the caller: --audit-run-timeout (2 s here) bounds the run."""
    onnx_bytes = looping()
    err = rpc_error(timed_sidecar.stub.Replay, apb.ReplayRequest(ref=ref("a16"),
                                                                 candidate_onnx=onnx_bytes))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "longer than 2 s (--audit-run-timeout)" in err.details()
    (status, message, _), = trail(timed_sidecar, "Replay")
    assert (status, message) == ("DEADLINE_EXCEEDED", err.details())
    assert stored_models(timed_sidecar, sha(onnx_bytes)) == []
    assert timed_sidecar.stub.Replay(apb.ReplayRequest(ref=ref("a16")),
                                     timeout=60).bit_identical


def test_what_if_and_sensitivity_on_a_looping_recorded_model_stop_at_the_deadline(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    """Not only candidates: a stored model that loops (here a decision recorded for it by
    hand) is run in the worker too, and stopped when the caller gives up."""
    onnx_bytes = looping()
    ledger = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(ledger, WriterOptions(durability="write"),
                          tabulator=Tabulator({"input": list(audit_ledger.models.features)}))
    writer.open()
    writer.write(lambda con: store.put_model(con, onnx_bytes, "looping", "1", {}))
    x = tensor_from_array("input", np.ones((1, 6), np.float32))
    y = tensor_from_array("y", np.zeros(1, np.float32))
    request, response = pb.ModelInferRequest(model_name="looping", id="loop-1"), \
        pb.ModelInferResponse(model_name="looping", id="loop-1")
    encode_inputs(request, [x], raw=True)
    encode_outputs(response, [y], raw=True)
    writer.append_blocking(Record(
        request_id="loop-1", received_us=1, responded_us=2, model_name="looping",
        model_sha256=sha(onnx_bytes), request=request.SerializeToString(),
        response=response.SerializeToString(), inputs=[x], outputs=[y]))
    writer.close()
    side = start_audited_sidecar(audit_ledger.models.v1, ledger)
    try:
        questions = [
            ("WhatIf", side.stub.WhatIf, apb.WhatIfRequest(
                ref=ref("loop-1"), overrides=[apb.Override(feature="income", value=1.0)])),
            ("Sensitivity", side.stub.Sensitivity, apb.SensitivityRequest(
                ref=ref("loop-1"), feature="income", start=1, stop=2, steps=2)),
        ]
        for rpc, call, request_ in questions:
            with pytest.raises(grpc.RpcError) as info:
                call(request_, timeout=2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            found = wait_for_trail(side, rpc, 1)
            assert [f[0] for f in found] == ["DEADLINE_EXCEEDED"], \
                "the run went on after the caller's deadline"
        assert side.stub.GetRecord(apb.GetRecordRequest(ref=ref("loop-1")),
                                   timeout=30).model_sha256 == sha(onnx_bytes)
    finally:
        side.stop()


@pytest.mark.parametrize("setting, value", [
    ("max_candidate_bytes", 0), ("audit_memory_bytes", -1), ("audit_run_timeout", 0.0),
    ("audit_run_timeout", float("inf")),
])
def test_the_audit_limits_must_be_positive(tmp_path: Path, affine_model: Path,
                                           setting: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=setting.split("_")[-1]):
        Settings(model=affine_model, **{setting: value}).validate()
