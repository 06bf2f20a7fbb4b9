"""The fleet: three sidecars with their own ledgers, shipped to a real S3 API (moto's server
on 127.0.0.1), read back as one DuckDB database by the ledger's reader and the audit
service; and the archive's verifier naming what was tampered with or deleted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_support import chain_of, manifests, ship
from audit_support import credit_models, start_audited_sidecar
from s3_server import S3Server, point_aws_at, running_s3

from mlwitness.analytics.bias import bias_report
from mlwitness.analytics.drift import Window, drift_report
from mlwitness.archive import ObjectStore, open_store, segments
from mlwitness.archive.fleet import Fleet, FleetReader, open_fleet, parse_record_ref
from mlwitness.archive.verify import verify_archive
from mlwitness.audit.service import Asker, AuditService
from mlwitness.errors import FailedPrecondition, InvalidInput, RecordNotFound
from mlwitness.ledger.filters import Filters

CALLS = 12  # per sidecar
SHARED = "shared-id"  # sent to sidecars 0 and 1


@dataclass
class Sidecars:
    ledgers: list[Path]
    chains: list[str]
    outputs: dict[str, dict[str, np.ndarray]]  # request id (on its one chain) -> answer
    model: Path


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3() as server, pytest.MonkeyPatch.context() as patch:
        point_aws_at(patch, server.endpoint)
        yield server


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Sidecars:
    """Three sidecars serving credit v1, each with its own ledger, each called CALLS times
    (and two of them once more, with the same request id)."""
    models = credit_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("fleet")
    x_all = models.rows(300, seed=17)
    offset = 0
    ledgers, outputs = [], {}
    for k in range(3):
        ledger = root / f"sidecar{k}" / "ledger.duckdb"
        ledger.parent.mkdir()
        side = start_audited_sidecar(models.v1, ledger, model_name="credit")
        try:
            for i in range(CALLS):
                n = 1 + (i % 4)
                x = x_all[offset:offset + n]
                offset += n
                rid = f"s{k}-{i:02d}"
                outputs[rid] = side.infer(x, rid, caller=f"caller{i % 3}")
            if k < 2:
                side.infer(x_all[offset:offset + 1], SHARED)
        finally:
            side.stop()
        ledgers.append(ledger)
    return Sidecars(ledgers, [chain_of(p) for p in ledgers], outputs, models.v1)


def archive_of(server: S3Server, sidecars: Sidecars) -> ObjectStore:
    store = open_store(f"s3://{server.create_bucket()}/fleet")
    for ledger in sidecars.ledgers:
        ship(ledger, store, max_records=5)  # several segments a chain
    return store


@pytest.fixture(scope="module")
def archive(s3_server: S3Server, sidecars: Sidecars) -> ObjectStore:
    return archive_of(s3_server, sidecars)


@pytest.fixture(scope="module")
def fleet(archive: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = open_fleet(archive, tmp_path_factory.mktemp("fleet-cache"))
    yield fleet
    fleet.close()


@pytest.fixture(scope="module")
def union(sidecars: Sidecars) -> Iterator[duckdb.DuckDBPyConnection]:
    """The three ledgers' entries as one table: what the fleet must answer like."""
    con = duckdb.connect(":memory:")
    for k, ledger in enumerate(sidecars.ledgers):
        con.execute(f"ATTACH '{ledger}' AS l{k} (READ_ONLY)")
    con.execute("CREATE VIEW entries AS " + " UNION ALL ".join(
        f"SELECT * FROM l{k}.main.entries" for k in range(3)))
    yield con
    con.close()


# ── the fleet answers like the ledgers ─────────────────────────────────────────────────


def test_the_fleet_finds_every_request_and_counts_equal_the_calls_made(
        fleet: Fleet, sidecars: Sidecars) -> None:
    assert sorted(fleet.chains) == sorted(sidecars.chains)
    assert fleet.problems == []
    reader = FleetReader(fleet.cursor)
    for rid, answer in sidecars.outputs.items():
        stored = reader.get(rid)
        k = int(rid[1])
        chain, seq = reader.locate(rid)
        assert chain == sidecars.chains[k]
        assert stored.record.request_id == rid and stored.record.seq == seq
        assert [row["label"] for row in stored.outputs] == answer["label"].tolist()
    counts = dict(fleet.cursor().execute(
        "SELECT chain_id, count(*) FROM records GROUP BY ALL").fetchall())
    assert counts == {sidecars.chains[0]: CALLS + 1, sidecars.chains[1]: CALLS + 1,
                      sidecars.chains[2]: CALLS}
    for ledger, chain in zip(sidecars.ledgers, sidecars.chains, strict=True):
        con = duckdb.connect(str(ledger), read_only=True)
        try:
            mine = con.execute("SELECT count(*), max(seq) FROM entries").fetchall()[0]
        finally:
            con.close()
        assert (fleet.chains[chain].records, fleet.chains[chain].last_seq) == mine


