"""GetRecord and ListRecords: one record by request id or seq, filtered lists, cursor paging.

Against a real sidecar serving a copy of the recorded ledger (tests/support/audit_support.py):
25 answered calls of credit v1 (`credit`), 2 refused ones, then 8 of credit v2
(`credit_v2`), from callers alice, bob, carol and mallory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    StoredEntry,
    credit_output_rows,
    credit_row,
    read_only,
    ref,
    rpc_error,
    start_audited_sidecar,
    values,
)

from mlwitness.protocol import audit_pb2 as apb


def list_all(side: AuditedSidecar, page_size: int = 1000, **filters: object) -> list[str]:
    """Request ids of every record matching the filters, following the cursor."""
    request = apb.ListRecordsRequest(page_size=page_size, **filters)
    ids: list[str] = []
    while True:
        page = side.stub.ListRecords(request, timeout=30)
        ids.extend(r.request_id for r in page.records)
        if not page.next_page_token:
            return ids
        assert len(page.records) == page_size
        request.page_token = page.next_page_token


def newest_first(ledger: AuditLedger, keep: Callable[[StoredEntry], bool]) -> list[str]:
    entries = sorted(ledger.entries.values(), key=lambda e: -e.seq)
    return [e.request_id for e in entries if keep(e)]


def test_get_record_by_request_id_shows_named_inputs_outputs_model_and_chain(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    call = audit_ledger.call("a05")  # 11 rows
    entry = audit_ledger.entries["a05"]
    r = audit_sidecar.stub.GetRecord(apb.GetRecordRequest(ref=ref("a05")), timeout=30)

    assert (r.seq, r.request_id, r.kind, r.status) == (entry.seq, "a05", "infer", "OK")
    assert [values(row) for row in r.inputs] == [
        credit_row(x, audit_ledger.models.features) for x in call.x]
    assert call.outputs is not None
    assert [values(row) for row in r.outputs] == credit_output_rows(call.outputs)
    assert (r.model_name, r.model_version) == ("credit", "1")
    assert r.model_sha256 == audit_ledger.models.sha_v1
    assert r.received_us == entry.received_us and r.responded_us >= r.received_us
    assert r.caller == entry.peer and r.caller.startswith("ipv4:127.0.0.1:")
    assert json.loads(r.metadata_json)["x-caller"] == call.caller == "carol"
    request, response, prev_hash, digest, env = read_only(
        audit_ledger.path, "SELECT e.request, e.response, e.prev_hash, e.hash, v.fingerprint "
        "FROM entries e JOIN environments v USING (env_id) WHERE seq = ?", [entry.seq])[0]
    assert (r.prev_hash, r.hash) == (bytes(prev_hash).hex(), bytes(digest).hex())
    assert (r.request_bytes, r.response_bytes) == (len(request), len(response))
    assert json.loads(r.environment_json) == json.loads(env)
    assert hashlib.sha256(r.environment_json.encode()).hexdigest() == r.env_id


def test_get_record_by_seq_equals_get_by_request_id(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    seq = audit_ledger.entries["b03"].seq
    by_seq = audit_sidecar.stub.GetRecord(apb.GetRecordRequest(ref=ref(seq=seq)), timeout=30)
    by_id = audit_sidecar.stub.GetRecord(apb.GetRecordRequest(ref=ref("b03")), timeout=30)
    assert by_seq == by_id
    assert by_seq.model_sha256 == audit_ledger.models.sha_v2 and by_seq.model_name == "credit_v2"


def test_typed_contents_record_reads_like_a_raw_one(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    call = audit_ledger.call("a-typed")
    r = audit_sidecar.stub.GetRecord(apb.GetRecordRequest(ref=ref("a-typed")), timeout=30)
    assert [values(row) for row in r.inputs] == [
        credit_row(x, audit_ledger.models.features) for x in call.x]


def test_get_record_of_a_refused_call_shows_its_status_and_message(
    audit_sidecar: AuditedSidecar,
) -> None:
    r = audit_sidecar.stub.GetRecord(apb.GetRecordRequest(ref=ref("bad1")), timeout=30)
    assert r.status == "INVALID_ARGUMENT"
    assert "[2, 5]" in r.message and r.response_bytes == 0
    assert json.loads(r.metadata_json)["x-caller"] == "mallory"


@pytest.mark.parametrize("record", [ref("no-such-request"), ref(seq=10_000)])
def test_unknown_record_is_not_found(audit_sidecar: AuditedSidecar,
                                     record: apb.RecordRef) -> None:
    err = rpc_error(audit_sidecar.stub.GetRecord, apb.GetRecordRequest(ref=record))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert ("no-such-request" if record.request_id else "10000") in err.details()


def test_get_record_without_a_reference_is_invalid(audit_sidecar: AuditedSidecar) -> None:
    err = rpc_error(audit_sidecar.stub.GetRecord, apb.GetRecordRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_list_records_is_newest_first_and_excludes_audit_entries(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    page = audit_sidecar.stub.ListRecords(apb.ListRecordsRequest(page_size=1000), timeout=30)
    assert [r.request_id for r in page.records] == newest_first(audit_ledger, lambda e: True)
    assert page.next_page_token == ""
    top = page.records[0]  # b07: 3 rows of credit v2
    entry = audit_ledger.entries["b07"]
    call = audit_ledger.call("b07")
    assert call.outputs is not None
    assert (top.seq, top.model_name, top.model_sha256, top.status, top.batch_size) == (
        entry.seq, "credit_v2", audit_ledger.models.sha_v2, "OK", 3)
    assert top.received_us == entry.received_us and top.caller == entry.peer
    assert values(top.first_output) == credit_output_rows(call.outputs)[0]


@pytest.mark.parametrize("page_size", [1, 4, 7])
def test_cursor_paging_returns_every_record_exactly_once(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger, page_size: int
) -> None:
    ids = list_all(audit_sidecar, page_size)
    assert ids == newest_first(audit_ledger, lambda e: True)
    assert len(ids) == len(set(ids)) == 35


def test_paging_under_a_filter_returns_exactly_the_matching_records(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    ids = list_all(audit_sidecar, 3, metadata="bob", status="OK")
    assert ids == newest_first(audit_ledger,
                               lambda e: '"bob"' in e.metadata and e.status == "OK")
    assert len(ids) == 8


def test_time_window_since_is_inclusive_until_is_exclusive(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    since = audit_ledger.entries["a04"].received_us
    until = audit_ledger.entries["b02"].received_us
    ids = list_all(audit_sidecar, since_us=since, until_us=until)
    assert ids == newest_first(audit_ledger, lambda e: since <= e.received_us < until)
    assert ids[0] == "b01" and ids[-1] == "a04"
    assert list_all(audit_sidecar, since_us=audit_ledger.entries["b07"].received_us) == ["b07"]
    assert list_all(audit_sidecar, until_us=audit_ledger.entries["a01"].received_us) == ["a00"]


def test_filter_by_model_name_or_sha_prefix(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    v1, v2 = audit_ledger.models.sha_v1, audit_ledger.models.sha_v2
    credit = newest_first(audit_ledger, lambda e: e.model_name == "credit")
    assert len(credit) == 27
    assert list_all(audit_sidecar, model="credit") == credit  # the exact name, not a prefix
    assert list_all(audit_sidecar, model="credit_v2") == newest_first(
        audit_ledger, lambda e: e.model_name == "credit_v2")
    assert list_all(audit_sidecar, model=v1[:10]) == credit
    assert list_all(audit_sidecar, model=v2[:6].upper()) == newest_first(
        audit_ledger, lambda e: e.model_sha256 == v2)
    assert list_all(audit_sidecar, model="cred") == []


def test_filter_by_status(audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger) -> None:
    assert list_all(audit_sidecar, status="INVALID_ARGUMENT") == ["bad1", "bad0"]
    assert list_all(audit_sidecar, status="ok") == newest_first(
        audit_ledger, lambda e: e.status == "OK")


def test_filter_by_metadata_and_combined_filters(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    assert list_all(audit_sidecar, metadata="mallory") == ["bad1", "bad0"]
    carol = list_all(audit_sidecar, metadata="carol")
    assert carol == [f"a{i:02d}" for i in range(23, -1, -1) if i % 3 == 2]
    alice_v2 = list_all(audit_sidecar, metadata="alice", model="credit_v2",
                        since_us=audit_ledger.entries["b05"].received_us)
    assert alice_v2 == ["b07", "b06", "b05"]


def test_the_caller_filter_matches_the_established_identity_never_metadata(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    """`x-caller: mallory` is what mallory says about itself; every record's identity
    (no access control here) is its peer address. A caller filter must not be satisfied
    by a self-declared header."""
    assert list_all(audit_sidecar, caller="mallory") == []
    assert list_all(audit_sidecar, caller="127.0.0.1") == newest_first(audit_ledger,
                                                                       lambda e: True)
    peer = audit_ledger.entries["bad0"].peer  # one connection's exact peer
    assert list_all(audit_sidecar, caller=peer) == newest_first(
        audit_ledger, lambda e: e.peer == peer)
    assert list_all(audit_sidecar, caller="127.0.0.1", metadata="mallory") == ["bad1", "bad0"]


@pytest.mark.parametrize("token", ["abc", "²", "١٢", "-5", " 7", "9" * 19])
def test_bad_page_token_is_invalid(audit_sidecar: AuditedSidecar, token: str) -> None:
    err = rpc_error(audit_sidecar.stub.ListRecords, apb.ListRecordsRequest(page_token=token))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page token" in err.details()


def test_records_recorded_outputs_match_the_callers_view(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    """Every answered record, read back through the API, holds what the caller got."""
    for call in audit_ledger.ok_calls:
        r = audit_sidecar.stub.GetRecord(apb.GetRecordRequest(ref=ref(call.request_id)),
                                         timeout=30)
        assert call.outputs is not None
        assert [values(row) for row in r.outputs] == credit_output_rows(call.outputs)
        assert np.array_equal(
            np.array([[row[f] for f in audit_ledger.models.features]
                      for row in map(values, r.inputs)], np.float32), call.x)


def test_a_request_id_on_several_records_is_refused_naming_each_seq(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    """A caller retried with the same id (or reuses ids): GetRecord, Replay, WhatIf and
    Sensitivity refuse to pick one, and say which seqs to ask for instead."""
    models = audit_ledger.models
    side = start_audited_sidecar(models.v1, tmp_path / "ledger.duckdb")
    try:
        x = models.rows(2, seed=11)
        side.infer(x[:1], "loan-42")
        side.infer(x[1:], "loan-42")
        side.infer(x[:1], "loan-43")
        seqs = [r.seq for r in side.stub.ListRecords(
            apb.ListRecordsRequest(), timeout=30).records if r.request_id == "loan-42"]
        assert len(seqs) == 2
        feature = models.features[0]
        for call, request in [
            (side.stub.GetRecord, apb.GetRecordRequest(ref=ref("loan-42"))),
            (side.stub.Replay, apb.ReplayRequest(ref=ref("loan-42"))),
            (side.stub.WhatIf, apb.WhatIfRequest(
                ref=ref("loan-42"), overrides=[apb.Override(feature=feature, value=1.0)])),
            (side.stub.Sensitivity, apb.SensitivityRequest(
                ref=ref("loan-42"), feature=feature, start=0.0, stop=1.0)),
        ]:
            err = rpc_error(call, request)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert all(f"seq:{s} OK" in err.details() for s in seqs), err.details()
        # each one is still reachable by seq, and an id on one record still resolves
        for seq, row in zip(sorted(seqs), x, strict=True):
            r = side.stub.GetRecord(apb.GetRecordRequest(ref=ref(seq=seq)), timeout=30)
            assert r.request_id == "loan-42"
            assert [values(v)[models.features[0]] for v in r.inputs] == [float(row[0])]
        assert side.stub.GetRecord(apb.GetRecordRequest(ref=ref("loan-43")),
                                   timeout=30).request_id == "loan-43"
    finally:
        side.stop()
