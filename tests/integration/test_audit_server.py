"""The audit server itself: its questions on the ledger, health and reflection, and the
standalone read-only `mlwitness audit-server` over a copied ledger — including what it
says when model bytes are missing from the store or no longer match their hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import grpc
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    audit_server,
    read_only,
    ref,
    rpc_error,
    start_audited_sidecar,
    stub_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sidecar import rewrite_record, run_verify

from mlwitness.ledger.verify import verify
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import audit_pb2_grpc

SERVICE = "mlwitness.audit.v1.AuditService"


def ask_everything(stub: audit_pb2_grpc.AuditServiceStub, ledger: AuditLedger
                   ) -> dict[str, object]:
    """One of each question; answers with the parts that depend on timing cleared."""
    answers: dict[str, object] = {}
    answers["GetRecord"] = [stub.GetRecord(apb.GetRecordRequest(ref=ref(rid)), timeout=30)
                            for rid in ("a05", "a-typed", "bad0", "b03")]
    answers["ListRecords"] = stub.ListRecords(
        apb.ListRecordsRequest(caller="bob", page_size=5), timeout=30)
    answers["Replay"] = [
        stub.Replay(apb.ReplayRequest(ref=ref("a16")), timeout=30),
        stub.Replay(apb.ReplayRequest(ref=ref("a16"), candidate_sha256=ledger.models.sha_v2),
                    timeout=30)]
    answers["WhatIf"] = stub.WhatIf(apb.WhatIfRequest(
        ref=ref("a05"), row=4, overrides=[apb.Override(feature="income", value=45000)]),
        timeout=30)
    answers["Sensitivity"] = stub.Sensitivity(apb.SensitivityRequest(
        ref=ref("a05"), row=4, feature="fico", start=300, stop=850, steps=12), timeout=30)
    events = list(stub.ReplayRange(apb.ReplayRangeRequest(
        candidate_sha256=ledger.models.sha_v2), timeout=60))
    events[-1].summary.records_per_second = 0
    answers["ReplayRange"] = events
    return answers


def test_every_audit_question_is_recorded_in_the_chain_and_verify_passes(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    path = audit_ledger.copy(tmp_path / "ledger")
    side = start_audited_sidecar(audit_ledger.models.v1, path)
    try:
        ask_everything(side.stub, audit_ledger)
        rpc_error(side.stub.GetRecord, apb.GetRecordRequest(ref=ref("ghost")))
        rpc_error(side.stub.Replay, apb.ReplayRequest(ref=ref("bad1")))
        verified = side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=30)
        trail = side.query("SELECT seq, peer, status, message, detail, request FROM entries "
                           "WHERE kind = 'audit' ORDER BY seq")
    finally:
        side.stop()

    rpcs = [json.loads(row[4])["rpc"] for row in trail]
    assert rpcs == ["GetRecord"] * 4 + ["ListRecords", "Replay", "Replay", "WhatIf",
                                        "Sensitivity", "ReplayRange", "GetRecord", "Replay",
                                        "VerifyLedger"]
    assert [row[0] for row in trail] == list(range(37, 37 + len(trail)))  # the same chain
    assert all(row[1].startswith("ipv4:127.0.0.1:") for row in trail)  # who asked
    by_rpc = {json.loads(row[4])["rpc"]: json.loads(row[4]) for row in trail}
    replay = json.loads(trail[5][4])
    assert replay["request"]["request_id"] == "a16"
    assert replay["result"] == {"seq": audit_ledger.entries["a16"].seq, "bit_identical": True,
                                "model_sha256": audit_ledger.models.sha_v1,
                                "verdict": "bit-identical"}
    assert by_rpc["ReplayRange"]["result"]["records"] == 33
    assert by_rpc["ReplayRange"]["result"]["decisions_changed"] == 6
    assert by_rpc["WhatIf"]["request"]["overrides"] == [["income", 45000.0]]
    assert apb.ReplayRequest.FromString(bytes(trail[6][5])).candidate_sha256 == \
        audit_ledger.models.sha_v2  # the exact question bytes are kept
    ghost, refused = trail[-3], trail[-2]
    assert (ghost[2], ghost[3]) == ("NOT_FOUND", "no record with request id 'ghost'")
    assert refused[2] == "FAILED_PRECONDITION" and "not answered" in refused[3]
    assert verified.ok and verified.records == 36 + len(trail) - 1 and not verified.problems

    result = run_verify(path, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["records"] == 36 + len(trail)


def test_verify_ledger_through_the_api_finds_a_tampered_record(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    path = audit_ledger.copy(tmp_path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE entries SET model_name = 'credit-x' WHERE seq = 7")
    con.close()
    side = start_audited_sidecar(audit_ledger.models.v1, path)
    try:
        r = side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=30)
    finally:
        side.stop()
    assert not r.ok and r.first_bad_seq == 7
    assert any("seq 7" in p for p in r.problems)


def test_audit_port_serves_health_and_reflection(audit_sidecar: AuditedSidecar) -> None:
    health = health_pb2_grpc.HealthStub(audit_sidecar.channel)
    for name in ("", SERVICE):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(audit_sidecar.channel)
    answers = list(reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    services = {s.name for s in answers[0].list_services_response.service}
    assert SERVICE in services and "grpc.health.v1.Health" in services


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_standalone_audit_server_answers_like_the_sidecar_and_leaves_the_copy_untouched(
    tmp_path: Path, audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    copy = audit_ledger.copy(tmp_path / "copy")
    before_hash, before_files = sha256_of(copy), set(copy.parent.iterdir())
    trail_path = copy.with_name("ledger.duckdb.audit-trail.duckdb")
    upload = audit_ledger.models.v2.read_bytes() + b""  # the same bytes, uploaded

    with audit_server(copy, log_dir=tmp_path) as server:
        assert server.ready["audit_trail"] == str(trail_path)
        channel, stub = stub_for(server.address)
        with channel:
            standalone = ask_everything(stub, audit_ledger)
            uploaded = stub.Replay(apb.ReplayRequest(ref=ref("a16"), candidate_onnx=upload),
                                   timeout=30)
            verified = stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=30)
            missing = rpc_error(stub.GetRecord, apb.GetRecordRequest(ref=ref("ghost")))
        assert server.process.poll() is None, server.stderr()
    assert server.process.returncode == 0, server.stderr()

    assert standalone == ask_everything(audit_sidecar.stub, audit_ledger)
    assert list(uploaded.decisions_changed) == [3, 8]
    assert verified.ok and verified.records == 36 and verified.head_seq == 36
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    assert sha256_of(copy) == before_hash  # read-only: not a byte changed
    assert {p.name for p in set(copy.parent.iterdir()) - before_files} <= {
        trail_path.name, trail_path.name + ".journal"}
    trail = read_only(trail_path, "SELECT kind, status, detail FROM entries ORDER BY seq")
    assert [(k, json.loads(d)["rpc"]) for k, _, d in trail] == [("audit", rpc) for rpc in (
        *["GetRecord"] * 4, "ListRecords", "Replay", "Replay", "WhatIf", "Sensitivity",
        "ReplayRange", "Replay", "VerifyLedger", "GetRecord")]
    assert trail[-1][1] == "NOT_FOUND"
    stored = read_only(trail_path, "SELECT sha256, name FROM models")
    assert stored == [(audit_ledger.models.sha_v2, "candidate")]  # the upload's evidence
    report = verify(trail_path)  # the trail is a ledger of its own, and it verifies
    assert report.ok and report.records == len(trail)


def test_missing_model_bytes_fail_precondition_and_corrupt_ones_are_data_loss(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    copy = audit_ledger.copy(tmp_path / "copy")
    v1, v2 = audit_ledger.models.sha_v1, audit_ledger.models.sha_v2
    con = duckdb.connect(str(copy))
    con.execute("DELETE FROM models WHERE sha256 = ?", [v1])
    con.execute("UPDATE models SET onnx = ? WHERE sha256 = ?",
                [audit_ledger.models.v1.read_bytes(), v2])  # v2's row now holds v1's bytes
    con.close()
    trail = tmp_path / "trail" / "trail.duckdb"

    with audit_server(copy, "--audit-trail", str(trail), log_dir=tmp_path) as server:
        channel, stub = stub_for(server.address)
        with channel:
            assert stub.GetRecord(apb.GetRecordRequest(ref=ref("a00")),
                                  timeout=30).model_sha256 == v1  # records stay readable
            questions = [
                (stub.Replay, apb.ReplayRequest(ref=ref("a00"))),
                (stub.WhatIf, apb.WhatIfRequest(ref=ref("a00"), overrides=[
                    apb.Override(feature="income", value=1.0)])),
                (stub.Sensitivity, apb.SensitivityRequest(ref=ref("a00"), feature="fico",
                                                          start=1, stop=2, steps=2)),
            ]
            for call, request in questions:
                err = rpc_error(call, request)
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
                assert v1 in err.details() and "not in the ledger's model store" in err.details()
            for call, request in questions:
                request.ref.request_id = "b00"
                err = rpc_error(call, request)
                assert err.code() == grpc.StatusCode.DATA_LOSS, err
                assert v2 in err.details() and "no longer match" in err.details()
            events = list(stub.ReplayRange(apb.ReplayRangeRequest(), timeout=60))
            summary = events[-1].summary
            assert (summary.records, summary.identical, summary.failed) == (33, 0, 33)
            verified = stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=30)
    assert not verified.ok
    assert any(v1 in p and "not in the model store" in p for p in verified.problems)
    assert any(v2 in p and "do not match" in p for p in verified.problems)
    statuses = read_only(trail, "SELECT status FROM entries ORDER BY seq")
    assert [s for (s,) in statuses] == ["OK", *["FAILED_PRECONDITION"] * 3,
                                        *["DATA_LOSS"] * 3, "OK", "OK"]
    result = run_verify(trail)  # the audit trail itself is sound
    assert result.returncode == 0, result.stdout + result.stderr


# ── VerifyLedger against a published head ─────────────────────────────────────────────


def test_verify_ledger_compares_a_published_head_wherever_the_chain_reaches_it(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    path = audit_ledger.copy(tmp_path)
    (published,) = read_only(path, "SELECT hash FROM entries WHERE seq = 10")[0]
    rewrite_record(path, 5, peer="ipv4:10.9.9.9:4242")  # every later hash recomputed
    (now,) = read_only(path, "SELECT hash FROM entries WHERE seq = 12")[0]
    side = start_audited_sidecar(audit_ledger.models.v1, path)
    try:
        def ask(seq: int, digest: str) -> apb.VerifyLedgerResponse:
            return side.stub.VerifyLedger(
                apb.VerifyLedgerRequest(expect_seq=seq, expect_hash=digest), timeout=30)

        assert side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=30).ok
        rewritten = ask(10, bytes(published).hex())
        current = ask(12, bytes(now).hex().upper())
        beyond = ask(1000, bytes(now).hex())
    finally:
        side.stop()
    assert not rewritten.ok and rewritten.first_bad_seq == 10
    assert any("hash at seq 10 differs" in p for p in rewritten.problems), rewritten.problems
    assert current.ok, current.problems
    assert not beyond.ok and beyond.first_bad_seq == beyond.head_seq + 1
    assert any("expected the chain to reach seq 1000" in p for p in beyond.problems)


@pytest.mark.parametrize(("seq", "digest", "words"), [
    (10, "g" * 64, "64 hex digits"),
    (10, "0" * 63, "64 hex digits"),
    (10, "0" * 128, "64 hex digits"),
    (-3, "0" * 64, "seq must be 1 or more"),
    (0, "0" * 64, "seq must be 1 or more"),
    (10, "", "64 hex digits"),
])
def test_verify_ledger_refuses_a_malformed_head_and_records_the_question(
    audit_sidecar: AuditedSidecar, seq: int, digest: str, words: str
) -> None:
    err = rpc_error(audit_sidecar.stub.VerifyLedger,
                    apb.VerifyLedgerRequest(expect_seq=seq, expect_hash=digest))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert words in err.details()
    (status, detail) = audit_sidecar.query(
        "SELECT status, detail FROM entries WHERE kind = 'audit' ORDER BY seq DESC LIMIT 1")[0]
    assert status == "INVALID_ARGUMENT"
    assert json.loads(detail)["request"] == {"expect_seq": seq, "expect_hash": digest}


# ── what the read-only audit server shows of a file with foreign views and macros ─────


def test_standalone_audit_server_is_not_fooled_by_views_or_macros_in_the_file(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    copy = audit_ledger.copy(tmp_path / "copy")
    hidden = audit_ledger.entries["b03"].seq
    con = duckdb.connect(str(copy))
    con.execute("CREATE MACRO greatest(a, b, c, d) AS 0")  # every batch size would be 0
    con.execute(f"CREATE OR REPLACE VIEW records AS SELECT * FROM entries WHERE seq <> {hidden}")
    con.close()
    with audit_server(copy, log_dir=tmp_path) as server:
        channel, stub = stub_for(server.address)
        with channel:
            listed = stub.ListRecords(apb.ListRecordsRequest(page_size=1000), timeout=30)
            shown = stub.GetRecord(apb.GetRecordRequest(ref=ref("b03")), timeout=30)
            verified = stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=30)
    sizes = {r.request_id: r.batch_size for r in listed.records}
    assert sizes["b03"] == 3 and sizes["a05"] == len(audit_ledger.call("a05").x)
    assert hidden in [r.seq for r in listed.records] and shown.seq == hidden
    assert not verified.ok
    assert any(p.startswith("view records is not mlwitness's definition")
               for p in verified.problems), verified.problems
    assert any(p.startswith("macro greatest is not one mlwitness creates")
               for p in verified.problems), verified.problems
