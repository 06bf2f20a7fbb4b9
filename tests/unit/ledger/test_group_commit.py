"""Group commit on the event loop: a lone caller is flushed without waiting, overlapping
calls share flushes, and every record still lands once, chained, in DuckDB."""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path
from typing import Any

import pytest
from disk_support import FailingCalls

from mlwitness.errors import LedgerUnavailable
from mlwitness.ledger.record import Record
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter, WriterOptions


def record(tag: str, i: int) -> Record:
    return Record(request_id=f"{tag}-{i}", received_us=1_000_000 + i, responded_us=1_000_100 + i,
                  model_name="m", model_version="1",
                  request=f"{tag}-{i}".encode())


@pytest.fixture(params=["fsync", "write"])
def writer(tmp_path: Path, request: pytest.FixtureRequest):
    w = LedgerWriter(tmp_path / "ledger.duckdb", WriterOptions(durability=request.param))
    w.open()
    yield w
    w.close()


def stored(writer: LedgerWriter) -> list[str]:
    writer.sync()
    rows = writer.cursor().execute("SELECT request_id FROM records ORDER BY seq").fetchall()
    return [r[0] for r in rows]


def test_a_lone_caller_gets_a_flush_of_its_own_and_never_lingers(writer: LedgerWriter) -> None:
    async def one_after_another() -> None:
        for i in range(20):
            await writer.append(record("lone", i))

    asyncio.run(one_after_another())
    assert writer.stats.flushes == 20
    assert writer.linger_s == 0
    assert stored(writer) == [f"lone-{i}" for i in range(20)]


def test_overlapping_calls_share_flushes_and_lose_nothing(writer: LedgerWriter) -> None:
    async def caller(tag: str) -> None:
        for i in range(10):
            await writer.append(record(tag, i))

    async def main() -> None:
        await asyncio.gather(*(caller(f"c{n}") for n in range(32)))

    asyncio.run(main())
    assert writer.stats.appended == 320
    assert writer.stats.flushes <= 320 // 8  # 32 callers: batches of many, not of one
    ids = stored(writer)
    assert sorted(ids) == sorted(f"c{n}-{i}" for n in range(32) for i in range(10))
    for n in range(32):  # each caller's records in its own order
        mine = [x for x in ids if x.startswith(f"c{n}-")]
        assert mine == [f"c{n}-{i}" for i in range(10)]


@pytest.mark.parametrize("durability", ["fsync", "write"])
def test_lingering_starts_with_overlap_and_stops_when_callers_are_alone(
    tmp_path: Path, durability: str
) -> None:
    writer = LedgerWriter(tmp_path / "ledger.duckdb", WriterOptions(durability=durability))
    writer.open()
    try:
        async def main() -> tuple[float, float]:
            await asyncio.gather(*(writer.append(record("burst", i)) for i in range(8)))
            during = writer.linger_s
            for i in range(5):
                await writer.append(record("alone", i))
            return during, writer.linger_s

        during, after = asyncio.run(main())
        assert during == pytest.approx(WriterOptions().group_commit_linger_s)
        assert after == 0
    finally:
        writer.close()
    assert verify(tmp_path / "ledger.duckdb").ok


def test_a_loop_batch_whose_fdatasync_fails_is_refused_and_not_kept(
    tmp_path: Path,
) -> None:
    disk = FailingCalls("fdatasync", errno.EIO)
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="fsync"), journal_io=disk)
    writer.open()
    try:
        async def main() -> list[Any]:
            for i in range(3):
                await writer.append(record("kept", i))
            disk.failing.set()
            results = await asyncio.wait_for(asyncio.gather(
                *(writer.append(record("refused", i)) for i in range(4)),
                return_exceptions=True), 10)
            disk.failing.clear()
            return results

        results = asyncio.run(main())
        assert all(isinstance(r, LedgerUnavailable) for r in results), results
        assert writer.unrecoverable_since is not None and not writer.healthy
    finally:
        writer.close()
    restarted = LedgerWriter(path)
    restarted.open()
    try:
        assert stored(restarted) == [f"kept-{i}" for i in range(3)]
    finally:
        restarted.close()
    assert verify(path).ok


def test_a_thread_committing_beside_busy_event_loops_is_not_starved(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="fsync"))
    writer.open()
    stop = threading.Event()
    try:
        async def caller(tag: str) -> None:
            for i in range(1000):  # bounded; ends when the thread is done
                if stop.is_set():
                    return
                await writer.append(record(tag, i))

        async def loops() -> None:
            await asyncio.gather(*(caller(f"loop{n}") for n in range(8)))

        def blocking() -> None:
            try:
                for i in range(20):
                    writer.append_blocking(record("thread", i))
            finally:
                stop.set()

        thread = threading.Thread(target=blocking)
        thread.start()
        asyncio.run(loops())
        thread.join(30)
        assert not thread.is_alive()
        ids = stored(writer)
        assert [x for x in ids if x.startswith("thread-")] == [f"thread-{i}" for i in range(20)]
        assert len(ids) == len(set(ids)) == writer.stats.appended
    finally:
        writer.close()
    assert verify(path).ok
