"""Outcomes and reviews through the audit API and the `mlwitness` command: on the chain and
verified, shown in the decisions view, imported idempotently from CSV and Parquet,
refused for unknown decisions and without the role, read-only on a standalone audit
server; quality over them equals scikit-learn's.

Real things: the demo credit model in a sidecar on 127.0.0.1, tritonclient as the caller,
the generated audit stub and the `mlwitness` console command as the auditor."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from audit_support import (
    AuditedSidecar,
    audit_server,
    credit_models,
    rpc_error,
    start_audited_sidecar,
    stub_for,
)
from monitoring_support import monitoring_kit, start_monitored, wait_for
from security_support import add_token, bearer
from sidecar import mlwitness_command, read_ledger
from sklearn import metrics

from mlwitness.ledger.verify import verify
from mlwitness.protocol import audit_pb2 as apb

CALLS, ROWS = 30, 2


def outcome(request_id: str = "", seq: int = 0, row: int = 0, line: int = 0,
            observed_us: int = 0, **values: float | str) -> apb.Outcome:
    ref = apb.RecordRef(seq=seq) if seq else apb.RecordRef(request_id=request_id)
    return apb.Outcome(decision=ref, row=row, observed_us=observed_us, line=line, values=[
        apb.Value(name=k, text=v) if isinstance(v, str) else apb.Value(name=k, number=v)
        for k, v in values.items()])


@pytest.fixture
def served(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[AuditedSidecar, dict[str, dict]]]:
    """A sidecar that answered CALLS calls of ROWS rows (request ids app-0…); the outputs
    by request id."""
    models = credit_models(tmp_path_factory)
    side = start_audited_sidecar(models.v1, tmp_path / "ledger.duckdb")
    answers = {}
    try:
        for i in range(CALLS):
            answers[f"app-{i}"] = side.infer(models.rows(ROWS, seed=i), f"app-{i}")
        yield side, answers
    finally:
        side.stop()


def cli(side: AuditedSidecar, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*mlwitness_command(), *args, "--target", side.audit_address],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_outcomes_and_reviews_are_on_the_chain_and_in_the_decisions_view(served) -> None:
    side, _ = served
    first = side.stub.RecordOutcomes(apb.RecordOutcomesRequest(outcomes=[
        outcome("app-1", row=1, observed_us=1_790_000_000_000_000, defaulted=1)]), timeout=30)
    assert (first.recorded, first.duplicates, first.superseding) == (1, 0, 0)
    again = side.stub.RecordOutcomes(apb.RecordOutcomesRequest(outcomes=[
        outcome("app-1", row=1, observed_us=1_790_000_000_000_000, defaulted=1)]), timeout=30)
    assert (again.recorded, again.duplicates) == (0, 1)
    later = side.stub.RecordOutcomes(apb.RecordOutcomesRequest(outcomes=[
        outcome("app-1", row=1, observed_us=1_800_000_000_000_000, defaulted=0)]), timeout=30)
    assert (later.recorded, later.superseding) == (1, 1)
    reviewed = side.stub.RecordReview(apb.RecordReviewRequest(
        decision=apb.RecordRef(request_id="app-1"), row=1,
        decision_made=[apb.Value(name="label", number=1)], reason="income verified by hand"),
        timeout=30)
    rows = side.query("SELECT row, outcome->>'defaulted', epoch_us(outcome_observed_at), "
                      "reviewed_by, final_decision->>'label', outputs['label'] FROM decisions "
                      "WHERE request_id = 'app-1' ORDER BY row")
    assert rows[0][1:4] == (None, None, None)
    assert float(rows[0][4]) == rows[0][5]  # not reviewed: the model's decision
    assert rows[1][1:5] == ("0", 1_800_000_000_000_000, reviewed.reviewer, "1")
    assert reviewed.overrides == (rows[1][5] != 1.0)
    assert [r[0] for r in side.query("SELECT seq FROM outcomes ORDER BY seq")] == [
        first.first_seq, later.first_seq]  # the first is superseded, not erased
    kinds = side.query("SELECT kind, status FROM entries WHERE seq > ? ORDER BY seq",
                       [CALLS])
    assert ("outcome", "OK") in kinds and ("review", "OK") in kinds
    ledger = side.ledger_path
    side.stop()
    report = verify(ledger)
    assert report.ok, report.problems


def test_the_command_line_records_outcomes_and_reviews(served) -> None:
    side, _ = served
    done = cli(side, "outcomes", "record", "app-3", "--set", "defaulted=1", "--set",
               "status=written off", "--observed-at", "2027-03-01")
    assert done.returncode == 0, done.stderr
    assert "recorded outcome seq" in done.stdout
    done = cli(side, "review", "app-3", "--decision", "label=1", "--reason", "looked again",
               "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [(answer["decision_seq"],)] == side.query(
        "SELECT seq FROM records WHERE request_id = 'app-3'")
    assert answer["seq"] > answer["decision_seq"]
    assert side.query("SELECT \"values\"::VARCHAR, epoch_us(observed_at) FROM outcomes") == [
        ('{"defaulted":1,"status":"written off"}', 1_803_859_200_000_000)]
    assert side.query("SELECT reason FROM reviews") == [("looked again",)]


def test_import_from_csv_and_parquet_is_idempotent_with_a_progress_line(
        served, tmp_path: Path) -> None:
    side, _ = served
    ids = [f"app-{i}" for i in range(CALLS) for _ in range(ROWS)]
    rows = [r for _ in range(CALLS) for r in range(ROWS)]
    defaulted = [(i * 7) % 3 % 2 for i in range(len(ids))]
    observed = [f"2027-0{1 + i % 9}-01" for i in range(len(ids))]
    csv = tmp_path / "outcomes.csv"
    csv.write_text("application_id,row,defaulted,observed\n" + "".join(
        f"{a},{r},{d},{o}\n" for a, r, d, o in zip(ids, rows, defaulted, observed,
                                                   strict=True)))
    args = ["--id-column", "application_id", "--row-column", "row", "--label", "defaulted",
            "--observed-column", "observed", "--batch", "16"]
    first = cli(side, "outcomes", "import", str(csv), *args)
    assert first.returncode == 0, first.stderr
    assert f"{len(ids)} recorded" in first.stdout
    assert f"{len(ids)}/{len(ids)} outcomes sent" in first.stderr  # the progress line
    again = cli(side, "outcomes", "import", str(csv), *args, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["recorded"] == 0
    assert json.loads(again.stdout)["duplicates"] == len(ids)
    parquet = tmp_path / "outcomes.parquet"
    pq.write_table(pa.table({"application_id": ids, "row": rows, "defaulted": defaulted,
                             "observed": observed}), parquet)
    same = cli(side, "outcomes", "import", str(parquet), *args, "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["recorded"] == 0  # the same outcomes, another format
    assert side.query("SELECT count(*), count(DISTINCT key) FROM outcomes") == [
        (len(ids), len(ids))]
    assert side.query("SELECT count(*) FROM decisions WHERE outcome IS NOT NULL") == [
        (len(ids),)]
    untimed = tmp_path / "untimed.csv"  # no observed times: keyed without one
    untimed.write_text("application_id,status\n" + "".join(
        f"app-{i},{'current' if i % 2 else 'late'}\n" for i in range(CALLS)))
    for attempt in range(2):
        done = cli(side, "outcomes", "import", str(untimed), "--id-column", "application_id",
                   "--label", "status", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["recorded"] == (CALLS if attempt == 0 else 0)


def test_outcomes_for_unknown_or_unanswered_decisions_are_refused_whole(served) -> None:
    side, _ = served
    before = side.query("SELECT count(*) FROM entries")[0][0]
    error = rpc_error(side.stub.RecordOutcomes, apb.RecordOutcomesRequest(outcomes=[
        outcome("app-0", defaulted=1), outcome("no-such-application", line=3, defaulted=0)]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "line 3: request id 'no-such-application'" in error.details()
    assert rpc_error(side.stub.RecordOutcomes, apb.RecordOutcomesRequest(outcomes=[
        outcome(seq=999_999, defaulted=1)])).code() == grpc.StatusCode.NOT_FOUND
    bad_row = rpc_error(side.stub.RecordOutcomes, apb.RecordOutcomesRequest(outcomes=[
        outcome("app-0", row=ROWS, defaulted=1)]))
    assert bad_row.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the call has {ROWS} rows" in bad_row.details()
    audit_seq = side.query("SELECT max(seq) FROM entries WHERE kind = 'audit'")[0][0]
    not_a_decision = rpc_error(side.stub.RecordReview, apb.RecordReviewRequest(
        decision=apb.RecordRef(seq=audit_seq),
        decision_made=[apb.Value(name="label", number=1)], reason="x"))
    assert not_a_decision.code() == grpc.StatusCode.FAILED_PRECONDITION
    no_reason = rpc_error(side.stub.RecordReview, apb.RecordReviewRequest(
        decision=apb.RecordRef(request_id="app-0"),
        decision_made=[apb.Value(name="label", number=1)]))
    assert no_reason.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown_output = rpc_error(side.stub.RecordReview, apb.RecordReviewRequest(
        decision=apb.RecordRef(request_id="app-0"),
        decision_made=[apb.Value(name="verdict", text="approve")], reason="r"))
    assert "has no output 'verdict'" in unknown_output.details()
    assert side.query("SELECT count(*) FROM entries WHERE kind IN ('outcome', 'review')"
                      ) == [(0,)]
    # each refused question is on the trail; nothing else was written
    assert side.query("SELECT count(*) FROM entries")[0][0] == before + 6


def test_roles_decide_who_may_record_outcomes_and_reviews(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    access = tmp_path / "access.toml"
    tokens = {name: add_token(access, name, role) for name, role in
              (("ann", "auditor"), ("rev", "reviewer"), ("loans", "caller"))}
    text = access.read_text()  # the loan system may report what happened, nothing more
    access.write_text(text.replace('name = "loans"\nrole = "caller"\n',
                                   'name = "loans"\nrole = "caller"\nreport_outcomes = true\n'))
    models = credit_models(tmp_path_factory)
    side = start_audited_sidecar(models.v1, tmp_path / "ledger.duckdb", audit_access=access)
    try:
        side.infer(models.rows(1, seed=1), "app-1")
        request = apb.RecordOutcomesRequest(outcomes=[outcome("app-1", defaulted=1)])
        review = apb.RecordReviewRequest(decision=apb.RecordRef(request_id="app-1"),
                                         decision_made=[apb.Value(name="label", number=0)],
                                         reason="checked")
        quality = apb.QualityRequest(label="defaulted")

        def code(call, req, who: str) -> grpc.StatusCode:
            try:
                call(req, timeout=30, metadata=bearer(tokens[who]))
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        denied = grpc.StatusCode.PERMISSION_DENIED
        assert code(side.stub.RecordOutcomes, request, "ann") == denied
        assert code(side.stub.RecordReview, review, "ann") == denied
        assert code(side.stub.RecordReview, review, "loans") == denied
        assert code(side.stub.Quality, quality, "loans") == denied  # reporting is not reading
        assert code(side.stub.RecordOutcomes, request, "loans") == grpc.StatusCode.OK
        assert code(side.stub.RecordReview, review, "rev") == grpc.StatusCode.OK
        assert code(side.stub.Quality, quality, "rev") == grpc.StatusCode.OK
        assert side.query("SELECT reported_by FROM outcomes") == [("token:loans",)]
        assert side.query("SELECT reviewer FROM reviews") == [("token:rev",)]
        refused = side.query("SELECT caller, detail->>'rpc' FROM audit_log "
                             "WHERE status = 'PERMISSION_DENIED' ORDER BY seq")
        assert ("token:ann", "RecordOutcomes") in refused
    finally:
        side.stop()


def test_a_standalone_audit_server_records_no_outcomes(served, tmp_path: Path) -> None:
    side, _ = served
    ledger = side.ledger_path
    side.stop()
    copy = tmp_path / "copy.duckdb"
    shutil.copy(ledger, copy)
    with audit_server(copy) as server:
        channel, stub = stub_for(server.address)
        with channel:
            error = rpc_error(stub.RecordOutcomes, apb.RecordOutcomesRequest(
                outcomes=[outcome("app-0", defaulted=1)]))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "read-only" in error.details()
            answer = stub.Quality(apb.QualityRequest(label="defaulted"), timeout=60)
            assert answer.decisions == CALLS * ROWS and answer.with_outcome == 0
    assert read_ledger(copy, "SELECT count(*) FROM outcomes") == [(0,)]


def test_quality_over_recorded_outcomes_equals_sklearn(served) -> None:
    side, answers = served
    rng = np.random.default_rng(5)
    truth, scores, labels, items = [], [], [], []
    for request_id, out in answers.items():
        for row in range(ROWS):
            if rng.random() < 0.8:
                y = int(rng.integers(0, 2))
                truth.append(y)
                scores.append(float(out["probabilities"][row, 1]))
                labels.append(int(out["label"][row]))
                items.append(outcome(request_id, row=row, defaulted=y))
    side.stub.RecordOutcomes(apb.RecordOutcomesRequest(outcomes=items), timeout=60)
    done = cli(side, "audit", "quality", "--label", "defaulted", "--decision", "label=1",
               "--json")
    assert done.returncode == 0, done.stderr
    q = json.loads(done.stdout)["quality"]
    y, s, p = np.array(truth), np.array(scores), np.array(labels)
    assert q["accuracy"]["value"] == pytest.approx(metrics.accuracy_score(y, p))
    assert q["recall"]["value"] == pytest.approx(metrics.recall_score(y, p))
    assert q["roc_auc"]["value"] == pytest.approx(metrics.roc_auc_score(y, s))
    assert q["brier"]["value"] == pytest.approx(metrics.brier_score_loss(y, s))
    table = cli(side, "audit", "quality", "--label", "defaulted")
    assert table.returncode == 0, table.stderr
    assert f"{CALLS * ROWS} decisions, {len(items)} with an outcome" in table.stdout


def test_the_metrics_show_outcome_coverage_and_the_latest_quality(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, credit_model) -> None:
    kit = monitoring_kit(tmp_path_factory, credit_model)
    side = start_monitored(kit, tmp_path / "ledger.duckdb", quality_label="defaulted",
                           quality_decision="label=1", quality_interval=0.2)
    try:
        x, _ = kit.applicants(40, seed=2)
        labels = [int(side.infer(x[i:i + 1], f"m-{i}")["label"][0]) for i in range(40)]
        truth = [(i * 5) % 3 % 2 for i in range(30)]  # outcomes for the first 30 of 40
        side.stub.RecordOutcomes(apb.RecordOutcomesRequest(outcomes=[
            outcome(f"m-{i}", defaulted=truth[i]) for i in range(30)]), timeout=30)
        scrape = wait_for(lambda: (s := side.scrape()).get("mlwitness_quality_outcomes") == 30
                          and s, timeout=30, what="the quality gauges")
        assert scrape.value("mlwitness_outcome_coverage") == pytest.approx(30 / 40)
        accuracy = metrics.accuracy_score(truth, labels[:30])
        assert scrape.value("mlwitness_quality", metric="accuracy") == pytest.approx(accuracy)
        assert scrape.get("mlwitness_quality", metric="roc_auc") is not None
    finally:
        side.stop()
