"""A ledger written before record format 2 (tests/support/format1_ledger.tar.gz, made by
tests/support/make_format1_ledger.py with that version's `mlwitness serve`): it verifies
as it is, `mlwitness migrate` upgrades it in place saying what it did, and `serve` opens
it (loading the format-1 journal tail that version left), serves its records, appends
format-2 ones after them and verifies the mixed chain; its format-1 records cannot be
erased."""

from __future__ import annotations

import json
import logging
import subprocess
import tarfile
from pathlib import Path

import grpc
import numpy as np
import pytest
from audit_support import credit_builder, rpc_error, start_audited_sidecar
from sidecar import mlwitness_command, raw_rpc, read_ledger, run_verify

from mlwitness.codec import Tensor, encode_inputs
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import inference as pb

FIXTURE = Path(__file__).resolve().parents[1] / "support" / "format1_ledger.tar.gz"
FORMAT1_RECORDS = 8  # in the file: an admin record, 5 calls, a refused call, a question
TAIL = 3  # in its journal: calls f1-6 .. f1-8 (seq 9-11)


@pytest.fixture
def format1(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path


def call(channel: grpc.Channel, request_id: str, applicant: str) -> None:
    request = pb.ModelInferRequest(model_name="credit", id=request_id)
    x = credit_builder().feature_matrix(credit_builder().make_dataset(1, 3))
    encode_inputs(request, [Tensor("input", "FP32", (1, 6), x.astype(np.float32))], raw=True)
    request.parameters["applicant"].string_param = applicant
    raw_rpc(channel, "ModelInfer", request.SerializeToString())


def schema_version(path: Path) -> str:
    return read_ledger(path, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0]


def test_a_format1_ledger_verifies_as_it_is(format1: Path) -> None:
    ledger = format1 / "ledger.duckdb"
    result = run_verify(ledger, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], report["problems"]
    assert report["record_formats"] == {"1": FORMAT1_RECORDS}
    assert report["journal_records"] == TAIL and report["head_seq"] == FORMAT1_RECORDS + TAIL
    assert schema_version(ledger) == "1"  # verify opened it read-only: nothing upgraded


def test_migrate_upgrades_it_in_place_and_says_what_it_did(format1: Path) -> None:
    ledger = format1 / "ledger.duckdb"

    def migrate() -> subprocess.CompletedProcess:
        return subprocess.run([*mlwitness_command(), "migrate", "--ledger", str(ledger)],
                              capture_output=True, text=True, timeout=60, check=False)

    first = migrate()
    assert first.returncode == 0, first.stderr
    assert f"{ledger}: upgraded in place to schema version 2:" in first.stdout
    assert "added the columns format, salt, payload_commitment, erased_by to entries; its 8 "\
        "records stay record format 1" in first.stdout
    assert "schema version 1 -> 2" in first.stdout
    assert f"its journal holds {TAIL} records not yet in DuckDB" in first.stdout
    assert schema_version(ledger) == "2"
    again = migrate()
    assert again.returncode == 0 and "already at schema version 2; nothing to do" in again.stdout
    report = json.loads(run_verify(ledger, "--json").stdout)
    assert report["ok"] and report["record_formats"] == {"1": FORMAT1_RECORDS}


def test_serve_continues_it_in_format2_and_verifies_the_mixed_chain(
        format1: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = format1 / "ledger.duckdb"
    with caplog.at_level(logging.WARNING, logger="mlwitness.ledger.schema"):
        side = start_audited_sidecar(format1 / "credit.onnx", ledger)
    try:
        assert "upgraded in place: added the columns format, salt" in caplog.text
        loaded = side.stub.GetRecord(apb.GetRecordRequest(ref=apb.RecordRef(
            request_id="f1-7")), timeout=30)  # from the format-1 journal tail
        assert loaded.seq == 10 and loaded.inputs and loaded.outputs
        replayed = side.stub.Replay(apb.ReplayRequest(ref=apb.RecordRef(request_id="f1-2")),
                                    timeout=60)
        assert replayed.bit_identical
        call(side.inference_channel, "f2-1", "A-0001")
        call(side.inference_channel, "f2-2", "A-0100")
        formats = dict(side.query("SELECT request_id, coalesce(format, 1) FROM entries "
                                  "WHERE request_id IN ('f1-1', 'f1-8', 'f2-1', 'f2-2')"))
        assert formats == {"f1-1": 1, "f1-8": 1, "f2-1": 2, "f2-2": 2}

        refused = rpc_error(side.stub.Erase, apb.EraseRequest(request_id="f1-3",
                                                              reason="GDPR test"))
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "1 of the 1 matching records (seq 4) are record format 1" in refused.details()
        mixed = rpc_error(side.stub.Erase, apb.EraseRequest(
            parameter="applicant", value="A-0001", reason="GDPR test"))
        assert mixed.code() == grpc.StatusCode.FAILED_PRECONDITION  # all or nothing
        assert "(seq 2)" in mixed.details() and "Nothing was erased" in mixed.details()
        assert side.query("SELECT count(*) FROM entries WHERE erased_by IS NOT NULL") == [(0,)]
        done = side.stub.Erase(apb.EraseRequest(parameter="applicant", value="A-0100",
                                                reason="GDPR test"), timeout=60)
        assert done.erased == 1 and done.admin_seq > 0
        verified = side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=60)
        assert verified.ok, verified.problems
        assert verified.erased_records == 1
    finally:
        side.stop()
    report = json.loads(run_verify(ledger, "--json").stdout)
    assert report["ok"], report["problems"]
    assert report["record_formats"]["1"] == FORMAT1_RECORDS + TAIL
    assert report["record_formats"]["2"] >= 3  # the calls, the erasure, the questions
    assert report["erased"] == {str(done.admin_seq): 1}
