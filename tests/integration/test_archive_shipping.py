"""Shipping sealed segments: real ledgers (LedgerWriter), the real Shipper, a real S3 API
(moto's server on 127.0.0.1) or a directory; never a mocked client."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_support import (
    DAY_US,
    T0_US,
    append,
    assert_contiguous,
    chain_of,
    make_ledger,
    manifests,
    open_writer,
    parquet_ranges,
    ranges,
    reading,
    ship,
    wait_for,
)
from s3_server import S3Server, point_aws_at, running_s3

from mlwitness.archive import ObjectLocked, ObjectStore, open_store, segments
from mlwitness.archive.segments import Manifest
from mlwitness.archive.shipper import Shipper, ShipperOptions
from mlwitness.archive.verify import verify_archive
from mlwitness.errors import DataLoss

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared_s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


@pytest.fixture
def s3(shared_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """A fresh bucket of the module's S3 server, as an s3:// archive with a prefix."""
    point_aws_at(monkeypatch, shared_s3.endpoint)
    return open_store(f"s3://{shared_s3.create_bucket()}/credit")


@pytest.fixture
def directory(tmp_path: Path) -> ObjectStore:
    root = tmp_path / "archive"
    root.mkdir()
    return open_store(root.as_uri())


# ── segments ───────────────────────────────────────────────────────────────────────────


def test_every_record_is_shipped_once_in_segments_of_at_most_max_records(
        tmp_path: Path, s3: ObjectStore) -> None:
    path = tmp_path / "ledger.duckdb"
    chain = make_ledger(path, 1000)
    shipper = ship(path, s3, max_records=300)
    assert ranges(s3, chain) == [(1, 300), (301, 600), (601, 900), (901, 1000)]
    assert parquet_ranges(s3, chain) == ranges(s3, chain)
    status = shipper.status()
    assert (status.archived_seq, status.lag_records, status.last_error) == (1000, 0, "")
    assert (status.segments_shipped, status.records_shipped) == (4, 1000)
    assert 0 < status.cpu_seconds < 60  # what archiving cost, counted for the metric
    with reading(path) as con:
        head = con.execute("SELECT lower(hex(hash)) FROM entries WHERE seq = 1000").fetchall()
    assert status.archived_hash == head[0][0] == manifests(s3, chain)[-1].last_hash
    report = verify_archive(s3)
    assert report.ok, [str(p) for p in report.all_problems]
    assert report.records == 1000


def test_a_segment_holds_every_column_of_the_ledger_and_its_manifest_seals_it(
        tmp_path: Path, s3: ObjectStore) -> None:
    path = tmp_path / "ledger.duckdb"
    chain = make_ledger(path, 50)
    ship(path, s3)
    (manifest,) = manifests(s3, chain)
    data = s3.get(manifest.parquet_key)
    assert hashlib.sha256(data).hexdigest() == manifest.parquet_sha256
    assert manifest.parquet_key == (f"records/chain={chain}/date=2026-05-28/"
                                    f"seg-{1:020d}-{50:020d}.parquet")
    table = pq.read_table(pa.BufferReader(data))
    with reading(path) as con:
        stored = con.sql("SELECT * FROM entries ORDER BY seq").to_arrow_table()
    assert table.column_names == [*stored.column_names, "chain_id"]
    assert table.drop_columns(["chain_id"]).to_pylist() == stored.to_pylist()
    assert set(table.column("chain_id").to_pylist()) == {chain}
    raw = json.loads(s3.get(manifest.key))
    assert raw["head"] == {"seq": 50, "hash": stored.column("hash")[-1].as_py().hex()}
    assert raw["first_prev_hash"] == stored.column("prev_hash")[0].as_py().hex()
    assert (raw["records"], raw["chain_id"], raw["format"]) == (50, chain, "mlwitness-segment/1")


