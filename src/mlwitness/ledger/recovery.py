"""Start-up: the chain's id and head as DuckDB has them, then the journal records a
previous run left beyond them, checked against the chain and loaded in chunks, then any
erasure a stop interrupted.

It runs in the owner's thread inside LedgerWriter.open, before the writer's other threads
exist: nothing here is shared.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from mlwitness.errors import DataLoss
from mlwitness.ledger import erasure
from mlwitness.ledger import journal as journal_mod
from mlwitness.ledger.database import Database
from mlwitness.ledger.record import Record, chain_hash, encode, genesis_hash
from mlwitness.ledger.rows import FEATURES_ACTION, Tabulator, announced_names

log = logging.getLogger(__name__)

# Start-up loads the journal tail this many records per transaction, checkpoints DuckDB
# once its WAL has grown past RECOVER_WAL_BYTES and deletes journal segments once loaded:
# so a restart needs free space for about one segment's rows, not for the WAL of the whole
# tail's rows beside the tail. (Smaller checkpoints needed more room: each rewrites the
# table's last row group.)
RECOVER_CHUNK = 1000
RECOVER_WAL_BYTES = 1 << 20


class Recovery:
    def __init__(self, db: Database, path: Path,
                 table: Callable[[list[Record], Tabulator], pa.Table],
                 tabulator: Tabulator) -> None:
        self.db = db
        self.path = path
        self.table = table  # rows of records, with the tabulator given
        self.tabulator = tabulator
        self.chain_id = ""
        self.head_seq = 0
        self.head_hash = b""
        # The column names last announced on the chain (rows.features_detail); None when
        # none ever was
        self.announced: dict[str, tuple[str, ...]] | None = None

    def run(self) -> Recovery:
        self._read_head()
        self._load_tail()
        self._complete_erasures()
        return self

    def _read_head(self) -> None:
        """The chain id (made for a new ledger) and DuckDB's last record."""
        con = self.db.con
        assert con is not None
        rows = con.execute("SELECT value FROM ledger_meta WHERE key = 'chain_id'").fetchall()
        if not rows:
            self.chain_id = uuid.uuid4().hex
            con.execute("INSERT INTO ledger_meta VALUES ('chain_id', ?)", [self.chain_id])
        else:
            self.chain_id = rows[0][0]
        last = con.execute(
            "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchall()
        if not last:
            self.head_seq, self.head_hash = 0, genesis_hash(self.chain_id)
        else:
            self.head_seq, self.head_hash = int(last[0][0]), bytes(last[0][1])
        for kind, detail in con.execute(
            "SELECT kind, detail FROM entries WHERE kind = 'admin' AND detail LIKE ? "
            "ORDER BY seq DESC", [f"%{FEATURES_ACTION}%"]).fetchall():
            names = announced_names(Record(kind=kind, detail=detail))
            if names is not None:
                self.announced = names
                break

    def _load_tail(self) -> None:
        """Load journal records that DuckDB does not have yet, checking the chain. They go
        in RECOVER_CHUNK at a time, each chunk its own transaction, with a checkpoint
        whenever DuckDB's WAL has grown past RECOVER_WAL_BYTES, and each journal segment is
        deleted once loaded: the disk needs room for about one segment's rows, not for the
        WAL of the whole tail's beside the tail (see the README, "Room for a restart").
        Records are tabulated with the column names announced on the chain before them,
        which a restart with other `--features` names does not change."""
        start = seq = self.head_seq
        prev = self.head_hash
        chunk: list[Record] = []
        for record in journal_mod.read(journal_mod.journal_dir(self.path), repair=True):
            if record.seq <= self.head_seq:
                continue
            if record.seq != seq + 1:
                raise DataLoss(
                    f"journal skips from seq {seq} to {record.seq}; "
                    "refusing to continue the chain. Run `mlwitness verify`."
                )
            if record.prev_hash != prev or record.hash != chain_hash(
                record.prev_hash, encode(record)
            ):
                raise DataLoss(
                    f"journal record seq {record.seq} does not continue the hash chain; "
                    "refusing to continue. Run `mlwitness verify`."
                )
            if seq == start:
                log.info("loading journal records left by the previous run, from seq %d",
                         record.seq)
            seq, prev = record.seq, record.hash
            chunk.append(record)
            names = announced_names(record)
            if names is not None or len(chunk) >= RECOVER_CHUNK:
                self._load_chunk(chunk)
                chunk = []
            if names is not None:
                self.announced = names
        if chunk:
            self._load_chunk(chunk)

    def _complete_erasures(self) -> None:
        """Erase what an erase admin record states and a stop before its transaction left
        undone (ledger/erasure.py), and rewrite the file without the erased bytes."""
        completed = 0
        for stated in erasure.pending(self.db.con):
            done = self.db.transaction(functools.partial(erasure.apply, erasure=stated))
            if done:
                log.warning("completed the erasure of admin record seq %d: %d records erased "
                            "(the sidecar stopped before it had erased them)", stated.seq, done)
            completed += done
        if completed:
            self.db.compact()

    def _load_chunk(self, chunk: list[Record]) -> None:
        assert self.db.con is not None
        names = self.announced
        self.db.store(self.table(chunk, self.tabulator if names is None else Tabulator(names)))
        self.head_seq, self.head_hash = chunk[-1].seq, chunk[-1].hash
        journal_mod.remove_loaded(journal_mod.journal_dir(self.path), self.head_seq)
        wal = self.path.with_name(self.path.name + ".wal")
        with contextlib.suppress(OSError):
            if wal.stat().st_size > RECOVER_WAL_BYTES:
                self.db.con.execute("CHECKPOINT")
