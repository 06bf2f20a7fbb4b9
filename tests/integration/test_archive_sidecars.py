"""The archive wired into the product: sidecars started with --archive ship their ledgers to
a real S3 API (moto's server on 127.0.0.1) while serving; `mlwitness audit-server --archive`
answers over all of them; `mlwitness archive verify|push` and `audit status` see it; an
outage of the bucket never reaches a caller; a bad --archive stops the start, clearly."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_support import chain_of, manifests, wait_for
from audit_support import (
    AuditedSidecar,
    _clean_env,
    audit_server,
    credit_models,
    ref,
    run_cli,
    start_audited_sidecar,
    stub_for,
)
from s3_server import S3Server, point_aws_at, running_s3
from sidecar import mlwitness_command, read_ledger

from mlwitness.archive import ObjectStore, open_store, segments
from mlwitness.archive.verify import verify_archive
from mlwitness.protocol import audit_pb2 as apb

CALLS = 10  # per sidecar
SHARED = "shared-id"  # sent to sidecars 0 and 1
FAST = {"archive_interval": 0.2, "checkpoint_interval": 0.5}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3() as server, pytest.MonkeyPatch.context() as patch:
        point_aws_at(patch, server.endpoint)
        yield server


def shipper_of(side: AuditedSidecar) -> Any:
    archiving = side.running.sidecar.archiving
    assert archiving is not None
    return archiving.shipper


def wait_archived(side: AuditedSidecar, timeout: float = 60.0) -> int:
    """Wait until every record loaded now is in a committed segment; that seq."""
    head = side.running.sync()
    shipper = shipper_of(side)
    wait_for(lambda: shipper.status().archived_seq >= head, timeout,
             f"records up to {head} archived")
    return head


@dataclass
class Fleet:
    url: str
    store: ObjectStore
    ledgers: list[Path]
    chains: list[str]
    outputs: dict[str, list[int]]  # request id -> labels answered
    model: Path


@pytest.fixture(scope="module")
def fleet(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Three sidecars serving with --archive to one bucket prefix, each with its own ledger,
    stopped once everything they recorded is archived."""
    models = credit_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("sidecars")
    url = f"s3://{s3_server.create_bucket()}/credit"
    x_all = models.rows(200, seed=5)
    offset, ledgers, outputs = 0, [], {}
    for k in range(3):
        ledger = root / f"replica{k}" / "ledger.duckdb"
        ledger.parent.mkdir()
        side = start_audited_sidecar(models.v1, ledger, archive=url, **FAST)
        try:
            for i in range(CALLS):
                n = 1 + i % 3
                rid = f"r{k}-{i:02d}"
                outputs[rid] = side.infer(x_all[offset:offset + n], rid)["label"].tolist()
                offset += n
            if k < 2:
                side.infer(x_all[offset:offset + 1], SHARED)
            wait_archived(side)
        finally:
            side.stop()
        ledgers.append(ledger)
    return Fleet(url, open_store(url), ledgers, [chain_of(p) for p in ledgers], outputs,
                 models.v1)


@pytest.fixture(scope="module")
def fleet_server(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[str, Any]]:
    work = tmp_path_factory.mktemp("fleet-server")
    with audit_server(work / "unused.duckdb", "--archive", fleet.url, "--archive-cache",
                      str(work / "cache")) as server:
        channel, stub = stub_for(server.address)
        try:
            yield server.address, stub
        finally:
            channel.close()


def test_the_fleet_server_finds_every_request_and_counts_equal_the_calls(
        fleet: Fleet, fleet_server: tuple[str, Any]) -> None:
    _, stub = fleet_server
    for rid, labels in fleet.outputs.items():
        record = stub.GetRecord(apb.GetRecordRequest(ref=ref(rid)), timeout=30)
        assert record.request_id == rid
        assert [round(dict((v.name, v.number) for v in row.values)["label"])
                for row in record.outputs] == labels
    seen, token = [], ""
    for _ in range(20):
        page = stub.ListRecords(apb.ListRecordsRequest(page_size=25, page_token=token),
                                timeout=30)
        seen += [r.request_id for r in page.records]
        assert {r.chain_id for r in page.records} <= set(fleet.chains)
        token = page.next_page_token
        if not token:
            break
    assert sorted(r for r in seen if r != SHARED) == sorted(fleet.outputs)
    assert seen.count(SHARED) == 2
    status = stub.Status(apb.StatusRequest(), timeout=30)
    assert (status.archive.state, status.archive.chains) == ("fleet", 3)
    assert status.archive.url == fleet.url


