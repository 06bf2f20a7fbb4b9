"""Traffic replay (ReplayRange): every record in a window, on its own model or a candidate.

Counts are exact: the expected numbers come from the recorded calls and onnxruntime run
directly on the same inputs, never from the service itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    Call,
    credit_row,
    credit_run,
    start_audited_sidecar,
    values,
)
from onnx import TensorProto, helper, numpy_helper

from mlwitness.audit import replay_range as replay_range_core
from mlwitness.audit import service as audit_service
from mlwitness.audit.results import ReplayProgress
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.writer import LedgerWriter
from mlwitness.protocol import audit_pb2 as apb

try:
    from tests import models as test_models
except ImportError:  # tests/ is on sys.path, not a package
    import models as test_models  # type: ignore[no-redef]


def replay_range(side: AuditedSidecar, **request: object
                 ) -> tuple[apb.ReplaySummary, list[apb.ChangedDecision]]:
    events = list(side.stub.ReplayRange(apb.ReplayRangeRequest(**request),  # type: ignore[arg-type]
                                        timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "summary" and kinds.count("summary") == 1
    return events[-1].summary, [e.changed for e in events if e.WhichOneof("event") == "changed"]


def counts(summary: apb.ReplaySummary) -> tuple[int, ...]:
    return (summary.records, summary.rows, summary.identical, summary.changed, summary.failed,
            summary.decisions_changed)


def rows(calls: list[Call]) -> int:
    return sum(len(c.x) for c in calls)


def in_window(ledger: AuditLedger, since: int = 0, until: int = 0,
              model: str = "") -> list[Call]:
    """Answered calls received in [since, until) (0: open), optionally of one model name."""
    return [c for c in ledger.ok_calls
            if since <= ledger.entries[c.request_id].received_us < (until or 2**62)
            and (not model or c.model_name == model)]


def test_replay_on_recorded_models_finds_every_answered_record_identical(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    summary, changed = replay_range(audit_sidecar)
    n = len(audit_ledger.ok_calls)
    assert n == 33  # 25 of credit v1 (one typed), 8 of credit v2; the 2 refused are not
    assert counts(summary) == (n, rows(audit_ledger.ok_calls), n, 0, 0, 0)
    assert changed == []
    assert summary.replayed_model_sha256 == "" and summary.max_abs_diff == 0
    assert list(summary.failures) == [] and summary.records_per_second > 0


def test_replay_on_a_candidate_counts_exactly_the_decisions_it_changes(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    v1_calls = [c for c in audit_ledger.ok_calls if c.model_name == "credit"]
    expected = audit_ledger.changed_rows()  # onnxruntime, directly
    assert len(expected) == 6

    summary, changed = replay_range(audit_sidecar,
                                    candidate_onnx=audit_ledger.models.v2.read_bytes())
    n = len(audit_ledger.ok_calls)
    # v2's own records stay identical; every v1 record's probabilities change
    assert counts(summary) == (n, rows(audit_ledger.ok_calls), n - len(v1_calls),
                               len(v1_calls), 0, len(expected))
    assert summary.replayed_model_sha256 == audit_ledger.models.sha_v2
    assert summary.max_abs_diff == 1.0  # a label went 0 ↔ 1
    assert [(c.request_id, c.row, c.recorded_decision, c.replayed_decision)
            for c in changed] == expected
    for c in changed:
        call = audit_ledger.call(c.request_id)
        assert c.seq == audit_ledger.entries[c.request_id].seq
        assert values(c.inputs) == credit_row(call.x[c.row], audit_ledger.models.features)


def test_candidate_by_stored_sha_equals_candidate_uploaded(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    by_sha = replay_range(audit_sidecar, candidate_sha256=audit_ledger.models.sha_v2)
    uploaded = replay_range(audit_sidecar, candidate_onnx=audit_ledger.models.v2.read_bytes())
    assert counts(by_sha[0]) == counts(uploaded[0])
    assert by_sha[1] == uploaded[1]


def test_window_selects_exactly_the_records_received_in_it(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    since = audit_ledger.entries["a06"].received_us
    until = audit_ledger.entries["b03"].received_us
    window = in_window(audit_ledger, since, until)
    assert [c.request_id for c in window] == [
        *(f"a{i:02d}" for i in range(6, 24)), "a-typed", "b00", "b01", "b02"]
    expected = audit_ledger.changed_rows(window)
    summary, changed = replay_range(audit_sidecar, since_us=since, until_us=until,
                                    candidate_onnx=audit_ledger.models.v2.read_bytes())
    assert counts(summary) == (len(window), rows(window), 3, len(window) - 3, 0, len(expected))
    assert [(c.request_id, c.row) for c in changed] == [(r, i) for r, i, _, _ in expected]
    # the bounds: since is inclusive, until exclusive
    only = replay_range(audit_sidecar, since_us=since, until_us=since + 1)[0]
    assert (only.records, only.rows) == (1, len(audit_ledger.call("a06").x))
    assert replay_range(audit_sidecar, since_us=until, until_us=until)[0].records == 0


def test_model_filter_by_name_or_sha_prefix(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    v2_calls = in_window(audit_ledger, model="credit_v2")
    for model in ("credit_v2", audit_ledger.models.sha_v2[:12]):
        summary, _ = replay_range(audit_sidecar, model=model)
        assert counts(summary) == (8, rows(v2_calls), 8, 0, 0, 0)
    summary, changed = replay_range(audit_sidecar, model="credit",
                                    candidate_onnx=audit_ledger.models.v2.read_bytes())
    v1_calls = in_window(audit_ledger, model="credit")
    assert counts(summary) == (25, rows(v1_calls), 0, 25, 0, 6)
    assert len(changed) == 6


def test_max_listed_limits_the_stream_not_the_count(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    summary, changed = replay_range(audit_sidecar, max_listed=2,
                                    candidate_onnx=audit_ledger.models.v2.read_bytes())
    assert summary.decisions_changed == 6
    assert [(c.request_id, c.row) for c in changed] == [
        (r, i) for r, i, _, _ in audit_ledger.changed_rows()[:2]]


def test_a_candidate_that_cannot_take_the_inputs_fails_every_record(
    tmp_path: Path, audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    affine = test_models.build_affine_fp32(tmp_path / "affine.onnx")  # wants x [N, 4]
    summary, changed = replay_range(audit_sidecar, candidate_onnx=affine.read_bytes())
    n = len(audit_ledger.ok_calls)
    assert counts(summary) == (n, 0, 0, 0, n, 0) and changed == []
    assert len(summary.failures) == 10  # the first few reasons
    assert summary.failures[0].startswith(f"seq {audit_ledger.entries['a00'].seq}: ")


def test_records_whose_model_bytes_are_gone_count_as_failed(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    path = audit_ledger.copy(tmp_path)
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM models WHERE sha256 = ?", [audit_ledger.models.sha_v2])
    con.close()
    side = start_audited_sidecar(audit_ledger.models.v1, path)
    try:
        summary, _ = replay_range(side)
        v1_calls = in_window(audit_ledger, model="credit")
        assert counts(summary) == (33, rows(v1_calls), 25, 0, 8, 0)
        assert all(audit_ledger.models.sha_v2 in f for f in summary.failures)
        assert len(summary.failures) == 8
    finally:
        side.stop()


def test_replay_range_handles_many_rows_in_few_runs(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    """500 single-row calls: counts stay exact across onnxruntime batches."""
    models = audit_ledger.models
    x = models.rows(500, seed=5)
    side = start_audited_sidecar(models.v1, tmp_path / "ledger.duckdb")
    try:
        recorded = [side.infer(x[i:i + 1], f"r{i}")["label"][0] for i in range(len(x))]
        candidate = [credit_run(models.v2, x[i:i + 1])["label"][0] for i in range(len(x))]
        expected = int(np.sum(np.array(recorded) != np.array(candidate)))
        summary, changed = replay_range(side, candidate_onnx=models.v2.read_bytes(),
                                        max_listed=1000)
        assert counts(summary) == (500, 500, 0, 500, 0, expected)
        assert len(changed) == expected > 0
        assert counts(replay_range(side)[0]) == (500, 500, 500, 0, 0, 0)
    finally:
        side.stop()


def test_calls_that_asked_for_some_outputs_replay_on_those(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    """Only `probabilities` requested: the decision is its arg-max; such calls and calls
    asking for everything are replayed side by side and counted once each."""
    models = audit_ledger.models
    x = models.rows(60, seed=8)
    side = start_audited_sidecar(models.v1, tmp_path / "ledger.duckdb")
    try:
        recorded = []
        for i in range(20):
            rows = x[3 * i:3 * i + 3]
            if i % 2:
                got = side.infer_tensors("credit", f"p{i}", outputs=["probabilities"],
                                         input=rows)
                assert list(got) == ["probabilities"]
                recorded.append(("p", rows, got["probabilities"].argmax(axis=1)))
            else:
                recorded.append(("all", rows, side.infer(rows, f"p{i}")["label"]))
        expected = sum(int(np.sum(
            old != (credit_run(models.v2, rows)["probabilities"].argmax(axis=1) if kind == "p"
                    else credit_run(models.v2, rows)["label"])))
            for kind, rows, old in recorded)
        assert expected > 0
        summary, changed = replay_range(side, candidate_onnx=models.v2.read_bytes())
        assert counts(summary) == (20, 60, 0, 20, 0, expected) and len(changed) == expected
        assert counts(replay_range(side)[0]) == (20, 60, 20, 0, 0, 0)
        r = side.stub.Replay(apb.ReplayRequest(ref=apb.RecordRef(request_id="p1")), timeout=30)
        assert r.decision_output == "argmax(probabilities)" and r.bit_identical
    finally:
        side.stop()


def test_unknown_candidate_fails_the_whole_run(audit_sidecar: AuditedSidecar) -> None:
    with pytest.raises(grpc.RpcError) as info:
        replay_range(audit_sidecar, candidate_sha256="0" * 64)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_replay_range_abandoned_midway_is_on_the_trail_as_cancelled(
    audit_ledger: AuditLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller that cancels the stream closes the service's generator: the question's trail
    # record must say CANCELLED, not OK with an empty result.
    monkeypatch.setattr(replay_range_core, "PROGRESS_EVERY_S", 0.0)  # an event per batch
    writer = LedgerWriter(audit_ledger.copy(tmp_path))
    writer.open()
    try:
        service = audit_service.AuditService(LedgerReader(writer.cursor, writer.sync),
                                             trail=writer.append_blocking)
        events = service.replay_range(audit_service.Asker(rpc="ReplayRange"), Filters())
        assert isinstance(next(events), ReplayProgress)
        events.close()
        writer.sync()
        trail = writer.cursor().execute(
            "SELECT status, message FROM entries WHERE kind = 'audit' ORDER BY seq DESC LIMIT 1"
        ).fetchall()
        assert trail == [("CANCELLED", "the caller cancelled the question")]
    finally:
        writer.close()


def test_a_replay_range_cancelled_by_its_grpc_caller_is_on_the_trail_as_cancelled(
    tmp_path: Path, audit_ledger: AuditLedger
) -> None:
    """The wire layer: a real client cancels the stream after its first event. The stream
    is long (every changed decision listed, each read back by seq), so the cancel lands
    mid-stream; the question's trail record must then say CANCELLED."""
    models = audit_ledger.models
    side = start_audited_sidecar(models.v1, tmp_path / "ledger.duckdb")
    try:
        for i in range(60):
            side.infer(models.rows(64, seed=200 + i), f"c{i}")
        stream = side.stub.ReplayRange(apb.ReplayRangeRequest(
            candidate_onnx=models.v2.read_bytes(), max_listed=100_000), timeout=60)
        assert next(stream).WhichOneof("event") in ("changed", "progress")
        stream.cancel()
        sql = ("SELECT status, message FROM entries WHERE kind = 'audit' "
               "AND json_extract_string(detail, '$.rpc') = 'ReplayRange'")
        deadline = time.monotonic() + 30
        trail = side.query(sql)
        while not trail and time.monotonic() < deadline:
            time.sleep(0.05)
            trail = side.query(sql)
        assert trail == [("CANCELLED", "the caller cancelled the question")]
        # the service goes on answering; the whole stream is long, as the premise needs
        summary, changed = replay_range(side, candidate_onnx=models.v2.read_bytes(),
                                        max_listed=100_000)
        assert counts(summary)[:2] == (60, 60 * 64) and len(changed) >= 50
    finally:
        side.stop()


