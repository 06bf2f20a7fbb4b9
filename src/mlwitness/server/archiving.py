"""The sidecar's archive: the shipper over its ledger, and local retention of what the
archive holds (`--archive`, `--archive-interval`, `--archive-records`,
`--archive-object-lock-days`, `--local-retention`).

Nothing here stands in the way of serving: the store is opened at start (a malformed URL
or a missing directory stops the start, with a message naming the flag), but not reached;
an unreachable store is the shipper's to retry, and the lag shows in the metrics and the
health detail. Retention runs in a thread, every --archive-interval, and deletes only
records whose segment was read back and matched (archive/retention.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from mlwitness.archive import ArchiveError, ObjectStore, open_store
from mlwitness.audit.results import ArchiveStatus
from mlwitness.errors import ConfigError, MlwitnessError
from mlwitness.ledger.writer import LedgerWriter
from mlwitness.settings import Settings

if TYPE_CHECKING:
    from mlwitness.archive.retention import Pruned

log = logging.getLogger("mlwitness")

DAY_US = 86_400 * 1_000_000
STOP_UPLOAD_S = 20.0  # at shutdown, the upload under way gets this long; the next start resumes


def open_archive(url: str, flag: str = "--archive") -> ObjectStore:
    """The store an --archive URL names; ConfigError naming the flag if it names none."""
    try:
        return open_store(url)
    except (ConfigError, ArchiveError) as exc:
        raise ConfigError(f"{flag}: {exc.message}") from None


class Archiving:
    """The shipper and local retention of one sidecar's ledger."""

    def __init__(self, settings: Settings, ledger: LedgerWriter, store: ObjectStore) -> None:
        assert settings.archive is not None
        # Imported here, once an archive is set: the shipper and retention bring in
        # pyarrow.parquet and its filesystems (~12 MiB of the sidecar's memory), which a
        # sidecar without --archive never uses. The shipper pays its own imports at start.
        from mlwitness.archive.shipper import Shipper, ShipperOptions

        self.settings = settings
        self.ledger = ledger
        self.url = settings.archive
        self.store = store
        self.shipper = Shipper(self.store, ledger.cursor, ledger.chain_id, ShipperOptions(
            interval_s=settings.archive_interval, max_records=settings.archive_records,
            object_lock_days=settings.archive_object_lock_days))
        self.retention_days = settings.local_retention
        self.pruned_seq = 0
        self.retention_error = ""

    def start(self) -> None:
        from mlwitness.archive.retention import archived_prefix

        self._check_object_lock()
        cursor = self.ledger.cursor()
        try:
            self.pruned_seq = archived_prefix(cursor)[0]
        finally:
            cursor.close()
        self.shipper.start()
        log.info("archiving chain %s to %s every %g s or %d records%s%s", self.ledger.chain_id,
                 self.url, self.settings.archive_interval,
                 self.settings.archive_records,
                 f", locked {self.settings.archive_object_lock_days} days"
                 if self.settings.archive_object_lock_days else "",
                 f", local retention {self.retention_days:g} days" if self.retention_days
                 else "")

    def _check_object_lock(self) -> None:
        """With --archive-object-lock-days, a store that cannot lock stops the start; one
        that cannot be asked now (unreachable) is left to fail its uploads visibly."""
        if not self.settings.archive_object_lock_days:
            return
        try:
            supported = self.store.supports_object_lock()
        except ArchiveError as exc:
            log.warning("archive: cannot read whether %s supports Object Lock (%s); uploads "
                        "fail until it does", self.url, exc.message)
            return
        if not supported:
            raise ConfigError(f"--archive-object-lock-days: {self.url} cannot lock objects "
                              "(an S3 bucket created with Object Lock enabled is needed; see "
                              "docs/deployment.md)")

    def stop(self) -> None:
        self.shipper.stop(STOP_UPLOAD_S)

    # ── local retention ────────────────────────────────────────────────────────────────

    async def retain(self) -> None:
        """Every --archive-interval, delete locally what the archive holds and is older
        than --local-retention days. A pass that fails is logged and tried again."""
        while True:
            await asyncio.sleep(self.settings.archive_interval)
            try:
                await asyncio.to_thread(self.prune_once)
            except MlwitnessError as exc:
                if exc.message != self.retention_error:
                    log.warning("local retention: %s (tried again in %g s)", exc.message,
                                self.settings.archive_interval)
                self.retention_error = exc.message

    def prune_once(self) -> Pruned:
        from mlwitness.archive.retention import prune_archived

        older_than = time.time_ns() // 1000 - int(self.retention_days * DAY_US)
        try:
            pruned = prune_archived(self.ledger.write, self.ledger.cursor, self.store,
                                    self.ledger.chain_id, older_than)
        except ArchiveError as exc:
            raise MlwitnessError(f"the archive could not be read back: {exc.message}"
                                 ) from None
        self.pruned_seq = pruned.archived_seq
        self.retention_error = ""
        return pruned

    # ── health ─────────────────────────────────────────────────────────────────────────

    def status(self) -> ArchiveStatus:
        s = self.shipper.status()
        if s.failures:
            state = "failing"
        elif s.archived_seq < 0:
            state = "starting"
        else:
            state = "ok"
        return ArchiveStatus(
            url=self.url, state=state, chain_id=s.chain_id,
            archived_seq=max(s.archived_seq, 0), loaded_seq=s.loaded_seq,
            lag_records=s.lag_records, lag_s=s.lag_seconds, failures=s.failures,
            last_error=s.last_error, segments_shipped=s.segments_shipped,
            last_shipped_us=int(s.last_shipped_at * 1e6) if s.last_shipped_at else 0,
            retention_days=self.retention_days, pruned_seq=self.pruned_seq,
            retention_error=self.retention_error, chains=0)