def test_the_same_records_seal_to_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    chain = make_ledger(path, 300)
    with reading(path) as con:
        one = segments.seal(con, chain, 1, 300, created_us=1)
        two = segments.seal(con, chain, 1, 300, created_us=2)
    assert one.parquet == two.parquet
    assert one.manifest.parquet_sha256 == two.manifest.parquet_sha256


def test_the_directory_archive_reads_as_a_hive_partitioned_table(
        tmp_path: Path, directory: ObjectStore) -> None:
    """What DuckDB, Trino, Spark and Athena read: records/ and nothing else under it."""
    chains = []
    for n, count in enumerate((120, 80)):
        path = tmp_path / f"ledger{n}.duckdb"
        chains.append(make_ledger(path, count, tag=f"c{n}", received_us=T0_US + n * DAY_US))
        ship(path, directory, max_records=50)
    root = Path(directory.url("records").removeprefix("file://"))
    rows = duckdb.sql(
        f"SELECT chain, date, count(*), count(DISTINCT seq), min(seq), max(seq) FROM "
        f"read_parquet('{root}/*/*/*.parquet', hive_partitioning = true) "
        "GROUP BY ALL ORDER BY date").fetchall()
    assert [(r[0], str(r[1]), *r[2:]) for r in rows] == [
        (chains[0], "2026-05-28", 120, 120, 1, 120),
        (chains[1], "2026-05-29", 80, 80, 1, 80),
    ]


# ── while serving ──────────────────────────────────────────────────────────────────────


def test_the_shipper_thread_archives_a_live_ledger_as_records_arrive(
        tmp_path: Path, s3: ObjectStore) -> None:
    writer = open_writer(tmp_path / "ledger.duckdb")
    shipper = Shipper(s3, writer.cursor, writer.chain_id,
                      ShipperOptions(interval_s=0.2, poll_s=0.05, max_records=100))
    shipper.start()
    try:
        for round_ in range(3):
            append(writer, f"round{round_}", 150, start=round_ * 150)
            wait_for(lambda: shipper.status().archived_seq == writer.head[0],
                     what="the shipper to catch up")
        status = shipper.status()
        assert (status.lag_records, status.lag_seconds, status.last_error) == (0, 0.0, "")
    finally:
        shipper.stop()
        writer.close()
    assert_contiguous(ranges(s3, writer.chain_id), 450)
    assert parquet_ranges(s3, writer.chain_id) == ranges(s3, writer.chain_id)
    assert verify_archive(s3).ok


def test_serving_goes_on_while_the_store_is_down_and_the_archive_catches_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_s3(monkeypatch) as server:
        store = open_store(f"s3://{server.create_bucket()}/credit")
        writer = open_writer(tmp_path / "ledger.duckdb")
        shipper = Shipper(store, writer.cursor, writer.chain_id, ShipperOptions(
            interval_s=0.1, poll_s=0.05, max_records=100, retry_min_s=0.05,
            retry_max_s=0.2))
        shipper.start()
        try:
            append(writer, "before", 120)
            wait_for(lambda: shipper.status().archived_seq == 120, what="the first shipment")
            server.stop()
            append(writer, "during", 250, start=120)  # every append is answered
            status = wait_for(lambda: (s := shipper.status()).failures >= 2 and s,
                              what="failed attempts while the store is down")
            assert status.archived_seq in (-1, 120)  # -1: it reads the store again
            assert "127.0.0.1" in status.last_error
            assert writer.healthy
            server.start()
            wait_for(lambda: shipper.status().archived_seq == 370, timeout=60,
                     what="the archive to catch up")
            assert shipper.status().last_error == ""
        finally:
            shipper.stop()
            writer.close()
        assert_contiguous(ranges(store, writer.chain_id), 370)
        assert parquet_ranges(store, writer.chain_id) == ranges(store, writer.chain_id)
        assert verify_archive(store).ok


# ── crashes ────────────────────────────────────────────────────────────────────────────

