"""Group commit on the event loop: a lone caller is flushed without waiting, overlapping
calls share flushes, and every record still lands once, chained, in DuckDB."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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
