"""The append-only journal: the ledger's commit point.

A record is acknowledged once its frame is written (and, in `fsync` durability, flushed
with fdatasync) here; the DuckDB loader copies journal records into the ledger behind it,
and segments whose records are all in DuckDB are deleted. On start-up the writer replays
whatever the journal holds beyond DuckDB's last record.

Segment files are named after the first seq they hold (`00000000000000000042.wal`):

    b"MLWJRNL2" ‖ durability ‖ frame ‖ frame ‖ … ‖ zeros to the end of the file

    frame = "MLWF" ‖ u32 payload length ‖ u32 CRC-32 of the rest ‖ u64 batch seq
            ‖ prev_hash ‖ hash ‖ payload

with `payload` the record's stored encoding (record.py: for a format-2 record its salt and
payload, from which the bytes its hash covers are derived; a format-1 record's, as a
journal a previous version left behind holds them, are those bytes) and `batch seq` the
first seq of the group commit the frame was written in (one write, one fdatasync).
`durability` is one byte: F when every batch was fdatasync'ed before it was acknowledged,
W for `--durability write`. A new segment's header is flushed before any frame goes into
it. A loaded segment that held payloads since erased is overwritten with zeros before it
is deleted (`seal`, `take_scrubbed`, `scrub`).

**Zeros ahead.** The writer extends a segment with zeros a megabyte (EXTEND_BYTES) at a
time, ahead of its frames, so most batches overwrite blocks the file already has. Their
fdatasync then writes the data alone: no block allocation and no new file size to commit
through the file system's journal. On ext4 here that cut fdatasync from 55 to 44 µs idle,
and the journal's flush time at 8 concurrent callers by about a quarter.

**Where a segment ends.** The first place that does not hold a sound frame is the end when
only zeros follow it. A crash before a batch's fdatasync finished may leave that batch
torn, and after a power cut its blocks may be on disk in any order: some of its frames
whole, some zero, some garbage, in any pattern. So in the last segment, non-zero bytes
after the first unsound frame are accepted as a torn tail, and truncated, only when every
sound frame among them belongs to that same last batch (its batch seq). An unsound frame
followed by any frame of a later batch is damage to records that were acknowledged: it is
reported as DataLoss, never skipped, as is any damage in an earlier segment (each was
flushed whole before the next began). As in any write-ahead log, damage confined to the
very last batch looks the same as a torn write and is dropped with it. (The scan looks for
the frame magic in the torn bytes, which hold callers' payloads: one that carried a whole,
CRC-sound frame of a later batch would be reported as DataLoss, never silently skipped.)
A W segment was
never flushed batch by batch, so after a power cut any number of its last batches may be
torn: it ends at its first unsound frame, with a warning for what follows (the trade
`--durability write` documents).

**When the disk fails.** A write that fails (a full disk: ENOSPC) leaves the journal as it
was before the batch: the writer cuts the batch back out, and a later `reserve` tells when
writing can go on. A flush (fsync, fdatasync) that fails raises FlushFailed, and then what
reached the disk is unknown: Linux may have dropped the pages it could not write and marked
them clean, so a later flush that succeeds proves nothing (PostgreSQL's "fsyncgate", 2018,
after which it treats a failed fsync as fatal). The writer then never writes the journal
again in that process; a restart reads back what is really on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlwitness.errors import DataLoss
from mlwitness.ledger.record import HASH_SIZE, Record, decode

log = logging.getLogger(__name__)

HEADER = b"MLWJRNL2"
SYNCED, UNSYNCED = b"F", b"W"  # the header's durability byte
HEADER_SIZE = len(HEADER) + 1
MAGIC = b"MLWF"
_FRAME = struct.Struct(">4sIIq")  # magic, payload length, CRC-32, batch seq
_SIZES = struct.Struct(">II")
_BATCH = struct.Struct(">q")
_PAYLOAD_SEQ = struct.Struct(">xq")  # a payload's format version, then its seq (record.py)
_HASHES = 2 * HASH_SIZE
SUFFIX = ".wal"
ERASING = ".erasing"  # a loaded segment that held erased payloads, being overwritten
EXTEND_BYTES = 1 << 20


class FlushFailed(OSError):
    """fsync or fdatasync of the journal failed: what reached the disk is unknown."""


class FileCalls(Protocol):
    """The operating-system calls the journal writes with: the `os` module, or in a test a
    wrapper that makes one of them fail (a full disk, a failing flush)."""

    def open(self, path: Any, flags: int, mode: int = ...) -> int: ...
    def close(self, fd: int) -> None: ...
    def pwrite(self, fd: int, data: Any, offset: int) -> int: ...
    def fdatasync(self, fd: int) -> None: ...
    def fsync(self, fd: int) -> None: ...
    def ftruncate(self, fd: int, length: int) -> None: ...


def journal_dir(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".journal")


def frame(record: Record, payload: bytes, batch_seq: int) -> bytes:
    body = _BATCH.pack(batch_seq) + record.prev_hash + record.hash + payload
    return MAGIC + _SIZES.pack(len(payload), zlib.crc32(body)) + body


@dataclass
class Segment:
    path: Path
    first_seq: int
    last_seq: int
    stuck: bool = False  # a loaded segment that could not be deleted (warned once)
    # It holds records whose payload was erased: overwritten before it is deleted, and
    # then by the erasure (Journal.take_scrubbed), not by a commit's `retire`
    scrub: bool = False


def segment_paths(directory: Path) -> list[Path]:
    """The journal's segment files, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == SUFFIX)


