"""Helpers for the checkpoint tests: the tree worked out from scratch, written straight from
RFC 6962 (not with the producer's code), and ledgers with records and checkpoints."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from mlwitness.ledger.checkpoints import Checkpointer
from mlwitness.ledger.publisher import Publisher
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions


def leaf(chain_hash: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + chain_hash).digest()


def reference_root(leaves: Sequence[bytes]) -> bytes:
    """MTH of leaf hashes, RFC 6962 §2.1, iteratively (a recursion would be as deep as the
    largest split, which is fine, but this reads the same and needs no stack)."""
    if not leaves:
        return hashlib.sha256(b"").digest()

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        k = 1
        while k * 2 < hi - lo:
            k *= 2
        return hashlib.sha256(b"\x01" + mth(lo, lo + k) + mth(lo + k, hi)).digest()

    return mth(0, len(leaves))


def chain_hashes(con: Any) -> list[bytes]:
    """entries.hash of every record, in seq order."""
    return [bytes(h) for (h,) in con.execute("SELECT hash FROM entries ORDER BY seq").fetchall()]


def file_leaves(path: Path) -> list[bytes]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [leaf(h) for h in chain_hashes(con)]
    finally:
        con.close()


def open_writer(path: Path, load_interval_s: float = 3600.0) -> LedgerWriter:
    # `write` durability: these tests kill no machine, and fsync per record is slow
    writer = LedgerWriter(path, WriterOptions(durability="write",
                                              load_interval_s=load_interval_s))
    writer.open()
    return writer


def append(writer: LedgerWriter, count: int, prefix: str = "r") -> None:
    """`count` records, then wait until they are loaded."""
    for i in range(count):
        writer.append_blocking(Record(request_id=f"{prefix}{i}", request=f"{prefix}{i}".encode()))
    writer.sync(timeout=30)


def checkpointer(writer: LedgerWriter, directory: Path | None = None, **kwargs: Any
                 ) -> Checkpointer:
    """A checkpointer (publishing to `directory` when given) that issues only when asked:
    its thread's interval is an hour."""
    publisher = Publisher(directory, writer) if directory is not None else None
    kwargs.setdefault("interval_s", 3600.0)
    return Checkpointer(writer, publisher=publisher, **kwargs)


def keygen(command: list[str], out: Path) -> tuple[Path, str, subprocess.CompletedProcess]:
    """`mlwitness keygen --out OUT`: (the verifier key file, the key it printed, the run)."""
    run = subprocess.run([*command, "keygen", "--out", str(out)], capture_output=True,
                         text=True, timeout=60, check=False)
    return out.with_name(out.name + ".pub"), run.stdout.strip(), run


def rewrite_from(path: Path, seq: int, request_id: str = "forged") -> None:
    """Change record `seq` of a closed ledger and recompute its hash and every later one,
    as someone with write access who knows the chain would: `mlwitness verify` alone then
    passes."""
    from mlwitness.ledger.record import chain_hash, encode
    from mlwitness.ledger.verify import RECORD_FIELDS

    con = duckdb.connect(str(path))
    try:
        rows = con.execute(f"SELECT {', '.join(RECORD_FIELDS)} FROM entries WHERE seq >= ? "
                           "ORDER BY seq", [seq]).fetchall()
        records = [Record(*row) for row in rows]
        prev = records[0].prev_hash
        for record in records:
            if record.seq == seq:
                record.request_id = request_id
            record.prev_hash, record.hash = prev, chain_hash(prev, encode(record))
            prev = record.hash
            con.execute("UPDATE entries SET request_id = ?, prev_hash = ?, hash = ? "
                        "WHERE seq = ?", [record.request_id, record.prev_hash, record.hash,
                                          record.seq])
    finally:
        con.close()
