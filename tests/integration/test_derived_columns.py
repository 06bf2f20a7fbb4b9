"""Derived data may fail; the record may not. A record's decoded columns (inputs, outputs,
parameters) are derived from the bytes it keeps: a call whose columns cannot be built is
loaded without them, counted and logged, and never stops the loads, the audit reads that
wait for them, or the next start.

The calls are real ModelInfer bytes (with the tensors a sidecar keeps in memory, which
are what the bytes hold) appended through the real LedgerWriter. Two faults are injected
by hand: a decoder that hands the tabulator a value Arrow cannot hold (row_faults.py,
which the table builder child imports too), and DuckDB refusing a record's decoded
columns, by subclassing the writer. `mlwitness verify` then counts the columns left empty
as not covered, and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import pyarrow as pa
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import generate_latest
from row_faults import UNBUILDABLE, decode_or_fault
from sidecar import raw_rpc, read_ledger, run_verify

from mlwitness.codec import encode_inputs, tensor_from_array
from mlwitness.ledger.database import Database
from mlwitness.ledger.decoded import EMPTIED
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import DECODED_COLUMNS, MAX_VALUES_PER_RECORD, Tabulator
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.metrics import Metrics
from mlwitness.protocol import inference as pb

TABULATOR = Tabulator({"x": ("income", "age", "debt")})
NOTHING = ([], [], [], [], None)  # the decoded columns of a record loaded without them


def issue_request(rows: int = 2**40) -> bytes:
    """A ModelInfer whose input claims `rows` rows of nothing: 35 bytes that decode."""
    request = pb.ModelInferRequest(model_name="credit", id="huge")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 0])
    request.raw_input_contents.append(b"")
    return request.SerializeToString()


def call(i: int, request_id: str = "") -> Record:
    """An answered call: its bytes, and the tensors decoded from them kept in memory."""
    request_id = request_id or f"r{i}"
    x = tensor_from_array("x", np.array([[1000.0 * i, 30 + i, 0.5]], np.float32))
    request = pb.ModelInferRequest(model_name="credit", id=request_id)
    encode_inputs(request, [x], raw=True)
    return Record(request_id=request_id, model_name="credit",
                  request=request.SerializeToString(), inputs=[x], outputs=[],
                  parameters=None)


def refused(request_id: str, request: bytes) -> Record:
    """A call refused before the model ran: only its bytes, decoded by the loader."""
    return Record(request_id=request_id, model_name="credit", status="INVALID_ARGUMENT",
                  message="refused", request=request)


def unbuildable(i: int) -> Record:
    """A call whose rows cannot be built (row_faults.py): only its bytes, so that the
    writer decodes them, in its loader thread as in the table builder child."""
    record = call(i, f"{UNBUILDABLE}{i}")
    record.inputs = record.outputs = None
    return record


def open_writer(path: Path, *, table_process: bool, writer_class: type = LedgerWriter,
                decoder: Any = decode_record_tensors, **options: float) -> LedgerWriter:
    writer = writer_class(path, WriterOptions(durability="write", table_process=table_process,
                                              **options),
                          tabulator=TABULATOR, decoder=decoder)
    writer.open()
    return writer


def decoded_by_id(writer: LedgerWriter) -> dict[str, tuple]:
    columns = ", ".join(DECODED_COLUMNS)
    rows = writer.cursor().execute(
        f"SELECT request_id, {columns} FROM entries ORDER BY seq").fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def features(i: int) -> list:
    return [{"income": 1000.0 * i, "age": 30.0 + i, "debt": 0.5}]


def reopened_and_verified(path: Path, records: int, emptied: tuple[int, ...] = ()) -> None:
    """A later start opens the ledger (nothing left to load) and the chain verifies: every
    decoded column is what the bytes give, but those of the records `emptied`, left empty
    at load, which are reported as not covered."""
    writer = LedgerWriter(path)
    writer.open()
    writer.close()
    report = verify(path)
    assert report.ok, report.problems
    assert (report.records, report.journal_records) == (records, 0)
    assert report.not_covered == ([{"why": EMPTIED, "records": len(emptied),
                                    "first_seqs": list(emptied)}] if emptied else [])


@pytest.mark.parametrize("table_process", [True, False], ids=["child", "thread"])
def test_a_call_claiming_2_40_empty_rows_does_not_stop_the_loads(
    tmp_path: Path, table_process: bool
) -> None:
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path, table_process=table_process, load_interval_s=0.05)
    try:
        writer.append_blocking(call(0))
        writer.append_blocking(refused("huge", issue_request()))
        writer.append_blocking(refused("big", issue_request(2**24)))
        for i in range(1, 4):
            writer.append_blocking(call(i))
        assert writer.sync(timeout=10) == 6  # was: "DuckDB is behind", for good
        decoded = decoded_by_id(writer)
        assert list(decoded) == ["r0", "huge", "big", "r1", "r2", "r3"]
        assert decoded["huge"] == decoded["big"] == NOTHING  # no rows: nothing to tabulate
        assert decoded["r2"][0] == features(2)
    finally:
        writer.close()
    reopened_and_verified(path, 6)


CRASH = """
import os, sys
from pathlib import Path
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions

