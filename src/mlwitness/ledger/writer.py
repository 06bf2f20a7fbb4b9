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
  (recorded.py). If the child fails, the loader builds the rows itself.
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
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from mlwitness.errors import DataLoss, LedgerUnavailable
from mlwitness.ledger import journal as journal_mod
from mlwitness.ledger import schema
from mlwitness.ledger.commit import Batch, Linger, settle_elsewhere, settle_futures
from mlwitness.ledger.record import Record, chain_hash, encode, genesis_hash
from mlwitness.ledger.rows import (
    FEATURES_ACTION,
    Tabulator,
    TensorDecoder,
    announced_names,
    record_table,
    undecoded,
    without_decoded,
)
from mlwitness.ledger.tabler import JournalTail, Tabler, TablerFailed, decoder_path

log = logging.getLogger(__name__)
T = TypeVar("T")

DURABILITY_MODES = ("fsync", "write")

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
# After a journal write failed for want of space, how often to try to make room again.
JOURNAL_RETRY_S = 1.0
# A failed load is retried after 0.5 s, doubling up to this.
LOAD_RETRY_MAX_S = 5.0
# Insert probes spent finding the records whose decoded columns DuckDB refuses in a failed
# load (bisecting it); records still unresolved then go in without their decoded columns.
SALVAGE_PROBES = 64
# Start-up loads the journal tail this many records per transaction, checkpoints DuckDB
# once its WAL has grown past RECOVER_WAL_BYTES and deletes journal segments once loaded:
# so a restart needs free space for about one segment's rows, not for the WAL of the whole
# tail's rows beside the tail. (Smaller checkpoints needed more room: each rewrites the
# table's last row group.)
RECOVER_CHUNK = 1000
RECOVER_WAL_BYTES = 1 << 20

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
    # Build DuckDB's rows in a low-priority child process that reads the records back from
    # the journal (ledger/tabler.py), so the serving process neither keeps records until
    # their load nor holds the GIL to tabulate them. Needs a decoder (the records' tensors
    # are decoded again from their bytes); without one, or if the child fails, the loader
    # thread builds the rows itself.
    table_process: bool = False


@dataclass
class WriterStats:
    """Counters for metrics and benchmarks. Updated by the writer threads only."""

    appended: int = 0
    flushes: int = 0
    flush_seconds: float = 0.0
    loads: int = 0
    loaded: int = 0
    load_seconds: float = 0.0
    last_flush_batch: int = 0
    last_load_batch: int = 0
    built_by_child: int = 0  # loaded records whose rows the table builder process built
    undecoded: int = 0  # records loaded without decoded columns: they could not be built