def test_replay_from_the_archive_is_bit_identical(fleet: Fleet,
                                                  fleet_server: tuple[str, Any]) -> None:
    _, stub = fleet_server
    sha = hashlib.sha256(fleet.model.read_bytes()).hexdigest()
    for rid in ("r0-02", "r1-09", "r2-05"):
        answer = stub.Replay(apb.ReplayRequest(ref=ref(rid)), timeout=60)
        assert answer.bit_identical, rid
        assert answer.replayed_model_sha256 == sha


def test_a_request_id_on_two_chains_is_refused_naming_them_and_a_chain_seq_finds_each(
        fleet: Fleet, fleet_server: tuple[str, Any]) -> None:
    address, stub = fleet_server
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRecord(apb.GetRecordRequest(ref=ref(SHARED)), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for ledger, chain in zip(fleet.ledgers[:2], fleet.chains[:2], strict=True):
        ((seq,),) = read_ledger(ledger, "SELECT seq FROM entries WHERE request_id = ?",
                                [SHARED])
        assert f"{chain}:{seq}" in info.value.details()
        shown = run_cli(address, "show", f"{chain[:8]}:{seq}", "--json")
        assert shown.returncode == 0, shown.stderr
        assert f'"request_id": "{SHARED}"' in shown.stdout


def test_the_other_questions_are_answered_over_the_whole_fleet(
        fleet: Fleet, fleet_server: tuple[str, Any]) -> None:
    address, _ = fleet_server
    bias = run_cli(address, "bias", "--attribute", "age", "--favorable", "label=1",
                   "--bins", "26,41,61", "--json")
    assert bias.returncode == 0, bias.stderr
    groups = json.loads(bias.stdout)["groups"]
    assert sum(g["n"] for g in groups) == sum(len(v) for v in fleet.outputs.values()) + 2
    whatif = run_cli(address, "whatif", "r2-04", "--set", "income=45000", "--json")
    assert whatif.returncode == 0, whatif.stderr
    replayed = run_cli(address, "replay-range", "--json")
    assert replayed.returncode == 0, replayed.stderr
    summary = json.loads(replayed.stdout.strip().splitlines()[-1])["summary"]
    assert summary["identical"] == len(fleet.outputs) + 2 and summary["failed"] == 0
    for command in (["violations"], ["drift", "--since", "2000-01-01",
                                     "--reference-since", "2000-01-01"]):
        done = run_cli(address, *command)
        assert done.returncode in (0, 2), done.stderr
        assert "Traceback" not in done.stderr and "INTERNAL" not in done.stderr, done.stderr


def test_verify_through_the_fleet_server_checks_every_chain(
        fleet: Fleet, fleet_server: tuple[str, Any]) -> None:
    _, stub = fleet_server
    answer = stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=120)
    assert answer.ok, list(answer.problems)
    assert answer.records == sum(
        m.records for m in manifests(fleet.store))
    assert all(any(chain in note for note in answer.notes) for chain in fleet.chains)


