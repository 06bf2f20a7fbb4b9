"""The commit path: the chain head, the journal it is written to, group commit on event
loops, backpressure, and what follows when the journal cannot be written.

Which thread runs what:
  append, _flush_batch, _launch, _landed_on
                           an event loop's thread: each loop chains and writes its own batch
  _sync_flights            "ledger-commit" (`fsync` durability): the fdatasync of the batch a
                           loop wrote, then making it durable and answering its callers
  append_blocking          any thread outside an event loop
  commit                   a thread outside the loops, or (`write` durability) a loop's: under
                           `write_lock`, once no batch is in flight
  _wait_for_space          an append_blocking caller, or a worker thread of `append`'s
  _retry_journal           "ledger-journal-retry", after a write found the disk full
  start, shut              the owner (LedgerWriter.open, close)
  seal_journal, scrub_journal
                           the thread erasing records (LedgerWriter.erase): under write_lock

In `fsync` durability a loop's batch is chained and written on the loop (cheap: a write to
the page cache), and the commit thread flushes it: the loop serves on meanwhile instead of
sitting in fdatasync (about a fifth of a forwarding sidecar's wall time), and the calls
arriving meanwhile gather into the loop's next batch, which is written as soon as the one
in flight lands. One batch is in flight at a time, so a failed flush has exactly one batch
to cut back out (`_discard`), and no record is acknowledged, made `durable` or handed to
the loader before its fdatasync returned.

Shared fields: who writes each, under which lock. Reads need no lock: each is one attribute,
so it is never seen half-written (a moment stale at most).
  write_lock           serialises commits. Held while chaining a batch and writing it,
                       flushing the journal (except the commit thread's fdatasync of a batch
                       in flight, during which nobody writes the journal), deleting loaded
                       segments, handing the records to the loader (which takes the loader's
                       condition, held by nobody for long) and calling `on_failure`; never
                       while waiting for anything else but `_landed`.
  head_seq, head_hash  the last durable record, whose hash the next one chains to: a
                       committing thread under write_lock (the owner at open)
  durable              (seq, hash) of the last acknowledged record, set at once: a
                       committing thread under write_lock (the owner at open)
  _in_flight, _deferred, _waiting
                       under write_lock: the batch the commit thread is flushing, the loops'
                       batches gathering until it lands, threads waiting for it to land
                       (`_quiet`); `_landed` (a condition on write_lock) is notified when it
                       does
  failure, unrecoverable_since, closing, _retrier
                       under write_lock: a committing thread, the retry thread, `shut`
  written_at           any committing thread, without a lock (a time: the loader paces
                       itself by it)
  _batches             each event loop's thread adds and takes its own loop's entry; `shut`
                       takes what is left
  linger               the event loops' threads, without a lock (a heuristic; `write`
                       durability only)
  stopping             set once by `shut`: the retry thread and the loader's backoff end
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
        # In `fsync` durability no batch lingers: the next one gathers while the commit
        # thread flushes the last (`_launch`), which is group commit without a timer.
        self.linger = Linger(options.group_commit_linger_s
                             if options.durability != "fsync" else 0.0)
        self.stopping = threading.Event()
        # `fsync` durability: the loops' batches written, for the commit thread to flush
        self._flights: queue.SimpleQueue[_Flight | None] | None = None
        self._committer: threading.Thread | None = None
        self._in_flight: _Flight | None = None
        self._deferred: dict[asyncio.AbstractEventLoop, Batch] = {}
        self._waiting = 0  # threads in `_quiet`
        self._landed = threading.Condition(self.write_lock)  # a flight landed

    def start(self, seq: int, digest: bytes) -> None:
        """(Owner, at open.) Go on from the chain's last record; start the journal after it."""
        self.head_seq, self.head_hash = seq, digest
        self.durable = (seq, digest)
        self.journal.open(seq + 1)
        self.journal.retire(seq)
        if self.options.durability == "fsync":
            self._flights = queue.SimpleQueue()
            self._committer = threading.Thread(target=self._sync_flights, daemon=True,
                                               name="ledger-commit")
            self._committer.start()

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

        Appends from one event loop gather into one batch, which the loop chains and
        writes; in `fsync` durability the commit thread flushes it with one fdatasync
        while the next batch gathers, and the loop answers its callers once it has."""
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
            return  # taken and refused by shut(), or flushed already
        if self._flights is not None:
            self._launch(loop, batch)
            return
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

    def _launch(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        """(fsync durability, the loop's thread.) Chain and write the loop's batch, and
        hand its fdatasync to the commit thread; or, while another batch is in flight (or a
        thread outside the loops waits to commit), leave the batch open, gathering, until
        that one lands."""
        futures = [f for _, f in batch]
        with self.write_lock:
            if self._in_flight is not None or self._waiting:
                self._deferred[loop] = batch
                return
            self._batches.pop(loop, None)
            records = [record for record, _ in batch]
            try:
                started = time.perf_counter()
                seq, prev = self._write(records)
            except LedgerUnavailable as exc:
                failure: BaseException | None = exc
            except Exception as exc:  # a bug: fail these calls rather than leave them hanging
                log.exception("writing a ledger batch failed")
                failure = exc
            else:
                flight = self._in_flight = _Flight(loop, records, futures, seq, prev, started)
                failure = None
        if failure is not None:
            settle_futures(futures, failure)
            return
        assert self._flights is not None
        self._flights.put(flight)

    def _sync_flights(self) -> None:
        """The commit thread ("ledger-commit", fsync durability): fdatasync each batch an
        event loop wrote, then make it durable and answer its callers. The fdatasync runs
        outside the write lock and off every event loop: nothing writes the journal while a
        batch is in flight (other batches wait for it to land, `_launch`, `_quiet`), and
        the loops go on serving meanwhile."""
        assert self._flights is not None
        while (flight := self._flights.get()) is not None:
            error: OSError | None = None
            try:
                self.journal.sync()
            except OSError as exc:
                error = exc
            outcome: BaseException | None = None
            with self.write_lock:
                try:
                    if error is not None:
                        outcome = self._discard(error, flight.seq)
                    else:
                        self._land(flight.records, flight.seq, flight.prev, flight.started)
                except Exception as exc:  # a bug: fail these calls, keep the thread
                    log.exception("committing a ledger batch failed")
                    outcome = exc
                finally:
                    self._in_flight = None
                    deferred = self._take_deferred()
            self._answer(flight, outcome, deferred)

    def _answer(self, flight: _Flight, outcome: BaseException | None,
                deferred: dict[asyncio.AbstractEventLoop, Batch]) -> None:
        """(The commit thread.) Settle a landed batch's callers on its loop, and flush the
        batches that gathered meanwhile on theirs: one wake-up of each loop."""
        loops = {flight.loop: deferred.pop(flight.loop, None), **deferred}
        for loop, batch in loops.items():
            futures = flight.futures if loop is flight.loop else []
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(self._landed_on, loop, futures, outcome, batch)

    def _landed_on(self, loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future],
                   outcome: BaseException | None, batch: Batch | None) -> None:
        """(A loop's thread.) The next batch is launched first, so that its fdatasync runs
        while this loop answers the callers of the one that landed."""
        if batch is not None:
            self._flush_batch(loop, batch)
        settle_futures(futures, outcome)

    def _take_deferred(self) -> dict[asyncio.AbstractEventLoop, Batch]:
        """(Under write_lock.) The loops' batches that waited for a flight to land."""
        deferred, self._deferred = self._deferred, {}
        self._landed.notify_all()
        return deferred

    def _wake_deferred(self) -> None:
        """(Under write_lock, from a thread outside the loops.) Flush the batches that
        waited while this thread committed, each on its own loop."""
        for loop, batch in self._take_deferred().items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._flush_batch, loop, batch)

    def _quiet(self) -> None:
        """(Under write_lock, a thread outside the loops.) Wait until no batch is in
        flight; the loops leave theirs gathering meanwhile (so that this thread is not
        starved under load). Pair with `_wake_deferred` once done."""
        self._waiting += 1
        try:
            while self._in_flight is not None:
                self._landed.wait()
        finally:
            self._waiting -= 1

    def append_blocking(self, record: Record) -> None:
        """`append` for threads outside an event loop (one journal flush per call)."""
        self._admit()
        if self.backlog >= self.options.max_unloaded:
            self._wait_for_space()
        self.commit([record])

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
        started = time.perf_counter()
        with self.write_lock:
            self._quiet()
            try:
                seq, prev = self._write(batch)
                if self.options.durability == "fsync":
                    try:
                        self.journal.sync()
                    except OSError as exc:
                        raise self._discard(exc, seq) from exc
                self._land(batch, seq, prev, started)
            finally:
                self._wake_deferred()

    def _write(self, batch: list[Record]) -> tuple[int, bytes]:
        """(Under write_lock, nothing in flight.) Chain a batch and write it to the
        journal; return the (seq, hash) it ends at. The chain head moves only once it is
        durable (`_land`). Raises LedgerUnavailable, and then the batch is not in the
        journal."""
        if self.failure is not None:
            raise self.failure
        if self.closing:
            raise LedgerUnavailable("the ledger is shutting down")
        self.written_at = time.perf_counter()
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
        except OSError as exc:
            raise self._discard(exc, seq) from exc
        return seq, prev

    def _discard(self, exc: OSError, last: int) -> LedgerUnavailable:
        """(Under write_lock.) A batch's write or flush failed: cut it back out of the
        journal (its callers get UNAVAILABLE: its records must not appear later) and
        refuse appends (`_fail`). Returns the error to raise."""
        try:
            self.journal.discard_last_batch()
            discarded = True
        except OSError:
            log.exception("could not remove the failed batch (seq %d-%d) from the "
                          "journal; the next start may load records of refused calls",
                          self.head_seq + 1, last)
            discarded = False
        return self._fail(exc, retry=discarded and _out_of_space(exc))

    def _land(self, batch: list[Record], seq: int, prev: bytes, started: float) -> None:
        """(Under write_lock.) The batch is durable: move the chain head to it, hand it to
        the loader, count it."""
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
            self._quiet()  # a new segment must not replace the one a flight is flushing
            try:
                self.journal.seal(holds)
            except OSError as exc:
                log.warning("could not start a new journal segment after an erasure (%s); "
                            "the segment holding erased records is overwritten once full",
                            exc.strerror or exc)
            finally:
                self._wake_deferred()

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
        """(Owner, in close.) Refuse appends from now on: a commit under way (and a batch
        in flight) finishes first (the loader must see it), the commit and retry threads
        end, and the batches still gathering on an event loop are refused, never left
        hanging."""
        with self.write_lock:
            self.closing = True
            self._quiet()
            self._deferred.clear()  # refused below with the rest of the gathering batches
        if self._flights is not None and self._committer is not None:
            self._flights.put(None)
            self._committer.join()
        self.stopping.set()
        if self._retrier is not None:
            self._retrier.join()
        with self.write_lock:
            # one by one: an event loop's thread may add or take its own meanwhile
            taken = [self._batches.pop(loop, None) for loop in list(self._batches)]
            late = [w for batch in taken if batch is not None for _, w in batch]
        settle_elsewhere(late, LedgerUnavailable("the ledger is shutting down"))


@dataclass
class _Flight:
    """An event loop's batch, written to the journal, that the commit thread is flushing."""

    loop: asyncio.AbstractEventLoop
    records: list[Record]
    futures: list[asyncio.Future]
    seq: int  # the last record's
    prev: bytes  # its hash
    started: float  # perf_counter before its write


def _out_of_space(exc: OSError) -> bool:
    """A write that failed for want of space (not a failed flush): worth trying again."""
    return not isinstance(exc, journal_mod.FlushFailed) and exc.errno in (errno.ENOSPC,
                                                                          errno.EDQUOT)
