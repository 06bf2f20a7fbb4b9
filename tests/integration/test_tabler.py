"""The ledger's table builder process (ledger/tabler.py): rows built from the journal by a
child process equal rows built in-process from the records in memory, and when the child
fails the writer builds them itself, losing nothing."""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sidecar import read_ledger

from mlwitness.codec import encode_inputs, encode_outputs, tensor_from_array
from mlwitness.errors import DataLoss
from mlwitness.ledger import journal as journal_mod
from mlwitness.ledger.database import Database
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.ledger.tabler import (
    GIVE_UP_AFTER,
    JournalTail,
    Tabler,
    TablerFailed,
    decoder_path,
)
from mlwitness.ledger.tensors import decode_record_tensors, withhold
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.protocol import inference as pb

FEATURES = ("income", "age", "debt")
TABULATOR = Tabulator({"x": FEATURES})
DECODED = ("inputs", "inputs_text", "outputs", "outputs_text", "parameters")


def make_record(i: int, *, status: str = "OK", rows: int = 1) -> Record:
    """A ModelInfer record as the sidecar makes it: bytes, and the tensors decoded from
    them kept in memory. A call refused after the model ran keeps the response it would
    have had as withheld, not as sent."""
    rng = np.random.default_rng(i)
    x = tensor_from_array("x", rng.normal(size=(rows, 3)).astype(np.float32))
    band = tensor_from_array("band", np.array([f"b{i % 3}".encode()] * rows, dtype=object))
    request = pb.ModelInferRequest(model_name="credit", id=f"r{i}")
    request.parameters["segment"].string_param = f"s{i % 2}"
    encode_inputs(request, [x, band], raw=i % 2 == 0)
    label = tensor_from_array("label", (rng.random(rows) < 0.5).astype(np.int64))
    prob = tensor_from_array("prob", rng.random((rows, 2)).astype(np.float32))
    response = pb.ModelInferResponse(model_name="credit", id=f"r{i}")
    encode_outputs(response, [label, prob], raw=i % 2 == 0)
    answered = status == "OK"
    record = Record(
        request_id=f"r{i}", received_us=i, responded_us=i + 1, model_name="credit",
        status=status, request=request.SerializeToString(),
        response=response.SerializeToString() if answered else b"",
        inputs=[x, band], outputs=[label, prob], parameters={"segment": f"s{i % 2}"},
    )
    if not answered:
        withhold(record, response.SerializeToString())
    return record


def _idle_priority_allowed() -> bool:
    if not hasattr(os, "SCHED_IDLE"):
        return False
    pid = os.fork()
    if pid == 0:  # a throwaway process tries it
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            os._exit(1)
        os._exit(0)
    return os.waitpid(pid, 0)[1] == 0


def entries(writer: LedgerWriter) -> list[tuple]:
    writer.sync()
    columns = ", ".join(("seq", "request_id", "status", "request", "response", *DECODED))
    return writer.cursor().execute(f"SELECT {columns} FROM entries ORDER BY seq").fetchall()


def fill(path: Path, records: list[Record], *, table_process: bool, **options) -> LedgerWriter:
    writer = LedgerWriter(path, WriterOptions(durability="write", table_process=table_process,
                                              **options),
                          tabulator=TABULATOR, decoder=decode_record_tensors)
    writer.open()
    for record in records:
        writer.append_blocking(record)
    return writer


def test_rows_built_by_the_child_equal_rows_built_from_memory(tmp_path: Path) -> None:
    # Batches of 1 and 3 rows, raw and typed contents, BYTES inputs, request parameters,
    # and a call refused after the model ran: no response bytes, its outputs read back from
    # the response withheld.
    def records() -> list[Record]:
        made = [make_record(i, rows=1 + (i % 3 == 0) * 2) for i in range(40)]
        made[17] = make_record(17, status="INVALID_ARGUMENT", rows=3)
        return made

    child = fill(tmp_path / "child.duckdb", records(), table_process=True)
    thread = fill(tmp_path / "thread.duckdb", records(), table_process=False)
    try:
        built, expected = entries(child), entries(thread)
        assert len(built) == 40 and built == expected
        refused = built[17]
        assert refused[2] == "INVALID_ARGUMENT" and refused[4] == b""
        assert len(refused[DECODED.index("outputs") + 5]) == 3  # the withheld outputs, kept
        tabler = child._loader.sources.tabler
        assert tabler is not None and tabler._child is not None  # it was used
    finally:
        child.close()
        thread.close()


