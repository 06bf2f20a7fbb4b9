"""A failing disk at every step of the write path: the journal's write and its flush,
DuckDB's loads and checkpoints, the load of the journal tail at start-up. Each ends with
no acknowledged record lost, the chain verifying and the ledger serving again: by itself
once there is room (a full disk), or after a restart (a failed flush, which is never
retried in-process: what reached the disk is then unknown).

Two kinds of fault. A real full disk: a small tmpfs mounted for the test (CI runs as
root; without the right to mount, those tests are skipped and say so). And faults at the
operating-system boundary, through the journal's seam for its system calls
(`Journal(io=...)`, `LedgerWriter(journal_io=...)`): a wrapper of the `os` module whose
one call fails on demand, the only fake here.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from disk_support import FailingCalls, SmallDisk, mounted_small_disk

from mlwitness.errors import LedgerUnavailable
from mlwitness.ledger import chain as chain_mod
from mlwitness.ledger.database import Database
from mlwitness.ledger.record import Record
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter, WriterOptions


def wait_until(condition: Callable[[], bool], within_s: float = 15.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {within_s} s")


def ledger_ids(path: Path) -> list[str]:
    """request ids in seq order, after checking the ledger: chain intact, seqs 1..n, every
    record loaded into DuckDB."""
    report = verify(path)
    assert report.ok, report.problems
    assert report.journal_records == 0
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT seq, request_id FROM entries ORDER BY seq").fetchall()
    finally:
        con.close()
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    assert report.records == report.head_seq == len(rows)
    return [request_id for _, request_id in rows]


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_mod, "JOURNAL_RETRY_S", 0.05)


# ── the journal: a write that finds the disk full, a flush that fails ──────────────────


@pytest.mark.parametrize("call", ["pwrite", "open"])
def test_a_full_disk_refuses_appends_until_there_is_room_then_the_chain_goes_on(
    tmp_path: Path, quick_retries: None, call: str
) -> None:
    # pwrite: the batch's write (or the zeros ahead of it); open: a new segment's file
    disk = FailingCalls(call, errno.ENOSPC)
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(load_interval_s=0.05, segment_bytes=2_000),
                          journal_io=disk)
    events: list[str] = []
    writer.on_failure = lambda: events.append("failed")
    writer.on_recovery = lambda: events.append("recovered")
    writer.open()
    acknowledged = []
    try:
        for i in range(3):
            writer.append_blocking(Record(request_id=f"r{i}"))
            acknowledged.append(f"r{i}")
        disk.failing.set()
        with pytest.raises(LedgerUnavailable, match="No space left on device"):
            for i in range(100):  # a new segment is due every ~20 records
                writer.append_blocking(Record(request_id=f"refused-{i}"))
                acknowledged.append(f"refused-{i}")
        assert not writer.healthy and writer.unrecoverable_since is None
        with pytest.raises(LedgerUnavailable, match="free disk space"):
            writer.append_blocking(Record(request_id="refused-while-full"))

        disk.failing.clear()
        wait_until(lambda: writer.healthy)
        for i in range(3, 30):  # across segments again
            writer.append_blocking(Record(request_id=f"r{i}"))
            acknowledged.append(f"r{i}")
        assert writer.sync(timeout=10) == len(acknowledged)
    finally:
        writer.close()
    assert events == ["failed", "recovered"]
    assert disk.failures >= 1
    assert ledger_ids(path) == acknowledged


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC])
def test_a_failed_flush_is_never_retried_and_a_restart_goes_on(
    tmp_path: Path, quick_retries: None, error: int
) -> None:
    # After a failed fdatasync the kernel may have dropped the pages it could not write and
    # marked them clean ("fsyncgate"): no later success in this process proves anything.
    disk = FailingCalls("fdatasync", error)
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(load_interval_s=0.05), journal_io=disk)
    writer.open()
    try:
        for i in range(3):
            writer.append_blocking(Record(request_id=f"r{i}"))
        disk.failing.set()
        with pytest.raises(LedgerUnavailable, match=os.strerror(error)):
            writer.append_blocking(Record(request_id="refused"))
        disk.failing.clear()
        time.sleep(0.5)  # ten retry intervals: a full disk would have recovered by now
        assert not writer.healthy
        since = writer.unrecoverable_since
        assert since is not None and since <= time.monotonic()
        with pytest.raises(LedgerUnavailable, match="mlwitness restarted"):
            writer.append_blocking(Record(request_id="refused-after"))
    finally:
        writer.close()

    restarted = LedgerWriter(path)
    restarted.open()
    try:
        assert restarted.healthy and restarted.unrecoverable_since is None
        restarted.append_blocking(Record(request_id="after-restart"))
    finally:
        restarted.close()
    assert ledger_ids(path) == ["r0", "r1", "r2", "after-restart"]


# ── DuckDB failing under the loader ────────────────────────────────────────────────────


class FailingAfterCommit(Database):
    """DuckDB's insert commits and then fails `failures` times, as when its automatic
    checkpoint fails on a full disk ("COMMIT succeeded and is durable, but the
    autocheckpoint failed"), which invalidates the database until it is opened again."""

    failures = 2

    def insert(self, table: pa.Table) -> None:
        super().insert(table)
        if self.failures:
            self.failures -= 1
            raise duckdb.FatalException("FATAL Error: Failed: database has been invalidated "
                                        "because of a previous fatal error")


class WriterFailingAfterCommit(LedgerWriter):
    database = FailingAfterCommit


def test_a_load_that_duckdb_committed_before_failing_is_not_loaded_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.duckdb"
    writer = WriterFailingAfterCommit(path, WriterOptions(load_interval_s=0.05))
    writer.open()
    try:
        for i in range(4):
            writer.append_blocking(Record(request_id=f"r{i}"))
            assert writer.sync(timeout=15) == i + 1
        assert writer._db.failures == 0  # type: ignore[attr-defined]
        rows = writer.cursor().execute("SELECT count(*), count(DISTINCT seq) FROM entries")
        assert rows.fetchall() == [(4, 4)]
    finally:
        writer.close()
    assert ledger_ids(path) == ["r0", "r1", "r2", "r3"]


# ── a real full disk ───────────────────────────────────────────────────────────────────


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with mounted_small_disk(tmp_path / "disk", "32m", "a real full disk") as disk:
        yield disk


def large(request_id: str) -> Record:
    """A record with 64 KiB of request bytes: a few fill the disk's spare room."""
    return Record(request_id=request_id, request=os.urandom(1 << 16))


def test_a_real_full_disk_under_journal_and_duckdb_refuses_then_recovers(
    small_disk: SmallDisk, quick_retries: None
) -> None:
    path = small_disk.root / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(load_interval_s=0.05))
    writer.open()
    acknowledged = []
    try:
        for i in range(5):
            writer.append_blocking(large(f"r{i}"))
            acknowledged.append(f"r{i}")
        writer.sync(timeout=10)
        small_disk.fill()
        with pytest.raises(LedgerUnavailable, match="No space left on device"):
            for i in range(5, 100):  # the journal has up to 1 MiB of zeros ahead
                writer.append_blocking(large(f"r{i}"))
                acknowledged.append(f"r{i}")
        assert not writer.healthy
        small_disk.free()
        wait_until(lambda: writer.healthy)
        for i in range(100, 105):
            writer.append_blocking(large(f"r{i}"))
            acknowledged.append(f"r{i}")
        assert writer.sync(timeout=20) == len(acknowledged)
    finally:
        small_disk.free()
        writer.close()
    assert ledger_ids(path) == acknowledged


