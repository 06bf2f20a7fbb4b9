"""Local retention: records leave the ledger only once the archive (a real S3 API, moto's
server on 127.0.0.1) is read back and matches them; the chain head stays, `verify` still
passes over what remains and names the archived prefix, and the sidecar's ledger goes on."""

from __future__ import annotations

from collections.abc import Iterator
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
    manifests,
    open_writer,
    ranges,
)
from s3_server import S3Server, point_aws_at, running_s3

from mlwitness.archive import ObjectStore, open_store, segments
from mlwitness.archive.retention import archived_prefix, prune_archived
from mlwitness.archive.shipper import Shipper, ShipperOptions
from mlwitness.archive.verify import verify_archive
from mlwitness.errors import DataLoss
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter

FAR_FUTURE_US = T0_US + 10_000 * DAY_US


@pytest.fixture(scope="module")
def shared_s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


@pytest.fixture
def s3(shared_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    point_aws_at(monkeypatch, shared_s3.endpoint)
    return open_store(f"s3://{shared_s3.create_bucket()}/credit")


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[LedgerWriter]:
    writer = open_writer(tmp_path / "ledger.duckdb")
    yield writer
    writer.close()


def shipped(writer: LedgerWriter, store: ObjectStore, **options: int) -> None:
    Shipper(store, writer.cursor, writer.chain_id, ShipperOptions(**options)).ship_pending()


def local_seqs(writer: LedgerWriter) -> tuple[int, int, int]:
    return writer.cursor().execute("SELECT min(seq), max(seq), count(*) FROM entries"
                                   ).fetchall()[0]


def test_archived_records_are_deleted_but_never_the_head_and_verify_names_the_prefix(
        writer: LedgerWriter, s3: ObjectStore) -> None:
    append(writer, "r", 1000)
    shipped(writer, s3, max_records=100)
    pruned = prune_archived(writer.write, writer.cursor, s3, writer.chain_id, FAR_FUTURE_US)
    assert (pruned.records, pruned.segments, pruned.archived_seq) == (900, 9, 900)
    assert local_seqs(writer) == (901, 1000, 100)  # the head's segment stays
    assert archived_prefix(writer.cursor()) == (900, manifests(s3)[8].last_hash)
    report = verify(writer.path, con=writer.cursor())
    assert report.ok, report.problems
    assert report.archived_prefix == {"seq": 900, "hash": manifests(s3)[8].last_hash}
    assert (report.records, report.head_seq) == (100, 1000)
    assert any("archive verify" in note for note in report.notes())
    again = prune_archived(writer.write, writer.cursor, s3, writer.chain_id, FAR_FUTURE_US)
    assert again.records == 0


def test_the_ledger_goes_on_after_pruning_and_the_shipper_continues(
        tmp_path: Path, s3: ObjectStore) -> None:
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path)
    append(writer, "a", 300)
    shipped(writer, s3, max_records=100)
    prune_archived(writer.write, writer.cursor, s3, writer.chain_id, FAR_FUTURE_US)
    writer.close()
    writer = open_writer(path)  # a restart reads the head from what remains
    try:
        append(writer, "b", 50, start=300)
        assert writer.head[0] == 350
        shipped(writer, s3, max_records=100)
        assert_contiguous(ranges(s3, writer.chain_id), 350)
        assert verify(path, con=writer.cursor()).ok
    finally:
        writer.close()
    assert verify(path).ok
    assert verify_archive(s3).ok


def test_only_segments_older_than_the_retention_are_pruned(
        writer: LedgerWriter, s3: ObjectStore) -> None:
    append(writer, "old", 200, received_us=T0_US)
    append(writer, "new", 200, start=200, received_us=T0_US + 5 * DAY_US)
    shipped(writer, s3, max_records=100)
    pruned = prune_archived(writer.write, writer.cursor, s3, writer.chain_id,
                            T0_US + 2 * DAY_US)
    assert pruned.archived_seq == 200
    assert local_seqs(writer) == (201, 400, 200)


def test_nothing_is_pruned_beyond_what_is_archived(writer: LedgerWriter,
                                                  s3: ObjectStore) -> None:
    append(writer, "a", 250)
    shipped(writer, s3, max_records=100)
    append(writer, "b", 100, start=250)  # not shipped
    pruned = prune_archived(writer.write, writer.cursor, s3, writer.chain_id, FAR_FUTURE_US)
    assert pruned.archived_seq == 250  # every archived segment: the head is beyond them
    assert local_seqs(writer) == (251, 350, 100)


def test_a_segment_that_does_not_match_the_ledger_stops_pruning_and_deletes_nothing(
        writer: LedgerWriter, s3: ObjectStore) -> None:
    append(writer, "a", 300)
    shipped(writer, s3, max_records=100)
    victim = manifests(s3)[1]
    table = pq.read_table(pa.BufferReader(s3.get(victim.parquet_key)))
    s3.put(victim.parquet_key, segments.parquet_bytes(table.slice(1)))
    with pytest.raises(DataLoss, match=victim.parquet_key):
        prune_archived(writer.write, writer.cursor, s3, writer.chain_id, FAR_FUTURE_US)
    assert local_seqs(writer) == (1, 300, 300)
    assert archived_prefix(writer.cursor()) == (0, "")


def test_a_missing_segment_stops_pruning_at_the_gap(writer: LedgerWriter,
                                                    s3: ObjectStore) -> None:
    append(writer, "a", 500)
    shipped(writer, s3, max_records=100)
    s3.delete(manifests(s3)[2].key)
    pruned = prune_archived(writer.write, writer.cursor, s3, writer.chain_id, FAR_FUTURE_US)
    assert pruned.archived_seq == 200
    assert local_seqs(writer)[0] == 201


def test_a_pruned_ledger_without_its_archive_is_refused_by_the_shipper(
        tmp_path: Path, s3: ObjectStore, shared_s3: S3Server) -> None:
    """Records that are neither archived nor local are a loss the shipper names."""
    path = tmp_path / "ledger.duckdb"
    writer = open_writer(path)
    try:
        append(writer, "a", 300)
        shipped(writer, s3, max_records=100)
        prune_archived(writer.write, writer.cursor, s3, writer.chain_id, FAR_FUTURE_US)
        elsewhere = open_store(f"s3://{shared_s3.create_bucket()}/credit")
        with pytest.raises(DataLoss, match="neither archived nor in the local ledger"):
            shipped(writer, elsewhere)
    finally:
        writer.close()


def test_verify_checks_the_chain_from_the_archived_prefix_it_finds_in_ledger_meta(
        writer: LedgerWriter) -> None:
    """What retention leaves, made by hand: the prefix deleted, its last hash noted."""
    append(writer, "a", 60)
    last = writer.cursor().execute("SELECT hash FROM entries WHERE seq = 40").fetchall()[0][0]

    def forget(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("DELETE FROM entries WHERE seq <= 40")
        con.execute("INSERT INTO ledger_meta VALUES ('archived_seq', '40'), "
                    "('archived_hash', ?)", [bytes(last).hex()])

    writer.write(forget)
    report = verify(writer.path, con=writer.cursor())
    assert report.ok, report.problems
    assert (report.records, report.head_seq) == (20, 60)
    assert report.archived_prefix == {"seq": 40, "hash": bytes(last).hex()}

    def rewrite(con: duckdb.DuckDBPyConnection) -> None:  # a hash record 41 does not follow
        con.execute("UPDATE ledger_meta SET value = ? WHERE key = 'archived_hash'",
                    ["00" * 32])

    writer.write(rewrite)
    report = verify(writer.path, con=writer.cursor())
    assert report.first_bad_seq == 41
