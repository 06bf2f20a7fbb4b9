"""No decision without a record: SIGKILL, SIGTERM, a failing disk, a full backlog.

The process tests run the real `mlwitness serve` command; the disk-failure tests inject
the fault at the journal's seam for its system calls (tests/support/disk_support.py), and nothing
else is replaced. tests/integration/test_disk_full.py has the ledger's side of a failing disk.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import pyarrow as pa
import pytest
import tritonclient.grpc as grpcclient
from conftest import SidecarFactory, SlowModel
from disk_support import FailingCalls, journals_on
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidecar import RunningSidecar, free_ports, read_ledger, run_verify
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from mlwitness.ledger import chain as chain_module
from mlwitness.ledger import journal as journal_module
from mlwitness.ledger.database import Database
from mlwitness.ledger.record import Record
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.server import sidecar as sidecar_module

X1 = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def affine_input(x: np.ndarray = X1) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for_health(address: str, want: int, within_s: float) -> float:
    """Poll Check until it answers `want`; return how long that took."""
    started = time.monotonic()
    for _ in range(int(within_s / 0.05) + 1):
        if health_status(address) == want:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"health did not become {want} within {within_s} s")


# ── SIGKILL ────────────────────────────────────────────────────────────────────────────


def test_sigkill_under_load_loses_no_acknowledged_call(
    serve_process, affine_model: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "kill.duckdb"
    server = serve_process(affine_model, ledger)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []

    def caller(t: int) -> None:
        deadline = time.monotonic() + 10  # bounded in time and count
        with grpcclient.InferenceServerClient(server.address) as client:
            for i in range(20_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                rid = f"t{t}-{i}"
                try:
                    client.infer("affine_fp32", affine_input(), request_id=rid, client_timeout=5)
                except InferenceServerException as exc:
                    failures.append(exc.status())
                    return  # the server is gone
                with lock:
                    acknowledged.append(rid)

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(6)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)
    assert server.kill() == -9
    stop.set()
    for worker in workers:
        worker.join(15)
    assert not any(w.is_alive() for w in workers)
    assert len(acknowledged) >= 100, "too little load to mean anything"
    assert set(failures) <= {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}

    # Straight after the kill: DuckDB plus the journal tail hold every acknowledged call.
    result = run_verify(ledger, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["head_seq"] == report["records"] + report["journal_records"]
    assert report["head_seq"] >= len(acknowledged)

    # A restart loads the journal tail into DuckDB and continues the chain.
    restarted = serve_process(affine_model, ledger)
    with grpcclient.InferenceServerClient(restarted.address) as client:
        client.infer("affine_fp32", affine_input(), request_id="after-restart")
    assert restarted.terminate() == 0
    assert not restarted.journal_dir.exists()

    ids = {r[0] for r in read_ledger(ledger, "SELECT request_id FROM records")}
    assert set(acknowledged) <= ids
    rows = read_ledger(ledger, "SELECT seq, request_id FROM records ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, report["head_seq"] + 2))
    assert rows[-1][1] == "after-restart"
    final = run_verify(ledger, "--json")
    assert final.returncode == 0, final.stdout
    assert json.loads(final.stdout)["records"] == report["head_seq"] + 1


def test_sigkill_before_any_call_then_again_after_calls_loses_nothing(
    serve_process, affine_model: Path, tmp_path: Path
) -> None:
    """A start creates the journal segment the next record goes to. Killed before any call,
    that empty segment is still there at the next start, named for the same seq: the new
    run must not lose the segment it then writes to (it once unlinked it as "loaded")."""
    ledger = tmp_path / "twice.duckdb"
    assert serve_process(affine_model, ledger).kill() == -9
    server = serve_process(affine_model, ledger)
    with grpcclient.InferenceServerClient(server.address) as client:
        for i in range(5):
            client.infer("affine_fp32", affine_input(), request_id=f"r{i}")
    assert server.kill() == -9

    report = json.loads(run_verify(ledger, "--json").stdout)
    assert (report["head_seq"], report["records"] + report["journal_records"]) == (5, 5)
    restarted = serve_process(affine_model, ledger)
    assert restarted.terminate() == 0
    ids = [r[0] for r in read_ledger(ledger, "SELECT request_id FROM records ORDER BY seq")]
    assert ids == [f"r{i}" for i in range(5)]


# ── SIGTERM ────────────────────────────────────────────────────────────────────────────


def test_sigterm_drains_in_flight_calls_and_exits_0(
    serve_process, slow_model: SlowModel, tmp_path: Path
) -> None:
    ledger = tmp_path / "term.duckdb"
    server = serve_process(slow_model.path, ledger, "--drain-timeout", "20")
    results: dict[int, tuple[float, np.ndarray | str]] = {}
    x = slow_model.input(seconds=1.0)
    with grpcclient.InferenceServerClient(server.address) as client:  # already serving
        warm = slow_model.input(seconds=0.02)
        tensor = grpcclient.InferInput("x", list(warm.shape), "FP32")
        tensor.set_data_from_numpy(warm)
        client.infer("slow", [tensor], request_id="warm-up")

    def caller(t: int) -> None:
        with grpcclient.InferenceServerClient(server.address) as client:
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                result = client.infer("slow", [tensor], request_id=f"slow-{t}", client_timeout=30)
                results[t] = (time.monotonic(), result.as_numpy("y"))
            except InferenceServerException as exc:
                results[t] = (time.monotonic(), exc.status())

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.4)  # the calls are running in the sidecar now
    terminated_at = time.monotonic()
    server.process.send_signal(15)
    for worker in workers:
        worker.join(30)

    assert server.process.wait(timeout=30) == 0
    for t in range(3):
        finished_at, y = results[t]
        assert isinstance(y, np.ndarray), y  # answered, not refused
        assert y.shape == x.shape
        assert finished_at > terminated_at  # it was in flight when SIGTERM came
    assert not server.journal_dir.exists()
    rows = read_ledger(ledger, "SELECT request_id, status FROM records ORDER BY request_id")
    assert rows == [("slow-0", "OK"), ("slow-1", "OK"), ("slow-2", "OK"), ("warm-up", "OK")]
    assert run_verify(ledger).returncode == 0


def test_sigterm_on_an_idle_sidecar_exits_0_and_leaves_no_journal(
    serve_process, affine_model: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "idle.duckdb"
    server = serve_process(affine_model, ledger)
    with grpcclient.InferenceServerClient(server.address) as client:
        for i in range(5):
            client.infer("affine_fp32", affine_input(), request_id=f"idle-{i}")
    started = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - started < 5
    assert not server.journal_dir.exists()
    assert read_ledger(ledger, "SELECT count(*) FROM records") == [(5,)]


# ── a failing disk ─────────────────────────────────────────────────────────────────────


def scraped_requests(metrics_port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        scraped = response.read().decode()
    return {line.rsplit(" ", 1)[0].split('status="')[1][:-2]: float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines() if line.startswith("mlwitness_requests_total{")}


def test_a_full_disk_gives_unavailable_until_there_is_room_then_serves_again(
    make_sidecar: SidecarFactory, affine_model: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    disk = FailingCalls("pwrite", errno.ENOSPC)
    monkeypatch.setattr(journal_module, "Journal", journals_on(disk))
    monkeypatch.setattr(chain_module, "JOURNAL_RETRY_S", 0.1)
    (metrics_port,) = free_ports(1)
    sidecar: RunningSidecar = make_sidecar(affine_model, metrics_port=metrics_port)
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        for i in range(3):
            client.infer("affine_fp32", affine_input(), request_id=f"before-{i}")
        disk.failing.set()
        with pytest.raises(InferenceServerException) as info:
            client.infer("affine_fp32", affine_input(), request_id="lost-disk")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "No space left on device" in info.value.message()
        wait_for_health(sidecar.address, health_pb2.HealthCheckResponse.NOT_SERVING, 5)
        assert client.is_server_ready() is False
        # not a fault a restart mends: the pod must not be killed for it
        assert health_status(sidecar.address, "liveness") == health_pb2.HealthCheckResponse.SERVING

        disk.failing.clear()  # room again: the ledger finds it by itself
        wait_for_health(sidecar.address, health_pb2.HealthCheckResponse.SERVING, 10)
        client.infer("affine_fp32", affine_input(), request_id="after-room")
    assert scraped_requests(metrics_port) == {"OK": 4.0, "UNAVAILABLE": 1.0}
    sidecar.stop()

    rows = read_ledger(sidecar.ledger_path, "SELECT seq, request_id FROM records ORDER BY seq")
    assert rows == [(1, "before-0"), (2, "before-1"), (3, "before-2"), (4, "after-room")]
    assert run_verify(sidecar.ledger_path).returncode == 0


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        ("fdatasync", errno.EIO, "Input/output error"),
        ("fdatasync", errno.ENOSPC, "No space left on device"),  # ext4's delayed allocation
    ],
)
def test_a_failed_flush_gives_unavailable_then_fails_liveness_and_a_restart_serves(
    make_sidecar: SidecarFactory,
    affine_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    error: int,
    says: str,
) -> None:
    disk = FailingCalls(call, error)
    monkeypatch.setattr(journal_module, "Journal", journals_on(disk))
    monkeypatch.setattr(sidecar_module, "LEDGER_FAILURE_RESTART_S", 0.5)
    (metrics_port,) = free_ports(1)
    sidecar: RunningSidecar = make_sidecar(affine_model, metrics_port=metrics_port)
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        for i in range(3):
            client.infer("affine_fp32", affine_input(), request_id=f"before-{i}")
        assert health_status(sidecar.address) == health_pb2.HealthCheckResponse.SERVING

        disk.failing.set()
        with pytest.raises(InferenceServerException) as info:
            client.infer("affine_fp32", affine_input(), request_id="lost-disk")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert says in info.value.message()

        wait_for_health(sidecar.address, health_pb2.HealthCheckResponse.NOT_SERVING, 5)
        assert client.is_server_ready() is False

        disk.failing.clear()  # the disk seems back; what the failed flush lost is unknown
        with pytest.raises(InferenceServerException) as info:
            client.infer("affine_fp32", affine_input(), request_id="after-failure")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "mlwitness restarted" in info.value.message()
        for _ in range(100):  # liveness turns NOT_SERVING: the orchestrator restarts it
            if health_status(sidecar.address, "liveness") != health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.05)
        assert health_status(sidecar.address, "liveness") == (
            health_pb2.HealthCheckResponse.NOT_SERVING)
    # the refusals are counted where an alert on UNAVAILABLE looks for them
    assert scraped_requests(metrics_port) == {"OK": 3.0, "UNAVAILABLE": 2.0}
    sidecar.stop()

    rows = read_ledger(sidecar.ledger_path, "SELECT request_id, status FROM records ORDER BY seq")
    assert rows == [("before-0", "OK"), ("before-1", "OK"), ("before-2", "OK")]
    assert run_verify(sidecar.ledger_path).returncode == 0

    # Same ledger, the disk works again. The refused call's record was written (in part or
    # unflushed) when the disk failed; it must not come back as a decision.
    monkeypatch.undo()
    restarted = make_sidecar(affine_model)
    with grpcclient.InferenceServerClient(restarted.address) as client:
        client.infer("affine_fp32", affine_input(), request_id="restarted")
    assert restarted.query("SELECT seq, request_id FROM records WHERE seq > 3") == [
        (4, "restarted")
    ]
    assert health_status(restarted.address) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(restarted.address, "liveness") == health_pb2.HealthCheckResponse.SERVING


# ── backpressure ───────────────────────────────────────────────────────────────────────


def test_full_backlog_makes_callers_wait_never_drops(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    # One unloaded record at most, and a loader that would otherwise idle for 10 s.
    sidecar = make_sidecar(affine_model, max_backlog=1, load_interval=10.0)
    started = time.monotonic()
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        for i in range(20):
            client.infer("affine_fp32", affine_input(), request_id=f"bp-{i}", client_timeout=8)
    assert time.monotonic() - started < 5  # a full backlog triggers a load at once
    assert sidecar.query("SELECT count(*) FROM records") == [(20,)]


# ── the loader and the journal's housekeeping ──────────────────────────────────────────


class RefusingDatabase(Database):
    """DuckDB refuses every batch holding seq 3: the fault is injected by subclassing, as
    FailingJournal does, and the rest of the writer is the real one."""

    def insert(self, table: pa.Table) -> None:
        if 3 in table.column("seq").to_pylist():
            raise duckdb.IOException("IO Error: could not write to the database file")
        super().insert(table)


class RefusingWriter(LedgerWriter):
    database = RefusingDatabase


def test_a_load_that_fails_at_shutdown_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "gap.duckdb"
    writer = RefusingWriter(path, WriterOptions(load_batch=2))
    writer.open()
    for i in range(6):
        writer.append_blocking(Record(request_id=f"r{i + 1}"))
    writer.close()  # gives up on the batch holding 3: must not load any batch past it

    report = verify(path)
    assert not report.problems, report.problems
    assert report.records == 2 and report.journal_records == 4
    assert report.head_seq == 6

    writer = LedgerWriter(path)  # DuckDB works again: the journal tail is loaded
    writer.open()
    writer.close()
    report = verify(path)
    assert not report.problems and (report.records, report.journal_records) == (6, 0)


def test_a_journal_segment_that_cannot_be_deleted_fails_no_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    path = tmp_path / "stuck.duckdb"
    writer = LedgerWriter(path, WriterOptions(segment_bytes=2_000, load_batch=4))
    writer.open()
    for i in range(60):  # many small segments
        writer.append_blocking(Record(request_id=f"r{i}"))
    writer.sync()  # all loaded: the next write retires every segment but the active one
    writer.append_blocking(Record(request_id="r60"))
    assert writer.healthy
    assert "cannot delete loaded journal segment" in caplog.text
    assert len(list(journal_module.journal_dir(path).glob("*.wal"))) > 2  # kept, not lost
    monkeypatch.undo()
    writer.close()
    rows = writer_rows(path)
    assert rows == [(i + 1, f"r{i}", "OK") for i in range(61)]
    assert not journal_module.journal_dir(path).exists()


def writer_rows(path: Path) -> list[tuple]:
    return read_ledger(path, "SELECT seq, request_id, status FROM entries ORDER BY seq")


class HeldInserts(Database):
    """Inserts that wait for `release` first: the backlog stays full."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def insert(self, table: pa.Table) -> None:
        self.release.wait(30)
        super().insert(table)