def remove_loaded(directory: Path, loaded_upto: int) -> None:
    """Delete the segments, other than the last, whose records are all loaded (the next
    segment begins at or before seq `loaded_upto` + 1): while start-up loads a long
    journal tail, this frees the disk as it goes. Best effort, as `Journal.retire`."""
    paths = segment_paths(directory)
    for path, following in zip(paths, paths[1:], strict=False):
        if int(following.stem) - 1 <= loaded_upto:
            _remove(Segment(path, int(path.stem), int(following.stem) - 1))


def _sound(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(batch seq, payload length, end) of a whole frame with a matching CRC at offset."""
    if offset + _FRAME.size > len(data):
        return None
    magic, length, crc, batch_seq = _FRAME.unpack_from(data, offset)
    end = offset + _FRAME.size + _HASHES + length
    if magic != MAGIC or end > len(data):
        return None
    if zlib.crc32(memoryview(data)[offset + len(MAGIC) + _SIZES.size : end]) != crc:
        return None
    return batch_seq, length, end


def read(directory: Path, *, repair: bool = False) -> Iterator[Record]:
    """Yield every record in the journal, in order.

    A torn last batch is dropped (and truncated from the file when `repair`). Any other
    damage raises DataLoss naming the segment and offset.
    """
    paths = segment_paths(directory)
    for index, path in enumerate(paths):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # retired since the listing: its records were in DuckDB first
        last_segment = index == len(paths) - 1
        durability = data[len(HEADER) : HEADER_SIZE]
        if not data.startswith(HEADER) or durability not in (SYNCED, UNSYNCED):
            if last_segment and _never_written(data):
                continue  # created, but a crash came before its header was on disk
            raise DataLoss(f"journal segment {path} is not an mlwitness journal of this "
                           "version (bad header). Keep the file and run `mlwitness verify`.")
        offset = HEADER_SIZE
        batch_seq, last_seq = 0, int(path.stem) - 1
        for record, in_batch, end in frames(data, HEADER_SIZE, path):
            batch_seq, last_seq, offset = in_batch, record.seq, end
            yield record
        if data.count(b"\0", offset) == len(data) - offset:
            continue  # zeros (or nothing) after the last frame: the segment's end
        torn_batches = {batch_seq, last_seq + 1}  # the batch in flight, wherever it began
        later = _later_batch(data, offset, torn_batches)
        if not last_segment or (later is not None and durability == SYNCED):
            where = f"; a frame of batch {later} follows" if later is not None else ""
            raise DataLoss(
                f"journal segment {path} is damaged at byte {offset}{where}; acknowledged "
                "records may be affected. Keep the file and run `mlwitness verify`."
            )
        if later is not None:
            log.warning("journal segment %s ends at byte %d, after seq %d: later batches "
                        "were written with --durability write and did not all reach the "
                        "disk (a power cut or kernel crash); they are dropped",
                        path, offset, last_seq)
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(offset)
                os.fsync(handle.fileno())


def frames(data: bytes, offset: int, path: Path, *, base: int = 0,
           from_seq: int = 0) -> Iterator[tuple[Record, int, int]]:
    """(record, its batch seq, the offset after its frame) of each sound frame in a
    segment's bytes from `offset` on, up to the first place that holds none; frames of
    records before `from_seq` are passed over undecoded. `data` starts at byte `base` of
    the segment file (for messages)."""
    while offset < len(data):
        found = _sound(data, offset)
        if found is None:
            return
        batch_seq, _length, end = found
        start = offset + _FRAME.size
        if from_seq and _PAYLOAD_SEQ.unpack_from(data, start + _HASHES)[0] < from_seq:
            offset = end
            continue
        try:
            record = decode(memoryview(data)[start + _HASHES : end])
        except ValueError as exc:
            raise DataLoss(f"journal segment {path} holds an unreadable record at byte "
                           f"{base + offset}: {exc}") from exc
        record.prev_hash = data[start : start + HASH_SIZE]
        record.hash = data[start + HASH_SIZE : start + _HASHES]
        offset = end
        yield record, batch_seq, end


def _never_written(data: bytes) -> bool:
    """Whether a segment's bytes are what a crash leaves of one whose header never reached
    the disk: nothing, zeros, or a piece of the header."""
    if len(data) < HEADER_SIZE and HEADER.startswith(data[: len(HEADER)]):
        return True
    return not data.strip(b"\0")


def _later_batch(data: bytes, offset: int, torn_batches: set[int]) -> int | None:
    """The batch seq of the first sound frame after offset that is not of `torn_batches`
    (the last batch, torn by a crash), or None when there is none."""
    at = data.find(MAGIC, offset)
    while at != -1:
        found = _sound(data, at)
        if found is not None:
            if found[0] not in torn_batches:
                return found[0]
            at = data.find(MAGIC, found[2])
        else:
            at = data.find(MAGIC, at + 1)
    return None


def scrub(path: Path) -> bool:
    """Overwrite a file with zeros, flush it and delete it: a journal segment that held
    payloads since erased. The file system writes the zeros over the same blocks where it
    writes in place (ext4, XFS); a copy-on-write one, a snapshot or an SSD's remapping may
    keep the old ones (docs/security.md). False, with a warning, when it failed."""
    try:
        size = path.stat().st_size
        zeros = bytes(EXTEND_BYTES)
        with open(path, "r+b") as handle:
            for offset in range(0, size, len(zeros)):
                handle.write(zeros[: min(len(zeros), size - offset)])
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("could not overwrite and delete %s (%s), which held payloads since "
                    "erased; delete it by hand", path, exc.strerror or exc)
        return False
    return True


def _remove(segment: Segment) -> bool:
    """Delete a loaded segment's file; on failure warn (once per segment) and say so."""
    try:
        segment.path.unlink(missing_ok=True)
    except OSError as exc:
        if not segment.stuck:
            log.warning("cannot delete loaded journal segment %s (%s); will retry",
                        segment.path, exc.strerror or exc)
        segment.stuck = True
        return False
    return True


class Journal:
    """Appends frames to segment files. Used under the ledger writer's write lock only."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20,
                 synced: bool = True, io: FileCalls = os) -> None:  # type: ignore[assignment]
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._io = io
        self._header = HEADER + (SYNCED if synced else UNSYNCED)
        self._segments: list[Segment] = []
        self._fd: int | None = None
        self._size = 0
        self._end = 0  # the active segment's file size: zeros from self._size up to here
        # (size, last_seq) of the active segment before the last append began writing
        self._batch_start: tuple[int, int] | None = None

    def open(self, next_seq: int) -> None:
        """Start a fresh segment for records from `next_seq` on. Existing segments are kept
        until `retire` says their records are in DuckDB."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob(f"*{ERASING}"):  # a scrub a crash interrupted
            scrub(path)
        for path in segment_paths(self.directory):
            first = int(path.stem)
            if first >= next_seq:
                # Created by a run that crashed before writing a record to it (records
                # from `first` on would have been loaded, and next_seq be past them). It may
                # bear the name of the segment this run starts: never keep it as "loaded".
                path.unlink()
                continue
            self._segments.append(Segment(path, first, next_seq - 1))
        self._roll(next_seq)

    def _roll(self, next_seq: int) -> None:
        """Make a new segment the active one. The old segment is flushed whole before the
        new file exists (in `write` durability that is its only flush), and the new one's
        header before any frame: if anything fails, the old segment stays the active one."""
        if self._fd is not None:
            self._flush(self._fd, data_only=False)
        path = self.directory / f"{next_seq:020d}{SUFFIX}"
        fd = self._io.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            self._write_at(fd, self._header, 0)
            self._flush(fd)
        except OSError:
            self._io.close(fd)
            raise
        if self._fd is not None:
            self._io.close(self._fd)
        self._fd = fd
        self._size = self._end = len(self._header)
        self._segments.append(Segment(path, next_seq, next_seq - 1))
        try:  # the new segment is active now: its directory entry must be on disk too
            directory = self._io.open(self.directory, os.O_RDONLY)
            try:
                self._io.fsync(directory)
            finally:
                self._io.close(directory)
        except OSError as exc:
            raise FlushFailed(exc.errno, exc.strerror) from exc

    def append(self, frames: bytes, first_seq: int, last_seq: int) -> None:
        """Write one batch of frames (records first_seq..last_seq) to the active segment,
        first extending it with zeros when the batch would reach past its end."""
        assert self._fd is not None, "journal not open"
        self._batch_start = None
        if self._size >= self.segment_bytes:
            self._roll(first_seq)
        self._batch_start = (self._size, self._segments[-1].last_seq)
        end = self._size + len(frames)
        if end > self._end:
            self._write_at(self._fd, bytes(EXTEND_BYTES), end)
            self._end = end + EXTEND_BYTES
        self._write_at(self._fd, frames, self._size)
        self._size = end
        self._segments[-1].last_seq = last_seq

    def sync(self) -> None:
        assert self._fd is not None, "journal not open"
        self._flush(self._fd)

    def reserve(self, next_seq: int) -> None:
        """Make room for the next batch (records from `next_seq` on) and flush it: zeros up
        to EXTEND_BYTES past the last frame, in a new segment if the active one is full.
        After a write failed for want of space, this succeeding says that writing can go
        on; raises OSError (FlushFailed for a failed flush) while it cannot."""
        assert self._fd is not None, "journal not open"
        self._batch_start = None
        if self._size >= self.segment_bytes:
            self._roll(next_seq)
        if self._end < self._size + EXTEND_BYTES:
            self._write_at(self._fd, bytes(self._size + EXTEND_BYTES - self._end), self._end)
            self._end = self._size + EXTEND_BYTES
        self._flush(self._fd)

    def _write_at(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = self._io.pwrite(fd, view, offset)
            offset += written
            view = view[written:]

    def _flush(self, fd: int, *, data_only: bool = True) -> None:
        try:
            (self._io.fdatasync if data_only else self._io.fsync)(fd)
        except OSError as exc:
            raise FlushFailed(exc.errno, exc.strerror) from exc

    def discard_last_batch(self) -> None:
        """Cut the active segment back to where the last `append` began, and flush. For a
        batch whose write or flush failed: it was never acknowledged, so its frames must not
        come back as records at the next start."""
        if self._batch_start is None or self._fd is None:
            return  # the append failed before writing anything
        size, last_seq = self._batch_start
        self._batch_start = None
        self._io.ftruncate(self._fd, size)
        self._flush(self._fd, data_only=False)
        self._size = self._end = size
        self._segments[-1].last_seq = last_seq

    def retire(self, loaded_upto: int) -> None:
        """Delete segments, other than the active one, whose records are all loaded. Best
        effort: it runs after a batch is durable, so a failure here must not fail the batch;
        a segment that cannot be deleted is tried again at the next retire. A segment that
        held erased payloads is left to the erasure (`take_scrubbed`): overwriting it is
        no work for the commit path."""
        keep = [s for s in self._segments[:-1]
                if s.last_seq > loaded_upto or s.scrub or not _remove(s)]
        self._segments = keep + self._segments[-1:]

    def seal(self, holds: Callable[[int, int], bool]) -> None:
        """Mark the segments holding records that `holds(first, last)` says were erased,
        to be overwritten before they are deleted; if the active one is among them, start a
        new one, so that the marked ones are all closed. Raises OSError if the new segment
        cannot be made (it stays marked)."""
        for segment in self._segments:
            if segment.last_seq >= segment.first_seq and holds(segment.first_seq,
                                                                segment.last_seq):
                segment.scrub = True
        active = self._segments[-1] if self._segments else None
        if active is not None and active.scrub and self._fd is not None:
            self._batch_start = None
            self._roll(active.last_seq + 1)

    def take_scrubbed(self, loaded_upto: int) -> list[Path]:
        """The marked segments whose records are all loaded, out of the journal: renamed
        (ERASING) and forgotten, for the caller to `scrub` outside the write lock. A start
        scrubs any it finds left (`open`)."""
        taken, keep = [], []
        for segment in self._segments[:-1]:
            if not (segment.scrub and segment.last_seq <= loaded_upto):
                keep.append(segment)
                continue
            target = segment.path.with_suffix(ERASING)
            try:
                os.replace(segment.path, target)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot move journal segment %s aside to overwrite it (%s); "
                            "will retry", segment.path, exc.strerror or exc)
                keep.append(segment)
                continue
            taken.append(target)
        self._segments = keep + self._segments[-1:]
        return taken

    def close(self, *, remove_if_loaded_upto: int | None = None) -> None:
        """Close the active segment; with `remove_if_loaded_upto` covering every record,
        delete all segments (a clean shutdown leaves no journal behind)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self._flush(fd, data_only=False)
            finally:
                self._io.close(fd)
        if remove_if_loaded_upto is not None and all(
            s.last_seq <= remove_if_loaded_upto for s in self._segments
        ):
            for segment in self._segments:
                if segment.scrub:
                    target = segment.path.with_suffix(ERASING)
                    with contextlib.suppress(OSError):
                        os.replace(segment.path, target)
                        scrub(target)
            self._segments = [s for s in self._segments if not _remove(s)]
            with contextlib.suppress(OSError):
                self.directory.rmdir()
