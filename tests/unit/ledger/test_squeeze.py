"""DuckDB gives back the ledger blocks it caches (Database.squeeze) only while no reader
holds a cursor: its memory limit is lowered for a moment, and a query running then would
get the lower limit. Queries beside squeezes never fail, and the limit is always set back."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlwitness.ledger import loader as loader_module
from mlwitness.ledger import tabler
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions

CAP = 64 << 20
# A grouped quantile over 3M doubles: about 24 MiB it cannot spill, more than a squeeze
# leaves (16 MiB) and less than the cap.
HEAVY = ("SELECT g, quantile_cont(v, 0.5) FROM (SELECT range % 1000 AS g, random() AS v "
         "FROM range(3000000)) GROUP BY g")


@pytest.fixture
def writer(tmp_path: Path):
    w = LedgerWriter(tmp_path / "ledger.duckdb",
                     WriterOptions(durability="write", duckdb_memory_bytes=CAP))
    w.open()
    w.append_group([Record(request_id=f"r{i}", received_us=i, responded_us=i + 1,
                           model_name="m", model_version="1", request=bytes(200))
                    for i in range(2000)])
    w.sync()
    yield w
    w.close()


def limit(writer: LedgerWriter) -> str:
    cursor = writer.cursor()
    try:
        return cursor.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    finally:
        cursor.close()


def test_the_cache_is_given_back_only_while_no_reader_holds_a_cursor(
    writer: LedgerWriter,
) -> None:
    held = writer.cursor()
    assert writer.give_back_memory() is False  # a reader could be running a query
    held.close()
    assert writer.give_back_memory() is False  # closed, but not yet collected
    del held
    gc.collect()
    assert writer.give_back_memory() is True
    assert limit(writer) == "64.0 MiB"  # set back at once


def test_queries_beside_squeezes_never_fail_and_the_limit_is_set_back(
    writer: LedgerWriter,
) -> None:
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def reader(slot: int) -> None:
        while not stop.is_set():
            cursor = writer.cursor()
            try:
                cursor.execute(HEAVY).fetchall()
                done[slot] += 1
            except Exception as exc:  # an Out of Memory Error, were the squeeze unguarded
                failures.append(str(exc)[:200])
            finally:
                cursor.close()
                del cursor
            time.sleep(0.002)  # no cursor held: a squeeze may come now

    threads = [threading.Thread(target=reader, args=(0,))]  # two would pass the cap together
    for thread in threads:
        thread.start()
    squeezed = 0
    deadline = time.monotonic() + 4
    try:
        while time.monotonic() < deadline and not failures:
            squeezed += writer.give_back_memory()
            time.sleep(0.001)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert done[0] >= 4
    assert squeezed >= 1  # squeezes did come between the queries
    assert limit(writer) == "64.0 MiB"


def test_the_loader_gives_the_cache_back_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loader_module, "SQUEEZE_INTERVAL_S", 0.05)
    w = LedgerWriter(tmp_path / "ledger.duckdb",
                     WriterOptions(durability="write", duckdb_memory_bytes=CAP,
                                   load_interval_s=0.05))
    w.open()
    try:
        for i in range(100):  # bounded: a squeeze comes within a few load beats
            w.append_blocking(Record(request_id=f"r{i}", received_us=i, responded_us=i + 1,
                                     model_name="m", model_version="1", request=b"x"))
            if w.stats.squeezes:
                break
            time.sleep(0.05)
        assert w.stats.squeezes >= 1
        assert limit(w) == "64.0 MiB"
    finally:
        w.close()


def test_nothing_is_squeezed_without_a_cap(tmp_path: Path) -> None:
    w = LedgerWriter(tmp_path / "ledger.duckdb", WriterOptions(durability="write"))
    w.open()
    try:
        assert w.give_back_memory() is False  # DuckDB's own default: nothing to lower from
    finally:
        w.close()


TRIMMED = """
import os
from mlwitness.ledger.tabler import trim_heap

def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

kept, freed = [], []
for i in range(40_000):  # ~160 MB of 4 KB blocks (glibc's heap, not Python's pools)
    (kept if i % 16 == 0 else freed).append(bytearray(4000))
freed.clear()  # free, but held between kept blocks: only malloc_trim gives it back
before = resident()
trim_heap()
print(before - resident())
"""


@pytest.mark.skipif(tabler.malloc_trim is None or not Path("/proc/self/statm").exists(),
                    reason="needs glibc's malloc_trim and /proc")
def test_trimming_the_heap_gives_freed_memory_back() -> None:
    # Memory freed between blocks still in use stays resident until malloc_trim: the
    # loader trims every SQUEEZE_INTERVAL_S, the table builder after every table.
    given_back = int(subprocess.run([sys.executable, "-c", TRIMMED], capture_output=True,
                                    text=True, check=True, timeout=60).stdout)
    assert given_back > 100 << 20