writer = LedgerWriter(Path(sys.argv[1]), WriterOptions(load_interval_s=3600))
writer.open()
writer.append_blocking(Record(request_id="before"))
writer.append_blocking(Record(request_id="huge", status="INVALID_ARGUMENT",
                              request=bytes.fromhex(sys.argv[2])))
writer.append_blocking(Record(request_id="after"))
os._exit(0)  # a crash: the records are in the journal only
"""


def test_a_journal_tail_holding_such_a_call_loads_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), str(path),
                    issue_request().hex()], check=True, timeout=60)
    assert verify(path).journal_records == 3

    writer = open_writer(path, table_process=True)  # was: ArrowInvalid, at every start
    try:
        assert list(decoded_by_id(writer)) == ["before", "huge", "after"]
        writer.append_blocking(call(1))
        assert writer.sync(timeout=10) == 4
    finally:
        writer.close()
    reopened_and_verified(path, 4)


def test_the_sidecar_answers_loads_and_restarts_after_such_a_call(
    serve_process, affine_model: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "huge.duckdb"
    server = serve_process(affine_model, ledger)
    request = pb.ModelInferRequest(model_name="affine_fp32", id="huge")
    request.inputs.add(name="x", datatype="FP32", shape=[2**40, 0])
    request.raw_input_contents.append(b"")
    x = np.ones((1, 4), np.float32)
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            raw_rpc(channel, "ModelInfer", request.SerializeToString())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with grpcclient.InferenceServerClient(server.address) as client:
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("affine_fp32", [tensor], request_id="after")
    assert server.kill() == -9  # the journal holds both; the next start loads them

    restarted = serve_process(affine_model, ledger)  # was: it could not start again
    assert restarted.terminate() == 0
    rows = read_ledger(ledger, "SELECT request_id, status FROM records ORDER BY seq")
    assert [status for _, status in rows] == ["INVALID_ARGUMENT", "OK"]
    assert rows[1][0] == "after"
    assert run_verify(ledger).returncode == 0


@pytest.mark.parametrize("table_process", [True, False], ids=["child", "thread"])
def test_a_record_whose_rows_cannot_be_built_loads_without_them_its_neighbours_with(
    tmp_path: Path, table_process: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = str(Path(__file__).parents[1] / "support")  # the child imports row_faults by name
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [here, os.environ.get("PYTHONPATH")])))
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path, table_process=table_process, decoder=decode_or_fault,
                         load_interval_s=3600)
    try:
        for i in range(3):  # one load: all five records are built together
            writer.append_blocking(call(i))
        writer.append_blocking(unbuildable(3))
        writer.append_blocking(call(4))
        assert writer.sync(timeout=10) == 5
        decoded = decoded_by_id(writer)
        assert decoded[f"{UNBUILDABLE}3"] == NOTHING
        assert [decoded[f"r{i}"][0] for i in (0, 1, 2, 4)] == [
            features(i) for i in (0, 1, 2, 4)]
        assert writer.stats.undecoded == 1
        assert writer.stats.built_by_child == (5 if table_process else 0)
    finally:
        writer.close()
    reopened_and_verified(path, 5, emptied=(4,))


def test_a_call_over_the_value_cap_is_loaded_without_its_rows_and_counted(
    tmp_path: Path,
) -> None:
    rows = MAX_VALUES_PER_RECORD // 3 + 1
    x = tensor_from_array("x", np.zeros((rows, 3), np.float32))
    request = pb.ModelInferRequest(model_name="credit", id="wide")
    encode_inputs(request, [x], raw=True)
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path, table_process=True, load_interval_s=0.05)
    metrics = Metrics("credit")
    metrics.watch_ledger(writer)
    try:
        writer.append_blocking(call(0))
        writer.append_blocking(refused("wide", request.SerializeToString()))
        writer.append_blocking(call(1))
        assert writer.sync(timeout=10) == 3
        decoded = decoded_by_id(writer)
        assert decoded["wide"] == NOTHING
        assert decoded["r1"][0] == features(1)
        assert writer.stats.undecoded == 1
        assert writer.stats.built_by_child == 3  # the child's note reached the writer
        scraped = generate_latest(metrics.registry).decode()
        assert "mlwitness_ledger_rows_failed_total 1.0" in scraped
    finally:
        writer.close()
    reopened_and_verified(path, 3)


def test_tensor_names_that_collide_with_column_names_do_not_stop_the_loads(
    tmp_path: Path,
) -> None:
    # "a" [1, 2] gives columns a_0 and a_1; "a_0" then became a_0#1, and so did "a_0#1":
    # a map with one key twice, which DuckDB refuses. A caller chooses tensor names.
    request = pb.ModelInferRequest(model_name="credit", id="names")
    encode_inputs(request, [tensor_from_array("a", np.zeros((1, 2), np.float32)),
                            tensor_from_array("a_0", np.ones(1, np.float32)),
                            tensor_from_array("a_0#1", np.full(1, 2, np.float32))], raw=True)
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path, table_process=True, load_interval_s=0.05)
    try:
        writer.append_blocking(refused("names", request.SerializeToString()))
        writer.append_blocking(call(1))
        assert writer.sync(timeout=10) == 2
        (inputs,) = decoded_by_id(writer)["names"][:1]
        assert len(inputs) == 1 and len(inputs[0]) == 4
        assert sorted(inputs[0].values()) == [0.0, 0.0, 1.0, 2.0]
        assert writer.stats.undecoded == 0  # they keep their columns
    finally:
        writer.close()


class RefusingDecodedColumnsDatabase(Database):
    """DuckDB refuses the decoded columns of `refuse_seq` (as it refuses a map with a key
    twice). The fault is injected by subclassing; the rest is the real writer."""

    refuse_seq = 3

    def insert(self, table: pa.Table) -> None:
        seqs = table.column("seq").to_pylist()
        inputs = table.column("inputs").to_pylist()
        if any(seq == self.refuse_seq and rows for seq, rows in zip(seqs, inputs, strict=True)):
            raise duckdb.InvalidInputException(
                "Invalid Input Error: Arrow map contains duplicate key")
        super().insert(table)


class RefusingDecodedColumns(LedgerWriter):
    database = RefusingDecodedColumnsDatabase


@pytest.mark.parametrize("at", ["load", "start-up"])
def test_a_record_duckdb_refuses_for_its_decoded_columns_loads_without_them(
    tmp_path: Path, at: str
) -> None:
    path = tmp_path / "ledger.duckdb"
    if at == "start-up":  # journaled by a run that crashed before loading them
        subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH_CALLS), str(path)],
                       check=True, timeout=60)
        writer = open_writer(path, table_process=False, writer_class=RefusingDecodedColumns)
    else:
        writer = open_writer(path, table_process=False, writer_class=RefusingDecodedColumns,
                             load_interval_s=3600)
        for i in range(6):
            writer.append_blocking(call(i))
    try:
        assert writer.sync(timeout=10) == 6
        decoded = decoded_by_id(writer)
        assert decoded["r2"] == NOTHING  # seq 3
        assert [decoded[f"r{i}"][0] for i in (0, 1, 3, 4, 5)] == [
            features(i) for i in (0, 1, 3, 4, 5)]
        assert writer.stats.undecoded == 1
    finally:
        writer.close()
    reopened_and_verified(path, 6, emptied=(3,))


CRASH_CALLS = """
import os, sys
from pathlib import Path
import numpy as np
from mlwitness.codec import encode_inputs, tensor_from_array
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.protocol import inference as pb

writer = LedgerWriter(Path(sys.argv[1]), WriterOptions(load_interval_s=3600))
writer.open()
for i in range(6):
    x = tensor_from_array("x", np.array([[1000.0 * i, 30 + i, 0.5]], np.float32))
    request = pb.ModelInferRequest(model_name="credit", id=f"r{i}")
    encode_inputs(request, [x], raw=True)
    writer.append_blocking(Record(request_id=f"r{i}", model_name="credit",
                                  request=request.SerializeToString()))
os._exit(0)  # a crash: the records are in the journal only
"""
