"""The loader thread: loads into DuckDB what the commit path made durable, once a load
interval on its beat (at once when asked: `sync`, a full backlog, a load batch waiting),
one Arrow batch per transaction, and runs the other DuckDB writes handed to it (`write`).
A failed load is retried with backoff, and DuckDB opened again after a fatal error.

Which thread runs what:
  _run, _load_loop, _load, _run_writes   the loader thread ("ledger-loader")
  write, sync, nudge                     any thread
  start, stop                            the owner (LedgerWriter.open, close)

Shared fields:
  cond        the loader waits on it for work; it guards load_now, _writes, _finished and
              the sources' unloaded and claimed. Held for moments only: nobody waits for
              anything else or does I/O while holding it.
  space       appenders wait on it while the backlog is full; the loader notifies it after
              each load. Taken before cond where both are (`Chain._wait_for_space`).
  loaded_seq  the last seq in DuckDB: the loader thread writes it (the owner at open); any
              thread reads it without a lock
  load_now    under cond: any thread sets it, the loader clears it
  _writes     under cond: callers append, the loader pops
  _finished   under cond: set once as the loader thread ends; `write` refuses from then on
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa

from mlwitness.errors import LedgerUnavailable
from mlwitness.ledger.database import Database, fatal
from mlwitness.ledger.rows import Tabulator, TensorDecoder
from mlwitness.ledger.sources import Sources
from mlwitness.ledger.tabler import trim_heap

if TYPE_CHECKING:
    from mlwitness.ledger.chain import Chain
    from mlwitness.ledger.writer import WriterOptions, WriterStats

log = logging.getLogger(__name__)
T = TypeVar("T")

# A failed load is retried after 0.5 s, doubling up to this.
LOAD_RETRY_MAX_S = 5.0
# How often the loader has DuckDB give back the blocks it caches (Database.squeeze), and
# glibc its free pages (tabler.trim_heap): under load DuckDB fills its memory limit with the
# ledger's blocks and keeps them, a pod's memory that serving never reads again. Every 2 s
# held the sidecar 6-12 MiB of PSS lower, but served 0.91x the calls a second at 8 callers
# in an interleaved run (DuckDB reads evicted blocks back for its next appends):
# bench/HISTORY.md, 2026-12-08.
SQUEEZE_INTERVAL_S = 10.0


class Loader:
    def __init__(self, chain: Chain, db: Database, options: WriterOptions, stats: WriterStats,
                 tabulator: Tabulator, decoder: TensorDecoder | None) -> None:
        self.chain = chain  # what is durable, and whether the ledger is closing
        self.db = db
        self.options = options
        self.stats = stats
        self.cond = threading.Condition()
        self.space = threading.Condition()
        self.loaded_seq = 0
        self.load_now = False
        self._writes: deque[tuple[Callable[[], Any], Future]] = deque()
        self._finished = False
        self._thread: threading.Thread | None = None
        self.sources = Sources(chain, self.cond, options, stats, tabulator, decoder)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """(Owner, in close, once no more appends come.) Load everything durable, run the
        writes handed over, end the thread."""
        if self._thread is None:
            return
        with self.cond:
            self.cond.notify_all()
        self._thread.join()

    def nudge(self) -> None:
        """Load now, not at the next beat."""
        with self.cond:
            self.load_now = True
            self.cond.notify_all()

    # ── other writes and the barrier ───────────────────────────────────────────────────

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float = 30.0,
              *, transaction: bool = True) -> T:
        """Run `fn(connection)` on the writer's DuckDB connection, in the loader thread, in
        its own transaction (or, with `transaction=False`, in none: a checkpoint, or work
        that replaces the connection); return its result. For models, environments, guards,
        erasures."""
        if self.db.con is None:
            raise LedgerUnavailable("the ledger is not open")
        run = self.db.transaction if transaction else self.db.outside_transaction
        if self._thread is None:  # during start-up, before the thread runs
            return run(fn)
        future: Future[T] = Future()
        with self.cond:
            if self._finished:
                raise LedgerUnavailable("the ledger is shutting down")
            self._writes.append((functools.partial(run, fn), future))
            self.cond.notify_all()
        return future.result(timeout)

    def _run_writes(self) -> None:
        while self._writes:
            fn, future = self._writes.popleft()
            if self.db.con is None or self.db.broken:
                future.set_exception(LedgerUnavailable("DuckDB is being opened again after "
                                                       "an error; retry later"))
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed back to the caller
                if isinstance(exc, Exception) and fatal(exc):
                    self.db.broken = True
                future.set_exception(exc)

    def sync(self, timeout: float = 30.0) -> int:
        """Wait until every record acknowledged so far is in DuckDB; return that seq."""
        target = self.chain.durable[0]
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.loaded_seq < target:
                if self.chain.failure is not None and self.loaded_seq >= self.chain.durable[0]:
                    break
                self.load_now = True
                self.cond.notify_all()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LedgerUnavailable(
                        f"records up to seq {target} are durable but not yet queryable; "
                        "DuckDB is behind (see the sidecar's log)"
                    )
                self.cond.wait(min(remaining, 0.05))
        return target

    # ── the thread ─────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        try:
            self._load_loop()
        finally:  # writes handed over from now on are refused: nobody would run them
            with self.cond:
                self._finished = True
            self._run_writes()

    def _load_loop(self) -> None:
        interval = self.options.load_interval_s
        next_load = time.monotonic() + interval  # loads begin once an interval, on the beat
        next_squeeze = time.monotonic() + SQUEEZE_INTERVAL_S
        while True:
            with self.cond:
                wait = next_load - time.monotonic()
                if wait > 0 and not (self.load_now or self._writes or self.chain.closing):
                    self.cond.wait(wait)
                now = time.monotonic()
                if now >= next_load:
                    next_load += interval * (1 + (now - next_load) // interval)
                self.load_now = False
                first = self.loaded_seq + 1
                batch, last = self.sources.take(first, self.chain.durable[0])
            if self.db.broken or self.db.con is None:  # also with nothing to load
                with contextlib.suppress(Exception):  # a load retries it, and logs
                    self.db.reopen()
            self._run_writes()
            loading = last >= first
            loaded = not loading or self._load(first, last,
                                               self.sources.build(first, last, batch))
            if not loaded:
                return  # closing and DuckDB refuses: the rest stays in the journal, unskipped
            if not loading and self.chain.closing and self.loaded_seq >= self.chain.durable[0]:
                return
            if time.monotonic() >= next_squeeze:
                next_squeeze = time.monotonic() + SQUEEZE_INTERVAL_S
                self.squeeze()
            with self.cond:
                self.cond.notify_all()

    def squeeze(self) -> bool:
        """(The loader thread.) Database.squeeze, its failure logged, never raised; then
        glibc's heaps trimmed (tabler.trim_heap: DuckDB's own allocator is not glibc's)."""
        try:
            done = self.db.squeeze()
        except Exception as exc:  # DuckDB's: the next load notices a broken database
            if fatal(exc):
                self.db.broken = True
            log.warning("giving back DuckDB's cached blocks failed: %s", exc)
            return False
        self.stats.squeezes += done
        trim_heap()
        return done

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
                if self.db.con is None or self.db.broken:
                    self.db.reopen()
                if attempts and self.db.stored_head() >= last:
                    break  # DuckDB failed after its commit (its automatic checkpoint)
                if table is None:  # built once: building releases records' tensors
                    table = build()
                self.db.store(table)
                break
            except Exception as exc:  # DuckDB's, or a bug: retry, never let the loader die
                attempts += 1
                if fatal(exc):
                    self.db.broken = True
                if attempts == 1:
                    log.exception("loading records %d-%d into DuckDB failed; retrying",
                                  first, last)
                elif attempts % 20 == 0:
                    log.error("loading records %d-%d into DuckDB still fails (%d attempts): %s",
                              first, last, attempts, exc)
                if self.chain.closing and attempts >= 3:
                    return False  # they stay in the journal; the next start loads them
                self._run_writes()  # other writes fail now rather than wait for this one
                if self.chain.closing:
                    time.sleep(0.2)
                else:
                    self.chain.stopping.wait(min(LOAD_RETRY_MAX_S, 0.5 * 2 ** (attempts - 1)))
        self.loaded_seq = last
        self.stats.loads += 1
        self.stats.loaded += last - first + 1
        self.stats.load_seconds += time.perf_counter() - started
        self.stats.last_load_batch = last - first + 1
        with self.space:
            self.space.notify_all()
        return True
