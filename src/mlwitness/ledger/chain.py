"""The commit path: the chain head, the journal it is written to, group commit on event
loops, backpressure, and what follows when the journal cannot be written.

Which thread runs what:
  append, _flush_batch     an event loop's thread; each loop writes and flushes its own batch
  append_blocking, append_group
                           any thread outside an event loop
  commit                   either of the two above (and so any number at once): under
                           `write_lock`
  _wait_for_space          an append_blocking caller, or a worker thread of `append`'s
  _retry_journal           "ledger-journal-retry", after a write found the disk full
  start, shut              the owner (LedgerWriter.open, close)
  seal_journal, scrub_journal
                           the thread erasing records (LedgerWriter.erase): under write_lock

Shared fields: who writes each, under which lock. Reads need no lock: each is one attribute,
so it is never seen half-written (a moment stale at most).
  write_lock           serialises commits. Held while chaining a batch, writing and
                       flushing the journal, deleting loaded segments, handing the records to
                       the loader (which takes the loader's condition, held by nobody for
                       long) and calling `on_failure`; never while waiting for anything else.
  head_seq, head_hash  the last record in the journal, whose hash the next one chains to:
                       a committing thread under write_lock (the owner at open)
  durable              (seq, hash) of the last acknowledged record, set at once: a
                       committing thread under write_lock (the owner at open)
  failure, unrecoverable_since, closing, _retrier
                       under write_lock: a committing thread, the retry thread, `shut`
  written_at           any committing thread, without a lock (a time: the loader paces
                       itself by it)
  _batches             each event loop's thread adds and takes its own loop's entry; `shut`
                       takes what is left
  linger               the event loops' threads, without a lock (a heuristic)
  stopping             set once by `shut`: the retry thread and the loader's backoff end
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlwitness.errors import LedgerUnavailable
from mlwitness.ledger import journal as journal_mod
from mlwitness.ledger.commit import Batch, Linger, settle_elsewhere, settle_futures
from mlwitness.ledger.record import FORMAT_VERSION, SALT_SIZE, Record, chain_hash, encodings

if TYPE_CHECKING:
    from mlwitness.ledger.loader import Loader
    from mlwitness.ledger.writer import WriterOptions, WriterStats

log = logging.getLogger(__name__)

# After a journal write failed for want of space, how often to try to make room again.
JOURNAL_RETRY_S = 1.0


class Chain:
    """Chains records, writes them to the journal and (in `fsync` durability) flushes it
    before their appenders are answered, then hands them to the loader."""

    loader: Loader  # set by LedgerWriter: where durable records go

    def __init__(self, journal: journal_mod.Journal, options: WriterOptions,
                 stats: WriterStats) -> None:
        self.journal = journal
        self.options = options
        self.stats = stats
        # Called when the ledger fails, from the thread whose journal write or flush failed
        # (under write_lock: it must not block), and when it recovers, from the retry
        # thread. They may arrive out of order: read `healthy` in them (e.g. to flip health).
        self.on_failure: Callable[[], None] | None = None
        self.on_recovery: Callable[[], None] | None = None
        self.write_lock = threading.Lock()
        self.head_seq = 0
        self.head_hash = b""
        self.durable: tuple[int, bytes] = (0, b"")
        self.failure: LedgerUnavailable | None = None
        self.unrecoverable_since: float | None = None  # monotonic time of a failed flush
        self.closing = False
        self._retrier: threading.Thread | None = None  # makes room after a full disk
        self.written_at = 0.0  # perf_counter of the last journal write
        # Appends from an event loop gather here until the loop runs the batch's flush.
        self._batches: dict[asyncio.AbstractEventLoop, Batch] = {}
        self.linger = Linger(options.group_commit_linger_s)
        self.stopping = threading.Event()

    def start(self, seq: int, digest: bytes) -> None:
        """(Owner, at open.) Go on from the chain's last record; start the journal after it."""
        self.head_seq, self.head_hash = seq, digest
        self.durable = (seq, digest)
        self.journal.open(seq + 1)
        self.journal.retire(seq)

    @property
    def backlog(self) -> int:
        """Records appended but not yet in DuckDB."""
        return self.head_seq - self.loader.loaded_seq

    def _admit(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.closing:
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
            linger = self.linger.seconds
            if linger > 0:
                batch.timer = loop.call_later(linger, self._flush_batch, loop, batch)
            else:
                loop.call_soon(self._flush_batch, loop, batch)
        batch.append((record, future))
        if batch.timer is not None and len(batch) >= self.linger.expected:
            batch.timer.cancel()  # as many as a whole linger usually gathers: flush now
            batch.early = True
            self._flush_batch(loop, batch)
        await future

    def _flush_batch(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        if self._batches.get(loop) is not batch:
            return  # taken and refused by shut()
        self._batches.pop(loop, None)  # (shut() may take it meanwhile)
        try:
            self.commit([record for record, _ in batch])
        except LedgerUnavailable as exc:
            settle_futures([f for _, f in batch], exc)
            return
        except Exception as exc:  # a bug: fail these calls rather than leave them hanging
            log.exception("writing a ledger batch failed")
            settle_futures([f for _, f in batch], exc)
            return
        self.linger.observe(len(batch), lingered=batch.timer is not None and not batch.early)
        settle_futures([f for _, f in batch], None)

    def append_blocking(self, record: Record) -> None:
        """`append` for threads outside an event loop (one journal flush per call)."""
        self._admit()
        if self.backlog >= self.options.max_unloaded:
            self._wait_for_space()
        self.commit([record])

    def append_group(self, records: list[Record]) -> None:
        """`append_blocking` for several records at once: one journal write and flush, so
        they are durable together or not at all (a bulk import's batch)."""
        self._admit()
        if self.backlog >= self.options.max_unloaded:
            self._wait_for_space()
        if records:
            self.commit(records)

    def _wait_for_space(self) -> None:
        deadline = time.monotonic() + self.options.backpressure_timeout_s
        space = self.loader.space
        with space:
            while self.backlog >= self.options.max_unloaded:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.failure is not None:
                    raise LedgerUnavailable(
                        f"ledger backlog is full ({self.backlog} records not yet stored); "
                        "retry later"
                    )
                self.loader.nudge()  # a full backlog means load now, not at the interval
                space.wait(min(remaining, 0.05))

    def commit(self, batch: list[Record]) -> None:
        """Chain, journal and (in `fsync` durability) fdatasync a batch, in the calling
        thread; then the records are durable and go to the loader. Raises
        LedgerUnavailable, and then none of the batch is in the journal."""
        started = self.written_at = time.perf_counter()
        with self.write_lock:
            if self.failure is not None:
                raise self.failure
            if self.closing:
                raise LedgerUnavailable("the ledger is shutting down")
            seq, prev = self.head_seq, self.head_hash
            first = seq + 1
            frames = []
            # Every record is written in the current format, with a salt of its own for its
            # payload commitment: one getrandom call for the batch (record.py).
            salts = os.urandom(SALT_SIZE * len(batch))
            for index, record in enumerate(batch):
                seq += 1
                record.seq = seq
                record.format = FORMAT_VERSION
                record.salt = salts[index * SALT_SIZE : (index + 1) * SALT_SIZE]
                stored, hashed = encodings(record)
                record.prev_hash = prev
                record.hash = prev = chain_hash(prev, hashed)
                frames.append(journal_mod.frame(record, stored, first))
            try:
                self.journal.append(b"".join(frames), first, seq)
                if self.options.durability == "fsync":
                    self.journal.sync()
            except OSError as exc:
                try:  # these callers get UNAVAILABLE: their records must not appear later
                    self.journal.discard_last_batch()
                    discarded = True
                except OSError:
                    log.exception("could not remove the failed batch (seq %d-%d) from the "
                                  "journal; the next start may load records of refused calls",
                                  self.head_seq + 1, seq)
                    discarded = False
                raise self._fail(exc, retry=discarded and _out_of_space(exc)) from exc
            self.head_seq, self.head_hash = seq, prev
            self.loader.sources.hand_off(batch, self.loader.loaded_seq)
            self.durable = (seq, prev)
            self.stats.appended += len(batch)
            self.stats.flushes += 1
            self.stats.last_flush_batch = len(batch)
            self.journal.retire(self.loader.loaded_seq)
            self.stats.flush_seconds += time.perf_counter() - started

    def seal_journal(self, holds: Callable[[int, int], bool]) -> None:
        """(An erasing thread.) Mark the journal segments that hold records `holds(first,
        last)` names, and close the active one if it is among them (journal.Journal.seal).
        A failure to start a new segment is logged: the marked one is then overwritten
        when it is full and its records loaded, or at shutdown."""
        with self.write_lock:
            if self.closing or self.failure is not None:
                return
            try:
                self.journal.seal(holds)
            except OSError as exc:
                log.warning("could not start a new journal segment after an erasure (%s); "
                            "the segment holding erased records is overwritten once full",
                            exc.strerror or exc)

    def scrub_journal(self) -> int:
        """(An erasing thread, once the marked segments' records are loaded.) Overwrite
        and delete the marked segments; only taking them out of the journal is done under
        the write lock. Returns how many were."""
        with self.write_lock:
            taken = self.journal.take_scrubbed(self.loader.loaded_seq)
        return sum(journal_mod.scrub(path) for path in taken)

    def _fail(self, exc: OSError, *, retry: bool) -> LedgerUnavailable:
        """Refuse appends from now on. With `retry` (a write found the disk full and its
        batch is cut back out) a thread tries to make room until it can; else (a flush
        failed) for good. Called under the write lock."""
        why = exc.strerror or str(exc)
        if retry:
            log.error("ledger journal write failed (%s); calls are refused until it can be "
                      "written again (tried every %g s)", why, JOURNAL_RETRY_S)
            self.failure = LedgerUnavailable(
                f"the ledger cannot store records ({why}); no decisions are served until "
                "it can again (free disk space)")
            self._retrier = threading.Thread(target=self._retry_journal, daemon=True,
                                             name="ledger-journal-retry")
            self._retrier.start()
        else:
            log.error("ledger journal failed (%s); the ledger is now unavailable until "
                      "mlwitness is restarted", why)
            self.failure = LedgerUnavailable(
                f"the ledger cannot store records ({why}); "
                "no decisions are served until it is repaired and mlwitness restarted"
            )
            self.unrecoverable_since = time.monotonic()
        if self.on_failure is not None:
            self.on_failure()
        return self.failure

    def _retry_journal(self) -> None:
        """After a journal write failed for want of space: every JOURNAL_RETRY_S, try to
        make room for the next batch; once that works, serve again. The failed batch was
        cut back out and its callers refused, and the chain head never moved, so the chain
        simply continues."""
        while not self.stopping.wait(JOURNAL_RETRY_S):
            with self.write_lock:
                if self.closing:
                    return
                try:
                    self.journal.reserve(self.head_seq + 1)
                except journal_mod.FlushFailed as exc:
                    self._fail(exc, retry=False)
                    return
                except OSError:
                    continue
                self.failure = None
            log.warning("the ledger's journal can be written again; serving calls")
            if self.on_recovery is not None:
                self.on_recovery()
            return

    def shut(self) -> None:
        """(Owner, in close.) Refuse appends from now on: a commit under way finishes first
        (the loader must see it), the retry thread ends, and the batches still gathering on
        an event loop are refused, never left hanging."""
        with self.write_lock:
            self.closing = True
        self.stopping.set()
        if self._retrier is not None:
            self._retrier.join()
        with self.write_lock:
            # one by one: an event loop's thread may add or take its own meanwhile
            taken = [self._batches.pop(loop, None) for loop in list(self._batches)]
            late = [w for batch in taken if batch is not None for _, w in batch]
        settle_elsewhere(late, LedgerUnavailable("the ledger is shutting down"))


def _out_of_space(exc: OSError) -> bool:
    """A write that failed for want of space (not a failed flush): worth trying again."""
    return not isinstance(exc, journal_mod.FlushFailed) and exc.errno in (errno.ENOSPC,
                                                                          errno.EDQUOT)
