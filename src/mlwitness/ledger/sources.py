"""Where a load's rows come from: the table builder child process (ledger/tabler.py), which
reads the records back from the journal, with the loader building them itself from the
journal (JournalTail) should the child fail; or records kept in memory, while loading has
fallen behind (a burst faster than the child builds rows), built here a few times faster.

Which thread runs what:
  hand_off                 a committing thread (ledger/chain.py), under the write lock
  take                     the loader thread, under the loader's condition
  build, table             the loader thread; `table` also the owner's during start-up
  start, close             the owner (LedgerWriter.open, close)

Shared fields:
  unloaded   records kept in memory, in seq order: a committing thread appends under the
             loader's condition (holding the write lock too), the loader pops under it
  claimed    the last seq a load has taken on: the loader writes it under the condition; a
             committing thread reads it without (stale, it only keeps in memory records
             the child could have built)
  tabler, tail  the loader thread's alone (made at open and closed at close by the owner,
             while no loader runs)
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from mlwitness.ledger.database import note_undecoded
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator, TensorDecoder, record_table, undecoded
from mlwitness.ledger.tabler import JournalTail, Tabler, TablerFailed, decoder_path

if TYPE_CHECKING:
    from mlwitness.ledger.chain import Chain
    from mlwitness.ledger.writer import WriterOptions, WriterStats

# The loader builds its Arrow table TABLE_CHUNK records at a time (~0.5 ms of Python).
# While calls are being served it then sleeps twice as long as the chunk took (at least
# LOADER_YIELD_S), so the event loop keeps the GIL most of the time: without this, loading
# a second's records stalled every call for tens of ms. A loader that has fallen behind
# (more than one load_batch waiting) stops yielding until it has caught up. The chunk size
# trades the loader's cost against the stall each chunk causes. Tabulating and inserting
# 4,000 records took 17.7 µs a record in chunks of 64 (per-column overhead in Arrow, and
# DuckDB scans many small batches slowly), 12.8 µs at 128 and 9.6 µs at 512. Alternating
# runs at c=8 gave p99 4.9-5.0 ms at 64, 4.1-4.4 ms at 128 and 5.4-6.2 ms at 512, with
# 128 and 512 at similar throughput, above 64. One unchunked build stalls calls for ~45 ms.
TABLE_CHUNK = 128
LOADER_YIELD_S = 0.0002
SERVING_WINDOW_S = 0.05  # "calls are being served": a batch was written this recently


class Sources:
    def __init__(self, chain: Chain, cond: threading.Condition, options: WriterOptions,
                 stats: WriterStats, tabulator: Tabulator, decoder: TensorDecoder | None
                 ) -> None:
        self.chain = chain  # how recently it wrote, and the backlog: the pace of building
        self.cond = cond  # the loader's
        self.options = options
        self.stats = stats
        self.tabulator = tabulator
        self.decoder = decoder
        self.unloaded: deque[Record] = deque()
        self.claimed = 0
        self.tabler: Tabler | None = None
        self.tail: JournalTail | None = None  # the loader's own reader, when the child fails

    def start(self, journal: Path) -> None:
        """(Owner, at open.) With `table_process`, the child that builds rows."""
        if self.options.table_process:
            assert self.decoder is not None  # checked by LedgerWriter
            self.tabler = Tabler(journal, decoder_path(self.decoder),
                                 self.tabulator.feature_names)
            self.tail = JournalTail(journal)

    def close(self) -> None:
        if self.tabler is not None:
            self.tabler.close()

    def hand_off(self, records: list[Record], loaded_seq: int) -> None:
        """Durable records, for the loader. With the child, they are read back from the
        journal, unless loading has fallen behind: more than a load batch arrived that no
        load has taken on yet (loads begin once per load interval, so at the default 1 s
        steady traffic under 8,192 calls/s never gets there). Then they are kept, from the
        first such record on until the loader has caught up."""
        head = records[-1].seq
        if self.tabler is not None and not self.unloaded and (
            head - max(self.claimed, loaded_seq) <= self.options.load_batch
        ):
            if head - loaded_seq >= self.options.load_batch:
                with self.cond:
                    self.cond.notify()
            return
        with self.cond:
            self.unloaded.extend(records)
            if len(self.unloaded) >= self.options.load_batch:
                self.cond.notify()

    def take(self, first: int, durable_seq: int) -> tuple[list[Record], int]:
        """The next load, in seq order, from `first` on: (records kept in memory, the last
        seq), or ([], last) for records first..last the child builds from the journal. A
        last below first: nothing to load."""
        batch: list[Record] = []
        if self.unloaded and self.unloaded[0].seq == first:
            while self.unloaded and len(batch) < self.options.load_batch:
                batch.append(self.unloaded.popleft())
            last = batch[-1].seq
        elif self.tabler is not None:
            last = min(durable_seq, first - 1 + self.options.load_batch)
            if self.unloaded:
                last = min(last, self.unloaded[0].seq - 1)
        else:
            last = first - 1
        self.claimed = max(self.claimed, last)
        return batch, last

    def build(self, first: int, last: int, batch: list[Record]) -> Callable[[], pa.Table]:
        """What makes the rows of a load `take` gave."""
        return (functools.partial(self.table, batch) if batch
                else functools.partial(self._from_journal, first, last))

    def _from_journal(self, first: int, last: int) -> pa.Table:
        """Records first..last as rows, built by the child process from the journal (or
        here, from the journal, when it fails)."""
        assert self.tabler is not None and self.tail is not None
        try:
            table = self._noted(self.tabler.table(first, last))
        except TablerFailed:
            return self.table(self.tail.records(first, last))
        self.stats.built_by_child += last - first + 1
        return table

    def table(self, batch: list[Record], tabulator: Tabulator | None = None) -> pa.Table:
        """The `entries` rows of records, built here (with the writer's tabulator unless
        another is given). The Arrow table is built a chunk at a time with a pause between
        chunks, so the event loop never waits long for the GIL behind a large load."""
        tables = []
        for start in range(0, len(batch), TABLE_CHUNK):
            began = time.perf_counter()
            tables.append(self._noted(record_table(batch[start : start + TABLE_CHUNK],
                                                   tabulator or self.tabulator,
                                                   self.decoder)))
            serving = began - self.chain.written_at < SERVING_WINDOW_S
            if serving and self.chain.backlog <= self.options.load_batch:
                time.sleep(max(LOADER_YIELD_S, 2 * (time.perf_counter() - began)))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _noted(self, table: pa.Table) -> pa.Table:
        """Count and log the records `record_table` left without decoded columns."""
        notes = undecoded(table)
        if not notes:
            return table
        note_undecoded(self.stats, [seq for seq, _ in notes], notes[0][1])
        return table.replace_schema_metadata(None)