def test_a_failing_child_costs_nothing_the_writer_builds_the_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = fill(tmp_path / "ledger.duckdb", [make_record(i) for i in range(10)],
                  table_process=True)
    try:
        assert len(entries(writer)) == 10
        tabler = writer._loader.sources.tabler
        assert tabler is not None and tabler._child is not None
        os.kill(tabler._child.pid, signal.SIGKILL)
        tabler._child.wait()
        with caplog.at_level(logging.WARNING, logger="mlwitness.ledger.tabler"):
            for i in range(10, 25):
                writer.append_blocking(make_record(i))
            rows = entries(writer)
        assert [row[0] for row in rows] == list(range(1, 26))
        assert [row[1] for row in rows] == [f"r{i}" for i in range(25)]
        assert all(len(row[5]) == 1 and set(row[5][0]) == set(FEATURES) for row in rows)
        assert "table builder process failed: it exited" in caplog.text
    finally:
        writer.close()


def test_a_child_is_started_again_after_a_failure(tmp_path: Path) -> None:
    writer = fill(tmp_path / "ledger.duckdb", [make_record(i) for i in range(3)],
                  table_process=True)
    try:
        entries(writer)
        tabler = writer._loader.sources.tabler
        assert tabler is not None and tabler._child is not None
        first = tabler._child.pid
        tabler.restart_after_s = 0.0
        os.kill(first, signal.SIGKILL)
        tabler._child.wait()
        writer.append_blocking(make_record(3))
        entries(writer)  # this load fails over to the writer, and notes the failure
        writer.append_blocking(make_record(4))
        assert len(entries(writer)) == 5
        assert tabler._child is not None and tabler._child.pid != first
        assert tabler._child.poll() is None
    finally:
        writer.close()
    assert tabler._child is None  # closed with the writer


def test_the_child_runs_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    writer = fill(tmp_path / "ledger.duckdb", [make_record(0)], table_process=True)
    try:
        entries(writer)
        child = writer._loader.sources.tabler._child  # type: ignore[union-attr]
        assert child is not None
        assert os.getpriority(os.PRIO_PROCESS, child.pid) > os.getpriority(os.PRIO_PROCESS, 0)
        if _idle_priority_allowed():  # Linux, unless a syscall filter refuses it: nice only
            assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
    finally:
        writer.close()


def test_the_child_returns_what_it_frees_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pyarrow's default pool (mimalloc) and glibc's per-thread arenas kept what the child
    # had freed (bench/bench_memory.py); an operator's own choice in the environment wins
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    writer = fill(tmp_path / "ledger.duckdb", [make_record(0)], table_process=True)
    try:
        entries(writer)
        child = writer._loader.sources.tabler._child  # type: ignore[union-attr]
        assert child is not None
        environ = dict(item.split(b"=", 1) for item in
                       Path(f"/proc/{child.pid}/environ").read_bytes().split(b"\0") if item)
    finally:
        writer.close()
    assert environ[b"ARROW_DEFAULT_MEMORY_POOL"] == b"system"
    assert environ[b"MALLOC_ARENA_MAX"] == b"4"


def test_a_child_asked_for_records_the_journal_lacks_reports_it(tmp_path: Path) -> None:
    writer = fill(tmp_path / "ledger.duckdb", [make_record(i) for i in range(3)],
                  table_process=False)
    writer.close()
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    tabler = Tabler(directory, decoder_path(decode_record_tensors), {})
    try:
        with pytest.raises(TablerFailed, match="no segment holding seq 1"):
            tabler.table(1, 3)
    finally:
        tabler.close()


