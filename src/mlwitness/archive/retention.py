"""Local retention: delete from the ledger the records the archive is known to hold.

A record is deleted only when all of this holds: its whole segment's manifest and Parquet
object were read back from the store, the Parquet object matches the SHA-256 its manifest
names and holds exactly the seqs and hashes the ledger holds; every segment before it was
pruned the same way (the deleted records are a prefix of the chain); its segment's last
record was received before the retention cut-off; and it is not the ledger's last record
(the chain head, which the writer continues from). Models, environments, baselines and
ledger_meta stay.

The last deleted record's seq and hash go into `ledger_meta` (ledger/verify.py:
ARCHIVED_SEQ, ARCHIVED_HASH) in the same transaction as the deletion, so that `verify`
checks the chain from the record after it, and the shipper knows the prefix is archived.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mlwitness.archive import segments
from mlwitness.archive.segments import Manifest
from mlwitness.archive.store import ObjectStore
from mlwitness.errors import DataLoss
from mlwitness.ledger.verify import ARCHIVED_HASH, ARCHIVED_SEQ

log = logging.getLogger(__name__)
T = TypeVar("T")
Writer = Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any]


@dataclass(frozen=True)
class Pruned:
    """What one pass deleted: `records` up to and including `upto_seq` (whose hash is
    `upto_hash`); `archived_seq` is the prefix now archived-only (0: none)."""

    records: int
    segments: int
    archived_seq: int
    archived_hash: str


def prune_archived(write: Writer, cursor: Callable[[], duckdb.DuckDBPyConnection],
                   store: ObjectStore, chain_id: str, older_than_us: int) -> Pruned:
    """Delete the archived records of chain `chain_id` whose segment ended before
    `older_than_us` (µs since the epoch). `write(fn)` runs `fn(connection)` in the ledger
    writer's transaction (LedgerWriter.write); `cursor()` gives a read cursor."""
    con = cursor()
    prefix_seq, prefix_hash = archived_prefix(con)
    head = con.execute("SELECT max(seq) FROM entries").fetchall()[0][0] or 0
    upto, upto_hash, count = prefix_seq, prefix_hash, 0
    for manifest in _manifests_after(store, chain_id, prefix_seq):
        if manifest.first_seq != upto + 1:
            break  # a gap in the archive: nothing after it is pruned
        if manifest.last_received_us >= older_than_us or manifest.last_seq >= head:
            break
        _confirm(con, store, manifest)
        upto, upto_hash, count = manifest.last_seq, manifest.last_hash, count + 1
    if upto == prefix_seq:
        return Pruned(0, 0, prefix_seq, prefix_hash)

    def delete(writer: duckdb.DuckDBPyConnection) -> int:
        if archived_prefix(writer)[0] != prefix_seq:
            raise DataLoss("another pass pruned the ledger meanwhile; try again")
        row = writer.execute("SELECT hash FROM entries WHERE seq = ?", [upto]).fetchall()
        if not row or bytes(row[0][0]).hex() != upto_hash:
            raise DataLoss(f"record {upto} changed while it was being pruned")
        deleted = writer.execute("DELETE FROM entries WHERE seq <= ?", [upto]).fetchall()
        for key, value in ((ARCHIVED_SEQ, str(upto)), (ARCHIVED_HASH, upto_hash)):
            writer.execute("INSERT INTO ledger_meta VALUES (?, ?) ON CONFLICT (key) "
                           "DO UPDATE SET value = excluded.value", [key, value])
        return int(deleted[0][0]) if deleted else 0

    records = write(delete)
    log.info("retention: deleted records %d..%d of chain %s, archived in %d segments",
             prefix_seq + 1, upto, chain_id, count)
    return Pruned(records, count, upto, upto_hash)


def archived_prefix(con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    """(seq, hex hash) of the last record deleted once archived; (0, "") if none."""
    meta = dict(con.execute("SELECT key, value FROM ledger_meta WHERE key IN (?, ?)",
                            [ARCHIVED_SEQ, ARCHIVED_HASH]).fetchall())
    return int(meta.get(ARCHIVED_SEQ, 0)), str(meta.get(ARCHIVED_HASH, ""))


def _manifests_after(store: ObjectStore, chain_id: str, seq: int) -> list[Manifest]:
    found = []
    for info in store.list(segments.manifest_prefix(chain_id)):
        parsed = segments.parse_manifest_key(info.key)
        if parsed is not None and parsed[2] > seq:
            found.append((parsed[1], parsed[2], info.key))
    return [Manifest.from_bytes(store.get(key), key) for _, _, key in sorted(found)]


def _confirm(con: duckdb.DuckDBPyConnection, store: ObjectStore, manifest: Manifest) -> None:
    """The segment, read back from the store, holds exactly the ledger's records; DataLoss
    naming the object if not."""
    data = store.get(manifest.parquet_key)
    url = store.url(manifest.parquet_key)
    if hashlib.sha256(data).hexdigest() != manifest.parquet_sha256:
        raise DataLoss(f"{url} does not match the SHA-256 its manifest names; not pruning")
    stored = pq.read_table(pa.BufferReader(data), columns=["seq", "hash"])
    local = con.sql("SELECT seq, hash FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    params=[manifest.first_seq, manifest.last_seq]).to_arrow_table()
    if stored.column("seq").to_pylist() != local.column("seq").to_pylist() or \
            stored.column("hash").to_pylist() != local.column("hash").to_pylist():
        raise DataLoss(f"{url} does not hold the ledger's records {manifest.first_seq}.."
                       f"{manifest.last_seq} (seqs or hashes differ); not pruning")