def test_archive_verify_names_a_tampered_object(
        s3_server: S3Server, fleet: Fleet, tmp_path: Path) -> None:
    url = f"s3://{s3_server.create_bucket()}/copy"
    for ledger in fleet.ledgers:  # a copy to damage: `archive push` of the stopped ledgers
        pushed = subprocess.run([*mlwitness_command(), "archive", "push", "--ledger",
                                 str(ledger), "--archive", url, "--archive-records", "4"],
                                capture_output=True, text=True, timeout=120, env=_clean_env())
        assert pushed.returncode == 0, pushed.stderr
    store = open_store(url)
    clean = _archive_verify(url)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    victim = manifests(store, fleet.chains[1])[1]
    table = pq.read_table(pa.BufferReader(store.get(victim.parquet_key)))
    status = table.column("status").to_pylist()
    status[1] = "INVALID_ARGUMENT"
    table = table.set_column(table.column_names.index("status"), "status",
                             pa.array(status, pa.string()))
    store.put(victim.parquet_key, segments.parquet_bytes(table))
    damaged = _archive_verify(url)
    assert damaged.returncode == 1
    assert victim.parquet_key in damaged.stdout
    assert f"seq {victim.first_seq + 1}" in damaged.stdout
    assert "FAILED" in damaged.stdout


