"""Helpers for the archive's tests: real ledgers written by LedgerWriter, shipped by the real
Shipper, read back through the real stores (a directory, or moto's S3 on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from mlwitness.archive import ObjectStore, segments
from mlwitness.archive.segments import Manifest
from mlwitness.archive.shipper import Shipper, ShipperOptions
from mlwitness.ledger import schema
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions

DAY_US = 86_400 * 1_000_000
T0_US = 1_780_000_000_000_000  # 2026-05-28, a fixed day so that partition names are known


def record(tag: str, i: int, received_us: int) -> Record:
    return Record(request_id=f"{tag}-{i}", received_us=received_us,
                  responded_us=received_us + 100, model_name="m", model_version="1",
                  peer="127.0.0.1", request=f"{tag}-{i}".encode() * 8)


def open_writer(path: Path, **options: Any) -> LedgerWriter:
    writer = LedgerWriter(path, WriterOptions(durability="write", load_interval_s=0.05,
                                              **options))
    writer.open()
    return writer


def append(writer: LedgerWriter, tag: str, count: int, *, start: int = 0,
           received_us: int = T0_US, step_us: int = 1000) -> None:
    """`count` records, in order (one group commit per 64), loaded into DuckDB on return."""
    async def run() -> None:
        for base in range(start, start + count, 64):
            end = min(base + 64, start + count)
            for i in range(base, end):  # appended in order: seq follows i
                await writer.append(record(tag, i, received_us + i * step_us))

    asyncio.run(run())
    writer.sync()


def make_ledger(path: Path, count: int, tag: str = "r", **kwargs: Any) -> str:
    """A closed ledger of `count` records; its chain id."""
    writer = open_writer(path)
    try:
        append(writer, tag, count, **kwargs)
        return writer.chain_id
    finally:
        writer.close()


@contextlib.contextmanager
def reading(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = schema.connect_reader(path)
    try:
        yield con
    finally:
        con.close()


def chain_of(path: Path) -> str:
    with reading(path) as con:
        return str(con.execute("SELECT value FROM ledger_meta WHERE key = 'chain_id'"
                               ).fetchall()[0][0])


def ship(path: Path, store: ObjectStore, **options: Any) -> Shipper:
    """Ship the closed ledger at `path` completely; the shipper (stopped) for its status."""
    with reading(path) as con:
        shipper = Shipper(store, con.cursor, chain_of(path), ShipperOptions(**options))
        shipper.ship_pending()
    return shipper


def manifests(store: ObjectStore, chain_id: str = "") -> list[Manifest]:
    found = [Manifest.from_bytes(store.get(info.key), info.key)
             for info in store.list(segments.manifest_prefix(chain_id))]
    return sorted(found, key=lambda m: (m.chain_id, m.first_seq))


def ranges(store: ObjectStore, chain_id: str) -> list[tuple[int, int]]:
    return [(m.first_seq, m.last_seq) for m in manifests(store, chain_id)]


def parquet_ranges(store: ObjectStore, chain_id: str) -> list[tuple[int, int]]:
    found = []
    for info in store.list(f"records/chain={chain_id}/"):
        bounds = segments.parse_segment_name(info.key)
        assert bounds is not None, info.key
        found.append(bounds)
    return sorted(found)


def assert_contiguous(found: list[tuple[int, int]], last: int) -> None:
    """Ranges covering 1..last exactly once each: no gap, no overlap."""
    assert found, "no segment"
    expected = 1
    for first, end in found:
        assert first == expected, f"segments {found} leave a gap or overlap at {expected}"
        expected = end + 1
    assert expected == last + 1, f"segments {found} end at {expected - 1}, not {last}"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll `condition` until it is true (at most `timeout` seconds; then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)