def replayed_alike(model: Path, tmp_path: Path, name: str, calls: list[dict[str, np.ndarray]]
                   ) -> None:
    """Serve `model`, make `calls`, then Replay one and ReplayRange all: each identical."""
    side = start_audited_sidecar(model, tmp_path / "ledger.duckdb", model_name=name,
                                 features=[])
    try:
        for i, tensors in enumerate(calls):
            side.infer_tensors(name, f"t{i}", **tensors)
        replayed = side.stub.Replay(apb.ReplayRequest(ref=apb.RecordRef(request_id="t1")),
                                    timeout=60)
        assert replayed.bit_identical, replayed.outputs
        summary, _ = replay_range(side)
        assert (summary.records, summary.identical, summary.failed) == (len(calls), len(calls), 0)
    finally:
        side.stop()


def test_records_with_a_text_output_replay_identical(tmp_path: Path) -> None:
    # BYTES outputs are numpy object arrays: compared by value, not by object address
    model = test_models.build_strings(tmp_path / "strings.onnx")
    replayed_alike(model, tmp_path, "strings",
                   [{"category": np.array([b"red", f"n{i}".encode()], object)} for i in range(3)])


def test_records_with_a_scalar_output_replay_identical(tmp_path: Path) -> None:
    # a 0-d output has no rows: such a model's calls cannot be stacked into one run
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["score"], keepdims=0),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)]
    model = test_models._save(tmp_path / "scalar.onnx", "scalar", nodes,
                              [("x", TensorProto.FLOAT, [None, 4])],
                              [("score", TensorProto.FLOAT, [None]),
                               ("total", TensorProto.FLOAT, [])], [axes])
    replayed_alike(model, tmp_path, "scalar",
                   [{"x": np.full((2, 4), i, np.float32)} for i in range(3)])
