"""Checkpoints of a serving sidecar: keygen, signed and unsigned checkpoints published to a
directory, a publisher that fails without touching serving, proofs through the audit API
(and their bad input), `mlwitness verify --checkpoint` on rewritten and truncated copies,
the standalone audit-server, and kill -9 during checkpointing."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from audit_support import audit_server, rpc_error, stub_for
from disk_support import SmallDisk, mounted_small_disk
from evidence_support import file_leaves, keygen, reference_root
from json_shape import shape_problems
from sidecar import free_ports, mlwitness_command, rewrite_record, run_verify

from mlwitness.evidence import check
from mlwitness.evidence.note import Signer
from mlwitness.protocol import audit_pb2 as apb

MLWITNESS = mlwitness_command()


def wait_for(condition: Callable[[], Any], within_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        time.sleep(0.05)


def call(client: grpcclient.InferenceServerClient, request_id: str) -> None:
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))
    client.infer("affine_fp32", [x], request_id=request_id)


def audit(target: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    return subprocess.run([*MLWITNESS, "audit", "--target", target, *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, Path, str]:
    """(signer key, verifier key file, the verifier key keygen printed)."""
    signing = tmp_path / "signing.key"
    pub, printed, run = keygen(MLWITNESS, signing)
    assert run.returncode == 0, run.stderr
    return signing, pub, printed


class Served:
    """A sidecar with checkpoints, its audit stub and an inference client."""

    def __init__(self, make_sidecar: Any, model: Path, **settings: Any) -> None:
        audit_port, metrics_port = free_ports(2)
        self.running = make_sidecar(model, audit_port=audit_port, metrics_port=metrics_port,
                                    load_interval=0.1, checkpoint_interval=0.2,
                                    durability="write", **settings)
        self.target = f"127.0.0.1:{audit_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.channel, self.stub = stub_for(self.target)
        self.client = grpcclient.InferenceServerClient(self.running.address)

    def status(self) -> apb.StatusResponse:
        return self.stub.Status(apb.StatusRequest(), timeout=30)

    def checkpointed(self) -> int:
        """Wait until a checkpoint covers every record acknowledged so far; its size."""
        head = self.running.sync()
        return wait_for(lambda: (s := self.status().checkpoints.size) >= head and s,
                        what=f"a checkpoint of {head} records")

    def metric(self, name: str) -> float | None:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    def stop(self) -> None:
        self.client.close()
        self.channel.close()
        self.running.stop()


@pytest.fixture
def serve(make_sidecar: Any, affine_model: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**settings: Any) -> Served:
        served = Served(make_sidecar, affine_model, **settings)
        started.append(served)
        return served

    yield start
    for served in started:
        with contextlib.suppress(Exception):
            served.client.close()
            served.channel.close()


# ── keys, signed and unsigned checkpoints, the published directory ─────────────────────


def test_keygen_writes_a_private_key_and_refuses_to_overwrite_it(key, tmp_path: Path) -> None:
    signing, pub, printed = key
    assert stat.S_IMODE(signing.stat().st_mode) == 0o600
    assert signing.read_text().startswith("PRIVATE+KEY+mlwitness+")
    assert pub.read_text().strip() == printed and printed.startswith("mlwitness+")
    before = signing.read_bytes()
    _, _, again = keygen(MLWITNESS, signing)
    assert again.returncode == 2 and "exists" in again.stderr and again.stdout == ""
    assert signing.read_bytes() == before


def test_signed_checkpoints_are_published_and_verify_with_the_printed_key(
    serve: Callable[..., Served], key, tmp_path: Path,
) -> None:
    signing, pub, printed = key
    witness = tmp_path / "witness"
    witness.mkdir()
    served = serve(signing_key=signing, checkpoint_dir=witness)
    for i in range(40):
        call(served.client, f"c{i}")
    size = served.checkpointed()
    status = served.status()
    assert status.checkpoints.state == "ok" and status.checkpoints.signed
    assert status.checkpoints.key_id == "+".join(printed.split("+")[:2])
    assert status.ledger.head_seq >= size and status.publisher.directory == str(witness)
    wait_for(lambda: served.status().publisher.published_size >= size, what="published")
    assert served.metric("mlwitness_checkpoint_size") >= size
    served.stop()  # the last checkpoint, after the final load

    leaves = file_leaves(served.running.ledger_path)
    origin = status.checkpoints.origin
    latest = check.verify_checkpoint((witness / "latest").read_bytes(), origin, [printed])
    assert (latest.size, latest.root) == (len(leaves), reference_root(leaves))
    assert (witness / "checkpoint").read_bytes() == (witness / "latest").read_bytes()
    assert (witness / "checkpoints" / str(latest.size)).is_file()
    result = run_verify(served.running.ledger_path, "--checkpoint", str(witness), "--key",
                        str(pub))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"extends       yes: records 1..{latest.size} give its root" in result.stdout


def test_without_a_key_checkpoints_are_unsigned_and_verify_says_so(
    serve: Callable[..., Served], tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    witness.mkdir()
    served = serve(checkpoint_dir=witness)
    call(served.client, "u0")
    served.checkpointed()
    assert not served.status().checkpoints.signed and served.status().checkpoints.key_id == ""
    served.stop()
    result = run_verify(served.running.ledger_path, "--checkpoint", str(witness / "latest"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signature     unsigned" in result.stdout


# ── a publisher that fails ─────────────────────────────────────────────────────────────


def test_a_missing_directory_fails_publishing_not_serving_and_publishing_recovers(
    serve: Callable[..., Served], tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"  # not mounted yet
    served = serve(checkpoint_dir=witness)
    call(served.client, "m0")
    failing = wait_for(lambda: (s := served.status()).publisher.state == "failing" and s,
                       what="the publisher failing")
    assert "is not a directory" in failing.publisher.last_error
    assert failing.publisher.failures >= 1 and failing.ledger.healthy
    assert served.metric("mlwitness_checkpoint_publish_failures_total") >= 1
    rc = audit(served.target, "status")
    assert rc.returncode == 1 and "publisher     failing" in rc.stdout
    for i in range(5):  # serving is untouched
        call(served.client, f"m{i + 1}")
    witness.mkdir()
    call(served.client, "after")
    wait_for(lambda: served.status().publisher.state == "ok", what="publishing again")
    size = served.checkpointed()
    wait_for(lambda: served.status().publisher.published_size >= size, what="published")
    assert audit(served.target, "status").returncode == 0
    served.stop()
    result = run_verify(served.running.ledger_path, "--checkpoint", str(witness))
    assert result.returncode == 0, result.stdout


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with mounted_small_disk(tmp_path / "disk", "4m", "a full directory") as disk:
        yield disk


def test_a_full_directory_fails_publishing_not_serving_and_recovers_once_freed(
    serve: Callable[..., Served], small_disk: SmallDisk,
) -> None:
    witness = small_disk.root / "witness"
    witness.mkdir()
    served = serve(checkpoint_dir=witness)
    call(served.client, "f0")
    wait_for(lambda: served.status().publisher.state == "ok", what="a first publish")
    small_disk.fill()
    try:
        for i in range(300):  # a new full tile (256 leaves) needs room
            call(served.client, f"f{i + 1}")
        failing = wait_for(lambda: (s := served.status()).publisher.state == "failing" and s,
                           what="the publisher failing on a full disk")
        assert "No space left on device" in failing.publisher.last_error
        assert failing.ledger.healthy  # the ledger is elsewhere: it serves on
    finally:
        small_disk.free()
    call(served.client, "freed")
    wait_for(lambda: served.status().publisher.state == "ok", what="publishing again")
    served.stop()
    result = run_verify(served.running.ledger_path, "--checkpoint", str(witness))
    assert result.returncode == 0, result.stdout


# ── proofs through the audit API ───────────────────────────────────────────────────────


def test_proofs_through_the_api_verify_and_bad_input_is_refused(
    serve: Callable[..., Served], key,
) -> None:
    signing, _, printed = key
    served = serve(signing_key=signing)
    for i in range(30):
        call(served.client, f"p{i}")
    size = served.checkpointed()
    stub = served.stub
    latest = stub.GetCheckpoint(apb.GetCheckpointRequest(), timeout=30)
    signed = check.verify_checkpoint(latest.note.encode(), latest.origin, [printed])
    for ref in (apb.RecordRef(request_id="p3"), apb.RecordRef(seq=1),
                apb.RecordRef(seq=latest.size)):
        proof = stub.InclusionProof(apb.InclusionProofRequest(ref=ref), timeout=30)
        assert proof.tree_size == latest.size and proof.checkpoint.note == latest.note
        check.verify_inclusion(proof.leaf_index, signed.size, bytes.fromhex(proof.leaf_hash),
                               [bytes.fromhex(h) for h in proof.hashes], signed.root)
    older = stub.GetCheckpoint(apb.GetCheckpointRequest(size=size), timeout=30)
    newer = wait_for(lambda: (c := stub.GetCheckpoint(apb.GetCheckpointRequest(), timeout=30)
                              ).size > older.size and c, what="a later checkpoint")
    proof = stub.ConsistencyProof(apb.ConsistencyProofRequest(from_size=older.size), timeout=30)
    assert proof.to_size >= newer.size and proof.from_checkpoint.note == older.note
    check.verify_consistency(older.size, proof.to_size, [bytes.fromhex(h) for h in proof.hashes],
                             bytes.fromhex(older.root_hash), bytes.fromhex(proof.to_root))

    beyond = proof.to_size + 1000
    for rpc, request, code, words in [
        (stub.InclusionProof, apb.InclusionProofRequest(ref=apb.RecordRef(seq=beyond)),
         "FAILED_PRECONDITION", "is not in the tree"),
        (stub.InclusionProof, apb.InclusionProofRequest(ref=apb.RecordRef(seq=-1)),
         "INVALID_ARGUMENT", "positive seq"),
        (stub.InclusionProof, apb.InclusionProofRequest(ref=apb.RecordRef(seq=1),
                                                        tree_size=beyond),
         "FAILED_PRECONDITION", f"no checkpoint of size {beyond}"),
        (stub.InclusionProof, apb.InclusionProofRequest(ref=apb.RecordRef(seq=1), tree_size=-5),
         "INVALID_ARGUMENT", "tree size must be positive"),
        (stub.InclusionProof, apb.InclusionProofRequest(ref=apb.RecordRef(request_id="ghost")),
         "NOT_FOUND", "ghost"),
        (stub.ConsistencyProof, apb.ConsistencyProofRequest(from_size=0),
         "INVALID_ARGUMENT", "empty tree"),
        (stub.ConsistencyProof, apb.ConsistencyProofRequest(from_size=-2),
         "INVALID_ARGUMENT", "must be positive"),
        (stub.ConsistencyProof, apb.ConsistencyProofRequest(from_size=9, to_size=3),
         "INVALID_ARGUMENT", "larger than"),
        (stub.ConsistencyProof, apb.ConsistencyProofRequest(from_size=1, to_size=beyond),
         "FAILED_PRECONDITION", "beyond the tree"),
        (stub.GetCheckpoint, apb.GetCheckpointRequest(size=-1), "INVALID_ARGUMENT",
         "must be positive"),
        (stub.GetCheckpoint, apb.GetCheckpointRequest(size=beyond), "FAILED_PRECONDITION",
         f"no checkpoint of size {beyond}"),
    ]:
        error = rpc_error(rpc, request)
        assert (error.code().name, words in error.details()) == (code, True), error.details()
    served.stop()


def test_the_audit_commands_check_proofs_and_print_their_json_shape(
    serve: Callable[..., Served], key, tmp_path: Path,
) -> None:
    signing, pub, _ = key
    witness = tmp_path / "witness"
    witness.mkdir()
    served = serve(signing_key=signing, checkpoint_dir=witness)
    for i in range(12):
        call(served.client, f"j{i}")
    served.checkpointed()
    kept = tmp_path / "kept"
    wait_for(lambda: (witness / "latest").is_file(), what="published")
    shutil.copy(witness / "latest", kept)
    for args, message in (
        (["status"], apb.StatusResponse), (["checkpoint"], apb.CheckpointResponse),
        (["prove", "j3", "--verifier-key", str(pub)], apb.InclusionProofResponse),
        (["consistency", "--checkpoint", str(kept), "--verifier-key", str(pub)],
         apb.ConsistencyProofResponse),
        (["consistency", "2"], apb.ConsistencyProofResponse),
    ):
        result = audit(served.target, "--json", *args)
        assert result.returncode == 0, (args, result.stderr)
        assert shape_problems(json.loads(result.stdout), message.DESCRIPTOR) == []
    text = audit(served.target, "prove", "seq:2", "--verifier-key", str(pub))
    assert text.returncode == 0 and "verified      OK: record seq 2 is in the tree" in text.stdout
    stranger = Signer.generate("mlwitness").verifier_key()
    refused = audit(served.target, "prove", "seq:2", "--verifier-key", stranger)
    assert refused.returncode == 1 and "no signature by a known key" in refused.stdout
    served.stop()


# ── verify --checkpoint on copies: rewritten, truncated ────────────────────────────────


@pytest.fixture
def published(serve: Callable[..., Served], key, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A stopped sidecar's ledger (300 calls), its published directory, the verifier key."""
    signing, pub, _ = key
    witness = tmp_path / "witness"
    witness.mkdir()
    served = serve(signing_key=signing, checkpoint_dir=witness)
    for i in range(300):
        call(served.client, f"w{i:03d}")
    served.stop()
    return served.running.ledger_path, witness, pub