class HeldLoader(LedgerWriter):
    database = HeldInserts

    @property
    def release(self) -> threading.Event:
        assert isinstance(self._db, HeldInserts)
        return self._db.release


def test_a_caller_cancelled_while_the_backlog_is_full_still_gets_its_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "full.duckdb"
    writer = HeldLoader(path, WriterOptions(max_unloaded=1, backpressure_timeout_s=20))
    writer.open()

    async def scenario() -> None:
        await writer.append(Record(request_id="fills"))
        waiting = asyncio.create_task(writer.append(Record(request_id="gave-up")))
        await asyncio.sleep(0.2)  # it now waits for space
        assert not waiting.done()
        waiting.cancel()
        await asyncio.sleep(0.1)
        writer.release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    try:
        asyncio.run(scenario())
    finally:
        writer.release.set()
        writer.close()
    assert [r[1] for r in writer_rows(path)] == ["fills", "gave-up"]


@pytest.mark.parametrize("leave", ["deadline", "cancel"])
def test_a_caller_that_leaves_while_its_record_awaits_the_commit_is_recorded_so(
    make_sidecar: SidecarFactory, affine_model: Path, leave: str
) -> None:
    """The record of an answered call waits in the open group-commit batch; a caller whose
    deadline passes (or who cancels) meanwhile gets no answer. The record said OK (with
    the response) all the same; it must say what the caller got."""
    sidecar = make_sidecar(affine_model)
    assert sidecar.sidecar.ledger is not None
    sidecar.sidecar.ledger._chain.linger.seconds = 1.5  # a long commit wait, to leave within
    request = service_pb2.ModelInferRequest(model_name="affine_fp32", id="leaver")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    with grpc.insecure_channel(sidecar.address) as channel:
        method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        if leave == "deadline":
            with pytest.raises(grpc.RpcError) as info:
                method(request.SerializeToString(), timeout=0.4)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            call = method.future(request.SerializeToString(), timeout=30)
            time.sleep(0.4)
            assert call.cancel()
    expected = "DEADLINE_EXCEEDED" if leave == "deadline" else "CANCELLED"
    rows = []
    for _ in range(50):  # the batch commits after its 1.5 s linger
        rows = sidecar.query("SELECT status, octet_length(response) FROM entries "
                             "WHERE request_id = 'leaver'")
        if rows:
            break
        time.sleep(0.1)
    assert rows == [(expected, 0)]
    # the answer it never got is kept as withheld, and its outputs are read from it
    ((detail, outputs),) = sidecar.query("SELECT detail, outputs FROM entries "
                                         "WHERE request_id = 'leaver'")
    withheld = service_pb2.ModelInferResponse.FromString(
        base64.b64decode(json.loads(detail)["withheld_response"]))
    assert withheld.id == "leaver" and len(outputs) == 1
    sidecar.stop()
    report = verify(sidecar.ledger_path)
    assert report.ok and report.not_covered == [], (report.problems, report.not_covered)
