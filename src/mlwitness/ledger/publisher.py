"""Publishing checkpoints outside the ledger, to --checkpoint-dir, in a thread of its own.

The directory (another volume, an NFS share, a bucket mount: somewhere the ledger's
writer cannot rewrite) holds:

    DIR/latest                  the newest checkpoint: the stable name to copy or fetch
    DIR/checkpoint              the same bytes, under the name c2sp.org/tlog-tiles gives it
    DIR/checkpoints/<size>      every checkpoint issued (history)
    DIR/tile/<L>/<N>[.p/<W>]    the tree's hashes in c2sp.org/tlog-tiles tiles: tile level
                                0 holds the leaf hashes, level L the subtree hashes of tree
                                level 8·L; a full tile (256 hashes) is written once, a
                                partial one (W hashes) for the newest checkpoint's size

With only this directory and a copy of the ledger, a verifier names the exact first record
that no longer matches (`mlwitness verify --checkpoint DIR`): the tiles give every leaf's
hash, and they are checked against the signed root. There are no entry bundles: a leaf's
data is a record's chain hash, which the ledger holds.

Every file is written to a temporary file, fsynced, renamed over its name, and its
directory fsynced; tiles and history before `latest`, so a reader that finds a checkpoint
finds what it covers. DIR itself must exist: it is never created (an unmounted share would
otherwise be written on the local disk). Before `latest` is replaced, what it holds is
checked: a checkpoint of another log (another origin), of a larger tree, or of a tree this
ledger does not extend is not overwritten — publishing stops, and says why.

Publishing never holds up serving: a round runs in the publisher thread after each new
checkpoint. A round that fails is retried with backoff (1 s doubling to PUBLISH_RETRY_MAX_S),
logged, counted (`failures`, the metric mlwitness_checkpoint_publish_failures_total) and
shown by the audit Status RPC; readiness is not affected. A checkpoint is marked published
(`checkpoints.published_us`) once its files are durable; a start publishes whatever is not.

Which thread runs what: `start`, `close` the owner; `submit` the checkpointer; `_run` and
`_round` the publisher thread ("checkpoint-publisher"). The state fields (`state`,
`last_error`, `failures`, `published_size`, `published_us`) are written by the publisher
thread only and read without a lock (a moment stale at most).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwitness.evidence.note import Checkpoint
from mlwitness.evidence.tiles import TILE_HEIGHT, TILE_WIDTH, tile_path
from mlwitness.ledger import tree
from mlwitness.ledger.checkpoints import CheckpointRow, read_note, unpublished

if TYPE_CHECKING:
    from mlwitness.ledger.writer import LedgerWriter

log = logging.getLogger(__name__)

LATEST = "latest"
TLOG_CHECKPOINT = "checkpoint"
HISTORY = "checkpoints"
PUBLISH_RETRY_MAX_S = 30.0
TILES_PER_READ = 64  # full tiles whose hashes one query reads


class PublishRefused(Exception):
    """What the directory holds must not be overwritten (or there is no directory)."""


class Publisher:
    def __init__(self, directory: Path, ledger: LedgerWriter) -> None:
        self.directory = Path(directory)
        self.ledger = ledger
        # pending (nothing published by this process yet), ok, failing
        self.state = "pending"
        self.last_error = ""
        self.failures = 0  # rounds that failed
        self.published_size = 0
        self.published_us = 0
        self._tiles_size: int | None = None  # tiles are in DIR up to this tree size
        self._made: set[Path] = set()  # directories known to exist
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._wake.set()  # a start publishes whatever is not yet
        self._thread = threading.Thread(target=self._run, name="checkpoint-publisher",
                                        daemon=True)
        self._thread.start()

    def submit(self) -> None:
        """A new checkpoint is stored: publish it (and any earlier one not yet)."""
        self._wake.set()

    def close(self, timeout: float) -> None:
        """One last round (the checkpoint issued at shutdown), given up to `timeout`."""
        if self._thread is None:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("publishing to %s did not finish within %g s at shutdown; the next "
                        "start publishes what is left", self.directory, timeout)
        self._thread = None

    def published(self) -> Checkpoint | None:
        """The checkpoint DIR/latest holds (None: none yet). Raises OSError when DIR cannot
        be read, NoteError or ValueError when `latest` is not a checkpoint."""
        try:
            text = (self.directory / LATEST).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return read_note(text)[0]

    # ── the thread ─────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        retry_in: float | None = None
        streak = 0
        while True:
            self._wake.wait(retry_in)
            self._wake.clear()
            closing = self._closing
            if self._round():
                retry_in, streak = None, 0
            else:
                streak += 1
                retry_in = min(PUBLISH_RETRY_MAX_S, 2.0 ** (streak - 1))
            if closing:
                return

    def _round(self) -> bool:
        """Publish every checkpoint not yet published; whether that worked."""
        try:
            sizes = self._publish()
        except Exception as exc:  # the directory's, DuckDB's, or ours: retried, never fatal
            self.failures += 1
            self.last_error = _describe(exc)
            if self.state != "failing" or self.failures % 20 == 0:
                log.error("publishing checkpoints to %s failed: %s (%d failures so far; "
                          "retrying; serving is not affected)", self.directory,
                          self.last_error, self.failures)
            self.state = "failing"
            return False
        if sizes:
            if self.state == "failing":
                log.warning("publishing checkpoints to %s works again (checkpoint %d)",
                            self.directory, sizes[-1])
            self.state = "ok"
        return True

    def _publish(self) -> list[int]:
        con = self.ledger.cursor()
        try:
            rows = unpublished(con)
            if not rows:
                return []
            newest = rows[-1]
            self._check_directory(con, newest)
            dirs: set[Path] = set()
            self._write_tiles(con, newest.size, dirs)
        finally:
            con.close()
        for row in rows:
            self._write(Path(HISTORY) / str(row.size), row.note.encode(), dirs)
        _sync_dirs(dirs)
        dirs = set()
        for name in (TLOG_CHECKPOINT, LATEST):
            self._write(Path(name), newest.note.encode(), dirs)
        _sync_dirs(dirs)
        now = time.time_ns() // 1000
        sizes = [row.size for row in rows]
        self.ledger.write(lambda c: c.execute(
            "UPDATE checkpoints SET published_us = ? WHERE size IN (SELECT unnest(?))",
            [now, sizes]))
        self.published_size, self.published_us, self.last_error = newest.size, now, ""
        return sizes

    def _check_directory(self, con: Any, newest: CheckpointRow) -> None:
        """Refuse to overwrite what the directory must keep (see the module doc)."""
        if not self.directory.is_dir():
            raise PublishRefused(f"{self.directory} is not a directory (is the volume "
                                 "mounted?); mlwitness does not create it")
        try:
            there = self.published()
        except ValueError as exc:  # NoteError is one
            raise PublishRefused(f"{self.directory / LATEST} is not a checkpoint ({exc}); "
                                 "move it aside if this is the right directory") from None
        ours = read_note(newest.note)[0]
        if there is not None:
            if there.origin != ours.origin:
                raise PublishRefused(f"{self.directory} holds the checkpoints of another log "
                                     f"({there.origin}, not {ours.origin}): give each ledger "
                                     "its own --checkpoint-dir")
            if there.size > newest.size:
                raise PublishRefused(f"{self.directory / LATEST} is of tree size {there.size}"
                                     f", beyond this ledger's {newest.size}: the ledger was "
                                     "truncated or restored from an older copy")
            if tree.root(con, there.size) != there.root:
                raise PublishRefused(f"this ledger's records 1..{there.size} do not give the "
                                     f"root published in {self.directory / LATEST}: they "
                                     "were changed since (a fork); it is not overwritten")
        if self._tiles_size is None:
            self._tiles_size = there.size if there is not None else 0

    def _write_tiles(self, con: Any, size: int, dirs: set[Path]) -> None:
        """The full tiles completed since the last round, and the partial tiles of `size`."""
        old = self._tiles_size or 0
        level = 0
        while size >> (TILE_HEIGHT * level):
            count, before = size >> (TILE_HEIGHT * level), old >> (TILE_HEIGHT * level)
            full, first = count // TILE_WIDTH, before // TILE_WIDTH
            for start in range(first, full, TILES_PER_READ):
                stop = min(full, start + TILES_PER_READ)
                hashes = _hashes(con, level, start * TILE_WIDTH, stop * TILE_WIDTH - 1)
                for n in range(start, stop):
                    at = (n - start) * TILE_WIDTH
                    self._write_tile(level, n, hashes[at:at + TILE_WIDTH], dirs)
            width = count % TILE_WIDTH
            if width:
                at = full * TILE_WIDTH
                self._write_tile(level, full, _hashes(con, level, at, at + width - 1), dirs)
            level += 1
        self._tiles_size = size

    def _write_tile(self, level: int, index: int, hashes: list[bytes], dirs: set[Path]
                    ) -> None:
        name = Path(tile_path(level, index, len(hashes)))
        data = b"".join(hashes)
        with contextlib.suppress(FileNotFoundError):
            if (self.directory / name).read_bytes() == data:
                return
            # A tile's name fixes the leaves it covers: other bytes are another tree's
            raise PublishRefused(f"{self.directory / name} holds other hashes than this "
                                 "ledger's tree (a fork); it is not overwritten")
        self._write(name, data, dirs)

    def _write(self, name: Path, data: bytes, dirs: set[Path]) -> None:
        """Write DIR/name whole or not at all: a temporary file, fsync, rename."""
        path = self.directory / name
        parent = path.parent
        if parent not in self._made:
            parent.mkdir(parents=True, exist_ok=True)
            self._made.add(parent)
        temporary = parent / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        dirs.add(parent)


def _hashes(con: Any, tile_level: int, first: int, last: int) -> list[bytes]:
    """Hashes first..last of tree level 8·tile_level: leaf hashes, or stored nodes."""
    if tile_level == 0:
        return tree.leaf_hashes(con, first + 1, last + 1)
    return tree.stored_nodes(con, TILE_HEIGHT * tile_level, first, last)


def _sync_dirs(dirs: set[Path]) -> None:
    for directory in sorted(dirs):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__