def test_archive_push_twice_ships_nothing_twice(s3_server: S3Server, fleet: Fleet) -> None:
    url = f"s3://{s3_server.create_bucket()}/again"
    runs = [subprocess.run([*mlwitness_command(), "archive", "push", "--ledger",
                            str(fleet.ledgers[0]), "--archive", url, "--json"],
                           capture_output=True, text=True, timeout=120, env=_clean_env())
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert '"records_shipped": 0' in runs[1].stdout
    ((head,),) = read_ledger(fleet.ledgers[0], "SELECT max(seq) FROM entries")
    assert [(m.first_seq, m.last_seq) for m in manifests(open_store(url))] == [(1, head)]


def test_archive_register_adds_each_segment_once(fleet: Fleet, tmp_path: Path) -> None:
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    runs = [subprocess.run([*mlwitness_command(), "archive", "register", "--archive",
                            fleet.url, "--catalog", catalog, "--json"],
                           capture_output=True, text=True, timeout=300, env=_clean_env())
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    first, second = (json.loads(r.stdout) for r in runs)
    segments_archived = len(manifests(fleet.store))
    assert (first["added"], first["already"]) == (segments_archived, 0)
    assert (second["added"], second["already"]) == (0, segments_archived)


def _archive_verify(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([*mlwitness_command(), "archive", "verify", "--archive", url],
                          capture_output=True, text=True, timeout=120, env=_clean_env())


# ── an outage of the bucket ────────────────────────────────────────────────────────────


def test_serving_goes_on_while_the_bucket_is_down_and_the_archive_catches_up(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    models = credit_models(tmp_path_factory)
    x = models.rows(60, seed=9)
    with running_s3(monkeypatch) as server:
        url = f"s3://{server.create_bucket()}/outage"
        side = start_audited_sidecar(models.v1, tmp_path / "ledger.duckdb", archive=url,
                                     **FAST)
        try:
            side.infer(x[:1], "before")
            wait_archived(side)
            server.stop()
            answered = [side.infer(x[i:i + 1], f"during-{i}") for i in range(1, 31)]
            assert len(answered) == 30  # no caller saw an error
            shipper = shipper_of(side)
            wait_for(lambda: shipper.status().failures >= 1, 60, "a failed upload")
            status = side.stub.Status(apb.StatusRequest(), timeout=30)
            assert status.archive.state == "failing" and status.archive.last_error
            assert status.archive.lag_records > 0
            cli = run_cli(side.audit_address, "status")
            assert cli.returncode == 1 and "archive       failing" in cli.stdout
            server.start()
            head = wait_archived(side, timeout=120)
            assert shipper.status().failures == 0
        finally:
            side.stop()
        report = verify_archive(open_store(url))
        assert report.ok, [str(p) for p in report.all_problems]
        (chain,) = report.chains
        assert chain.head_seq >= head


# ── local retention, and what erasure leaves in the archive ────────────────────────────


def test_local_retention_deletes_only_what_the_archive_holds(
        s3_server: S3Server, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    models = credit_models(tmp_path_factory)
    x = models.rows(20, seed=3)
    url = f"s3://{s3_server.create_bucket()}/retained"
    ledger = tmp_path / "ledger.duckdb"
    # 1e-9 days: every archived record is old enough at once
    side = start_audited_sidecar(models.v1, ledger, archive=url, local_retention=1e-9,
                                 archive_records=3, **FAST)
    try:
        for i in range(12):
            side.infer(x[i:i + 1], f"kept-{i}")
        wait_archived(side)
        archiving = side.running.sidecar.archiving
        assert archiving is not None
        wait_for(lambda: archiving.pruned_seq >= 9, 60, "local retention")
        status = side.stub.Status(apb.StatusRequest(), timeout=30)
        assert status.archive.pruned_seq >= 9 and status.archive.retention_days > 0
    finally:
        side.stop()
    ((first,),) = read_ledger(ledger, "SELECT min(seq) FROM entries")
    assert first > 9
    verified = subprocess.run([*mlwitness_command(), "verify", "--ledger", str(ledger)],
                              capture_output=True, text=True, timeout=120, env=_clean_env())
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verify_archive(open_store(url)).ok


def test_a_record_erased_before_it_is_shipped_reaches_the_archive_erased(
        s3_server: S3Server, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    models = credit_models(tmp_path_factory)
    x = models.rows(5, seed=4)
    url = f"s3://{s3_server.create_bucket()}/erased"
    ledger = tmp_path / "ledger.duckdb"
    # one catch-up at start, then nothing for an hour: the records wait for `archive push`
    side = start_audited_sidecar(models.v1, ledger, archive=url, archive_interval=3600.0)
    try:
        for i in range(4):
            side.infer(x[i:i + 1], f"e-{i}")
        done = side.stub.Erase(apb.EraseRequest(request_id="e-2", reason="test"), timeout=60)
        assert done.erased == 1
    finally:
        side.stop()
    pushed = subprocess.run([*mlwitness_command(), "archive", "push", "--ledger", str(ledger),
                             "--archive", url], capture_output=True, text=True, timeout=120,
                            env=_clean_env())
    assert pushed.returncode == 0, pushed.stderr
    store = open_store(url)
    rows = []
    for m in manifests(store):
        rows += pq.read_table(pa.BufferReader(store.get(m.parquet_key))).to_pylist()
    (erased,) = [r for r in rows if r["request_id"] == "e-2"]
    assert (erased["request"], erased["response"], erased["salt"] or b"") == (b"", b"", b"")
    assert erased["erased_by"] > 0 and erased["payload_commitment"]
    kept = [r for r in rows if r["request_id"] == "e-1"]
    assert kept[0]["format"] == 2 and kept[0]["request"] and kept[0]["salt"]
    report = verify_archive(store)
    assert report.ok, [str(p) for p in report.all_problems]


# ── abuse: a bad --archive ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("url", "said"), [
    ("http://bucket/prefix", "--archive must be s3://bucket/prefix or file:///absolute/dir"),
    ("s3://Not_A_Bucket/x", "is not an S3 bucket name"),
    ("file:///no/such/archive/dir", "is not an existing directory"),
    ("s3://bucket/../up", "prefix is unsafe"),
])
def test_a_bad_archive_url_stops_the_start_with_a_clear_message(
        url: str, said: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    models = credit_models(tmp_path_factory)
    for command in (["serve", "--model", str(models.v1), "--ledger",
                     str(tmp_path / "l.duckdb"), "--port", "0", "--audit-port", "0",
                     "--metrics-port", "0"],
                    ["audit-server", "--archive-cache", str(tmp_path / "c"),
                     "--audit-port", "0"]):
        done = subprocess.run([*mlwitness_command(), *command, "--archive", url],
                              capture_output=True, text=True, timeout=60, env=_clean_env())
        assert done.returncode == 2, (command[0], done.stderr)
        assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "l.duckdb").exists()


def test_archive_settings_without_an_archive_are_refused(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    models = credit_models(tmp_path_factory)
    done = subprocess.run([*mlwitness_command(), "serve", "--model", str(models.v1),
                           "--local-retention", "30"], capture_output=True, text=True,
                          timeout=60, env=_clean_env())
    assert done.returncode == 2 and "--local-retention need --archive" in done.stderr

