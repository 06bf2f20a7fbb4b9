"""The one writer of a ledger: group commit through the journal, DuckDB loaded behind it.

    append(record) ──► the loop's batch ──► journal (write + fdatasync) ──► ack
                                              │ seq, prev_hash, hash assigned here, in order
                                              ▼
    table builder process (idle priority) ──► Arrow rows of seqs a..b, read back from
                                              │  the journal (ledger/tabler.py)
                                              ▼
                                 loader thread ──► DuckDB (one Arrow batch per transaction)

* **No decision without a record.** `append` returns only after the record's journal frame
  is written and — in `fsync` durability, the default — flushed to disk.
* **Group commit on the event loop.** Appends from an event loop gather into one batch, and
  the loop itself writes and fdatasyncs it: no thread has to win the GIL back to acknowledge
  a commit (that hand-back was the ledger's largest cost). Under concurrency the batch stays
  open for a short linger so that one write (and fdatasync) covers several calls; a lone
  caller is flushed at once, and after a burst lingering stops within three flushes that
  found nobody else (see `Linger` in ledger/commit.py).
* **Rows built elsewhere.** With `table_process` (the sidecar's setting) the serving process
  keeps no record once it is durable: a low-priority child process reads the records back
  from the journal and builds their DuckDB rows, and the loader thread only inserts them.
  It can build every row: a record's decoded columns are a function of its hashed bytes
  (ledger/tensors.py). If the child fails, the loader builds the rows itself.
* **One writer.** Only the loader thread touches the read-write DuckDB connection; other
  DuckDB writes (models, environments, guards) are handed to it with `write`. Readers get
  their own cursors from `cursor()`.
* **Nothing acknowledged is missed.** `sync()` waits until every acknowledged record is in
  DuckDB; the audit service calls it before it reads. On start-up, journal records beyond
  DuckDB's last one are loaded before anything else happens.
* **Derived data may fail; the record may not.** A record's decoded columns (inputs,
  outputs, parameters) are derived from its bytes. A record whose columns cannot be built
  (rows.record_table), or that DuckDB refuses only for them, is loaded with empty ones, a
  warning and a count (`stats.undecoded`): one call never stops the loads, nor a start.
* **Erasure** (`erase`, ledger/erasure.py): an admin record first, then one transaction
  that erases the payloads it names; the journal segments and DuckDB blocks that held
  them are overwritten. A start completes an erasure a stop interrupted.
* **Failure is loud, and recovered where that is safe.** If the journal cannot be written
  or flushed, every pending and later `append` raises LedgerUnavailable (the caller gets
  UNAVAILABLE and no prediction) and `healthy` turns False. A write that failed for want of
  space (ENOSPC, EDQUOT) is cut back out of the journal, and a thread tries every
  JOURNAL_RETRY_S to make room again; once it can, the ledger serves again (the chain head
  never moved). A failed flush (fsync, fdatasync) is permanent: what reached the disk is
  unknown (journal.py, "fsyncgate"), so `unrecoverable_since` is set and only a restart,
  which reads back what is really on disk, goes on. DuckDB failing (a full disk too) only
  delays loads: they are retried with backoff, and DuckDB is opened again after a fatal
  error (a failed checkpoint invalidates its database until then).

`LedgerWriter` is a facade over its parts, split along the threads that run them:

    ledger/chain.py     the commit path: chain head, journal write and fdatasync, event-loop
                        batches and their linger, backpressure, a full disk, a failed flush
                        (event loops' threads, append_blocking callers, the retry thread)
    ledger/loader.py    the loader thread: loads on its beat, `sync`, other DuckDB writes
    ledger/sources.py   where a load's rows come from: the table builder child (or the
                        journal, read here), or records kept in memory
    ledger/database.py  the read-write DuckDB connection (the loader's), readers' cursors
    ledger/recovery.py  start-up: the chain head, and the journal tail loaded in chunks

Each module says which thread runs which method, and who writes each shared field under
which lock; the order the locks are taken in is in docs/architecture.md, "Lock ordering".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from mlwitness.ledger import erasure
from mlwitness.ledger import journal as journal_mod
from mlwitness.ledger.chain import Chain
from mlwitness.ledger.database import Database
from mlwitness.ledger.loader import Loader
from mlwitness.ledger.record import Record
from mlwitness.ledger.recovery import Recovery
from mlwitness.ledger.rows import Tabulator, TensorDecoder

log = logging.getLogger(__name__)
T = TypeVar("T")

DURABILITY_MODES = ("fsync", "write")


@dataclass(frozen=True)
class WriterOptions:
    durability: str = "fsync"
    load_interval_s: float = 1.0
    load_batch: int = 8192
    max_unloaded: int = 200_000
    backpressure_timeout_s: float = 5.0
    segment_bytes: int = 64 << 20
    # Under concurrency an event loop's batch stays open this long before its flush, so that
    # one journal write (and fdatasync) covers several calls; a lone caller is not held back
    # once lingering has stopped (see commit.Linger). Both durability modes linger: in
    # `write` mode one flush per call cost more than the wait (c=8: 4,117-4,688 calls/s
    # without, 4,872-4,940 with).
    group_commit_linger_s: float = 0.0006
    # DuckDB worker threads (SET threads); 0 leaves DuckDB's default (one per core).
    duckdb_threads: int = 0
    # DuckDB's memory_limit in bytes; 0 leaves DuckDB's default (80 % of RAM), with which its
    # buffer pool keeps every block of the ledger it has touched
    duckdb_memory_bytes: int = 0
    # Build DuckDB's rows in a low-priority child process that reads the records back from
    # the journal (ledger/tabler.py), so the serving process neither keeps records until
    # their load nor holds the GIL to tabulate them. Needs a decoder (the records' tensors
    # are decoded again from their bytes); without one, or if the child fails, the loader
    # thread builds the rows itself.
    table_process: bool = False


@dataclass
class WriterStats:
    """Counters for metrics and benchmarks. Each is written by one side only, so a reader
    needs no lock (a count may be a moment stale)."""

    # the commit path: a committing thread, under the write lock
    appended: int = 0
    flushes: int = 0
    flush_seconds: float = 0.0
    last_flush_batch: int = 0
    # the loader thread (the owner's while start-up loads the journal tail)
    loads: int = 0
    loaded: int = 0
    load_seconds: float = 0.0
    last_load_batch: int = 0
    built_by_child: int = 0  # loaded records whose rows the table builder process built
    undecoded: int = 0  # records loaded without decoded columns: they could not be built
    squeezes: int = 0  # times DuckDB gave back its cached blocks (Database.squeeze)


class LedgerWriter:
    # The commit path's own methods, bound to the instance at construction: the facade adds
    # no call to the path every record takes (ledger/chain.py documents them).
    append: Callable[[Record], Coroutine[Any, Any, None]]
    append_blocking: Callable[[Record], None]
    append_group: Callable[[list[Record]], None]
    # The DuckDB side: a test injects DuckDB's faults with a subclass of it.
    database: type[Database] = Database

    def __init__(
        self,
        path: Path,
        options: WriterOptions | None = None,
        *,
        tabulator: Tabulator | None = None,
        decoder: TensorDecoder | None = None,
        journal_io: journal_mod.FileCalls = os,  # type: ignore[assignment]
    ) -> None:
        self.path = Path(path)
        self.options = options or WriterOptions()
        if self.options.durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}")
        if self.options.table_process and decoder is None:
            raise ValueError("table_process needs a decoder")
        if not 0 < self.options.load_interval_s < float("inf"):
            raise ValueError("load_interval_s must be a positive number of seconds")
        self.tabulator = tabulator or Tabulator()
        self.decoder = decoder
        self.stats = WriterStats()
        self.chain_id = ""
        # The column names last announced on the chain (rows.features_detail) when it was
        # opened; None when none ever was
        self.announced_features: dict[str, tuple[str, ...]] | None = None
        journal = journal_mod.Journal(
            journal_mod.journal_dir(self.path), segment_bytes=self.options.segment_bytes,
            synced=self.options.durability == "fsync", io=journal_io,
        )
        self._db = self.database(self.path, self.options.duckdb_threads, self.stats,
                                 memory_bytes=self.options.duckdb_memory_bytes)
        self._chain = Chain(journal, self.options, self.stats)
        self._loader = Loader(self._chain, self._db, self.options, self.stats,
                              self.tabulator, decoder)
        self._chain.loader = self._loader
        self._open = False
        self.append = self._chain.append
        self.append_blocking = self._chain.append_blocking
        self.append_group = self._chain.append_group

    def open(self) -> None:
        """Open (or create) the ledger, load any journal tail, start the loader thread."""
        self._db.open()
        try:
            start = Recovery(self._db, self.path, self._loader.sources.table,
                             self.tabulator).run()
        except BaseException:  # e.g. a full disk: nothing stays open for a later attempt
            self._db.abandon()
            raise
        self.chain_id, self.announced_features = start.chain_id, start.announced
        self._loader.loaded_seq = start.head_seq
        self._chain.start(start.head_seq, start.head_hash)
        self._db.admit_readers()
        self._open = True
        self._loader.sources.start(journal_mod.journal_dir(self.path))
        self._loader.start()

    def close(self) -> None:
        """Flush and load everything, checkpoint DuckDB, remove the journal. Idempotent."""
        if self._chain.closing:
            return
        self._chain.shut()
        if self.stats.flushes:
            log.info("ledger: %d records in %d group commits (%.1f a commit, %.0f us a "
                     "commit's write and flush)", self.stats.appended, self.stats.flushes,
                     self.stats.appended / self.stats.flushes,
                     1e6 * self.stats.flush_seconds / self.stats.flushes)
        self._loader.stop()
        self._loader.sources.close()
        self._open = False
        failed = self._chain.failure is not None or self._db.con is None
        if not failed:
            try:
                self._db.checkpoint()
            except duckdb.Error as exc:  # e.g. a full disk: the journal keeps the records
                log.error("DuckDB's checkpoint at close failed (%s); the journal is kept and "
                          "the next start loads what DuckDB lacks", exc)
                failed = True
        try:
            self._chain.journal.close(
                remove_if_loaded_upto=None if failed else self._loader.loaded_seq)
        except OSError as exc:  # flushed at every commit already; nothing more to do
            log.error("closing the ledger's journal failed (%s)", exc.strerror or exc)
        self._db.close()

    # ── state ──────────────────────────────────────────────────────────────────────────

    @property
    def healthy(self) -> bool:
        """Whether records can be committed (appended) now."""
        return self._chain.failure is None and not self._chain.closing and self._open

    @property
    def unrecoverable_since(self) -> float | None:
        """time.monotonic() when the ledger failed for good (a failed flush: only a restart
        goes on), or None."""
        return self._chain.unrecoverable_since

    @property
    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last durable record."""
        return self._chain.durable

    @property
    def linger_s(self) -> float:
        """How long the next event-loop batch stays open before its flush (0: none)."""
        return self._chain.linger.seconds

    @property
    def loaded_seq(self) -> int:
        """The last seq loaded into DuckDB (visible to cursors)."""
        return self._loader.loaded_seq

    @property
    def backlog(self) -> int:
        """Records appended but not yet in DuckDB."""
        return self._chain.backlog

    # Called when the ledger fails, from the thread whose journal write or flush failed,
    # and when it recovers, from the thread that found it can write again (e.g. to flip
    # health). Neither may block; they may arrive out of order, so read `healthy` in them.

    @property
    def on_failure(self) -> Callable[[], None] | None:
        return self._chain.on_failure

    @on_failure.setter
    def on_failure(self, callback: Callable[[], None] | None) -> None:
        self._chain.on_failure = callback

    @property
    def on_recovery(self) -> Callable[[], None] | None:
        return self._chain.on_recovery

    @on_recovery.setter
    def on_recovery(self, callback: Callable[[], None] | None) -> None:
        self._chain.on_recovery = callback

    # ── other writes, reads and barriers ───────────────────────────────────────────────

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float = 30.0) -> T:
        """Run `fn(connection)` on the writer's DuckDB connection, in the loader thread, in
        its own transaction; return its result. For models, environments, guards."""
        return self._loader.write(fn, timeout)

    def sync(self, timeout: float = 30.0) -> int:
        """Wait until every record acknowledged so far is in DuckDB; return that seq."""
        return self._loader.sync(timeout)

    def erase(self, record: Record, *, compact: bool = True,
              timeout: float = 600.0) -> erasure.Erased:
        """Carry out the erasure that `record`, an erase admin record (erasure.admin_record)
        of stored format-2 records, states: append it (durable: from then on the erasure
        happens, if not now then at the next start), erase its records in one transaction,
        overwrite and delete the journal segments that held them, then checkpoint DuckDB
        and (`compact`) rewrite its file without the blocks that held them (Database.
        compact). From a thread outside any event loop; raises LedgerUnavailable."""
        self.append_blocking(record)
        stated = erasure.parse(record)
        if stated is None:
            raise ValueError("not an erase admin record")
        self.sync(timeout)
        erased = self.write(lambda con: erasure.apply(con, stated), timeout)
        self._chain.seal_journal(stated.holds_any)
        self.sync(timeout)
        segments = self._chain.scrub_journal()
        self._loader.write(lambda con: self._db.compact() if compact else self._db.checkpoint(),
                           timeout, transaction=False)
        return erasure.Erased(record.seq, erased, segments, compact)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new read cursor on the ledger, for one thread's use."""
        return self._db.cursor()

    def give_back_memory(self, timeout: float = 30.0) -> bool:
        """Have DuckDB give back the ledger blocks it caches now, rather than at the
        loader's next turn (every SQUEEZE_INTERVAL_S): only while no reader holds a cursor.
        Whether it was done."""
        return self._loader.write(lambda _con: self._loader.squeeze(), timeout,
                                  transaction=False)