def test_a_real_full_disk_holds_up_duckdb_loads_until_there_is_room(
    small_disk: SmallDisk,
) -> None:
    path = small_disk.root / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(load_interval_s=3600))
    writer.open()
    try:
        for i in range(8):
            writer.append_blocking(large(f"r{i}"))  # journaled, not loaded
        small_disk.fill()
        with pytest.raises(LedgerUnavailable, match="DuckDB is behind"):
            writer.sync(timeout=1)
        assert writer.healthy  # the journal still commits: only queries wait
        small_disk.free()
        assert writer.sync(timeout=20) == 8
    finally:
        small_disk.free()
        writer.close()
    assert ledger_ids(path) == [f"r{i}" for i in range(8)]


def test_a_checkpoint_that_fails_at_close_keeps_the_journal(small_disk: SmallDisk) -> None:
    path = small_disk.root / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(load_interval_s=0.05))
    writer.open()
    try:
        for i in range(8):
            writer.append_blocking(large(f"r{i}"))
        writer.sync(timeout=10)  # in DuckDB's WAL: the checkpoint at close must write it
        small_disk.fill()
    finally:
        writer.close()  # its checkpoint fails: an error in the log, not an exception
    small_disk.free()
    assert ledger_ids(path) == [f"r{i}" for i in range(8)]
    writer = LedgerWriter(path)
    writer.open()
    writer.append_blocking(Record(request_id="after"))
    writer.close()
    assert ledger_ids(path)[-2:] == ["r7", "after"]


