"""The append-only journal: the ledger's commit point.

A record is acknowledged once its frame is written (and, in `fsync` durability, flushed
with fdatasync) here; the DuckDB loader copies journal records into the ledger behind it,
and segments whose records are all in DuckDB are deleted. On start-up the writer replays
whatever the journal holds beyond DuckDB's last record.

Segment files are named after the first seq they hold (`00000000000000000042.wal`). Each
frame is

    u32 payload length ‖ u32 CRC-32 of (prev_hash ‖ hash ‖ payload) ‖ prev_hash ‖ hash ‖ payload

with `payload` the record's canonical encoding. Only the last frame of the last segment may
be torn (a write cut short by a crash before it was acknowledged); it is truncated away.
Damage anywhere else is reported, never skipped.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlwitness.errors import DataLoss
from mlwitness.ledger.record import HASH_SIZE, Record, decode

_FRAME = struct.Struct(">II")
_SUFFIX = ".wal"


def journal_dir(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".journal")


def frame(record: Record, payload: bytes) -> bytes:
    body = record.prev_hash + record.hash + payload
    return _FRAME.pack(len(payload), zlib.crc32(body)) + body


@dataclass
class Segment:
    path: Path
    first_seq: int
    last_seq: int


def _segments(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == _SUFFIX)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(directory: Path, *, repair: bool = False) -> Iterator[Record]:
    """Yield every record in the journal, in order.

    A torn final frame is dropped (and truncated from the file when `repair`). Any other
    damage raises DataLoss naming the segment and offset.
    """
    paths = _segments(directory)
    for index, path in enumerate(paths):
        data = path.read_bytes()
        offset = 0
        last_segment = index == len(paths) - 1
        while offset < len(data):
            bad = _check_frame(data, offset)
            if bad is None:
                (length, _crc) = _FRAME.unpack_from(data, offset)
                start = offset + _FRAME.size
                prev_hash = data[start : start + HASH_SIZE]
                digest = data[start + HASH_SIZE : start + 2 * HASH_SIZE]
                payload_start = start + 2 * HASH_SIZE
                record = decode(memoryview(data)[payload_start : payload_start + length])
                record.prev_hash, record.hash = prev_hash, digest
                offset = payload_start + length
                yield record
                continue
            torn_tail = last_segment and bad
            if not torn_tail:
                raise DataLoss(
                    f"journal segment {path} is damaged at byte {offset}; acknowledged "
                    "records may be affected. Keep the file and run `mlwitness verify`."
                )
            if repair:
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
                    os.fsync(handle.fileno())
            break


def _check_frame(data: bytes, offset: int) -> bool | None:
    """None when the frame at offset is whole and sound; otherwise whether the damage is
    confined to a torn final frame (True) or not (False)."""
    if offset + _FRAME.size > len(data):
        return True
    length, crc = _FRAME.unpack_from(data, offset)
    end = offset + _FRAME.size + 2 * HASH_SIZE + length
    if end > len(data):
        return True
    if zlib.crc32(data[offset + _FRAME.size : end]) != crc:
        return end == len(data)
    return None


class Journal:
    """Appends frames to segment files. Used under the ledger writer's write lock only."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._segments: list[Segment] = []
        self._fd: int | None = None
        self._size = 0
        # (size, last_seq) of the active segment before the last append began writing
        self._batch_start: tuple[int, int] | None = None

    def open(self, next_seq: int) -> None:
        """Start a fresh segment for records from `next_seq` on. Existing segments are kept
        until `retire` says their records are in DuckDB."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in _segments(self.directory):
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
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / f"{next_seq:020d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._segments.append(Segment(path, next_seq, next_seq - 1))
        _fsync_dir(self.directory)

    def append(self, frames: bytes, first_seq: int, last_seq: int) -> None:
        """Write one batch of frames (records first_seq..last_seq) to the active segment."""
        assert self._fd is not None, "journal not open"
        self._batch_start = None
        if self._size >= self.segment_bytes:
            self._roll(first_seq)
        self._batch_start = (self._size, self._segments[-1].last_seq)
        view = memoryview(frames)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(frames)
        self._segments[-1].last_seq = last_seq

    def sync(self) -> None:
        assert self._fd is not None, "journal not open"
        os.fdatasync(self._fd)

    def discard_last_batch(self) -> None:
        """Cut the active segment back to where the last `append` began, and flush. For a
        batch whose write or flush failed: it was never acknowledged, so its frames must not
        come back as records at the next start."""
        if self._batch_start is None or self._fd is None:
            return  # the append failed before writing anything
        size, last_seq = self._batch_start
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)
        self._size = size
        self._segments[-1].last_seq = last_seq

    def retire(self, loaded_upto: int) -> None:
        """Delete segments, other than the active one, whose records are all loaded."""
        keep = []
        for segment in self._segments[:-1]:
            if segment.last_seq <= loaded_upto:
                segment.path.unlink(missing_ok=True)
            else:
                keep.append(segment)
        self._segments = keep + self._segments[-1:]

    def close(self, *, remove_if_loaded_upto: int | None = None) -> None:
        """Close the active segment; with `remove_if_loaded_upto` covering every record,
        delete all segments (a clean shutdown leaves no journal behind)."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if remove_if_loaded_upto is not None and all(
            s.last_seq <= remove_if_loaded_upto for s in self._segments
        ):
            for segment in self._segments:
                segment.path.unlink(missing_ok=True)
            self._segments = []
            with contextlib.suppress(OSError):
                self.directory.rmdir()
