"""Replay: a recorded call re-run on the exact model bytes that answered it.

Records made in embedded mode and in forwarding mode (a real MLServer upstream) replay
bit-identical; replay loads the model by hash from the ledger, never from the file on
disk; on a candidate model it reports the differences and the changed decisions.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    credit_builder,
    credit_output_rows,
    credit_run,
    read_only,
    ref,
    rpc_error,
    sha256_file,
    start_audited_sidecar,
    values,
)
from upstream_server import run_mlserver, upstream_venv

from mlwitness.protocol import audit_pb2 as apb


def replay(side: AuditedSidecar, request_id: str = "", seq: int = 0,
           **candidate: object) -> apb.ReplayResponse:
    return side.stub.Replay(apb.ReplayRequest(ref=ref(request_id, seq), **candidate), timeout=60)


def assert_identical(r: apb.ReplayResponse, sha: str) -> None:
    assert r.bit_identical, r.outputs
    assert r.recorded_model_sha256 == r.replayed_model_sha256 == sha
    assert [(d.name, d.identical, d.max_abs_diff, d.max_rel_diff, d.elements_differing)
            for d in r.outputs] == [("label", True, 0, 0, 0), ("probabilities", True, 0, 0, 0)]
    assert list(r.decisions_changed) == []
    assert [values(x) for x in r.replayed_outputs] == [values(x) for x in r.recorded_outputs]


def test_every_embedded_record_replays_bit_identical_on_its_own_model(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    for call in audit_ledger.ok_calls:  # credit v1 records, a typed one, credit v2 records
        r = replay(audit_sidecar, call.request_id)
        assert_identical(r, sha256_file(call.model))
        assert call.outputs is not None
        assert [values(x) for x in r.recorded_outputs] == credit_output_rows(call.outputs)
        assert list(r.environment_differences) == []  # recorded in this very environment
        assert r.decision_output == "label"


def test_replay_by_seq(audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger) -> None:
    entry = audit_ledger.entries["b04"]
    r = replay(audit_sidecar, seq=entry.seq)
    assert (r.seq, r.request_id) == (entry.seq, "b04")
    assert_identical(r, audit_ledger.models.sha_v2)


@pytest.mark.skipif(upstream_venv() is None,
                    reason="MLServer venv missing: run scripts/setup_upstream_venv.sh")
def test_forwarding_mode_records_replay_bit_identical(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    models = audit_ledger.models
    x = models.rows(40, seed=99)
    with run_mlserver(models.v1, "credit", tmp_path / "mlserver") as upstream:
        side = start_audited_sidecar(models.v1, tmp_path / "fwd.duckdb",
                                     upstream=upstream.grpc_address)
        try:
            got = {"f1": side.infer(x[:1], "f1"), "f4": side.infer(x[1:5], "f4", "zoe"),
                   "f9": side.infer(x[5:14], "f9"),
                   "ft": side.infer_typed(x[14:17], "ft")}
            rows = {"f1": x[:1], "f4": x[1:5], "f9": x[5:14], "ft": x[14:17]}
            for rid, outputs in got.items():  # MLServer answered what onnxruntime says
                direct = credit_run(models.v1, rows[rid])
                assert np.array_equal(outputs["label"], direct["label"])
                assert outputs["probabilities"].tobytes() == direct["probabilities"].tobytes()
                r = replay(side, rid)
                assert_identical(r, models.sha_v1)
                assert [values(v) for v in r.recorded_outputs] == credit_output_rows(outputs)
            events = list(side.stub.ReplayRange(apb.ReplayRangeRequest(), timeout=60))
            summary = events[-1].summary
            assert (summary.records, summary.rows, summary.identical, summary.changed,
                    summary.failed) == (4, 17, 4, 0, 0)
            upstream_response = side.query("SELECT response FROM entries WHERE request_id = 'f4'")
            assert len(upstream_response[0][0]) > 0
        finally:
            side.stop()


def test_replay_uses_the_stored_model_after_the_file_on_disk_was_replaced(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    models = audit_ledger.models
    served = tmp_path / "model.onnx"
    shutil.copyfile(models.v1, served)
    ledger = tmp_path / "ledger.duckdb"
    x = audit_ledger.call("a16").x  # 9 rows; v1 and v2 decide rows 3 and 8 differently
    v1_out, v2_out = credit_run(models.v1, x), credit_run(models.v2, x)
    assert list(np.flatnonzero(v1_out["label"] != v2_out["label"])) == [3, 8]

    side = start_audited_sidecar(served, ledger)
    try:
        side.infer(x, "before")
    finally:
        side.stop()
    served.write_bytes(models.v2.read_bytes())  # the file is replaced by the new model
    side = start_audited_sidecar(served, ledger)
    try:
        after = side.infer(x, "after")
        assert np.array_equal(after["label"], v2_out["label"])  # the new file is served
        served.unlink()  # and replay never needs the file at all

        old = replay(side, "before")
        assert_identical(old, models.sha_v1)
        assert [values(v) for v in old.replayed_outputs] == credit_output_rows(v1_out)
        assert [values(v) for v in old.replayed_outputs] != credit_output_rows(v2_out)
        new = replay(side, "after")
        assert_identical(new, models.sha_v2)
        assert [values(v) for v in new.replayed_outputs] == credit_output_rows(v2_out)
    finally:
        side.stop()


def expected_diffs(recorded: dict[str, np.ndarray], replayed: dict[str, np.ndarray]
                   ) -> list[tuple[str, bool, float, float, int]]:
    out = []
    for name in ("label", "probabilities"):
        a = recorded[name].astype(np.float64)
        b = replayed[name].astype(np.float64)
        delta = np.abs(a - b)
        rel = np.where(delta == 0, 0.0, delta / np.maximum(np.abs(a), np.finfo(float).tiny))
        out.append((name, bool(np.array_equal(a, b)), float(delta.max()), float(rel.max()),
                    int(np.count_nonzero(delta))))
    return out


def test_replay_on_uploaded_candidate_reports_differences_and_changed_decisions(
    tmp_path: Path, audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    """A candidate the ledger has never seen (v2 trained on another seed) is stored first,
    then the record is replayed on it."""
    candidate = credit_builder().train_and_export(tmp_path, n_rows=2000, seed=8,
                                                  variant="v2").model
    onnx = candidate.read_bytes()
    sha = hashlib.sha256(onnx).hexdigest()
    assert sha not in (audit_ledger.models.sha_v1, audit_ledger.models.sha_v2)
    call = next(c for c in audit_ledger.ok_calls if c.model == audit_ledger.models.v1 and np.any(
        credit_run(onnx, c.x)["label"] != c.outputs["label"]))  # type: ignore[index]
    assert call.outputs is not None
    new = credit_run(onnx, call.x)

    r = replay(audit_sidecar, call.request_id, candidate_onnx=onnx)
    assert not r.bit_identical
    assert (r.recorded_model_sha256, r.replayed_model_sha256) == (audit_ledger.models.sha_v1,
                                                                  sha)
    assert [(d.name, d.identical, d.max_abs_diff, d.max_rel_diff, d.elements_differing)
            for d in r.outputs] == expected_diffs(call.outputs, new)
    assert list(r.decisions_changed) == list(np.flatnonzero(call.outputs["label"]
                                                            != new["label"]))
    assert [values(v) for v in r.replayed_outputs] == credit_output_rows(new)
    assert [values(v) for v in r.recorded_outputs] == credit_output_rows(call.outputs)
    stored = audit_sidecar.query("SELECT name, onnx FROM models WHERE sha256 = ?", [sha])
    assert stored == [("candidate", onnx)]  # the evidence the answer rests on


def test_replay_on_a_stored_candidate_by_sha(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    call = audit_ledger.call("a16")
    assert call.outputs is not None
    r = replay(audit_sidecar, "a16", candidate_sha256=audit_ledger.models.sha_v2)
    new = credit_run(audit_ledger.models.v2, call.x)
    assert not r.bit_identical and r.replayed_model_sha256 == audit_ledger.models.sha_v2
    assert list(r.decisions_changed) == [3, 8]
    assert [(d.name, d.identical, d.max_abs_diff, d.max_rel_diff, d.elements_differing)
            for d in r.outputs] == expected_diffs(call.outputs, new)
    # the same bytes uploaded give the same answer
    uploaded = replay(audit_sidecar, "a16", candidate_onnx=audit_ledger.models.v2.read_bytes())
    assert uploaded.outputs == r.outputs and uploaded.decisions_changed == r.decisions_changed


def test_replay_on_the_recorded_model_as_candidate_is_identical(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    r = replay(audit_sidecar, "a16", candidate_onnx=audit_ledger.models.v1.read_bytes())
    assert_identical(r, audit_ledger.models.sha_v1)


def test_replay_of_a_refused_record_is_a_failed_precondition(
    audit_sidecar: AuditedSidecar,
) -> None:
    err = rpc_error(audit_sidecar.stub.Replay, apb.ReplayRequest(ref=ref("bad0")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not answered" in err.details() and "INVALID_ARGUMENT" in err.details()


def test_replay_of_an_audit_record_is_a_failed_precondition(
    audit_sidecar: AuditedSidecar,
) -> None:
    replay(audit_sidecar, "a00")
    seq = audit_sidecar.query("SELECT max(seq) FROM entries WHERE kind = 'audit'")[0][0]
    err = rpc_error(audit_sidecar.stub.Replay, apb.ReplayRequest(ref=ref(seq=seq)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "audit record" in err.details()


def test_replay_of_an_unknown_record_is_not_found(audit_sidecar: AuditedSidecar) -> None:
    err = rpc_error(audit_sidecar.stub.Replay, apb.ReplayRequest(ref=ref("nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in err.details()


def test_replay_on_an_unknown_candidate_sha_is_a_failed_precondition(
    audit_sidecar: AuditedSidecar,
) -> None:
    err = rpc_error(audit_sidecar.stub.Replay,
                    apb.ReplayRequest(ref=ref("a00"), candidate_sha256="ab" * 32))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ab" * 32 in err.details() and "model store" in err.details()


@pytest.mark.parametrize("form", ["upper", "prefix", "padded prefix"])
def test_a_candidate_sha_may_be_any_case_or_a_prefix_as_audit_show_prints_it(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger, form: str
) -> None:
    sha = audit_ledger.models.sha_v2
    given = {"upper": sha.upper(), "prefix": sha[:12], "padded prefix": f" {sha[:7]} "}[form]
    r = replay(audit_sidecar, "a16", candidate_sha256=given)
    assert not r.bit_identical and r.replayed_model_sha256 == sha


@pytest.mark.parametrize("given, code, words", [
    ("abc", grpc.StatusCode.INVALID_ARGUMENT, "prefix of at least 6"),
    ("xyz" * 4, grpc.StatusCode.INVALID_ARGUMENT, "not a model SHA-256"),
    ("f" * 65, grpc.StatusCode.INVALID_ARGUMENT, "not a model SHA-256"),
    ("000000", grpc.StatusCode.FAILED_PRECONDITION, "starting 000000"),
])
def test_a_candidate_sha_that_names_no_stored_model_says_why(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger,
    given: str, code: grpc.StatusCode, words: str,
) -> None:
    if given == "000000":
        assert not any(s.startswith(given) for s in
                       (audit_ledger.models.sha_v1, audit_ledger.models.sha_v2))
    err = rpc_error(audit_sidecar.stub.Replay,
                    apb.ReplayRequest(ref=ref("a16"), candidate_sha256=given))
    assert err.code() == code and words in err.details(), err.details()


def test_uploaded_candidate_that_is_not_onnx_is_invalid(
    audit_sidecar: AuditedSidecar,
) -> None:
    err = rpc_error(audit_sidecar.stub.Replay,
                    apb.ReplayRequest(ref=ref("a00"), candidate_onnx=b"not a model"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidate" in err.details()
    sha = hashlib.sha256(b"not a model").hexdigest()
    assert audit_sidecar.query("SELECT count(*) FROM models WHERE sha256 = ?", [sha]) == [(0,)]


def test_replay_reads_inputs_from_the_request_bytes_not_the_sql_columns(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    """The columnar copy is for SQL; replay decodes the hashed request bytes."""
    path = audit_ledger.copy(tmp_path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE entries SET inputs = NULL WHERE request_id = 'a03'")
    con.close()
    assert read_only(path, "SELECT inputs FROM entries WHERE request_id = 'a03'") == [(None,)]
    side = start_audited_sidecar(audit_ledger.models.v1, path)
    try:
        assert_identical(replay(side, "a03"), audit_ledger.models.sha_v1)
    finally:
        side.stop()