def test_a_request_id_on_several_chains_is_refused_naming_the_chains_and_seqs(
        fleet: Fleet, sidecars: Sidecars) -> None:
    reader = FleetReader(fleet.cursor)
    with pytest.raises(FailedPrecondition) as info:
        reader.get(SHARED)
    seqs = {}
    for chain in sidecars.chains[:2]:
        seqs[chain] = fleet.cursor().execute(
            "SELECT seq FROM entries WHERE chain_id = ? AND request_id = ?",
            [chain, SHARED]).fetchall()[0][0]
        assert f"{chain}:{seqs[chain]} OK" in info.value.message
    assert "on 2 chains" in info.value.message
    chain = sidecars.chains[1]
    stored = reader.get(seq=seqs[chain], chain=chain[:8])
    assert (stored.record.request_id, stored.record.seq) == (SHARED, seqs[chain])


def test_a_seq_alone_names_a_record_only_where_one_chain_holds_it(
        fleet: Fleet, sidecars: Sidecars) -> None:
    reader = FleetReader(fleet.cursor)
    with pytest.raises(FailedPrecondition, match="several chains"):
        reader.get(seq=2)
    chain, seq = parse_record_ref(f"{sidecars.chains[2][:6]}:2")
    assert reader.get(seq=seq, chain=chain).record.seq == 2
    with pytest.raises(InvalidInput):
        parse_record_ref("2")
    with pytest.raises(RecordNotFound):
        reader.get(seq=10**6)


def test_the_record_list_pages_through_every_chain_newest_first(
        fleet: Fleet, sidecars: Sidecars) -> None:
    reader = FleetReader(fleet.cursor)
    seen, token = [], ""
    for _ in range(20):
        items, token = reader.list(Filters(), page_size=7, page_token=token)
        seen += items
        if not token:
            break
    assert len(seen) == 3 * CALLS + 2
    assert len({(i["chain_id"], i["seq"]) for i in seen}) == len(seen)
    assert [i["received_us"] for i in seen] == sorted((i["received_us"] for i in seen),
                                                      reverse=True)


def test_show_and_replay_from_the_archive_are_bit_identical(
        fleet: Fleet, sidecars: Sidecars) -> None:
    service = AuditService(FleetReader(fleet.cursor), trail=None)
    try:
        for rid in ("s0-03", "s2-11"):
            shown = service.get_record(Asker("auditor"), request_id=rid)
            assert shown.request_id == rid
            answer = service.replay(Asker("auditor"), request_id=rid)
            assert answer.bit_identical is True
            assert answer.replayed_model_sha256 == hashlib.sha256(
                sidecars.model.read_bytes()).hexdigest()
            assert [r["label"] for r in answer.replayed_outputs] == \
                sidecars.outputs[rid]["label"].tolist()
    finally:
        service.close()


