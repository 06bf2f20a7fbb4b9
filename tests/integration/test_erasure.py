"""`Erase` (`mlwitness audit erase`) on a running sidecar: by request id, by request
parameter (a minimised one by its HMAC), by time range; afterwards verify passes and says
how many records which admin record erased, while GetRecord, Replay, WhatIf and
Sensitivity of an erased record answer FAILED_PRECONDITION naming the erasure; an admin
role is needed; bad selectors and reasons get INVALID_ARGUMENT and change nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pytest
from audit_support import credit_builder, rpc_error, start_audited_sidecar
from security_support import add_token, bearer
from sidecar import mlwitness_command, raw_rpc, run_verify

from mlwitness.codec import Tensor, encode_inputs
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import inference as pb

KEY = b"a hash key of at least 32 bytes, for tests"
REASON = "GDPR Art. 17 request 2026-118"


@pytest.fixture(scope="module")
def credit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("credit")
    return Path(credit_builder().train_and_export(out, n_rows=500, seed=7).model)


@pytest.fixture
def side(credit: Path, tmp_path: Path) -> Iterator:
    served = start_audited_sidecar(credit, tmp_path / "ledger.duckdb")
    yield served
    served.stop()


def call(side, request_id: str, applicant: str, row: int = 0) -> None:  # noqa: ANN001
    request = pb.ModelInferRequest(model_name="credit", id=request_id)
    x = credit_builder().feature_matrix(credit_builder().make_dataset(row + 1, 5))[row:]
    encode_inputs(request, [Tensor("input", "FP32", (1, 6), x.astype(np.float32))], raw=True)
    request.parameters["applicant"].string_param = applicant
    raw_rpc(side.inference_channel, "ModelInfer", request.SerializeToString())


def seq_of(side, request_id: str) -> int:  # noqa: ANN001
    return side.query("SELECT seq FROM entries WHERE request_id = ?", [request_id])[0][0]


def test_an_erased_record_keeps_its_place_and_refuses_every_rerun(side) -> None:  # noqa: ANN001
    for i in range(1, 5):
        call(side, f"e-{i}", f"A-{i:04d}", row=i)
    target = seq_of(side, "e-2")
    done = side.stub.Erase(apb.EraseRequest(request_id="e-2", reason=REASON), timeout=60)
    assert (done.matched, done.erased, done.already_erased) == (1, 1, 0)
    assert [(s.first, s.last) for s in done.seqs] == [(target, target)]
    assert done.admin_seq > target and done.compacted and not done.dry_run

    ref = apb.RecordRef(request_id="e-2")
    expected = f"record seq {target} was erased by admin record seq {done.admin_seq}: {REASON}"
    for rpc, request in (
        (side.stub.GetRecord, apb.GetRecordRequest(ref=ref)),
        (side.stub.Replay, apb.ReplayRequest(ref=ref)),
        (side.stub.WhatIf, apb.WhatIfRequest(ref=ref, overrides=[apb.Override(
            feature="income", value=1.0)])),
        (side.stub.Sensitivity, apb.SensitivityRequest(ref=ref, feature="income", start=1,
                                                       stop=2, steps=2)),
    ):
        error = rpc_error(rpc, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert error.details().startswith(expected), error.details()
    assert side.stub.Replay(apb.ReplayRequest(ref=apb.RecordRef(request_id="e-3")),
                            timeout=60).bit_identical  # the others replay as before

    listed = side.stub.ListRecords(apb.ListRecordsRequest(page_size=10), timeout=30).records
    assert {r.request_id: r.erased_by for r in listed} == {
        "e-1": 0, "e-2": done.admin_seq, "e-3": 0, "e-4": 0}
    assert {r.request_id: r.status for r in listed}["e-2"] == "OK"  # as recorded
    verified = side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=60)
    assert verified.ok, verified.problems
    assert verified.erased_records == 1
    assert any(f"1 records erased by admin record seq {done.admin_seq} ({REASON})" in note
               for note in verified.notes)
    again = side.stub.Erase(apb.EraseRequest(request_id="e-2", reason=REASON), timeout=60)
    assert (again.erased, again.already_erased, again.admin_seq) == (0, 1, 0)
    assert f"erased before, by admin record seq {done.admin_seq}" in again.notes[0]

    admin = side.query("SELECT kind, peer, detail FROM entries WHERE seq = ?",
                       [done.admin_seq])[0]
    assert admin[0] == "admin" and json.loads(admin[2]) == {
        "action": "erase", "count": 1, "reason": REASON, "seqs": [[target, target]],
        "selector": {"request_id": "e-2"}}


def test_erase_by_time_range_and_a_dry_run_that_changes_nothing(side) -> None:  # noqa: ANN001
    call(side, "t-1", "A-0001")
    since = time.time_ns() // 1000
    call(side, "t-2", "A-0002")
    call(side, "t-3", "A-0003")
    until = time.time_ns() // 1000
    call(side, "t-4", "A-0004")
    window = apb.EraseRequest(since_us=since, until_us=until, reason=REASON)
    head = side.query("SELECT max(seq) FROM entries")[0][0]
    dry = side.stub.Erase(apb.EraseRequest(since_us=since, until_us=until, reason=REASON,
                                           dry_run=True), timeout=60)
    assert dry.dry_run and (dry.matched, dry.erased, dry.admin_seq) == (2, 2, 0)
    assert side.query("SELECT count(*) FROM entries WHERE erased_by IS NOT NULL") == [(0,)]
    assert side.query("SELECT count(*) FROM entries WHERE kind = 'admin' AND seq > ?",
                      [head]) == [(0,)]
    done = side.stub.Erase(window, timeout=60)
    assert done.erased == 2 and [(s.first, s.last) for s in done.seqs] == [
        (seq_of(side, "t-2"), seq_of(side, "t-3"))]
    assert side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=60).ok


def test_erase_by_a_minimised_parameter_matches_its_hmac_and_keeps_no_value(
        credit: Path, tmp_path: Path) -> None:
    key = tmp_path / "hash.key"
    key.write_bytes(KEY)
    ledger = tmp_path / "ledger.duckdb"
    side = start_audited_sidecar(credit, ledger, hash_inputs=["applicant"], hash_key=key,
                                 redact_inputs=["branch"])
    digest = hmac.new(KEY, b"A-1093", hashlib.sha256).hexdigest()
    try:
        call(side, "h-1", "A-1093")
        call(side, "h-2", "A-2000")
        call(side, "h-3", "A-1093")
        assert side.query("SELECT parameters['applicant'] FROM entries WHERE request_id = "
                          "'h-1'") == [(digest,)]
        done = side.stub.Erase(apb.EraseRequest(parameter="applicant", value="A-1093",
                                                reason=REASON), timeout=60)
        assert done.erased == 2
        assert side.query("SELECT request_id FROM entries WHERE erased_by IS NOT NULL "
                          "ORDER BY seq") == [("h-1",), ("h-3",)]
        redacted = rpc_error(side.stub.Erase, apb.EraseRequest(
            parameter="branch", value="north", reason=REASON))
        assert redacted.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "redacted (--redact-inputs)" in redacted.details()
    finally:
        side.stop()
    data = ledger.read_bytes()  # the value was never kept; its HMAC is gone with the records
    assert b"A-1093" not in data and digest.encode() not in data
    assert b"A-2000" not in data  # minimised in the records it stays in (as its HMAC)
    assert json.loads(run_verify(ledger, "--json").stdout)["erased_records"] == 2


def test_erase_needs_the_admin_role(credit: Path, tmp_path: Path) -> None:
    access = tmp_path / "access.toml"
    auditor, admin = add_token(access, "ann", "auditor"), add_token(access, "dpo", "admin")
    side = start_audited_sidecar(credit, tmp_path / "ledger.duckdb", audit_access=access)
    try:
        call(side, "r-1", "A-0001")
        request = apb.EraseRequest(request_id="r-1", reason=REASON)
        denied = rpc_error(side.stub.Erase, request, metadata=bearer(auditor))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "token:ann has role auditor; Erase needs admin" in denied.details()
        assert side.query("SELECT count(*) FROM entries WHERE erased_by IS NOT NULL") == [(0,)]
        done = side.stub.Erase(request, metadata=bearer(admin), timeout=60)
        assert done.erased == 1
        assert side.query("SELECT peer FROM entries WHERE seq = ?",
                          [done.admin_seq]) == [("token:dpo",)]
    finally:
        side.stop()


def test_the_cli_erases_and_says_what_it_did(side) -> None:  # noqa: ANN001
    import subprocess

    call(side, "c-1", "A-7777")
    call(side, "c-2", "A-7777")
    base = [*mlwitness_command(), "audit", "--target", side.audit_address]
    dry = subprocess.run([*base, "erase", "--parameter", "applicant=A-7777", "--reason",
                          REASON, "--dry-run"], capture_output=True, text=True, timeout=60)
    first, last = seq_of(side, "c-1"), seq_of(side, "c-2")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"dry run: 2 records match; 2 would be erased (seq {first}-"
                                 f"{last}); nothing was changed")
    done = subprocess.run([*base, "erase", "--parameter", "applicant=A-7777", "--reason",
                           REASON, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["erased"] == 2 and answer["seqs"] == [{"first": first, "last": last}]
    bad = subprocess.run([*base, "erase", "--parameter", "applicant", "--reason", REASON],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--parameter takes KEY=VALUE" in bad.stderr


@pytest.mark.parametrize(("request_fields", "words"), [
    ({"reason": REASON}, "an empty selector would take every record"),
    ({"request_id": "x"}, "give the reason for the erasure"),
    ({"request_id": "x", "reason": "r" * 100_000}, "the reason is 100000 characters long"),
    ({"request_id": "x", "reason": "ok\x1b[2J\r\nforged: line"}, "control or format"),
    ({"parameter": "applicant", "value": "v\x00", "reason": REASON}, "control or format"),
    ({"request_id": "no-such-call", "reason": REASON}, "no inference record matches"),
])
def test_bad_erase_requests_are_refused_and_change_nothing(
        side, request_fields: dict, words: str) -> None:  # noqa: ANN001
    call(side, "x", "A-0001")
    error = rpc_error(side.stub.Erase, apb.EraseRequest(**request_fields))
    expected = (grpc.StatusCode.NOT_FOUND if "no inference" in words
                else grpc.StatusCode.INVALID_ARGUMENT)
    assert error.code() == expected and words in error.details(), error.details()
    assert side.query("SELECT count(*) FROM entries WHERE erased_by IS NOT NULL "
                      "OR (kind = 'admin' AND detail LIKE '%erase%')") == [(0,)]
    assert side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=60).ok


def test_a_selector_matching_a_million_records_is_refused(credit: Path,
                                                          tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    side = start_audited_sidecar(credit, ledger)
    side.stop()
    con = duckdb.connect(str(ledger))  # a million calls, as rows (their chain is not the point)
    head = con.execute("SELECT max(seq) FROM entries").fetchone()[0] or 0
    con.execute(
        "INSERT INTO entries (seq, kind, request_id, received_us, responded_us, model_name, "
        "model_version, model_sha256, env_id, peer, metadata, status, message, violations, "
        "detail, request, response, prev_hash, hash, format, salt) SELECT ? + i, 'infer', "
        "'m-' || i, 1000 + i, 1001 + i, 'credit', '', '', '', '', '', 'OK', '', '', '', "
        "''::BLOB, ''::BLOB, from_hex(repeat('00', 32)), from_hex(repeat('00', 32)), 2, "
        "''::BLOB FROM range(1, 1000001) t(i)",
        [head])
    con.close()
    side = start_audited_sidecar(credit, ledger)
    try:
        error = rpc_error(side.stub.Erase, apb.EraseRequest(since_us=1, reason=REASON))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the selector matches 1000000 records; one erasure takes at most 100000: " \
            "narrow it" in error.details()
        assert side.query("SELECT count(*) FROM entries WHERE erased_by IS NOT NULL "
                          "OR (kind = 'admin' AND detail LIKE '%erase%')") == [(0,)]
    finally:
        side.stop()