_KILLED_SHIPPER = """
import sys
from pathlib import Path
from mlwitness.archive import open_store
from mlwitness.archive.shipper import Shipper, ShipperOptions
from mlwitness.ledger import schema

path, url, chain = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
con = schema.connect_reader(path)
shipper = Shipper(open_store(url), con.cursor, chain, ShipperOptions(max_records=40))
print("shipping", flush=True)
shipper.ship_pending()
print("done", flush=True)
"""


def test_a_shipper_killed_mid_upload_leaves_no_gap_and_no_duplicate(
        tmp_path: Path, s3: ObjectStore, shared_s3: S3Server) -> None:
    path = tmp_path / "ledger.duckdb"
    chain = make_ledger(path, 2000)
    url = s3.url("x").rpartition("/")[0]  # s3://bucket/credit
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    process = subprocess.Popen([sys.executable, "-c", _KILLED_SHIPPER, str(path), url, chain],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        wait_for(lambda: len(list(s3.list("manifests/"))) >= 3 or process.poll() is not None,
                 timeout=60, what="the child to ship a few segments")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    shipped = ranges(s3, chain)
    assert shipped and shipped[-1][1] < 2000  # killed before it finished
    assert set(parquet_ranges(s3, chain)) >= set(shipped)
    shipper = ship(path, s3, max_records=40)
    assert shipper.status().archived_seq == 2000
    assert_contiguous(ranges(s3, chain), 2000)
    assert parquet_ranges(s3, chain) == ranges(s3, chain)  # a cut-short upload was completed
    assert ranges(s3, chain)[: len(shipped)] == shipped
    assert verify_archive(s3).ok


def test_an_upload_cut_short_between_parquet_and_manifest_is_completed_with_its_range(
        tmp_path: Path, s3: ObjectStore) -> None:
    path = tmp_path / "ledger.duckdb"
    chain = make_ledger(path, 500)
    with reading(path) as con:  # what a crash leaves: the Parquet object, no manifest
        cut = segments.seal(con, chain, 1, 130, created_us=1)
    s3.put(cut.manifest.parquet_key, cut.parquet, if_absent=True)
    assert verify_archive(s3).chains[0].notes  # an upload under way, not a problem
    ship(path, s3, max_records=400)
    assert ranges(s3, chain) == [(1, 130), (131, 500)]
    assert parquet_ranges(s3, chain) == [(1, 130), (131, 500)]
    assert verify_archive(s3).ok


def test_a_cut_short_upload_beyond_what_is_loaded_waits_for_the_records_to_load(
        tmp_path: Path, s3: ObjectStore) -> None:
    """After a restart DuckDB may not yet hold every record the cut-short upload held:
    shipping a shorter range then would archive records twice."""
    path, behind = tmp_path / "ledger.duckdb", tmp_path / "behind.duckdb"
    chain = make_ledger(path, 100)
    behind.write_bytes(path.read_bytes())  # the ledger as DuckDB holds it after a restart
    writer = open_writer(path)
    append(writer, "more", 30, start=100)
    writer.close()
    with reading(path) as con:
        cut = segments.seal(con, chain, 1, 130, created_us=1)
    s3.put(cut.manifest.parquet_key, cut.parquet, if_absent=True)
    assert ship(behind, s3).status().archived_seq == 0
    assert ranges(s3, chain) == []
    ship(path, s3)
    assert ranges(s3, chain) == parquet_ranges(s3, chain) == [(1, 130)]


def test_a_cut_short_upload_stored_with_other_bytes_is_adopted_when_it_holds_the_same_records(
        tmp_path: Path, s3: ObjectStore) -> None:
    """Another pyarrow may write the same rows into other bytes."""
    path = tmp_path / "ledger.duckdb"
    chain = make_ledger(path, 200)
    with reading(path) as con:
        cut = segments.seal(con, chain, 1, 100, created_us=1)
    other = pq.read_table(pa.BufferReader(cut.parquet))
    sink = pa.BufferOutputStream()
    pq.write_table(other, sink, compression="snappy")
    s3.put(cut.manifest.parquet_key, sink.getvalue().to_pybytes(), if_absent=True)
    ship(path, s3)
    (first, second) = manifests(s3, chain)
    assert (first.first_seq, first.last_seq, second.last_seq) == (1, 100, 200)
    assert first.parquet_sha256 == hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
    assert verify_archive(s3).ok


def test_the_shipper_refuses_to_continue_an_archive_of_another_history(
        tmp_path: Path, s3: ObjectStore) -> None:
    """A ledger restored from an old copy, then written on: same chain, other records."""
    path = tmp_path / "ledger.duckdb"
    make_ledger(path, 100)
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(path.read_bytes())
    for ledger, tag in ((path, "one"), (copy, "two")):
        writer = open_writer(ledger)
        append(writer, tag, 20, start=100)
        writer.close()
    ship(path, s3)
    with reading(copy) as con:
        shipper = Shipper(s3, con.cursor, chain_of(copy))
        with pytest.raises(DataLoss, match="another history"):
            shipper.ship_pending()
    assert ranges(s3, chain_of(path)) == [(1, 120)]


# ── object lock ────────────────────────────────────────────────────────────────────────


def test_with_object_lock_every_object_is_kept_in_compliance_mode(
        tmp_path: Path, shared_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    point_aws_at(monkeypatch, shared_s3.endpoint)
    store = open_store(f"s3://{shared_s3.create_bucket(object_lock=True)}/credit")
    path = tmp_path / "ledger.duckdb"
    chain = make_ledger(path, 60)
    before = datetime.now(UTC)
    ship(path, store, max_records=30, object_lock_days=3)
    keys = [info.key for info in store.list("") if not info.key.startswith("chains/")]
    assert sum(k.endswith(".parquet") for k in keys) == 2
    for key in keys:
        info = store.head(key)
        assert info is not None and info.retain_until is not None, key
        assert info.retain_until >= before + timedelta(days=3) - timedelta(minutes=5)
    (first, _) = manifests(store, chain)
    with pytest.raises(ObjectLocked):
        store.delete(first.parquet_key)
    head = store.head(first.parquet_key)
    assert head is not None and head.sha256 == first.parquet_sha256


def test_object_lock_on_a_directory_archive_is_a_clear_error_and_nothing_is_shipped(
        tmp_path: Path, directory: ObjectStore) -> None:
    path = tmp_path / "ledger.duckdb"
    make_ledger(path, 10)
    with pytest.raises(Exception, match="cannot lock objects"):
        ship(path, directory, object_lock_days=1)
    assert not list(directory.list("manifests/"))


def test_a_bad_manifest_is_refused_naming_it(s3: ObjectStore) -> None:
    key = segments.manifest_key("ab" * 16, 1, 10)
    with pytest.raises(segments.BadManifest, match=key):
        Manifest.from_bytes(b'{"format": "mlwitness-segment/1", "chain_id": 3}', key)


def test_status_reports_the_lag_while_records_wait(tmp_path: Path, s3: ObjectStore) -> None:
    writer = open_writer(tmp_path / "ledger.duckdb")
    shipper = Shipper(s3, writer.cursor, writer.chain_id, ShipperOptions(
        interval_s=3600, poll_s=0.05))
    try:
        append(writer, "a", 25, received_us=T0_US)
        shipper.start()  # ships what is there at once, then waits for the interval
        wait_for(lambda: shipper.status().archived_seq == 25, what="the first shipment")
        append(writer, "b", 7, start=25, received_us=T0_US)
        status = wait_for(lambda: (s := shipper.status()).loaded_seq == 32 and s,
                          what="the shipper to see the new records")
        assert (status.archived_seq, status.lag_records) == (25, 7)
        assert status.lag_seconds > 0  # received in 2026-05-28, long ago for the test
        assert status.to_dict()["chain_id"] == writer.chain_id
    finally:
        shipper.stop()
        writer.close()