def test_drift_and_bias_over_the_fleet_equal_the_ledgers_union(
        fleet: Fleet, union: duckdb.DuckDBPyConnection) -> None:
    times = sorted(r[0] for r in union.execute(
        "SELECT received_us FROM entries WHERE kind = 'infer' AND status = 'OK'").fetchall())
    middle = times[len(times) // 2]
    reference = Window(times[0], middle)
    fleet_drift = drift_report(fleet.cursor(), reference, since_us=middle).to_dict()
    union_drift = drift_report(union, reference, since_us=middle).to_dict()
    assert fleet_drift == union_drift
    assert fleet_drift["rows"] > 0
    fleet_bias = bias_report(fleet.cursor(), attribute="age", favorable="label=1",
                             bins=[26, 41, 61]).to_dict()
    assert fleet_bias == bias_report(union, attribute="age", favorable="label=1",
                                     bins=[26, 41, 61]).to_dict()
    assert sum(g["n"] for g in fleet_bias["groups"]) > 0


def test_refresh_takes_what_was_archived_since(
        s3_server: S3Server, sidecars: Sidecars, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_server.create_bucket()}/fleet")
    ship(sidecars.ledgers[0], store)
    fleet = open_fleet(store, tmp_path / "cache")
    try:
        assert list(fleet.chains) == [sidecars.chains[0]]
        ship(sidecars.ledgers[1], store)
        fleet.refresh()
        assert sorted(fleet.chains) == sorted(sidecars.chains[:2])
        assert fleet.cursor().execute("SELECT count(DISTINCT chain_id) FROM records"
                                      ).fetchall() == [(2,)]
    finally:
        fleet.close()


# ── verify over the archive ────────────────────────────────────────────────────────────


def test_verify_passes_an_untouched_archive_and_counts_every_record(
        archive: ObjectStore, sidecars: Sidecars) -> None:
    report = verify_archive(archive)
    assert report.ok, [str(p) for p in report.all_problems]
    assert sorted(c.chain_id for c in report.chains) == sorted(sidecars.chains)
    assert report.records == sum(c.records for c in report.chains) > 3 * CALLS
    assert all(c.decoded_checked == c.records for c in report.chains)
    assert report.content_objects >= 2  # the model, the environment


@pytest.fixture
def own_archive(s3_server: S3Server, sidecars: Sidecars) -> ObjectStore:
    """An archive of the three ledgers that a test may damage."""
    return archive_of(s3_server, sidecars)


def test_a_rewritten_value_in_a_segment_is_named_with_its_object_and_seq(
        own_archive: ObjectStore, sidecars: Sidecars) -> None:
    chain = sidecars.chains[1]
    victim = manifests(own_archive, chain)[1]
    table = pq.read_table(pa.BufferReader(own_archive.get(victim.parquet_key)))
    peers = table.column("peer").to_pylist()
    peers[2] = "someone-else"
    table = table.set_column(table.column_names.index("peer"), "peer",
                             pa.array(peers, pa.string()))
    own_archive.put(victim.parquet_key, segments.parquet_bytes(table))
    report = verify_archive(own_archive)
    assert not report.ok
    (bad,) = [c for c in report.chains if not c.ok]
    assert bad.chain_id == chain
    first = bad.first_bad
    assert first is not None
    assert (first.seq, first.key) == (victim.first_seq + 2, victim.parquet_key)
    assert "altered" in first.what
    assert any("SHA-256" in p.what and p.key == victim.parquet_key for p in bad.problems)


def test_a_deleted_segment_is_named(own_archive: ObjectStore, sidecars: Sidecars) -> None:
    chain = sidecars.chains[0]
    victim = manifests(own_archive, chain)[2]
    own_archive.delete(victim.parquet_key)
    bad = _only_bad_chain(own_archive, chain)
    assert any(p.key == victim.parquet_key and p.seq == victim.first_seq and "missing" in p.what
               for p in bad.problems), [str(p) for p in bad.problems]


def test_a_deleted_manifest_leaves_a_gap_that_is_named_with_the_orphaned_object(
        own_archive: ObjectStore, sidecars: Sidecars) -> None:
    chain = sidecars.chains[2]
    victim = manifests(own_archive, chain)[1]
    own_archive.delete(victim.key)
    bad = _only_bad_chain(own_archive, chain)
    first = bad.first_bad
    assert first is not None and first.seq == victim.first_seq
    assert f"records {victim.first_seq}..{victim.last_seq} are missing" in first.what
    assert victim.parquet_key in first.what


def test_deleting_the_newest_segments_is_named_from_the_chains_hint(
        own_archive: ObjectStore, sidecars: Sidecars) -> None:
    chain = sidecars.chains[2]
    victim = manifests(own_archive, chain)[-1]
    own_archive.delete(victim.key)
    own_archive.delete(victim.parquet_key)
    bad = _only_bad_chain(own_archive, chain)
    assert any(p.seq == victim.first_seq and "are gone" in p.what for p in bad.problems)


def test_a_deleted_model_is_named_with_the_first_record_that_needs_it(
        own_archive: ObjectStore, sidecars: Sidecars) -> None:
    sha = hashlib.sha256(sidecars.model.read_bytes()).hexdigest()
    key = f"models/sha256/{sha}.onnx"
    own_archive.delete(key)
    report = verify_archive(own_archive)
    assert {c.chain_id for c in report.chains if not c.ok} == set(sidecars.chains)
    for chain in report.chains:
        ledger = sidecars.ledgers[sidecars.chains.index(chain.chain_id)]
        con = duckdb.connect(str(ledger), read_only=True)
        try:
            first_use = con.execute("SELECT min(seq) FROM entries WHERE model_sha256 = ?",
                                    [sha]).fetchall()[0][0]
        finally:
            con.close()
        (problem,) = chain.problems
        assert (problem.key, problem.seq) == (key, first_use)
        assert "missing" in problem.what


def test_a_fleet_leaves_out_a_segment_that_does_not_match_its_manifest(
        own_archive: ObjectStore, sidecars: Sidecars, tmp_path: Path) -> None:
    chain = sidecars.chains[0]
    victim = manifests(own_archive, chain)[0]
    table = pq.read_table(pa.BufferReader(own_archive.get(victim.parquet_key)))
    own_archive.put(victim.parquet_key, segments.parquet_bytes(table.slice(0, 2)))
    fleet = open_fleet(own_archive, tmp_path / "cache")
    try:
        assert any(victim.parquet_key in p for p in fleet.problems)
        assert fleet.chains[chain].records == sum(
            m.records for m in manifests(own_archive, chain)) - victim.records
    finally:
        fleet.close()


def _only_bad_chain(store: ObjectStore, chain: str):  # type: ignore[no-untyped-def]
    report = verify_archive(store)
    bad = [c for c in report.chains if not c.ok]
    assert [c.chain_id for c in bad] == [chain], [str(p) for p in report.all_problems]
    return bad[0]