def test_a_whole_chain_rewrite_with_recomputed_hashes_fails_naming_the_seq(published) -> None:
    ledger, witness, pub = published
    assert run_verify(ledger).returncode == 0
    (seq,) = duckdb.connect(str(ledger), read_only=True).execute(
        "SELECT seq FROM entries WHERE request_id = 'w123'").fetchone()
    rewrite_record(ledger, seq, request_id="forged")
    alone = run_verify(ledger)  # the chain alone: whole again
    assert alone.returncode == 0, alone.stdout
    result = run_verify(ledger, "--checkpoint", str(witness), "--key", str(pub), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["first_bad_seq"] == seq and not report["checkpoint"]["extends"]
    assert f"record seq {seq} no longer matches" in report["problems"][0]["what"]
    shutil.rmtree(witness / "tile")
    ranged = run_verify(ledger, "--checkpoint", str(witness), "--key", str(pub))
    assert ranged.returncode == 1 and "the first record that differs is one of seq" in \
        ranged.stdout


def test_a_truncated_ledger_fails_naming_where_it_ends(published) -> None:
    ledger, witness, pub = published
    con = duckdb.connect(str(ledger))
    (last,) = con.execute("SELECT max(seq) FROM entries").fetchone()
    con.execute("DELETE FROM entries WHERE seq > ?", [last - 10])
    con.close()
    result = run_verify(ledger, "--checkpoint", str(witness), "--key", str(pub))
    assert result.returncode == 1
    assert f"FAILED at seq {last - 9}" in result.stdout
    assert f"records {last - 9}..{last} are missing" in result.stdout


def test_the_standalone_audit_server_answers_proofs_from_the_stored_tree(
    published, tmp_path: Path,
) -> None:
    ledger, witness, pub = published
    copy = tmp_path / "copy.duckdb"
    shutil.copy(ledger, copy)
    latest = check.parse_checkpoint(
        (witness / "latest").read_text().split("\n\n")[0] + "\n")
    with audit_server(copy, log_dir=tmp_path) as server:
        channel, stub = stub_for(f"127.0.0.1:{server.ready['audit_port']}")
        try:
            proof = stub.InclusionProof(apb.InclusionProofRequest(
                ref=apb.RecordRef(request_id="w200")), timeout=30)
            status = stub.Status(apb.StatusRequest(), timeout=30)
        finally:
            channel.close()
    assert proof.tree_size == latest.size and status.checkpoints.state == "read-only"
    assert not status.ledger.writable and status.checkpoints.size == latest.size
    check.verify_inclusion(proof.leaf_index, latest.size, bytes.fromhex(proof.leaf_hash),
                           [bytes.fromhex(h) for h in proof.hashes], latest.root)


# ── kill -9 while checkpointing ────────────────────────────────────────────────────────


class Caller(threading.Thread):
    """Calls a serve process until stopped, remembering every acknowledged request id."""

    def __init__(self, address: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.address, self.prefix = address, prefix
        self.acknowledged: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with grpcclient.InferenceServerClient(self.address) as client:
            for i in range(100_000):  # bounded; the process dies long before
                if self.stop.is_set():
                    return
                request_id = f"{self.prefix}-{i}"
                try:
                    call(client, request_id)
                except grpcclient.InferenceServerException:
                    return  # killed: this one was not acknowledged
                self.acknowledged.append(request_id)


def test_kill_9_during_checkpointing_loses_no_acknowledged_record_and_verifies(
    serve_process: Callable[..., Any], affine_model: Path, key, tmp_path: Path,
) -> None:
    signing, pub, _ = key
    witness, ledger = tmp_path / "witness", tmp_path / "ledger.duckdb"
    witness.mkdir()
    flags = ("--signing-key", str(signing), "--checkpoint-dir", str(witness),
             "--checkpoint-interval", "0.05", "--load-interval", "0.05")
    rng = random.Random(15)
    acknowledged: list[str] = []
    for round_ in range(3):
        process = serve_process(affine_model, ledger, *flags)
        caller = Caller(process.address, f"k{round_}")
        caller.start()
        wait_for(lambda c=caller: len(c.acknowledged) >= 50, what="calls answered")
        time.sleep(rng.uniform(0.05, 0.6))  # somewhere in a checkpoint, or its publishing
        process.kill()
        caller.stop.set()
        caller.join(30)
        acknowledged += caller.acknowledged
        assert not (witness / "latest").exists() or check.parse_checkpoint(
            (witness / "latest").read_text().split("\n\n")[0] + "\n").size > 0
    process = serve_process(affine_model, ledger, *flags)
    assert process.terminate() == 0, process.stderr()
    stored = {rid for (rid,) in duckdb.connect(str(ledger), read_only=True).execute(
        "SELECT request_id FROM entries WHERE kind = 'infer'").fetchall()}
    assert set(acknowledged) <= stored and len(acknowledged) >= 150
    assert "checkpoints stopped" not in process.stderr()
    result = run_verify(ledger, "--checkpoint", str(witness), "--key", str(pub))
    assert result.returncode == 0, result.stdout + result.stderr
    leaves = file_leaves(ledger)
    latest = check.parse_checkpoint((witness / "latest").read_text().split("\n\n")[0] + "\n")
    assert (latest.size, latest.root) == (len(leaves), reference_root(leaves))
