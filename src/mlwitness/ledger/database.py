"""The ledger writer's read-write DuckDB connection: rows in (with their decoded columns
left out where DuckDB refuses only those), other writes in a transaction of their own,
opened again after a fatal error, cursors for readers, the checkpoint at close, the file
rewritten after an erasure (`compact`).

Which thread runs what: the owner's (LedgerWriter.open, close) before the loader thread
starts and after it has ended; in between only the loader thread uses the connection
(`store`, `insert`, `transaction`, `stored_head`, `reopen`, `compact`). `cursor` is for any
thread.

Shared fields:
  con, read_root  written by the owner, or by the loader thread in `reopen` and `compact`,
                  under `read_lock`; `cursor` (any thread) reads read_root under it.
                  Nothing else is taken, nor anything waited for, while holding read_lock
                  (but `_count_lock`, and `squeeze`'s two SET statements).
  broken          the loader thread's (DuckDB invalidated its database: open it again)
  _readers        cursors handed out and not yet collected: `cursor` counts one up, a
                  cursor's finalizer (any thread, whenever it is collected) counts it down,
                  under `_count_lock` (reentrant: a finalizer may run in a thread that holds
                  it). `squeeze` reads it under read_lock, so no cursor is made meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa

from mlwitness.errors import LedgerUnavailable
from mlwitness.ledger import schema
from mlwitness.ledger.journal import scrub
from mlwitness.ledger.rows import without_decoded

if TYPE_CHECKING:
    from mlwitness.ledger.writer import WriterStats

log = logging.getLogger(__name__)
T = TypeVar("T")

# Insert probes spent finding the records whose decoded columns DuckDB refuses in a failed
# load (bisecting it); records still unresolved then go in without their decoded columns.
SALVAGE_PROBES = 64
# What `squeeze` lowers DuckDB's memory limit to for a moment, so that it evicts its cache.
SQUEEZE_BYTES = 16 << 20


class Database:
    def __init__(self, path: Path, threads: int, stats: WriterStats, *,
                 memory_bytes: int = 0) -> None:
        self.path = path
        self.threads = threads  # DuckDB worker threads (SET threads); 0: DuckDB's default
        self.memory_bytes = memory_bytes  # SET memory_limit; 0: DuckDB's default
        self.stats = stats
        self.con: duckdb.DuckDBPyConnection | None = None
        self.read_root: duckdb.DuckDBPyConnection | None = None
        self.read_lock = threading.Lock()
        self.broken = False
        self._readers = 0
        self._count_lock = threading.RLock()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = schema.connect(self.path)
        if self.threads > 0:
            con.execute(f"SET threads = {int(self.threads)}")
        if self.memory_bytes > 0:
            _set_limit(con, self.memory_bytes)
        return con

    def open(self) -> duckdb.DuckDBPyConnection:
        """(Owner.) Connect; readers are let in by `admit_readers`."""
        self.clear_leftovers()
        self.con = self._connect()
        return self.con

    def abandon(self) -> None:
        """(Owner.) Close a connection whose start failed (e.g. on a full disk): nothing
        stays open for a later attempt."""
        con, self.con = self.con, None
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.close()

    def admit_readers(self) -> None:
        assert self.con is not None
        if self.read_root is None:
            self.read_root = self.con.cursor()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new read cursor on the ledger, for one thread's use."""
        with self.read_lock:  # `reopen` (the loader) may be replacing it
            if self.read_root is None:
                raise LedgerUnavailable("the ledger is not open")
            cursor = self.read_root.cursor()
            with self._count_lock:
                self._readers += 1
        weakref.finalize(cursor, self._reader_gone)
        return cursor

    def _reader_gone(self) -> None:
        with self._count_lock:
            self._readers -= 1

    def squeeze(self) -> bool:
        """(Loader.) Have DuckDB give back the blocks it keeps cached, by lowering its
        memory limit to SQUEEZE_BYTES for a moment: unpinned blocks are evicted and their
        memory freed, and the limit is set back at once. Only while no reader holds a
        cursor (none is made meanwhile): a query running then would get the lower limit,
        and one that cannot spill would fail. False when it was not done."""
        if self.memory_bytes <= SQUEEZE_BYTES or self.con is None or self.broken:
            return False
        with self.read_lock:
            with self._count_lock:
                if self._readers:
                    return False
            try:
                _set_limit(self.con, SQUEEZE_BYTES)
            except duckdb.Error:  # more is pinned than that: it evicted what it could
                pass
            finally:
                self._restore_limit()
        return True

    def _restore_limit(self) -> None:
        assert self.con is not None
        for _ in range(3):
            try:
                _set_limit(self.con, self.memory_bytes)
                return
            except duckdb.Error as exc:
                problem = exc
        # Never leave the lower limit in force: opened again, DuckDB gets the right one.
        log.error("could not set DuckDB's memory limit back (%s); opening it again", problem)
        self.broken = True

    def reopen(self) -> None:
        """Open DuckDB again. After a fatal error (a checkpoint that failed, e.g. on a full
        disk) it refuses every statement until then; opening replays its WAL, so nothing
        committed is lost. Readers' cursors of the old connection fail; new ones work."""
        with self.read_lock:
            old, root = self.con, self.read_root
            self.con = self.read_root = None
        for handle in (root, old):
            if handle is not None:
                with contextlib.suppress(duckdb.Error):
                    handle.close()
        con = self._connect()
        with self.read_lock:
            self.con, self.read_root = con, con.cursor()
        self.broken = False
        log.warning("the DuckDB ledger was opened again after a fatal error; loads resume")

    def store(self, table: pa.Table) -> None:
        """Insert rows. Should DuckDB refuse them for their decoded columns alone (the
        record fields go in without them), the records it refuses go in without theirs."""
        try:
            self.insert(table)
        except duckdb.Error as exc:
            if fatal(exc) or not self._fits(without_decoded(table)):
                raise  # the records themselves do not go in: not their derived data
            refused: list[int] = []
            self._bisect(table, 0, refused, [SALVAGE_PROBES])
            self.insert(without_decoded(table, refused))
            seqs = table.column("seq").take(refused).to_pylist()
            note_undecoded(self.stats, seqs, f"DuckDB refused their decoded columns ({exc})")

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
        assert self.con is not None
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.insert(table)
            return True
        except duckdb.Error as exc:
            if fatal(exc):
                raise
            return False
        finally:
            self.con.execute("ROLLBACK")

    def insert(self, table: pa.Table) -> None:
        """Insert rows into DuckDB in one statement (DuckDB's own work runs without the
        GIL). Every row of the ledger goes in here (tests inject DuckDB's faults here)."""
        assert self.con is not None
        con = self.con
        con.register("_ledger_batch", table)
        try:
            con.execute("INSERT INTO entries BY NAME SELECT * FROM _ledger_batch")
        finally:
            con.unregister("_ledger_batch")

    def stored_head(self) -> int:
        assert self.con is not None
        (head,) = self.con.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchall()[0]
        return int(head)

    def transaction(self, fn: Callable[[Any], T]) -> T:
        assert self.con is not None
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            result = fn(con)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return result

    def outside_transaction(self, fn: Callable[[Any], T]) -> T:
        assert self.con is not None
        return fn(self.con)

    def compact(self) -> int:
        """(The loader thread, or the owner at start.) Rewrite the ledger file without the
        blocks nothing uses any more, and overwrite the old file: what an erasure removed
        is then gone from the disk's copy (where the file system writes in place). Returns
        the old file's size.

        DuckDB does not overwrite data it no longer needs: a checkpoint after an UPDATE
        writes the new column segments to other blocks and leaves the old ones as they
        were, free or (in a block it shares with live segments) in use, until reused; its
        VACUUM reclaims nothing. So the file is copied (COPY FROM DATABASE, as DuckDB's
        "Reclaiming space" advises) to a new one, which takes the old one's name; the old
        one, kept by a second link until then, is overwritten with zeros and deleted. Loads
        wait meanwhile (the journal keeps acknowledging), and readers' cursors of the old
        connection fail; new ones read the new file. A crash at any point leaves the old
        file or the new one in place, whole, and the next start scrubs what is left."""
        assert self.con is not None
        self.checkpoint()
        spare, old_copy = self._spare_paths()
        for leftover in (spare, spare.with_name(spare.name + ".wal")):
            leftover.unlink(missing_ok=True)
        (catalog,) = self.con.execute("SELECT current_database()").fetchone() or ("",)
        self.con.execute("ATTACH ? AS mlwitness_compact", [str(spare)])
        try:
            self.con.execute(f'COPY FROM DATABASE "{catalog}" TO mlwitness_compact')
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("DETACH mlwitness_compact")
            spare.unlink(missing_ok=True)
            raise
        self.con.execute("DETACH mlwitness_compact")
        size = self.path.stat().st_size
        with self.read_lock:
            old, root = self.con, self.read_root
            self.con = self.read_root = None
        for handle in (root, old):
            if handle is not None:
                with contextlib.suppress(duckdb.Error):
                    handle.close()
        try:
            if self.path.with_name(self.path.name + ".wal").exists():
                raise OSError("the ledger's WAL is not empty after its checkpoint")
            old_copy.unlink(missing_ok=True)
            try:
                os.link(self.path, old_copy)
            except OSError as exc:  # a file system without hard links: deleted, not zeroed
                log.warning("cannot keep the old ledger file to overwrite it (%s); it is "
                            "deleted without being overwritten", exc.strerror or exc)
            os.replace(spare, self.path)
            _sync_directory(self.path.parent)
        except OSError as exc:
            log.error("could not put the compacted ledger file in place (%s); the ledger "
                      "goes on in the old one", exc)
            spare.unlink(missing_ok=True)
            old_copy.unlink(missing_ok=True)
            self._reconnect()
            raise
        self._reconnect()
        scrub(old_copy)
        return size

    def _spare_paths(self) -> tuple[Path, Path]:
        """Where a compaction writes the new file, and where it keeps the old one."""
        return (self.path.with_name(self.path.name + ".compacting"),
                self.path.with_name(self.path.name + ".erased"))

    def clear_leftovers(self) -> None:
        """(Owner, at open.) What a compaction a crash interrupted left beside the ledger:
        a new file not yet in place (deleted), the old file not yet overwritten (scrubbed)."""
        spare, old_copy = self._spare_paths()
        for leftover in (spare, spare.with_name(spare.name + ".wal")):
            if leftover.exists():
                try:
                    leftover.unlink()
                except OSError as exc:  # it stays; the next compaction removes it first
                    log.warning("cannot delete %s (%s)", leftover, exc.strerror or exc)
        if old_copy.exists():
            log.warning("overwriting %s, the ledger file a compaction replaced before the "
                        "last stop", old_copy)
            scrub(old_copy)

    def _reconnect(self) -> None:
        con = self._connect()
        with self.read_lock:
            self.con, self.read_root = con, con.cursor()

    def checkpoint(self, attempts: int = 40) -> None:
        """CHECKPOINT at close. A thread that outlived its cancelled task (a drift metric or
        an audit question still reading) can hold the connection for a moment; DuckDB then
        refuses ("connection is busy") instead of waiting, so wait here (≤ 2 s)."""
        assert self.con is not None
        for attempt in range(attempts):
            try:
                self.con.execute("CHECKPOINT")
                return
            except duckdb.Error as exc:
                if "busy" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        """(Owner, once the loader has ended.) Readers are refused from now on."""
        with self.read_lock:
            root, self.read_root = self.read_root, None
        if root is not None:  # closing it closes the cursors readers still hold
            with contextlib.suppress(duckdb.Error):
                root.close()
        if self.con is not None:
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            self.con = None


def fatal(exc: Exception) -> bool:
    """DuckDB invalidated its database (after a failed checkpoint, e.g. on a full disk):
    every statement fails until it is opened again."""
    return isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc)


def note_undecoded(stats: WriterStats, seqs: list[int], why: str) -> None:
    """Count and log records loaded without their decoded columns."""
    stats.undecoded += len(seqs)
    shown = ", ".join(map(str, seqs[:5])) + (", ..." if len(seqs) > 5 else "")
    log.warning("%d record(s) (seq %s) are loaded without decoded columns (inputs, outputs, "
                "parameters); their request and response bytes are stored whole. Seq "
                "%d: %s", len(seqs), shown, seqs[0], why)


def _sync_directory(directory: Path) -> None:
    """fsync a directory: a rename in it is durable once this returns."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _set_limit(con: duckdb.DuckDBPyConnection, size: int) -> None:
    con.execute(f"SET memory_limit = '{int(size)}B'")
