"""The evidence bundle end to end: a sidecar with --signing-key, guards and a baseline; a
decision made through tritonclient; `mlwitness audit evidence` writes its bundle and
`mlwitness evidence verify` checks it offline (the ledger stopped), re-running the model
bit-identically; an erased record, one no checkpoint covers yet and bad references are
refused with their gRPC status; the question is on the audit trail."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from audit_support import audit_server, run_cli, start_audited_sidecar
from conftest import CreditModel
from evidence_support import keygen
from security_support import add_token, bearer
from sidecar import mlwitness_command

from mlwitness.analytics.baseline import build_baseline
from mlwitness.protocol import audit_pb2 as apb

MLWITNESS = mlwitness_command()
GUARDS_TOML = "version = 1\n[outputs.probabilities_1]\nmin = 0.0\nmax = 1.0\n"
REASON = "GDPR Art. 17 request 2026-118"


def wait_for(condition: Callable[[], Any], within_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        time.sleep(0.05)


def refused(stub: Any, request: apb.EvidenceRequest) -> tuple[grpc.StatusCode, str]:
    """The status an Evidence call ends with (fails the test when it answers)."""
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Evidence(request, timeout=30))
    return info.value.code(), info.value.details()


def offline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MLWITNESS, "evidence", "verify", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def deployed(credit_model: CreditModel, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Any, Path, str]]:
    """(the sidecar with 4 decisions made and checkpointed, its verifier key file, the
    directory for bundles)."""
    root = tmp_path_factory.mktemp("evidence")
    pub, _, run = keygen(MLWITNESS, root / "signing.key")
    assert run.returncode == 0, run.stderr
    guards = root / "guards.toml"
    guards.write_text(GUARDS_TOML)
    baseline = root / "baseline.json"
    baseline.write_text(build_baseline(credit_model.path.parent / "train.csv",
                                       model=credit_model.path, label="approved").to_json())
    side = start_audited_sidecar(credit_model.path, root / "ledger.duckdb",
                                 signing_key=root / "signing.key", guards=guards,
                                 baseline=baseline, load_interval=0.1,
                                 checkpoint_interval=0.2)
    try:
        for i in range(4):
            side.infer(credit_model.features(1, seed=i), f"app-{i}")
        head = side.running.sync()
        wait_for(lambda: side.stub.Status(apb.StatusRequest(), timeout=30).checkpoints.size
                 >= head, what="a checkpoint of every decision")
        yield side, pub, str(root)
    finally:
        side.stop()


def test_a_bundle_written_by_the_cli_verifies_offline_and_reruns_bit_identically(
        deployed: tuple[Any, Path, str], credit_model: CreditModel) -> None:
    side, pub, root = deployed
    out = Path(root) / "app-1.evidence"
    made = run_cli(side.audit_address, "evidence", "app-1", "--out", str(out), "--json")
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    bundle = json.loads(out.read_text())
    assert summary["seq"] == bundle["record"]["seq"] and summary["bytes"] == out.stat().st_size
    assert bundle["format"] == "mlwitness-evidence/1"
    assert bundle["record"]["request_id"] == "app-1" and bundle["record"]["format"] == 2
    assert [t["name"] for t in bundle["decoded"]["inputs"]] == ["input"]
    assert {t["name"] for t in bundle["decoded"]["outputs"]} >= {"probabilities"}
    assert bundle["guards"]["config"]["outputs"]["probabilities_1"]["max"] == 1.0
    assert bundle["baseline"]["sha256"] and len(bundle["context"]) == 2
    assert "session_options" in json.loads(bundle["environment"])

    checked = offline(str(out), "--key", str(pub))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "VALID" in checked.stdout and "decoded.inputs" in checked.stdout
    rerun = offline(str(out), "--key", str(pub), "--model", str(credit_model.path))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "re-run        bit-identical" in rerun.stdout

    # the question is on the audit trail, as every other
    trail = side.query("SELECT detail FROM entries WHERE kind = 'audit' AND detail LIKE "
                       "'%Evidence%' ORDER BY seq DESC LIMIT 1")
    assert trail and '"rpc": "Evidence"' in trail[0][0]


def test_with_model_the_bundle_carries_the_model_and_reruns_alone(
        deployed: tuple[Any, Path, str], tmp_path: Path) -> None:
    side, pub, _ = deployed
    out = tmp_path / "with-model.evidence"
    made = run_cli(side.audit_address, "evidence", "seq:" + str(_seq(side, "app-2")),
                   "--out", str(out), "--with-model")
    assert made.returncode == 0, made.stderr
    bundle = json.loads(out.read_text())
    assert bundle["model"]["onnx"]
    checked = offline(str(out), "--key", str(pub), "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["valid"] and report["rerun"]["identical"]
    # a wrong key: not valid, and the check that failed is named
    other, _, run = keygen(MLWITNESS, tmp_path / "other.key")
    assert run.returncode == 0
    refused = offline(str(out), "--key", str(other))
    assert refused.returncode == 1 and "checkpoint: note has no signature by a known key" \
        in refused.stderr


def test_erased_unknown_and_not_yet_checkpointed_records_are_refused(
        deployed: tuple[Any, Path, str]) -> None:
    side, _, _ = deployed
    erased = side.stub.Erase(apb.EraseRequest(request_id="app-3", reason=REASON), timeout=60)
    assert erased.erased == 1
    code, details = refused(side.stub, apb.EvidenceRequest(
        ref=apb.RecordRef(request_id="app-3")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "erased" in details
    code, details = refused(side.stub, apb.EvidenceRequest(
        ref=apb.RecordRef(request_id="nobody")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = refused(side.stub, apb.EvidenceRequest(ref=apb.RecordRef(seq=-4)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = refused(side.stub, apb.EvidenceRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = refused(side.stub, apb.EvidenceRequest(ref=apb.RecordRef(seq=10**9)))
    assert code == grpc.StatusCode.NOT_FOUND
    cli = run_cli(side.audit_address, "evidence", "app-3", "--out", "/nonexistent/x")
    assert cli.returncode == 2 and "FAILED_PRECONDITION" in cli.stderr and \
        "Traceback" not in cli.stderr


def test_a_record_no_checkpoint_covers_yet_is_refused_saying_so(
        credit_model: CreditModel, tmp_path: Path) -> None:
    side = start_audited_sidecar(credit_model.path, tmp_path / "ledger.duckdb",
                                 checkpoint_interval=3600.0)
    try:
        side.infer(credit_model.features(1, seed=1), "early")
        side.running.sync()
        code, details = refused(side.stub, apb.EvidenceRequest(
            ref=apb.RecordRef(request_id="early")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no checkpoint covers record seq" in details
    finally:
        side.stop()


def test_a_bundle_past_the_model_limit_is_refused_with_a_clear_error(
        credit_model: CreditModel, tmp_path: Path) -> None:
    side = start_audited_sidecar(credit_model.path, tmp_path / "ledger.duckdb",
                                 load_interval=0.1, checkpoint_interval=0.2,
                                 max_candidate_bytes=100)  # the credit model: ~0.5 KiB
    try:
        side.infer(credit_model.features(1, seed=1), "big")
        head = side.running.sync()
        wait_for(lambda: side.stub.Status(apb.StatusRequest(), timeout=30).checkpoints.size
                 >= head, what="a checkpoint")
        code, details = refused(side.stub, apb.EvidenceRequest(
            ref=apb.RecordRef(request_id="big"), with_model=True))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-candidate-bytes" in details
        # without the model, the same record's bundle is fine (unsigned: said offline)
        chunks = list(side.stub.Evidence(apb.EvidenceRequest(
            ref=apb.RecordRef(request_id="big")), timeout=30))
        assert chunks[-1].total_bytes == sum(len(c.data) for c in chunks)
    finally:
        side.stop()


def _seq(side: Any, request_id: str) -> int:
    return int(side.query("SELECT seq FROM entries WHERE request_id = ?", [request_id])[0][0])


def test_the_decoded_values_are_those_the_caller_sent(
        deployed: tuple[Any, Path, str], credit_model: CreditModel) -> None:
    side, _, _ = deployed
    chunks = list(side.stub.Evidence(apb.EvidenceRequest(
        ref=apb.RecordRef(request_id="app-0")), timeout=30))
    bundle = json.loads(b"".join(c.data for c in chunks))
    sent = credit_model.features(1, seed=0).astype(np.float32)
    (tensor,) = bundle["decoded"]["inputs"]
    assert tensor["datatype"] == "FP32" and tensor["shape"] == list(sent.shape)
    assert np.array(tensor["data"], dtype=np.float32).tobytes() == sent.tobytes()


def test_an_auditor_may_ask_for_a_bundle_and_a_caller_may_not(
        credit_model: CreditModel, tmp_path: Path) -> None:
    access = tmp_path / "audit-access.toml"
    tokens = {name: add_token(access, name, role)
              for name, role in (("alice", "auditor"), ("bob", "caller"))}
    side = start_audited_sidecar(credit_model.path, tmp_path / "ledger.duckdb",
                                 load_interval=0.1, checkpoint_interval=0.2,
                                 audit_access=access)
    try:
        side.infer(credit_model.features(1, seed=1), "asked")
        head = side.running.sync()
        wait_for(lambda: side.stub.Status(apb.StatusRequest(), timeout=30, metadata=bearer(
            tokens["alice"])).checkpoints.size >= head, what="a checkpoint")
        request = apb.EvidenceRequest(ref=apb.RecordRef(request_id="asked"))
        with pytest.raises(grpc.RpcError) as refused_bob:
            list(side.stub.Evidence(request, timeout=30, metadata=bearer(tokens["bob"])))
        assert refused_bob.value.code() == grpc.StatusCode.PERMISSION_DENIED
        chunks = list(side.stub.Evidence(request, timeout=30,
                                         metadata=bearer(tokens["alice"])))
        assert json.loads(b"".join(c.data for c in chunks))["record"]["request_id"] == "asked"
        asked = side.query("SELECT peer, status FROM entries WHERE kind = 'audit' AND "
                           "detail LIKE '%\"rpc\": \"Evidence\"%' ORDER BY seq")
        assert asked == [("token:bob", "PERMISSION_DENIED"), ("token:alice", "OK")]
    finally:
        side.stop()


def test_the_standalone_audit_server_writes_bundles_from_a_ledger_copy(
        credit_model: CreditModel, tmp_path: Path) -> None:
    pub, _, run = keygen(MLWITNESS, tmp_path / "signing.key")
    assert run.returncode == 0, run.stderr
    side = start_audited_sidecar(credit_model.path, tmp_path / "ledger.duckdb",
                                 signing_key=tmp_path / "signing.key", load_interval=0.1,
                                 checkpoint_interval=0.2)
    try:
        side.infer(credit_model.features(1, seed=5), "copied")
    finally:
        side.stop()  # a last checkpoint at shutdown covers the call
    copy = tmp_path / "copy.duckdb"
    shutil.copy(tmp_path / "ledger.duckdb", copy)
    out = tmp_path / "copied.evidence"
    with audit_server(copy, log_dir=tmp_path) as server:
        made = run_cli(f"127.0.0.1:{server.ready['audit_port']}", "evidence", "copied",
                       "--out", str(out), "--with-model")
    assert made.returncode == 0, made.stderr
    checked = offline(str(out), "--key", str(pub))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "re-run        bit-identical" in checked.stdout