def test_journal_tail_reads_ranges_across_segments(tmp_path: Path) -> None:
    writer = fill(tmp_path / "ledger.duckdb", [make_record(i) for i in range(60)],
                  table_process=False, segment_bytes=4096, load_interval_s=3600)
    try:
        directory = journal_mod.journal_dir(writer.path)
        assert len(journal_mod.segment_paths(directory)) >= 3
        tail = JournalTail(directory)
        seqs = [r.seq for r in tail.records(1, 20)] + [r.seq for r in tail.records(21, 60)]
        assert seqs == list(range(1, 61))
        assert [r.seq for r in tail.records(30, 31)] == [30, 31]  # back again: it seeks
        assert [r.seq for r in tail.records(55, 60)] == list(range(55, 61))  # skips ahead
        assert tail.records(7, 7)[0].request_id == "r6"
        with pytest.raises(DataLoss, match="no seq 61"):
            tail.records(60, 61)
    finally:
        writer.close()


def test_only_an_importable_decoder_can_go_to_the_child() -> None:
    assert decoder_path(decode_record_tensors) == "mlwitness.ledger.tensors:decode_record_tensors"
    with pytest.raises(ValueError, match="cannot be imported"):
        decoder_path(lambda record: ([], [], {}))
    with pytest.raises(ValueError, match="needs a decoder"):
        LedgerWriter(Path("unused.duckdb"), WriterOptions(table_process=True))


def test_the_child_outlives_ctrl_c_and_stops_when_the_writer_closes(tmp_path: Path) -> None:
    # Ctrl-C reaches the terminal's whole process group; the sidecar drains on it and the
    # child must still be there to build the rows of that drain.
    writer = fill(tmp_path / "ledger.duckdb", [make_record(0)], table_process=True)
    tabler = writer._loader.sources.tabler
    assert tabler is not None
    try:
        entries(writer)
        child = tabler._child
        assert child is not None
        os.kill(child.pid, signal.SIGINT)
        writer.append_blocking(make_record(1))
        assert len(entries(writer)) == 2
        assert tabler._child is child and child.poll() is None
    finally:
        writer.close()
    assert child.returncode == 0


@pytest.mark.parametrize("table_process", [True, False], ids=["child", "thread"])
def test_a_load_retried_after_duckdb_failed_keeps_withheld_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table_process: bool
) -> None:
    real_insert = Database.insert
    failures = [1]

    def insert_failing_once(self: Database, table) -> None:
        if failures:
            failures.pop()
            raise duckdb.IOException("disk hiccup")
        real_insert(self, table)

    monkeypatch.setattr(Database, "insert", insert_failing_once)
    writer = fill(tmp_path / "ledger.duckdb",
                  [make_record(0), make_record(1, status="INVALID_ARGUMENT", rows=3)],
                  table_process=table_process)
    try:
        rows = entries(writer)
        assert not failures and [row[0] for row in rows] == [1, 2]
        assert len(rows[1][DECODED.index("outputs") + 5]) == 3
    finally:
        writer.close()


def test_parameters_of_a_call_kept_without_its_inputs_are_read_from_its_bytes(
    tmp_path: Path,
) -> None:
    # The minimiser keeps a request whose inputs it cannot pick a value out of without
    # them, its parameters minimised: the child reads those back from the request bytes.
    def records() -> list[Record]:
        dropped = make_record(1)
        request = pb.ModelInferRequest.FromString(dropped.request)
        del request.inputs[:]
        del request.raw_input_contents[:]
        request.parameters["segment"].string_param = "9f86d081"
        request.parameters["priority"].int64_param = 3
        dropped.request, dropped.inputs = request.SerializeToString(), None
        dropped.parameters = {"segment": "9f86d081", "priority": "3"}
        return [make_record(0), dropped, make_record(2)]

    child = fill(tmp_path / "child.duckdb", records(), table_process=True)
    thread = fill(tmp_path / "thread.duckdb", records(), table_process=False)
    try:
        built = entries(child)
        assert built == entries(thread)
        assert built[1][DECODED.index("parameters") + 5] == {"segment": "9f86d081",
                                                             "priority": "3"}
        assert built[1][5] == [] and len(built[1][DECODED.index("outputs") + 5]) == 1
        assert child.stats.built_by_child == 3
    finally:
        child.close()
        thread.close()


