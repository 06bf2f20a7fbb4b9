"""The shipper: a thread that seals the records loaded since the last segment and uploads
them, never in the way of serving.

* **Reads only.** It reads the ledger through its own DuckDB cursor (from the callable it
  is given: the writer's `cursor`, or a read-only connection to a stopped ledger) and
  never writes it; querying, compressing and uploading run in its thread with the GIL
  released. The thread keeps the process's CPU priority: a thread niced below the event
  loop's holds the GIL now and then, and on a busy CPU it is descheduled holding it, which
  stalls every call (a priority inversion measured as p99 +5 ms at c=8).
* **When.** Every `interval_s` while records arrived, and at once when `max_records` are
  waiting; a segment holds at most `max_records` records and about `max_bytes` of request,
  response and detail bytes, so catching up after an outage ships several segments in a row.
* **No gap, no duplicate, after any crash.** Where shipping stands is read from the store,
  not remembered: the chain's newest manifest (found from the `chains/<id>.json` hint, then
  probing forward) says the last archived seq, and that record's hash must be the local
  ledger's (else the archive belongs to another history and nothing is shipped). Object
  names are fixed by the records they hold, and every object is created only if absent. A
  Parquet object without its manifest, left by a crash between the two uploads, is found
  at the next segment's place (`segments.orphan_prefix`) and completed, with the same range:
  never a second, overlapping segment.
* **Outages.** Any failure (store unreachable, refused, DuckDB busy) is kept as
  `last_error`, logged once per kind, and retried with exponential backoff and jitter from
  `retry_min_s` up to `retry_max_s`; nothing escapes the thread. `status()` gives the lag
  for a gauge and the health detail.
* **Object Lock.** With `object_lock_days`, every object is written with COMPLIANCE
  retention until that many days from its upload, and the content-addressed objects a new
  segment relies on have theirs extended to match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mlwitness.archive import segments
from mlwitness.archive.segments import Manifest, Segment
from mlwitness.archive.store import ArchiveConflict, NotFound, ObjectStore
from mlwitness.errors import DataLoss, MlwitnessError
from mlwitness.ledger.record import genesis_hash
from mlwitness.ledger.verify import ARCHIVED_HASH, ARCHIVED_SEQ

log = logging.getLogger(__name__)

RETENTION_SLACK = timedelta(days=1)  # retention extended only when this much is missing


@dataclass(frozen=True)
class ShipperOptions:
    interval_s: float = 60.0
    max_records: int = 100_000
    max_bytes: int = 256 << 20  # request + response + detail bytes in one segment, about
    poll_s: float = 1.0  # how often the thread looks at the ledger's last loaded seq
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    object_lock_days: int = 0  # 0: no retention

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and self.poll_s > 0 and 0 < self.retry_min_s
                <= self.retry_max_s):
            raise ValueError("archive intervals must be positive, retry_min_s <= retry_max_s")
        if self.max_records < 1 or self.max_bytes < 1 or self.object_lock_days < 0:
            raise ValueError("max_records and max_bytes must be positive, "
                             "object_lock_days not negative")


@dataclass(frozen=True)
class ShipperStatus:
    """For the archive-lag gauge and health detail. `archived_seq` is -1 until the store
    has been read once; `lag_seconds` is the age of the oldest record not yet archived."""

    chain_id: str
    archived_seq: int
    archived_hash: str
    loaded_seq: int
    lag_records: int
    lag_seconds: float
    last_error: str
    failures: int  # consecutive failed attempts
    segments_shipped: int  # by this shipper since it started
    last_shipped_at: float | None  # time.time()
    records_shipped: int = 0  # by this shipper since it started
    cpu_seconds: float = 0.0  # the shipper thread's CPU time looking at the ledger, sealing
    # and uploading (DuckDB runs its queries in the calling thread at --duckdb-threads 1)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Shipper:
    """Ships the ledger that `cursor()` reads, chain `chain_id`, to `store`."""

    def __init__(self, store: ObjectStore, cursor: Callable[[], duckdb.DuckDBPyConnection],
                 chain_id: str, options: ShipperOptions | None = None) -> None:
        self.store = store
        self.chain_id = segments.check_chain(chain_id)
        self.options = options or ShipperOptions()
        self._cursor = cursor
        self._con: duckdb.DuckDBPyConnection | None = None
        self._position: tuple[int, str] | None = None  # (archived seq, hash), from the store
        self._lock = threading.Lock()  # one shipping pass at a time
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._uploaded: set[str] = set()  # content keys known to be stored
        self._catalogue = segments.Catalogue()
        self._loaded = 0
        self._oldest_pending_us = 0
        self._last_error = ""
        self._failures = 0
        self._shipped = 0
        self._records = 0
        self._cpu = 0.0
        self._last_shipped_at: float | None = None

    # ── lifecycle ──────────────────────────────────────────────────────────────────────

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="archive-shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the upload under way, if any (waiting at most `timeout`; what is left
        is shipped by the next start)."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the archive shipper is still uploading after %.0f s; leaving it",
                            timeout)
        if self._records:
            log.info("archive: shipped %d records in %d segments, %.3f s of CPU (%.1f µs a "
                     "record)", self._records, self._shipped, self._cpu,
                     1e6 * self._cpu / self._records)

    def nudge(self) -> None:
        """Ship what is loaded now, without waiting for the interval."""
        self._wake.set()

    def status(self) -> ShipperStatus:
        archived, digest = self._position or (-1, "")
        lag_records = max(0, self._loaded - max(archived, 0))
        lag_s = 0.0
        # The oldest pending record's time is read after each segment; read between a
        # segment's upload and that, it is the time of a record now archived: no lag then.
        if self._oldest_pending_us and lag_records:
            lag_s = max(0.0, time.time() - self._oldest_pending_us / 1e6)
        return ShipperStatus(
            chain_id=self.chain_id, archived_seq=archived, archived_hash=digest,
            loaded_seq=self._loaded, lag_records=lag_records,
            lag_seconds=lag_s, last_error=self._last_error, failures=self._failures,
            segments_shipped=self._shipped, last_shipped_at=self._last_shipped_at,
            records_shipped=self._records, cpu_seconds=self._cpu)

    # ── shipping ───────────────────────────────────────────────────────────────────────

    def ship_pending(self) -> int:
        """Ship every record loaded now, in as many segments as that takes; the number of
        records shipped. Raises what the store or the ledger raised (the thread retries;
        a command line says it)."""
        with self._lock, self._counting_cpu():
            try:
                return self._ship_all()
            except BaseException:
                self._position = None  # read it from the store again next time
                self._con = None
                raise

    def _run(self) -> None:
        try:
            segments.warm(self._connection())
        except Exception as exc:  # noqa: BLE001 - the first pass meets it again and retries
            log.debug("archive: warming up failed: %s", exc)
            self._con = None
        next_due = 0.0  # at start, catch up at once
        while not self._stopping.is_set():
            delay = self.options.poll_s
            try:
                with self._lock, self._counting_cpu():
                    due = self._wake.is_set() or time.monotonic() >= next_due
                    self._wake.clear()
                    if due or self._pending() >= self.options.max_records:
                        self._ship_all()
                        next_due = time.monotonic() + self.options.interval_s
                self._succeeded()
            except Exception as exc:  # kept and retried: nothing escapes the thread
                self._position = None
                self._con = None
                delay = self._failed(exc)
            self._wake.wait(delay)

    def _ship_all(self) -> int:
        con = self._connection()
        if self._position is None:
            self._position = self._resume(con)
        shipped = 0
        while not self._stopping.is_set():
            self._look(con)
            if self._loaded <= self._position[0]:
                break
            records = self._ship_next(con)
            if not records:
                break  # waiting for the ledger to load what a cut-short upload holds
            shipped += records
        self._look(con)
        return shipped

    @contextlib.contextmanager
    def _counting_cpu(self) -> Iterator[None]:
        """Add this thread's CPU time in the block to `cpu_seconds`: looking at the ledger,
        sealing, uploading (DuckDB runs the queries in this thread at --duckdb-threads 1)."""
        started = time.thread_time()
        try:
            yield
        finally:
            self._cpu += time.thread_time() - started

    def _pending(self) -> int:
        if self._position is None:
            return self.options.max_records  # unknown: look at the store
        self._look(self._connection())
        return self._loaded - self._position[0]

    def _look(self, con: duckdb.DuckDBPyConnection) -> None:
        """The last loaded seq, and the receipt time of the oldest record not archived."""
        row = _one(con, "SELECT max(seq) FROM entries")
        self._loaded = int(row[0]) if row and row[0] is not None else 0
        archived = self._position[0] if self._position else self._loaded
        self._oldest_pending_us = 0
        if self._loaded > archived:
            found = _one(con, "SELECT received_us FROM entries WHERE seq = ?",
                                [archived + 1])
            self._oldest_pending_us = int(found[0]) if found else 0

    def _ship_next(self, con: duckdb.DuckDBPyConnection) -> int:
        assert self._position is not None
        first = self._position[0] + 1
        found = _one(con, "SELECT received_us, prev_hash FROM entries WHERE seq = ?",
                            [first])
        if found is None:
            raise DataLoss(f"chain {self.chain_id}: record {first} is neither archived nor in "
                           "the local ledger")
        if bytes(found[1]).hex() != self._position[1]:
            raise DataLoss(f"chain {self.chain_id}: the local record {first} does not follow "
                           f"the archived record {first - 1} (prev_hash differs): the archive "
                           "holds another history of this chain")
        last = self._cut_short(first, int(found[0])) or self._range_end(con, first)
        if last > self._loaded:
            log.info("archive: records up to %d are not loaded yet; the upload cut short "
                     "earlier is completed once they are", last)
            return 0
        segment = segments.seal(con, self.chain_id, first, last,
                                created_us=time.time_ns() // 1000, catalogue=self._catalogue)
        self._upload(con, segment)
        manifest = segment.manifest
        self._succeeded()  # before the position moves: who sees it archived sees no failure
        self._position = (manifest.last_seq, manifest.last_hash)
        self._shipped += 1
        self._records += manifest.records
        self._last_shipped_at = time.time()
        return manifest.records

    def _range_end(self, con: duckdb.DuckDBPyConnection, first: int) -> int:
        """The last seq of the next segment: up to what is loaded, at most max_records
        records and, beyond its first record, about max_bytes of payload."""
        last = min(self._loaded, first + self.options.max_records - 1)
        total = _one(con, "SELECT sum(octet_length(request) + octet_length(response) + "
                          "strlen(detail)) FROM entries WHERE seq BETWEEN ? AND ?", [first, last])
        if total is None or total[0] is None or total[0] <= self.options.max_bytes:
            return last  # the common case, without the window below
        row = _one(con,
            "SELECT max(seq) FROM (SELECT seq, sum(octet_length(request) + "
            "octet_length(response) + strlen(detail)) OVER (ORDER BY seq) AS size "
            "FROM entries WHERE seq BETWEEN ? AND ?) WHERE size <= ?",
            [first, last, self.options.max_bytes])
        return max(first, int(row[0])) if row and row[0] is not None else first

    def _cut_short(self, first: int, first_received_us: int) -> int | None:
        """The last seq of a segment starting at `first` whose Parquet object a crash left
        without its manifest, if there is one: it is completed with the same range."""
        prefix = segments.orphan_prefix(self.chain_id, first, first_received_us)
        for info in self.store.list(prefix):
            bounds = segments.parse_segment_name(info.key)
            if bounds is not None and bounds[0] == first:
                log.info("archive: completing the upload of %s, cut short earlier", info.key)
                return bounds[1]
        return None

    def _upload(self, con: duckdb.DuckDBPyConnection, segment: Segment) -> None:
        """Content first, then the Parquet object, then the manifest (the commit point),
        then the hint."""
        until = self._retain_until()
        for item in segment.content:
            self._put_content(con, item, until)
        manifest = segment.manifest
        try:
            self.store.put(manifest.parquet_key, segment.parquet, if_absent=True,
                           retain_until=until)
        except ArchiveConflict:
            manifest = self._adopt(segment)
        self.store.put(manifest.key, manifest.to_bytes(), if_absent=True, retain_until=until)
        self.store.put(segments.hint_key(self.chain_id), _hint(manifest))

    def _adopt(self, segment: Segment) -> Manifest:
        """A Parquet object of this range is stored with other bytes (written by another
        version of the libraries): take it as it is if it holds the very records (seqs and
        hashes) of the ledger; refuse otherwise."""
        ours = segment.manifest
        stored = self.store.get(ours.parquet_key)
        columns = ["seq", "hash", segments.CHAIN_COLUMN]
        table = pq.read_table(pa.BufferReader(stored), columns=columns)
        mine = pq.read_table(pa.BufferReader(segment.parquet), columns=columns)
        if not table.equals(mine):
            raise ArchiveConflict(
                f"{self.store.url(ours.parquet_key)} holds other records than the ledger's "
                f"{ours.first_seq}..{ours.last_seq} of chain {self.chain_id}; not overwritten",
                ours.parquet_key)
        log.info("archive: %s was stored by another writer with the same records; kept",
                 ours.parquet_key)
        return dataclasses.replace(ours, parquet_sha256=hashlib.sha256(stored).hexdigest(),
                        parquet_bytes=len(stored))

    def _put_content(self, con: duckdb.DuckDBPyConnection, item: segments.Content,
                     until: datetime | None) -> None:
        if item.key in self._uploaded and until is None:
            return
        info = self.store.head(item.key)
        if info is None or (until is not None and (
                info.retain_until is None or info.retain_until < until - RETENTION_SLACK)):
            self.store.put(item.key, segments.content_bytes(con, item), if_absent=True,
                           retain_until=until)
        elif info.sha256 is not None and info.sha256 != item.id:
            raise ArchiveConflict(f"{self.store.url(item.key)} holds bytes that are not its "
                                  "name's SHA-256", item.key)
        self._uploaded.add(item.key)

    def _retain_until(self) -> datetime | None:
        days = self.options.object_lock_days
        return datetime.now(UTC) + timedelta(days=days) if days else None

    # ── where shipping stands ──────────────────────────────────────────────────────────

    def _resume(self, con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
        """(last archived seq, its hash) from the store, checked against the ledger."""
        manifest = newest_manifest(self.store, self.chain_id)
        if manifest is None:
            return 0, genesis_hash(self.chain_id).hex()
        seq, digest = manifest.head
        row = _one(con, "SELECT hash FROM entries WHERE seq = ?", [seq])
        local = bytes(row[0]).hex() if row else None
        if row is None:
            meta = dict(con.execute("SELECT key, value FROM ledger_meta WHERE key IN (?, ?)",
                                    [ARCHIVED_SEQ, ARCHIVED_HASH]).fetchall())
            if int(meta.get(ARCHIVED_SEQ, 0)) < seq:
                raise DataLoss(f"chain {self.chain_id}: the archive reaches record {seq}, "
                               "which the local ledger does not hold")
            if int(meta[ARCHIVED_SEQ]) == seq:
                local = meta.get(ARCHIVED_HASH)
        if local is not None and local != digest:
            raise DataLoss(f"chain {self.chain_id}: archived record {seq} ({manifest.key}) "
                           "has another hash than the local ledger's: the archive holds "
                           "another history of this chain; nothing is shipped")
        log.info("archive: chain %s is archived up to record %d", self.chain_id, seq)
        return seq, digest

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = self._cursor()
        return self._con

    def _succeeded(self) -> None:
        if self._failures:
            log.warning("archive: shipping works again after %d failed attempts",
                        self._failures)
        self._failures, self._last_error = 0, ""

    def _failed(self, exc: Exception) -> float:
        message = exc.message if isinstance(exc, MlwitnessError) else f"{type(exc).__name__}: {exc}"
        if message != self._last_error:
            log.warning("archive: shipping failed (retrying with backoff): %s", message)
        self._last_error = message
        self._failures += 1
        ceiling = min(self.options.retry_max_s,
                      self.options.retry_min_s * 2 ** min(self._failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)


def newest_manifest(store: ObjectStore, chain_id: str) -> Manifest | None:
    """The chain's manifest with the highest seqs: from the hint, then probing forward for
    any written after it; by listing the chain's manifests when the hint is missing or
    names one that is gone."""
    manifest = None
    hinted = _hinted_key(store, chain_id)
    if hinted is not None:
        with contextlib.suppress(NotFound):
            manifest = Manifest.from_bytes(store.get(hinted), hinted)
    if manifest is None:
        keys = [info.key for info in store.list(segments.manifest_prefix(chain_id))
                if segments.parse_manifest_key(info.key)]
        if not keys:
            return None
        manifest = Manifest.from_bytes(store.get(keys[-1]), keys[-1])
    while True:
        prefix = f"{segments.manifest_prefix(chain_id)}seg-{manifest.last_seq + 1:020d}-"
        later = [info.key for info in store.list(prefix) if segments.parse_manifest_key(info.key)]
        if not later:
            return manifest
        manifest = Manifest.from_bytes(store.get(later[-1]), later[-1])


def _hinted_key(store: ObjectStore, chain_id: str) -> str | None:
    try:
        data = json.loads(store.get(segments.hint_key(chain_id)))
    except (NotFound, ValueError):
        return None
    key = data.get("manifest") if isinstance(data, dict) else None
    parsed = segments.parse_manifest_key(key) if isinstance(key, str) else None
    return key if parsed is not None and parsed[0] == chain_id else None


def _hint(manifest: Manifest) -> bytes:
    return json.dumps({"chain_id": manifest.chain_id, "manifest": manifest.key,
                       "last_seq": manifest.last_seq, "last_hash": manifest.last_hash},
                      sort_keys=True).encode()


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
         ) -> tuple | None:
    """The first row of a query, or None (reading all of it: DuckDB refuses the next
    statement on a connection whose result was not read to the end)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None
