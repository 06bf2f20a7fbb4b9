"""The journal's own contract: what it reads back after a crash, and what it refuses.

A power cut during a batch's fdatasync can leave that batch's blocks on disk in any order.
These tests write real segments with `Journal`, then damage the bytes the way a torn write
or a bad disk would, and read them back with `journal.read`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlwitness.errors import DataLoss
from mlwitness.ledger import journal
from mlwitness.ledger.record import SALT_SIZE, Record, chain_hash, encodings, genesis_hash


class Chain:
    """Writes chained records to a journal in batches, as the ledger writer does."""

    def __init__(self, directory: Path, segment_bytes: int = 64 << 20,
                 synced: bool = True) -> None:
        self.journal = journal.Journal(directory, segment_bytes=segment_bytes, synced=synced)
        self.journal.open(1)
        self.seq, self.prev = 0, genesis_hash("test")
        self.extents: list[tuple[int, int]] = []  # (start, end) byte range of each batch

    def batch(self, size: int, request_bytes: int = 40) -> list[Record]:
        first = self.seq + 1
        records, frames = [], []
        for _ in range(size):
            self.seq += 1
            record = Record(request_id=f"r{self.seq}", seq=self.seq,
                            request=bytes([self.seq % 251]) * request_bytes,
                            salt=os.urandom(SALT_SIZE))
            stored, hashed = encodings(record)
            record.prev_hash, record.hash = self.prev, chain_hash(self.prev, hashed)
            self.prev = record.hash
            records.append(record)
            frames.append(journal.frame(record, stored, first))
        start = self.journal._size
        self.journal.append(b"".join(frames), first, self.seq)
        self.journal.sync()
        self.extents.append((start, self.journal._size))
        return records

    def segment(self) -> Path:
        return self.journal._segments[-1].path


def seqs(directory: Path, *, repair: bool = False) -> list[int]:
    return [record.seq for record in journal.read(directory, repair=repair)]


def damage(path: Path, start: int, end: int, fill: bytes = b"\x00") -> None:
    data = bytearray(path.read_bytes())
    data[start:end] = (fill * (end - start))[: end - start]
    path.write_bytes(bytes(data))


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def test_records_read_back_in_order_with_zeros_ahead(tmp_path: Path) -> None:
    chain = Chain(tmp_path)
    written = chain.batch(3) + chain.batch(1) + chain.batch(5)
    read = list(journal.read(tmp_path))
    assert [(r.seq, r.request_id, r.request, r.prev_hash, r.hash) for r in read] == [
        (r.seq, r.request_id, r.request, r.prev_hash, r.hash) for r in written
    ]
    data = chain.segment().read_bytes()
    assert data.startswith(journal.HEADER)
    # a zeroed extension runs past the last frame: later batches overwrite it
    assert len(data) == chain.extents[0][1] + journal.EXTEND_BYTES
    assert not data[chain.extents[-1][1]:].strip(b"\x00")


def test_a_batch_larger_than_the_extension_is_written_whole(tmp_path: Path) -> None:
    chain = Chain(tmp_path)
    chain.batch(2)
    big = chain.batch(3, request_bytes=journal.EXTEND_BYTES)  # ~3 MiB in one batch
    chain.batch(1)
    assert seqs(tmp_path) == list(range(1, 7))
    assert [r.request for r in journal.read(tmp_path)][2:5] == [r.request for r in big]


@pytest.mark.parametrize(
    "torn",
    [
        "first frame zero, later frames on disk",  # pages persisted out of order
        "middle frame garbage",
        "cut short at end of file",
        "only the header of the first frame",
    ],
)
def test_a_torn_last_batch_is_dropped_and_truncated(tmp_path: Path, torn: str) -> None:
    chain = Chain(tmp_path)
    chain.batch(4)
    chain.batch(2)
    chain.batch(3)  # the batch a crash interrupted
    path = chain.segment()
    start, end = chain.extents[-1]
    frame_len = (end - start) // 3
    if torn.startswith("first frame zero"):
        damage(path, start, start + frame_len)
    elif torn.startswith("middle"):
        damage(path, start + frame_len + 10, start + frame_len + 30, b"\xa5")
    elif torn.startswith("cut short"):
        path.write_bytes(path.read_bytes()[: end - 7])
    else:
        data = path.read_bytes()
        path.write_bytes(data[: start + 12] + bytes(len(data) - start - 12))

    expected_kept = {"first frame zero, later frames on disk": 6,
                     "middle frame garbage": 7, "cut short at end of file": 8,
                     "only the header of the first frame": 6}[torn]
    assert seqs(tmp_path, repair=True) == list(range(1, expected_kept + 1))
    # repaired: the file now ends where the sound records end, and reads the same again
    assert seqs(tmp_path) == list(range(1, expected_kept + 1))
    assert len(path.read_bytes()) < end


def test_damage_before_a_later_batch_is_data_loss(tmp_path: Path) -> None:
    chain = Chain(tmp_path)
    chain.batch(3)
    chain.batch(3)  # acknowledged: a later batch follows it on disk
    chain.batch(2)
    path = chain.segment()
    start, _ = chain.extents[1]
    before = path.read_bytes()
    flip(path, start + 40)
    with pytest.raises(DataLoss, match=r"damaged at byte \d+; a frame of batch 7 follows"):
        seqs(tmp_path, repair=True)
    assert len(path.read_bytes()) == len(before)  # nothing was cut away


def test_write_durability_ends_at_the_first_hole_after_a_power_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # --durability write acknowledges batches before fdatasync, so a power cut can keep a
    # later batch and lose an earlier one: the segment ends at the hole, with a warning.
    chain = Chain(tmp_path, synced=False)
    chain.batch(3)
    chain.batch(3)
    chain.batch(2)
    path = chain.segment()
    start, end = chain.extents[1]
    damage(path, start, end)  # batch 4-6 never reached the disk; batch 7-8 did
    assert seqs(tmp_path, repair=True) == [1, 2, 3]
    assert "with --durability write" in caplog.text
    assert seqs(tmp_path) == [1, 2, 3]  # truncated


def test_damage_in_an_earlier_segment_is_data_loss(tmp_path: Path) -> None:
    chain = Chain(tmp_path, segment_bytes=2_000)
    while len(chain.journal._segments) < 3:
        chain.batch(4)
    first = chain.journal._segments[0].path
    flip(first, len(journal.HEADER) + 30)
    with pytest.raises(DataLoss, match="damaged at byte"):
        seqs(tmp_path)


def test_a_whole_earlier_segment_ends_at_its_zeros(tmp_path: Path) -> None:
    chain = Chain(tmp_path, segment_bytes=2_000)
    while len(chain.journal._segments) < 3:
        chain.batch(4)
    assert seqs(tmp_path) == list(range(1, chain.seq + 1))


@pytest.mark.parametrize("left", [b"", b"MLW", journal.HEADER, bytes(9), bytes(4096)])
def test_an_unknown_format_is_refused_and_an_unwritten_header_is_empty(
    tmp_path: Path, left: bytes
) -> None:
    chain = Chain(tmp_path)
    chain.batch(2)
    empty = tmp_path / f"{chain.seq + 1:020d}.wal"
    empty.write_bytes(left)  # created; the crash came before its header was on disk
    assert seqs(tmp_path) == [1, 2]
    chain.segment().write_bytes(b"\x00\x00\x00\x10" + chain.segment().read_bytes()[4:])
    with pytest.raises(DataLoss, match="bad header"):
        seqs(tmp_path)


def test_a_failed_batch_is_cut_back_out(tmp_path: Path) -> None:
    chain = Chain(tmp_path)
    chain.batch(3)
    chain.batch(2)
    chain.journal.discard_last_batch()  # its write or fdatasync failed: never acknowledged
    chain.journal.close()
    assert seqs(tmp_path) == [1, 2, 3]


def test_a_segment_retired_while_being_read_is_skipped(tmp_path: Path) -> None:
    # verify reads the journal of a live sidecar, whose loader deletes a segment once its
    # records are in DuckDB: a listed segment that is gone by the time it is read is skipped
    chain = Chain(tmp_path, segment_bytes=2_000)
    while len(chain.journal._segments) < 3:
        chain.batch(4)
    second = chain.journal._segments[1]
    records = journal.read(tmp_path)
    assert next(records).seq == 1  # the segments are listed now
    second.path.unlink()
    rest = [r.seq for r in records]
    assert rest == [s for s in range(2, chain.seq + 1)
                    if not second.first_seq <= s <= second.last_seq]


def test_a_segment_that_cannot_be_created_leaves_the_old_one_active(tmp_path: Path) -> None:
    chain = Chain(tmp_path, segment_bytes=2_000)
    while chain.journal._size < 2_000:
        chain.batch(4)
    old = chain.segment()
    blocker = tmp_path / f"{chain.seq + 1:020d}.wal"
    blocker.mkdir()  # the next segment's name is taken: opening it fails
    with pytest.raises(IsADirectoryError):
        chain.batch(1)
    fd = chain.journal._fd
    assert fd is not None and os.fstat(fd).st_ino == old.stat().st_ino
    chain.journal.close()
    blocker.rmdir()
    assert seqs(tmp_path)[-1] == chain.seq - 1  # everything before the failed batch


def test_a_loaded_segment_that_cannot_be_deleted_is_kept_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = Chain(tmp_path, segment_bytes=2_000)
    while len(chain.journal._segments) < 2:
        chain.batch(4)
    first = chain.journal._segments[0]

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    chain.journal.retire(chain.seq)  # raises nothing: the batch it follows was durable
    assert first.path.exists() and chain.journal._segments[0] is first
    monkeypatch.undo()
    chain.journal.retire(chain.seq)
    assert not first.path.exists()