def test_withheld_outputs_take_no_extra_load(tmp_path: Path) -> None:
    records = [make_record(i, status="OK" if i % 5 else "INVALID_ARGUMENT")
               for i in range(100)]
    writer = fill(tmp_path / "ledger.duckdb", records, table_process=True,
                  load_interval_s=3600)
    try:
        assert writer.stats.loads == 0  # nothing asked for a load yet
        rows = entries(writer)
        assert writer.stats.loads == 1 and len(rows) == 100
        refused = [row for row in rows if row[2] == "INVALID_ARGUMENT"]
        assert len(refused) == 20
        assert all(len(row[DECODED.index("outputs") + 5]) == 1 for row in refused)
    finally:
        writer.close()


def test_the_child_gives_up_after_failing_again_and_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = fill(tmp_path / "ledger.duckdb", [make_record(0)], table_process=False)
    writer.close()
    directory = journal_mod.journal_dir(tmp_path / "ledger.duckdb")
    journal_mod.Journal(directory).open(1)  # a journal with no records: every ask fails
    tabler = Tabler(directory, decoder_path(decode_record_tensors), {}, restart_after_s=0)
    try:
        with caplog.at_level(logging.WARNING, logger="mlwitness.ledger.tabler"):
            for _ in range(GIVE_UP_AFTER):
                with pytest.raises(TablerFailed):
                    tabler.table(1, 1)
            with pytest.raises(TablerFailed, match="failed too often"):
                tabler.table(1, 1)
        assert tabler._child is None
        assert "builds DuckDB rows itself from now on" in caplog.text
    finally:
        tabler.close()


def test_the_childs_modules_are_the_sidecars_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shadowing = tmp_path / "cwd"
    shadowing.mkdir()
    (shadowing / "pyarrow.py").write_text("raise ImportError('shadowed')\n")
    monkeypatch.chdir(shadowing)
    writer = fill(tmp_path / "ledger.duckdb", [make_record(0)], table_process=True)
    try:
        with caplog.at_level(logging.WARNING, logger="mlwitness.ledger.tabler"):
            assert len(entries(writer)) == 1
        assert "table builder process failed" not in caplog.text
    finally:
        writer.close()


def test_a_decoder_the_child_cannot_import_is_refused() -> None:
    def local(record: Record) -> tuple:
        return [], [], {}

    for decoder in (local, functools.partial(decode_record_tensors)):
        with pytest.raises(ValueError, match="cannot be imported"):
            decoder_path(decoder)
    main = type(decode_record_tensors)(decode_record_tensors.__code__, {}, "decode")
    main.__module__ = "__main__"
    with pytest.raises(ValueError, match="cannot be imported"):
        decoder_path(main)


def test_a_loader_fallen_behind_builds_from_memory_in_seq_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst faster than the child builds rows: once more than a load batch waits, the
    # writer keeps the records and builds their rows itself (a few times faster), then
    # goes back to the child. Rows stay in seq order and equal the in-memory ones.
    asked: list[tuple[int, int]] = []
    real_table = Tabler.table
    release = threading.Event()

    def counting(self: Tabler, first: int, last: int):  # held up until the burst is in
        asked.append((first, last))
        assert release.wait(10)
        return real_table(self, first, last)

    monkeypatch.setattr(Tabler, "table", counting)

    def records(count: int, start: int = 0) -> list[Record]:
        return [make_record(i) for i in range(start, start + count)]

    options = {"load_interval_s": 3600, "load_batch": 10}
    child = fill(tmp_path / "child.duckdb", records(35), table_process=True, **options)
    thread = fill(tmp_path / "thread.duckdb", records(35), table_process=False, **options)
    try:
        assert len(child._loader.sources.unloaded) > 0  # fell behind: records kept
        release.set()
        assert entries(child) == entries(thread)
        from_child = sum(last - first + 1 for first, last in asked)
        assert 0 < from_child < 35  # the first ones by the child, the rest from memory
        assert not child._loader.sources.unloaded
        asked.clear()
        for record in records(5, start=35):
            child.append_blocking(record)
        for record in records(5, start=35):
            thread.append_blocking(record)
        assert entries(child) == entries(thread)
        assert asked == [(36, 40)]  # caught up: the child again
    finally:
        child.close()
        thread.close()