CRASH = """
import os, sys
from pathlib import Path
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions

path, records, request_bytes, segment_bytes = sys.argv[1], *map(int, sys.argv[2:])
writer = LedgerWriter(Path(path), WriterOptions(load_interval_s=3600, durability="write",
                                                segment_bytes=segment_bytes))
writer.open()
for i in range(records):
    writer.append_blocking(Record(request_id=f"r{i}", request=os.urandom(request_bytes)))
os._exit(0)  # a crash: the records are in the journal only
"""


def crash_with_tail(path: Path, records: int, request_bytes: int,
                    segment_bytes: int = 64 << 20) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), str(path), str(records),
                    str(request_bytes), str(segment_bytes)], check=True, timeout=120)


def test_a_start_on_a_full_disk_fails_and_the_next_one_loads_the_tail(
    small_disk: SmallDisk,
) -> None:
    path = small_disk.root / "ledger.duckdb"
    crash_with_tail(path, 40, 1 << 16)
    small_disk.fill()
    writer = LedgerWriter(path)
    with pytest.raises(duckdb.Error):
        writer.open()
    small_disk.free()
    writer = LedgerWriter(path)
    writer.open()
    writer.append_blocking(Record(request_id="after"))
    writer.close()
    assert ledger_ids(path) == [f"r{i}" for i in range(40)] + ["after"]


def test_a_start_loads_a_long_journal_tail_in_less_room_than_its_rows_take(
    small_disk: SmallDisk,
) -> None:
    # ~3.5 MiB of records in 256 KiB segments. Start-up loads them a chunk per transaction,
    # checkpoints as DuckDB's WAL grows and deletes each segment once loaded, so it needs
    # far less room than the rows take: loading the whole tail at once needed 4.7 MiB free.
    path = small_disk.root / "ledger.duckdb"
    crash_with_tail(path, 8000, 400, segment_bytes=256 << 10)
    small_disk.fill(leave=2 << 20)
    writer = LedgerWriter(path)
    writer.open()
    try:
        writer.append_blocking(Record(request_id="after"))
    finally:
        writer.close()
    small_disk.free()
    assert ledger_ids(path) == [f"r{i}" for i in range(8000)] + ["after"]


def test_a_real_failed_automatic_checkpoint_is_survived_without_loading_twice(
    small_disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    # With a tiny checkpoint threshold every load's commit checkpoints. With room for the
    # commit's WAL but not for the checkpoint, DuckDB reports the load failed although it
    # is durable, and refuses everything until it is opened again.
    path = small_disk.root / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(load_interval_s=3600))
    writer.open()
    try:
        writer.write(lambda con: con.execute("SET checkpoint_threshold = '1KB'"))
        writer.append_blocking(large("r0"))
        writer.sync(timeout=10)
        for i in range(1, 5):
            writer.append_blocking(large(f"r{i}"))  # journaled: 256 KiB to load
        small_disk.fill(leave=400 << 10)
        with pytest.raises(LedgerUnavailable, match="DuckDB is behind"):
            writer.sync(timeout=2)
        small_disk.free()
        assert writer.sync(timeout=30) == 5
        writer.append_blocking(large("r5"))
        assert writer.sync(timeout=10) == 6
    finally:
        small_disk.free()
        writer.close()
    assert "opened again after a fatal error" in caplog.text
    assert ledger_ids(path) == [f"r{i}" for i in range(6)]