class LedgerWriter:
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
        # Called when the ledger fails, from the thread whose journal write or flush failed,
        # and when it recovers, from the thread that found it can write again (e.g. to flip
        # health).
        self.on_failure: Callable[[], None] | None = None
        self.on_recovery: Callable[[], None] | None = None
        self.chain_id = ""
        self._con: duckdb.DuckDBPyConnection | None = None
        self._read_root: duckdb.DuckDBPyConnection | None = None
        self._read_lock = threading.Lock()
        self._journal = journal_mod.Journal(
            journal_mod.journal_dir(self.path), segment_bytes=self.options.segment_bytes,
            synced=self.options.durability == "fsync", io=journal_io,
        )
        # Appends from an event loop gather here until the loop runs the batch's flush.
        self._batches: dict[asyncio.AbstractEventLoop, Batch] = {}
        self._linger = Linger(self.options.group_commit_linger_s)
        self._write_lock = threading.Lock()  # chain head + journal write and flush
        self._unloaded: deque[Record] = deque()
        self._load_cond = threading.Condition()
        self._load_now = False
        self._writes: deque[tuple[Callable[[duckdb.DuckDBPyConnection], Any], Future]] = deque()
        self._space = threading.Condition()
        self._head_seq = 0
        self._head_hash = b""
        self._written_at = 0.0  # perf_counter of the last journal write
        # (seq, hash) of the last durable record: one attribute, so never read half-updated
        self._durable: tuple[int, bytes] = (0, b"")
        self._loaded_seq = 0
        self._failure: LedgerUnavailable | None = None
        self._unrecoverable_since: float | None = None  # monotonic time of a failed flush
        self._retrier: threading.Thread | None = None  # makes room after a full disk
        self._stopping = threading.Event()  # set by close(): background waits end
        self._duckdb_broken = False  # DuckDB invalidated its database: open it again
        self._open = False
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._tabler: Tabler | None = None
        self._tail: JournalTail | None = None  # the loader's own reader, when the child fails
        self._claimed = 0  # the last seq a load has taken on
        self._loader_done = False  # the loader has ended: `write` refuses (under _load_cond)
        # The column names last announced on the chain (rows.features_detail) when it was
        # opened; None when none ever was
        self.announced_features: dict[str, tuple[str, ...]] | None = None

    # ── lifecycle ──────────────────────────────────────────────────────────────────────

    def open(self) -> None:
        """Open (or create) the ledger, load any journal tail, start the writer threads."""
        con = self._con = self._connect()
        try:
            self._start_chain(con)
            self._recover()
        except BaseException:  # e.g. a full disk: nothing stays open for a later attempt
            self._con = None
            with contextlib.suppress(duckdb.Error):
                con.close()
            raise
        self._durable, self._loaded_seq = (self._head_seq, self._head_hash), self._head_seq
        self._journal.open(self._head_seq + 1)
        self._journal.retire(self._loaded_seq)
        self._read_root = con.cursor()
        self._open = True
        if self.options.table_process:
            assert self.decoder is not None  # checked by __init__
            directory = journal_mod.journal_dir(self.path)
            self._tabler = Tabler(directory, decoder_path(self.decoder),
                                  self.tabulator.feature_names)
            self._tail = JournalTail(directory)
        self._threads = [
            threading.Thread(target=self._run_loader, name="ledger-loader", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _start_chain(self, con: duckdb.DuckDBPyConnection) -> None:
        """The chain id (made for a new ledger) and DuckDB's last record."""
        rows = con.execute("SELECT value FROM ledger_meta WHERE key = 'chain_id'").fetchall()
        if not rows:
            self.chain_id = uuid.uuid4().hex
            con.execute("INSERT INTO ledger_meta VALUES ('chain_id', ?)", [self.chain_id])
        else:
            self.chain_id = rows[0][0]
        last = con.execute(
            "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchall()
        if not last:
            self._head_seq, self._head_hash = 0, genesis_hash(self.chain_id)
        else:
            self._head_seq, self._head_hash = int(last[0][0]), bytes(last[0][1])
        for kind, detail in con.execute(
            "SELECT kind, detail FROM entries WHERE kind = 'admin' AND detail LIKE ? "
            "ORDER BY seq DESC", [f"%{FEATURES_ACTION}%"]).fetchall():
            names = announced_names(Record(kind=kind, detail=detail))
            if names is not None:
                self.announced_features = names
                break

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = schema.connect(self.path)
        if self.options.duckdb_threads > 0:
            con.execute(f"SET threads = {int(self.options.duckdb_threads)}")
        return con

    def _recover(self) -> None:
        """Load journal records that DuckDB does not have yet, checking the chain. They go
        in RECOVER_CHUNK at a time, each chunk its own transaction, with a checkpoint
        whenever DuckDB's WAL has grown past RECOVER_WAL_BYTES, and each journal segment is
        deleted once loaded: the disk needs room for about one segment's rows, not for the
        WAL of the whole tail's beside the tail (see the README, "Room for a restart").
        Records are tabulated with the column names announced on the chain before them,
        which a restart with other `--features` names does not change."""
        assert self._con is not None
        start = seq = self._head_seq
        prev = self._head_hash
        chunk: list[Record] = []
        for record in journal_mod.read(journal_mod.journal_dir(self.path), repair=True):
            if record.seq <= self._head_seq:
                continue
            if record.seq != seq + 1:
                raise DataLoss(
                    f"journal skips from seq {seq} to {record.seq}; "
                    "refusing to continue the chain. Run `mlwitness verify`."
                )
            if record.prev_hash != prev or record.hash != chain_hash(
                record.prev_hash, encode(record)
            ):
                raise DataLoss(
                    f"journal record seq {record.seq} does not continue the hash chain; "
                    "refusing to continue. Run `mlwitness verify`."
                )
            if seq == start:
                log.info("loading journal records left by the previous run, from seq %d",
                         record.seq)
            seq, prev = record.seq, record.hash
            chunk.append(record)
            names = announced_names(record)
            if names is not None or len(chunk) >= RECOVER_CHUNK:
                self._recover_chunk(chunk)
                chunk = []
            if names is not None:
                self.announced_features = names
        if chunk:
            self._recover_chunk(chunk)

    def _recover_chunk(self, chunk: list[Record]) -> None:
        assert self._con is not None
        names = self.announced_features
        self._store(self._table(chunk, self.tabulator if names is None else Tabulator(names)))
        self._head_seq, self._head_hash = chunk[-1].seq, chunk[-1].hash
        journal_mod.remove_loaded(journal_mod.journal_dir(self.path), self._head_seq)
        wal = self.path.with_name(self.path.name + ".wal")
        with contextlib.suppress(OSError):
            if wal.stat().st_size > RECOVER_WAL_BYTES:
                self._con.execute("CHECKPOINT")

    def close(self) -> None:
        """Flush and load everything, checkpoint DuckDB, remove the journal. Idempotent."""
        if self._closing:
            return
        with self._write_lock:  # a write under way finishes first (the loader must see it)
            self._closing = True
        self._stopping.set()
        if self._retrier is not None:
            self._retrier.join()
        if self._threads:
            (loader,) = self._threads
            with self._write_lock:  # raced with shutdown: refuse, never leave hanging
                # one by one: an event loop's thread may add or take its own meanwhile
                taken = [self._batches.pop(loop, None) for loop in list(self._batches)]
                late = [w for batch in taken if batch is not None for _, w in batch]
            settle_elsewhere(late, LedgerUnavailable("the ledger is shutting down"))
            with self._load_cond:
                self._load_cond.notify_all()
            loader.join()
        if self._tabler is not None:
            self._tabler.close()
        self._open = False
        failed = self._failure is not None or self._con is None
        if not failed:
            try:
                _checkpoint(self._con)  # type: ignore[arg-type]
            except duckdb.Error as exc:  # e.g. a full disk: the journal keeps the records
                log.error("DuckDB's checkpoint at close failed (%s); the journal is kept and "
                          "the next start loads what DuckDB lacks", exc)
                failed = True
        try:
            self._journal.close(remove_if_loaded_upto=None if failed else self._loaded_seq)
        except OSError as exc:  # flushed at every commit already; nothing more to do
            log.error("closing the ledger's journal failed (%s)", exc.strerror or exc)
        with self._read_lock:  # cursor() refuses from now on
            root, self._read_root = self._read_root, None
        if root is not None:  # closing it closes the cursors readers still hold
            with contextlib.suppress(duckdb.Error):
                root.close()
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            self._con = None

    @property
    def healthy(self) -> bool:
        """Whether records can be committed (appended) now."""
        return self._failure is None and not self._closing and self._open

    @property
    def unrecoverable_since(self) -> float | None:
        """time.monotonic() when the ledger failed for good (a failed flush: only a restart
        goes on), or None."""
        return self._unrecoverable_since

    @property
    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last durable record."""
        return self._durable

    @property
    def linger_s(self) -> float:
        """How long the next event-loop batch stays open before its flush (0: none)."""
        return self._linger.seconds

    @property
    def backlog(self) -> int:
        """Records appended but not yet in DuckDB."""
        return self._head_seq - self._loaded_seq

    # ── appending ──────────────────────────────────────────────────────────────────────

    def _admit(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise LedgerUnavailable("the ledger is shutting down")

    async def append(self, record: Record) -> None:
        """Append a record; return once it is durable. Raises LedgerUnavailable.

        Appends from one event loop gather into one batch, which the loop writes and (in
        `fsync` mode) flushes with one fdatasync: group commit without a thread hop."""
        self._admit()
        if self.backlog >= self.options.max_unloaded:
            try:
                await asyncio.to_thread(self._wait_for_space)
            except asyncio.CancelledError:
                # The caller gave up while the backlog was full. Its call was made, so its
                # record still goes in (as when a caller leaves during the flush).
                with contextlib.suppress(LedgerUnavailable):  # logged by the writer
                    await asyncio.shield(self.append(record))
                raise
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = Batch()
            linger = self._linger.seconds
            if linger > 0:
                batch.timer = loop.call_later(linger, self._flush_batch, loop, batch)
            else:
                loop.call_soon(self._flush_batch, loop, batch)
        batch.append((record, future))
        if batch.timer is not None and len(batch) >= self._linger.expected:
            batch.timer.cancel()  # as many as a whole linger usually gathers: flush now
            batch.early = True
            self._flush_batch(loop, batch)
        await future

    def _flush_batch(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        if self._batches.get(loop) is not batch:
            return  # taken and refused by close()
        self._batches.pop(loop, None)  # (close() may take it meanwhile)
        try:
            self._write([record for record, _ in batch])
        except LedgerUnavailable as exc:
            settle_futures([f for _, f in batch], exc)
            return
        except Exception as exc:  # a bug: fail these calls rather than leave them hanging
            log.exception("writing a ledger batch failed")
            settle_futures([f for _, f in batch], exc)
            return
        self._linger.observe(len(batch), lingered=batch.timer is not None and not batch.early)
        settle_futures([f for _, f in batch], None)

    def append_blocking(self, record: Record) -> None:
        """`append` for threads outside an event loop (one journal flush per call)."""
        self._admit()
        if self.backlog >= self.options.max_unloaded:
            self._wait_for_space()
        self._write([record])

    def _wait_for_space(self) -> None:
        deadline = time.monotonic() + self.options.backpressure_timeout_s
        with self._space:
            while self.backlog >= self.options.max_unloaded:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._failure is not None:
                    raise LedgerUnavailable(
                        f"ledger backlog is full ({self.backlog} records not yet stored); "
                        "retry later"
                    )
                with self._load_cond:  # a full backlog means load now, not at the interval
                    self._load_now = True
                    self._load_cond.notify_all()
                self._space.wait(min(remaining, 0.05))

    def _write(self, batch: list[Record]) -> None:
        """Chain, journal and (in `fsync` durability) fdatasync a batch, in the calling
        thread; then the records are durable and go to the loader. Raises
        LedgerUnavailable, and then none of the batch is in the journal."""
        started = self._written_at = time.perf_counter()
        with self._write_lock:
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise LedgerUnavailable("the ledger is shutting down")
            seq, prev = self._head_seq, self._head_hash
            first = seq + 1
            frames = []
            for record in batch:
                seq += 1
                record.seq = seq
                payload = encode(record)
                record.prev_hash = prev
                record.hash = prev = chain_hash(prev, payload)
                frames.append(journal_mod.frame(record, payload, first))
            try:
                self._journal.append(b"".join(frames), first, seq)
                if self.options.durability == "fsync":
                    self._journal.sync()
            except OSError as exc:
                try:  # these callers get UNAVAILABLE: their records must not appear later
                    self._journal.discard_last_batch()
                    discarded = True
                except OSError:
                    log.exception("could not remove the failed batch (seq %d-%d) from the "
                                  "journal; the next start may load records of refused calls",
                                  self._head_seq + 1, seq)
                    discarded = False
                raise self._fail(exc, retry=discarded and _out_of_space(exc)) from exc
            self._head_seq, self._head_hash = seq, prev
            self._hand_to_loader(batch)
            self._durable = (seq, prev)
            self.stats.appended += len(batch)
            self.stats.flushes += 1
            self.stats.last_flush_batch = len(batch)
            self._journal.retire(self._loaded_seq)
            self.stats.flush_seconds += time.perf_counter() - started

    def _fail(self, exc: OSError, *, retry: bool) -> LedgerUnavailable:
        """Refuse appends from now on. With `retry` (a write found the disk full and its
        batch is cut back out) a thread tries to make room until it can; else (a flush
        failed) for good. Called under the write lock."""
        why = exc.strerror or str(exc)
        if retry:
            log.error("ledger journal write failed (%s); calls are refused until it can be "
                      "written again (tried every %g s)", why, JOURNAL_RETRY_S)
            self._failure = LedgerUnavailable(
                f"the ledger cannot store records ({why}); no decisions are served until "
                "it can again (free disk space)")
            self._retrier = threading.Thread(target=self._retry_journal, daemon=True,
                                             name="ledger-journal-retry")
            self._retrier.start()
        else:
            log.error("ledger journal failed (%s); the ledger is now unavailable until "
                      "mlwitness is restarted", why)
            self._failure = LedgerUnavailable(
                f"the ledger cannot store records ({why}); "
                "no decisions are served until it is repaired and mlwitness restarted"
            )
            self._unrecoverable_since = time.monotonic()
        if self.on_failure is not None:
            self.on_failure()
        return self._failure

    def _retry_journal(self) -> None:
        """After a journal write failed for want of space: every JOURNAL_RETRY_S, try to
        make room for the next batch; once that works, serve again. The failed batch was
        cut back out and its callers refused, and the chain head never moved, so the chain
        simply continues."""
        while not self._stopping.wait(JOURNAL_RETRY_S):
            with self._write_lock:
                if self._closing:
                    return
                try:
                    self._journal.reserve(self._head_seq + 1)
                except journal_mod.FlushFailed as exc:
                    self._fail(exc, retry=False)
                    return
                except OSError:
                    continue
                self._failure = None
            log.warning("the ledger's journal can be written again; serving calls")
            if self.on_recovery is not None:
                self.on_recovery()
            return

    def _hand_to_loader(self, records: list[Record]) -> None:
        # With the child, records are read back from the journal, unless loading has
        # fallen behind: more than a load batch arrived that no load has taken on yet (a
        # burst faster than the child builds rows; loads begin once per load interval, so
        # at the default 1 s steady traffic under 8,192 calls/s never gets there). Then
        # they are kept, from the first such record on until the loader has caught up, and
        # built here from memory, a few times faster.
        if self._tabler is not None and not self._unloaded and (
            self._head_seq - max(self._claimed, self._loaded_seq) <= self.options.load_batch
        ):
            if self.backlog >= self.options.load_batch:
                with self._load_cond:
                    self._load_cond.notify()
            return
        with self._load_cond:
            self._unloaded.extend(records)
            if len(self._unloaded) >= self.options.load_batch:
                self._load_cond.notify()

    # ── loading into DuckDB ────────────────────────────────────────────────────────────

    def _run_loader(self) -> None:
        try:
            self._load_loop()
        finally:  # writes handed over from now on are refused: nobody would run them
            with self._load_cond:
                self._loader_done = True
            self._run_writes()

    def _load_loop(self) -> None:
        interval = self.options.load_interval_s
        next_load = time.monotonic() + interval  # loads begin once an interval, on the beat
        while True:
            with self._load_cond:
                wait = next_load - time.monotonic()
                if wait > 0 and not (self._load_now or self._writes or self._closing):
                    self._load_cond.wait(wait)
                now = time.monotonic()
                if now >= next_load:
                    next_load += interval * (1 + (now - next_load) // interval)
                self._load_now = False
                # In seq order: records kept in memory are built here, the others by the
                # child from the journal
                first = self._loaded_seq + 1
                batch: list[Record] = []
                if self._unloaded and self._unloaded[0].seq == first:
                    while self._unloaded and len(batch) < self.options.load_batch:
                        batch.append(self._unloaded.popleft())
                    last = batch[-1].seq
                elif self._tabler is not None:
                    last = min(self._durable[0], self._loaded_seq + self.options.load_batch)
                    if self._unloaded:
                        last = min(last, self._unloaded[0].seq - 1)
                else:
                    last = first - 1
                self._claimed = max(self._claimed, last)
            if self._duckdb_broken or self._con is None:  # also with nothing to load
                with contextlib.suppress(Exception):  # a load retries it, and logs
                    self._reopen()
            self._run_writes()
            loading = last >= first
            build = (functools.partial(self._table, batch) if batch
                     else functools.partial(self._journal_table, first, last))
            loaded = not loading or self._load(first, last, build)
            if not loaded:
                self._run_writes()
                return  # closing and DuckDB refuses: the rest stays in the journal, unskipped
            if not loading and self._closing and self._loaded_seq >= self._durable[0]:
                self._run_writes()
                return
            with self._load_cond:
                self._load_cond.notify_all()

    def _journal_table(self, first: int, last: int) -> pa.Table:
        """Records first..last as rows, built by the child process from the journal (or
        here, from the journal, when it fails)."""
        assert self._tabler is not None and self._tail is not None
        try:
            table = self._noted(self._tabler.table(first, last))
        except TablerFailed:
            return self._table(self._tail.records(first, last))
        self.stats.built_by_child += last - first + 1
        return table

    def _load(self, first: int, last: int, build: Callable[[], pa.Table]) -> bool:
        """Insert records first..last (their rows made by `build`) into DuckDB, retrying
        with backoff until it succeeds. Only while closing does it give up (after three
        attempts) and return False: then neither these records nor any later ones may be
        loaded, or DuckDB would skip records the journal still holds."""
        started = time.perf_counter()
        attempts = 0
        table: pa.Table | None = None
        while True:
            try:
                if self._con is None or self._duckdb_broken:
                    self._reopen()
                if attempts and self._stored_head() >= last:
                    break  # DuckDB failed after its commit (its automatic checkpoint)
                if table is None:  # built once: building releases records' tensors
                    table = build()
                self._store(table)
                break
            except Exception as exc:  # DuckDB's, or a bug: retry, never let the loader die
                attempts += 1
                if _fatal(exc):
                    self._duckdb_broken = True
                if attempts == 1:
                    log.exception("loading records %d-%d into DuckDB failed; retrying",
                                  first, last)
                elif attempts % 20 == 0:
                    log.error("loading records %d-%d into DuckDB still fails (%d attempts): %s",
                              first, last, attempts, exc)
                if self._closing and attempts >= 3:
                    return False  # they stay in the journal; the next start loads them
                self._run_writes()  # other writes fail now rather than wait for this one
                if self._closing:
                    time.sleep(0.2)
                else:
                    self._stopping.wait(min(LOAD_RETRY_MAX_S, 0.5 * 2 ** (attempts - 1)))
        self._loaded_seq = last
        self.stats.loads += 1
        self.stats.loaded += last - first + 1
        self.stats.load_seconds += time.perf_counter() - started
        self.stats.last_load_batch = last - first + 1
        with self._space:
            self._space.notify_all()
        return True

    def _table(self, batch: list[Record], tabulator: Tabulator | None = None) -> pa.Table:
        """The `entries` rows of records, built here (with the writer's tabulator unless
        another is given). The Arrow table is built a chunk at a time with a pause between
        chunks, so the event loop never waits long for the GIL behind a large load."""
        tables = []
        for start in range(0, len(batch), TABLE_CHUNK):
            began = time.perf_counter()
            tables.append(self._noted(record_table(batch[start : start + TABLE_CHUNK],
                                                   tabulator or self.tabulator,
                                                   self.decoder)))
            serving = began - self._written_at < SERVING_WINDOW_S
            if serving and self.backlog <= self.options.load_batch:
                time.sleep(max(LOADER_YIELD_S, 2 * (time.perf_counter() - began)))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _noted(self, table: pa.Table) -> pa.Table:
        """Count and log the records `record_table` left without decoded columns."""
        notes = undecoded(table)
        if not notes:
            return table
        self._undecoded([seq for seq, _ in notes], notes[0][1])
        return table.replace_schema_metadata(None)

    def _undecoded(self, seqs: list[int], why: str) -> None:
        self.stats.undecoded += len(seqs)
        shown = ", ".join(map(str, seqs[:5])) + (", ..." if len(seqs) > 5 else "")
        log.warning("%d record(s) (seq %s) are loaded without decoded columns (inputs, outputs, "
                    "parameters); their request and response bytes are stored whole. Seq "
                    "%d: %s", len(seqs), shown, seqs[0], why)

    def _store(self, table: pa.Table) -> None:
        """Insert rows. Should DuckDB refuse them for their decoded columns alone (the
        record fields go in without them), the records it refuses go in without theirs."""
        try:
            self._insert(table)
        except duckdb.Error as exc:
            if _fatal(exc) or not self._fits(without_decoded(table)):
                raise  # the records themselves do not go in: not their derived data
            refused: list[int] = []
            self._bisect(table, 0, refused, [SALVAGE_PROBES])
            self._insert(without_decoded(table, refused))
            seqs = table.column("seq").take(refused).to_pylist()
            self._undecoded(seqs, f"DuckDB refused their decoded columns ({exc})")

    def _bisect(self, table: pa.Table, offset: int, refused: list[int],
                budget: list[int]) -> None:
        """Rows (offset + index) of a refused `table` whose decoded columns DuckDB refuses,
        found by inserting halves. Once `budget` probes are spent, all rows left count."""
        if table.num_rows == 1:
            refused.append(offset)
            return
        half = table.num_rows // 2
        for part, at in ((table.slice(0, half), offset), (table.slice(half), offset + half)):
            budget[0] -= 1
            if budget[0] < 0:
                refused.extend(range(at, at + part.num_rows))
            elif not self._fits(part):
                self._bisect(part, at, refused, budget)

    def _fits(self, table: pa.Table) -> bool:
        """Whether DuckDB takes these rows (inserted, then rolled back)."""
        assert self._con is not None
        self._con.execute("BEGIN TRANSACTION")
        try:
            self._insert(table)
            return True
        except duckdb.Error as exc:
            if _fatal(exc):
                raise
            return False
        finally:
            self._con.execute("ROLLBACK")

    def _insert(self, table: pa.Table) -> None:
        """Insert rows into DuckDB in one statement (DuckDB's own work runs without the
        GIL)."""
        assert self._con is not None
        con = self._con
        con.register("_ledger_batch", table)
        try:
            con.execute("INSERT INTO entries BY NAME SELECT * FROM _ledger_batch")
        finally:
            con.unregister("_ledger_batch")

    def _stored_head(self) -> int:
        assert self._con is not None
        (head,) = self._con.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchall()[0]
        return int(head)

    def _reopen(self) -> None:
        """Open DuckDB again. After a fatal error (a checkpoint that failed, e.g. on a full
        disk) it refuses every statement until then; opening replays its WAL, so nothing
        committed is lost. Readers' cursors of the old connection fail; new ones work."""
        with self._read_lock:
            old, root = self._con, self._read_root
            self._con = self._read_root = None
        for handle in (root, old):
            if handle is not None:
                with contextlib.suppress(duckdb.Error):
                    handle.close()
        con = self._connect()
        with self._read_lock:
            self._con, self._read_root = con, con.cursor()
        self._duckdb_broken = False
        log.warning("the DuckDB ledger was opened again after a fatal error; loads resume")

    # ── other writes, reads and barriers ───────────────────────────────────────────────

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float = 30.0) -> T:
        """Run `fn(connection)` on the writer's DuckDB connection, in the loader thread, in
        its own transaction; return its result. For models, environments, guards."""
        if self._con is None:
            raise LedgerUnavailable("the ledger is not open")
        if not self._threads:  # during start-up, before the threads run
            return _in_transaction(self._con, fn)
        future: Future[T] = Future()
        with self._load_cond:
            if self._loader_done:
                raise LedgerUnavailable("the ledger is shutting down")
            self._writes.append((fn, future))
            self._load_cond.notify_all()
        return future.result(timeout)

    def _run_writes(self) -> None:
        while self._writes:
            fn, future = self._writes.popleft()
            if self._con is None or self._duckdb_broken:
                future.set_exception(LedgerUnavailable("DuckDB is being opened again after "
                                                       "an error; retry later"))
                continue
            try:
                future.set_result(_in_transaction(self._con, fn))
            except BaseException as exc:  # handed back to the caller
                if isinstance(exc, Exception) and _fatal(exc):
                    self._duckdb_broken = True
                future.set_exception(exc)

    def sync(self, timeout: float = 30.0) -> int:
        """Wait until every record acknowledged so far is in DuckDB; return that seq."""
        target = self._durable[0]
        deadline = time.monotonic() + timeout
        with self._load_cond:
            while self._loaded_seq < target:
                if self._failure is not None and self._loaded_seq >= self._durable[0]:
                    break
                self._load_now = True
                self._load_cond.notify_all()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LedgerUnavailable(
                        f"records up to seq {target} are durable but not yet queryable; "
                        "DuckDB is behind (see the sidecar's log)"
                    )
                self._load_cond.wait(min(remaining, 0.05))
        return target

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new read cursor on the ledger, for one thread's use."""
        with self._read_lock:  # _reopen (the loader) may be replacing it
            if self._read_root is None:
                raise LedgerUnavailable("the ledger is not open")
            return self._read_root.cursor()


def _out_of_space(exc: OSError) -> bool:
    """A write that failed for want of space (not a failed flush): worth trying again."""
    return not isinstance(exc, journal_mod.FlushFailed) and exc.errno in (errno.ENOSPC,
                                                                          errno.EDQUOT)


def _fatal(exc: Exception) -> bool:
    """DuckDB invalidated its database (after a failed checkpoint, e.g. on a full disk):
    every statement fails until it is opened again."""
    return isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc)


def _checkpoint(con: duckdb.DuckDBPyConnection, attempts: int = 40) -> None:
    """CHECKPOINT at close. A thread that outlived its cancelled task (a drift metric or
    an audit question still reading) can hold the connection for a moment; DuckDB then
    refuses ("connection is busy") instead of waiting, so wait here (≤ 2 s)."""
    for attempt in range(attempts):
        try:
            con.execute("CHECKPOINT")
            return
        except duckdb.Error as exc:
            if "busy" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def _in_transaction(con: duckdb.DuckDBPyConnection, fn: Callable[[Any], T]) -> T:
    con.execute("BEGIN TRANSACTION")
    try:
        result = fn(con)
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return result