def test_a_child_whose_sidecar_is_gone_exits_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    writer = fill(tmp_path / "ledger.duckdb", [make_record(i) for i in range(3)],
                  table_process=False)
    writer.close()
    directory = journal_mod.journal_dir(tmp_path / "ledger.duckdb")
    tabler = Tabler(directory, decoder_path(decode_record_tensors), {}, restart_after_s=0)
    try:
        with pytest.raises(TablerFailed):
            tabler.table(1, 3)  # the journal was removed at close: an error reply
        child = tabler._running()
        assert child.stdin is not None and child.stdout is not None
        child.stdout.close()  # as if the sidecar had been killed mid-request
        child.stdin.write(b"1 3\n")
        child.stdin.close()
        assert child.wait(10) == 0
        assert "Traceback" not in capfd.readouterr().err
    finally:
        tabler._child = None


@pytest.mark.parametrize("table_process", [True, False], ids=["child", "thread"])
def test_close_loads_an_append_that_was_under_way(tmp_path: Path, table_process: bool) -> None:
    # close() must wait for a write already in its fdatasync: that call gets OK, so its
    # record belongs in DuckDB when close() returns (not only at the next start).
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="fsync", load_interval_s=0.01,
                                              table_process=table_process),
                          tabulator=TABULATOR, decoder=decode_record_tensors)
    writer.open()
    writer.append_blocking(make_record(0))
    writer.sync()
    real_sync = writer._chain.journal.sync

    def slow_sync() -> None:
        time.sleep(0.3)
        real_sync()

    writer._chain.journal.sync = slow_sync  # type: ignore[method-assign]
    acked: list[bool] = []
    appender = threading.Thread(
        target=lambda: (writer.append_blocking(make_record(1)), acked.append(True)))
    appender.start()
    time.sleep(0.05)  # the append is in its fdatasync now
    writer.close()
    appender.join(10)
    assert acked == [True]
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM entries").fetchone()[0] == 2
    finally:
        con.close()


def test_a_load_interval_must_be_positive(tmp_path: Path) -> None:
    for interval in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="load_interval_s"):
            LedgerWriter(tmp_path / "ledger.duckdb", WriterOptions(load_interval_s=interval))


@pytest.mark.parametrize("builder", ["process", "thread"])
def test_the_sidecar_builds_rows_where_table_builder_says(
    make_sidecar, affine_model: Path, builder: str
) -> None:
    # --table-builder thread trades the child's memory for CPU on the serving process: the
    # same rows either way, only who built them differs.
    server = make_sidecar(affine_model, table_builder=builder)
    with grpcclient.InferenceServerClient(server.address) as client:
        for i in range(5):
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), i, np.float32))
            client.infer("affine_fp32", [tensor], request_id=f"r{i}")
    stats = server.sidecar.ledger.stats
    server.stop()
    assert (stats.built_by_child > 0) == (builder == "process")
    rows = read_ledger(server.ledger_path, "SELECT request_id, inputs, outputs FROM entries "
                                           "WHERE request_id LIKE 'r%' ORDER BY seq")
    assert [row[0] for row in rows] == [f"r{i}" for i in range(5)]
    for i, (_, inputs, outputs) in enumerate(rows):
        assert [value for row in inputs for value in row.values()] == [float(i)] * 4
        assert outputs
