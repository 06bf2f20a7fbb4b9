"""Every ModelInfer call is exactly one ledger record, with the exact bytes, chained."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import grpc
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
from conftest import CreditModel, SidecarFactory
from sidecar import RunningSidecar, raw_rpc, read_ledger, run_verify
from tritonclient.grpc import service_pb2

from mlwitness.codec import tensor_from_array
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.ledger import journal, schema, store
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record, chain_hash, encode, genesis_hash
from mlwitness.ledger.writer import LedgerWriter, WriterOptions

COLUMNS = (
    "seq",
    "kind",
    "request_id",
    "received_us",
    "responded_us",
    "model_name",
    "model_version",
    "model_sha256",
    "env_id",
    "peer",
    "metadata",
    "status",
    "message",
    "violations",
    "detail",
    "request",
    "response",
    "prev_hash",
    "hash",
    "format",
    "salt",
)
X1 = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def affine_input(x: np.ndarray = X1) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_n_calls_give_exactly_n_records(sidecar: RunningSidecar, affine_model: Path) -> None:
    n = 40
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        for i in range(n):
            x = np.full((1 + i % 5, 4), i, np.float32)
            client.infer("affine_fp32", affine_input(x), request_id=f"call-{i}")
    sidecar.stop()

    rows = read_ledger(
        sidecar.ledger_path,
        "SELECT seq, request_id, status, batch_size, model_sha256 FROM records ORDER BY seq",
    )
    assert len(rows) == n
    assert [r[0] for r in rows] == list(range(1, n + 1))
    assert [r[1] for r in rows] == [f"call-{i}" for i in range(n)]
    assert {r[2] for r in rows} == {"OK"}
    assert [r[3] for r in rows] == [1 + i % 5 for i in range(n)]
    assert {r[4] for r in rows} == {sha256_file(affine_model)}
    assert not sidecar.journal_dir.exists()  # a clean stop leaves everything in DuckDB


def test_concurrent_calls_give_exactly_one_record_each(sidecar: RunningSidecar) -> None:
    threads, per_thread = 8, 25
    acknowledged: list[str] = []
    errors: list[BaseException] = []

    def caller(t: int) -> None:
        try:
            with grpcclient.InferenceServerClient(sidecar.address) as client:
                for i in range(per_thread):
                    rid = f"t{t}-{i}"
                    client.infer("affine_fp32", affine_input(), request_id=rid, client_timeout=10)
                    acknowledged.append(rid)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors
    assert len(acknowledged) == threads * per_thread

    rows = sidecar.query("SELECT seq, request_id FROM records ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, threads * per_thread + 1))
    assert sorted(r[1] for r in rows) == sorted(acknowledged)
    assert sidecar.sidecar.ledger is not None
    assert sidecar.sidecar.ledger.stats.appended == threads * per_thread


def test_stored_bytes_are_exactly_the_bytes_sent_and_received(
    sidecar: RunningSidecar, channel: grpc.Channel
) -> None:
    # Valid protobuf in an order no serializer writes (inputs before model_name, id last):
    # re-serialising the parsed message would give different bytes.
    body = service_pb2.ModelInferRequest()
    body.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    body.raw_input_contents.append(np.arange(8, dtype=np.float32).tobytes())
    sent = (
        body.SerializeToString()
        + service_pb2.ModelInferRequest(model_name="affine_fp32").SerializeToString()
        + service_pb2.ModelInferRequest(id="exact-bytes").SerializeToString()
    )
    parsed = service_pb2.ModelInferRequest.FromString(sent)
    assert parsed.SerializeToString() != sent  # the test means something
    assert parsed.id == "exact-bytes"

    received = raw_rpc(channel, "ModelInfer", sent, metadata=[("x-caller", "bytes-test")])

    rows = sidecar.query("SELECT request, response FROM entries WHERE request_id = 'exact-bytes'")
    assert len(rows) == 1
    request, response = rows[0]
    assert bytes(request) == sent
    assert bytes(response) == received
    assert service_pb2.ModelInferResponse.FromString(received).id == "exact-bytes"


def test_typed_request_bytes_are_stored_exactly(
    sidecar: RunningSidecar, channel: grpc.Channel
) -> None:
    request = service_pb2.ModelInferRequest(model_name="affine_fp32", id="typed-bytes")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([0.1, -0.0, 1e30, 7.0])
    sent = request.SerializeToString()
    received = raw_rpc(channel, "ModelInfer", sent)
    rows = sidecar.query("SELECT request, response FROM entries WHERE request_id = 'typed-bytes'")
    assert [(bytes(a), bytes(b)) for a, b in rows] == [(sent, received)]


def _spec_hashed_v2(row: dict) -> bytes:
    """A format-2 record's hashed bytes built from docs/ledger.md's spec alone (not with
    mlwitness.ledger.record): head, the clear fields, then the payload commitment."""
    def lp(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    clear = b"".join(lp(row[name].encode()) for name in (
        "kind", "request_id", "model_name", "model_version", "model_sha256", "env_id", "peer",
        "metadata", "status"))
    payload = b"".join(lp(part) for part in (
        row["message"].encode(), row["violations"].encode(), row["detail"].encode(),
        bytes(row["request"]), bytes(row["response"])))
    commitment = hashlib.sha256(b"mlwitness-payload-v2" + bytes(row["salt"]) + payload).digest()
    head = struct.pack(">BqqqI", 2, row["seq"], row["received_us"], row["responded_us"], 10)
    return head + clear + lp(commitment)


def test_records_are_hash_chained_from_the_ledgers_genesis(sidecar: RunningSidecar) -> None:
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        for i in range(5):
            client.infer("affine_fp32", affine_input(), request_id=f"chain-{i}")
    sidecar.stop()

    (chain_id,) = read_ledger(
        sidecar.ledger_path, "SELECT value FROM ledger_meta WHERE key = 'chain_id'"
    )[0]
    rows = read_ledger(
        sidecar.ledger_path,
        f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY seq",
    )
    assert len(rows) == 5
    prev = genesis_hash(chain_id)
    for values in rows:
        row = dict(zip(COLUMNS, values, strict=True))
        assert row["format"] == 2 and len(row["salt"]) == 16  # record format 2, salted
        record = Record(**{name: row[name] for name in COLUMNS[:15]})
        record.request, record.response = bytes(row["request"]), bytes(row["response"])
        record.salt = bytes(row["salt"])
        assert bytes(row["prev_hash"]) == prev
        assert bytes(row["hash"]) == chain_hash(prev, encode(record))
        assert bytes(row["hash"]) == hashlib.sha256(prev + _spec_hashed_v2(row)).digest()
        prev = bytes(row["hash"])


def test_records_view_carries_the_documented_columns(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    sidecar = make_sidecar(affine_model, record_metadata=["x-caller"])
    before = datetime.now(UTC).replace(tzinfo=None)
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        client.infer(
            "affine_fp32",
            affine_input(np.ones((3, 4), np.float32)),
            request_id="cols",
            headers={"x-caller": "alice", "x-secret": "hunter2"},
        )
    after = datetime.now(UTC).replace(tzinfo=None)

    rows = sidecar.query(
        "SELECT seq, request_id, received_at, model_name, model_version, model_sha256, status, "
        "message, latency_us, caller, metadata, batch_size, env_id, hash FROM records"
    )
    assert len(rows) == 1
    (
        seq,
        rid,
        received_at,
        name,
        version,
        sha,
        status,
        message,
        latency,
        caller,
        metadata,
        batch,
        env_id,
        digest,
    ) = rows[0]
    assert (seq, rid, name, version, status, message, batch) == (
        1,
        "cols",
        "affine_fp32",
        "1",
        "OK",
        "",
        3,
    )
    assert sha == sha256_file(affine_model)
    assert before <= received_at <= after
    assert 0 <= latency < 5_000_000
    assert caller.startswith("ipv4:127.0.0.1:")
    assert json.loads(metadata) == {"x-caller": "alice"}  # only the configured keys
    assert len(digest) == 64 and digest == digest.lower()

    (fingerprint,) = sidecar.query(
        "SELECT fingerprint FROM environments WHERE env_id = ?", [env_id]
    )[0]
    env = json.loads(fingerprint)
    assert env["onnxruntime"] == onnxruntime.__version__
    assert env["numpy"] == np.__version__
    assert env["execution_providers"] == ["CPUExecutionProvider"]


def test_decoded_inputs_and_outputs_are_queryable_by_feature_name(
    make_sidecar: SidecarFactory, credit_model: CreditModel
) -> None:
    features = list(credit_model.builder.FEATURES)
    sidecar = make_sidecar(credit_model.path, features=features)
    x = credit_model.features(16, seed=21)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        result = client.infer("credit", [tensor], request_id="decoded")
    labels = result.as_numpy("label")
    probabilities = result.as_numpy("probabilities")

    rows = sidecar.query(
        "SELECT row, inputs['income'], inputs['fico'], outputs['label'], "
        "outputs['probabilities_1'] FROM decisions WHERE request_id = 'decoded' ORDER BY row"
    )
    assert len(rows) == 16
    for i, (row, income, fico, label, p1) in enumerate(rows):
        assert row == i
        assert income == float(x[i, features.index("income")])
        assert fico == float(x[i, features.index("fico")])
        assert label == float(labels[i])
        assert p1 == float(probabilities[i, 1])


def test_string_inputs_are_queryable_as_text(
    make_sidecar: SidecarFactory, model_paths: dict[str, Path]
) -> None:
    sidecar = make_sidecar(model_paths["strings"])
    values = np.array(["red", "grün", "purple"], dtype=object)
    tensor = grpcclient.InferInput("category", [3], "BYTES")
    tensor.set_data_from_numpy(values)
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        client.infer("strings", [tensor], request_id="text")
    rows = sidecar.query(
        "SELECT [m['category'] FOR m IN inputs_text], [m['code'] FOR m IN outputs] "
        "FROM records WHERE request_id = 'text'"
    )
    assert rows == [(["red", "grün", "purple"], [0.0, -1.0, -1.0])]


def test_model_bytes_are_stored_once_under_their_sha256(
    make_sidecar: SidecarFactory, affine_model: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "models.duckdb"
    for _ in range(2):  # a restart on the same ledger must not store the model again
        sidecar = make_sidecar(affine_model, ledger=ledger)
        with grpcclient.InferenceServerClient(sidecar.address) as client:
            client.infer("affine_fp32", affine_input())
        sidecar.stop()
    rows = read_ledger(ledger, "SELECT sha256, name, version, onnx, signature FROM models")
    assert len(rows) == 1
    sha, name, version, onnx, signature = rows[0]
    assert bytes(onnx) == affine_model.read_bytes()
    assert sha == sha256_file(affine_model)
    assert (name, version) == ("affine_fp32", "1")
    assert json.loads(signature)["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert read_ledger(ledger, "SELECT count(*) FROM records WHERE model_sha256 = ?", [sha]) == [
        (2,)
    ]


def test_restart_continues_the_chain(
    make_sidecar: SidecarFactory, affine_model: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "restart.duckdb"
    first = make_sidecar(affine_model, ledger=ledger)
    with grpcclient.InferenceServerClient(first.address) as client:
        for i in range(3):
            client.infer("affine_fp32", affine_input(), request_id=f"run1-{i}")
    first.stop()
    (chain_id_before,) = read_ledger(
        ledger, "SELECT value FROM ledger_meta WHERE key = 'chain_id'"
    )[0]
    (last_hash,) = read_ledger(ledger, "SELECT hash FROM entries WHERE seq = 3")[0]

    second = make_sidecar(affine_model, ledger=ledger)
    with grpcclient.InferenceServerClient(second.address) as client:
        for i in range(2):
            client.infer("affine_fp32", affine_input(), request_id=f"run2-{i}")
    second.stop()

    rows = read_ledger(ledger, "SELECT seq, request_id, prev_hash FROM entries ORDER BY seq")
    assert [(r[0], r[1]) for r in rows] == [
        (1, "run1-0"),
        (2, "run1-1"),
        (3, "run1-2"),
        (4, "run2-0"),
        (5, "run2-1"),
    ]
    assert bytes(rows[3][2]) == bytes(last_hash)
    assert read_ledger(ledger, "SELECT value FROM ledger_meta WHERE key = 'chain_id'") == [
        (chain_id_before,)
    ]
    result = run_verify(ledger, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["records"], report["head_seq"]) == (True, 5, 5)


@pytest.mark.parametrize("durability", ["fsync", "write"])
def test_both_durability_modes_record_every_call(
    make_sidecar: SidecarFactory, affine_model: Path, durability: str
) -> None:
    sidecar = make_sidecar(affine_model, durability=durability)
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        for i in range(10):
            client.infer("affine_fp32", affine_input(), request_id=f"{durability}-{i}")
    sidecar.stop()
    assert read_ledger(sidecar.ledger_path, "SELECT count(*) FROM records") == [(10,)]


def test_records_are_queryable_while_serving(sidecar: RunningSidecar) -> None:
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        client.infer("affine_fp32", affine_input(), request_id="live-1")
        started = time.monotonic()
        assert sidecar.sync() == 1  # acknowledged records reach DuckDB on demand
        assert time.monotonic() - started < 5
        client.infer("affine_fp32", affine_input(), request_id="live-2")
    assert sidecar.query("SELECT request_id FROM records ORDER BY seq") == [
        ("live-1",),
        ("live-2",),
    ]


def test_a_model_hash_prefix_resolves_only_when_one_stored_model_has_it(
    tmp_path: Path,
) -> None:
    """store.resolve_model on a real ledger file holding two models whose hashes share
    their first 8 digits (rows written as the writer would, with made-up digests)."""
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    schema.create(con)
    shas = ["abcdef01" + "0" * 56, "abcdef01" + "1" * 56]
    for sha in shas:
        con.execute("INSERT INTO models VALUES (?, 'm', '1', ?, '{}', 0)", [sha, b"x"])
    assert store.resolve_model(con, "ABCDEF011") == shas[1]
    assert store.resolve_model(con, shas[0].upper()) == shas[0]
    with pytest.raises(InvalidInput, match="several"):
        store.resolve_model(con, "abcdef01")
    with pytest.raises(FailedPrecondition, match="starting abcdef02"):
        store.resolve_model(con, "abcdef02")
    con.close()


def test_batch_size_and_decision_rows_count_non_tabular_inputs_by_their_outputs(
    tmp_path: Path,
) -> None:
    """Three images in, three labels out: three rows, not zero (the inputs are not
    tabular, so they have no SQL columns)."""
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="write"))
    writer.open()
    writer.append_blocking(Record(
        request_id="img", received_us=1, model_name="m",
        inputs=[tensor_from_array("image", np.zeros((3, 4, 4, 3), np.float32))],
        outputs=[tensor_from_array("label", np.array([1, 0, 1], np.int64))]))
    writer.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        listed, _ = LedgerReader(con.cursor, lambda: None).list(Filters())
        assert [r["batch_size"] for r in listed] == [3]  # the audit API says the same
        assert con.execute("SELECT batch_size FROM records").fetchall() == [(3,)]
        assert con.execute("SELECT row, outputs['label'] FROM decisions ORDER BY row"
                           ).fetchall() == [(0, 1.0), (1, 0.0), (2, 1.0)]
    finally:
        con.close()


def test_the_ledger_never_vacuums_its_append_only_tables(tmp_path: Path) -> None:
    # DuckDB's checkpoint vacuum re-merged `entries` row groups at every automatic
    # checkpoint, at a cost growing with the table (bench/bench_duckdb_load.py: 2x the CPU
    # per loaded record, second-long checkpoints, a 1.6x larger file). Nothing in a ledger
    # is ever deleted, so there is nothing to vacuum: every read-write connection turns it off.
    con = schema.connect(tmp_path / "ledger.duckdb")
    try:
        assert con.execute("SELECT current_setting('max_vacuum_tasks')").fetchone()[0] == 0
    finally:
        con.close()
    assert duckdb.connect().execute(
        "SELECT current_setting('max_vacuum_tasks')").fetchone()[0] > 0  # DuckDB's default


def test_the_ledgers_duckdb_memory_is_capped(make_sidecar: SidecarFactory,
                                             affine_model: Path, tmp_path: Path) -> None:
    # With DuckDB's default memory_limit (80 % of RAM) its buffer pool kept every block of
    # the ledger it had read or written: at 8 callers the sidecar grew by ~14 MiB a minute,
    # as fast as its DuckDB file (bench/bench_memory.py). The cap makes it evict them.
    capped = make_sidecar(affine_model)
    assert capped.query("SELECT current_setting('memory_limit')") == [("64.0 MiB",)]
    chosen = make_sidecar(affine_model, ledger=tmp_path / "chosen.duckdb",
                          duckdb_memory_bytes=96 << 20)
    assert chosen.query("SELECT current_setting('memory_limit')") == [("96.0 MiB",)]
    assert duckdb.connect().execute("SELECT current_setting('memory_limit')").fetchall() != [
        ("64.0 MiB",)]  # not DuckDB's default


def test_new_ledger_files_are_not_for_other_users(tmp_path: Path) -> None:
    # DuckDB creates the ledger and its .wal itself (the .wal again after each checkpoint),
    # with 0666 less the umask: under the common 022 they were world-readable, while they
    # hold every caller's request and response.
    previous = os.umask(0o022)
    try:
        path = tmp_path / "ledgers" / "ledger.duckdb"
        writer = LedgerWriter(path, WriterOptions(load_interval_s=0.05))
        writer.open()
        try:
            writer.append_blocking(Record(request_id="first"))
            writer.sync()
            writer.write(lambda con: con.execute("CHECKPOINT"))  # the .wal goes …
            writer.append_blocking(Record(request_id="second"))
            writer.sync()  # … and comes back, made by the loader thread
            created = [path, path.with_name(path.name + ".wal"), path.parent,
                       journal.journal_dir(path),
                       *journal.segment_paths(journal.journal_dir(path))]
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in created}
        finally:
            writer.close()
    finally:
        os.umask(previous)
    assert len(modes) == 5
    assert {name: mode & 0o027 for name, mode in modes.items()} == dict.fromkeys(modes, 0)
    assert modes["ledger.duckdb"] == modes["ledger.duckdb.wal"] == 0o640
