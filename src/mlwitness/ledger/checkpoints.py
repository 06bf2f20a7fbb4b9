"""Checkpoints: signed tree heads of the ledger, issued off the hot path.

A checkpoint is the tree head of the first N records (ledger/tree.py) in the C2SP
tlog-checkpoint format — origin line, tree size, base64 root hash — as a C2SP signed note
when the sidecar has a key (--signing-key; `mlwitness keygen` makes one), or the bare text
("unsigned") when it has none. Each is a row of `checkpoints`, and the publisher
(ledger/publisher.py) copies it out of the ledger, to --checkpoint-dir.

The checkpointer thread, every --checkpoint-interval while records arrive:

    loaded records' chain hashes (a cursor) ─► the frontier ─► nodes + frontier + the
    checkpoint row, one transaction through the one writer (LedgerWriter.write) ─► publish

Tree size = records loaded into DuckDB at that moment (about a load interval behind the
acknowledgements); `close` issues a last one after the final load. Nothing here runs on an
event loop or in the group commit. A ledger that has records and no tree (written by an
older version) has its tree built first, a chunk of BUILD_CHUNK records per transaction.

Before it signs anything, a start checks that the ledger still gives the tree it stored:
the stored frontier against the stored nodes and records, the latest checkpoint's root
against the tree, and the checkpoint published in --checkpoint-dir against the tree. If
any differs (records rewritten, the ledger restored from an older copy, another tree in
the directory), the checkpointer stops, says why (log, Status) and signs nothing more: a
signature on a tree that does not extend the published one would be a fork, made with the
operator's own key. Serving goes on.

Which thread runs what: `start`, `close` the owner; `_run` and `issue` the checkpointer
thread ("ledger-checkpointer"), and `close` runs a last `issue` once that thread has ended.
`_lock` keeps two `issue`s from overlapping. The state fields (`state`, `detail`, `latest`,
`tree_size`, `failures`) are written by whoever holds `_lock`, each in one assignment, and
read without a lock by Status and metrics (a moment stale at most).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from mlwitness.errors import ConfigError, FailedPrecondition, InvalidInput
from mlwitness.evidence.merkle import Frontier
from mlwitness.evidence.note import (
    Checkpoint,
    NoteError,
    Signature,
    Signer,
    parse_note,
    sign_checkpoint,
)
from mlwitness.evidence.tiles import TILE_HEIGHT
from mlwitness.ledger import tree

if TYPE_CHECKING:
    from mlwitness.ledger.publisher import Publisher
    from mlwitness.ledger.writer import LedgerWriter

log = logging.getLogger(__name__)

BUILD_CHUNK = 1 << 16  # records hashed into the tree per transaction
ORIGIN_PREFIX = "mlwitness/"


def default_origin(chain_id: str) -> str:
    """The log's identity in its checkpoints: one per ledger (its chain id)."""
    return f"{ORIGIN_PREFIX}{chain_id}"


def load_signer(path: Path) -> Signer:
    """The signer key in `path` (PRIVATE+KEY+…, as `mlwitness keygen` writes it)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--signing-key {path}: cannot read it ({exc})") from None
    try:
        signer = Signer.from_signer_key(text)
    except NoteError as exc:
        raise ConfigError(f"--signing-key {path}: not a signer key as `mlwitness keygen` "
                          f"writes ({exc})") from None
    mode = Path(path).stat().st_mode
    if mode & 0o077:
        log.warning("--signing-key %s can be read by other users (mode %o): whoever reads "
                    "it can sign checkpoints as this ledger (chmod 600 it)", path, mode & 0o777)
    return signer


# ── rows ───────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class CheckpointRow:
    """One row of `checkpoints`: the tree head of the first `size` records."""

    size: int
    root: bytes
    note: str  # as published: a signed note, or the checkpoint text alone (unsigned)
    created_us: int
    published_us: int | None = None

    @property
    def signatures(self) -> tuple[Signature, ...]:
        return read_note(self.note)[1]

    @property
    def signed(self) -> bool:
        return bool(self.signatures)

    @property
    def origin(self) -> str:
        return read_note(self.note)[0].origin


_COLUMNS = "size, root, note, created_us, published_us"


def _row(values: tuple) -> CheckpointRow:
    size, root, note, created_us, published_us = values
    return CheckpointRow(int(size), bytes(root), str(note), int(created_us),
                         None if published_us is None else int(published_us))


def latest(con: Any) -> CheckpointRow | None:
    """The newest checkpoint (None: none yet, or a ledger without the table)."""
    rows = _select(con, f"SELECT {_COLUMNS} FROM checkpoints ORDER BY size DESC LIMIT 1")
    return _row(rows[0]) if rows else None


def at_size(con: Any, size: int) -> CheckpointRow | None:
    rows = _select(con, f"SELECT {_COLUMNS} FROM checkpoints WHERE size = ?", [size])
    return _row(rows[0]) if rows else None


def unpublished(con: Any) -> list[CheckpointRow]:
    """Checkpoints not yet marked published, oldest first."""
    return [_row(r) for r in _select(
        con, f"SELECT {_COLUMNS} FROM checkpoints WHERE published_us IS NULL ORDER BY size")]


def all_rows(con: Any) -> list[CheckpointRow]:
    return [_row(r) for r in _select(con, f"SELECT {_COLUMNS} FROM checkpoints ORDER BY size")]


def _select(con: Any, sql: str, params: list[Any] | None = None) -> list[tuple]:
    try:
        return list(con.execute(sql, params or []).fetchall())
    except duckdb.CatalogException:  # a ledger no version with checkpoints has opened
        return []


def read_note(note: str) -> tuple[Checkpoint, tuple[Signature, ...]]:
    """The checkpoint a stored or published note holds, and its signature lines (none for
    an unsigned one). Only the format is checked, not the signatures (evidence/check.py)."""
    if "\n\n" in note:
        parsed = parse_note(note.encode())
        return Checkpoint.parse(parsed.text), parsed.signatures
    return Checkpoint.parse(note), ()


def key_names(signatures: tuple[Signature, ...]) -> str:
    """`name+keyid` of each signature, comma-separated ("" when unsigned)."""
    return ", ".join(f"{s.name}+{s.key_id:08x}" for s in signatures)


def make_note(checkpoint: Checkpoint, signer: Signer | None) -> str:
    if signer is None:
        return checkpoint.text()
    return sign_checkpoint(checkpoint, [signer]).decode()


def for_size(con: Any, size: int) -> CheckpointRow:
    """The checkpoint of `size` (0: the latest); FailedPrecondition naming those there are."""
    row = latest(con) if size == 0 else at_size(con, size)
    if row is not None:
        return row
    newest = latest(con)
    if newest is None:
        raise FailedPrecondition("the ledger has no checkpoint yet (the first comes one "
                                 "--checkpoint-interval after records arrive)")
    raise FailedPrecondition(f"no checkpoint of size {size}; the latest is of size "
                             f"{newest.size} (`mlwitness audit checkpoint` shows it)")


# ── the one call for a record's evidence ───────────────────────────────────────────────


@dataclass(frozen=True)
class RecordProof:
    """Record `inclusion.seq` is in the tree of `checkpoint`: the proof, and the checkpoint
    whose root it leads to (check it with evidence/check.py: verify_checkpoint, then
    verify_inclusion(inclusion.leaf_index, checkpoint size, inclusion.leaf_hash,
    inclusion.hashes, root))."""

    inclusion: tree.Inclusion
    checkpoint: CheckpointRow


def prove_record(con: Any, seq: int, tree_size: int = 0) -> RecordProof:
    """Record `seq`'s inclusion proof in the checkpoint of `tree_size` (0: the latest)."""
    if seq <= 0:
        raise InvalidInput(f"seq must be positive, got {seq}")
    if tree_size < 0:
        raise InvalidInput(f"tree size must be positive (0: the latest), got {tree_size}")
    row = for_size(con, tree_size)
    # A checkpoint is stored with the tree it covers: its size is built, its root known
    inclusion = tree.inclusion(con, seq, row.size, row.size, root=row.root)
    return RecordProof(inclusion, row)


# ── the checkpointer ───────────────────────────────────────────────────────────────────


class Checkpointer:
    def __init__(self, ledger: LedgerWriter, *, signer: Signer | None = None,
                 origin: str = "", interval_s: float = 10.0,
                 publisher: Publisher | None = None, chunk: int = BUILD_CHUNK) -> None:
        self.ledger = ledger
        self.signer = signer
        self.origin = origin or default_origin(ledger.chain_id)
        Checkpoint(self.origin, 0, bytes(32))  # the origin is a valid checkpoint line
        self.interval_s = interval_s
        self.publisher = publisher
        self.chunk = chunk
        # state: starting, building, ok, stopped (signs nothing more: see the module doc)
        self.state = "starting"
        self.detail = ""
        self.latest: CheckpointRow | None = None
        self.tree_size = 0
        self.failures = 0  # checkpoints that could not be stored (retried)
        self.last_error = ""
        self._frontier: Frontier | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key_id(self) -> str:
        if self.signer is None:
            return ""
        return f"{self.signer.name}+{self.signer.key_id:08x}"

    def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpointer",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """(Owner, before the ledger closes, once nothing more is appended.) End the thread,
        issue a last checkpoint after the final load, give the publisher up to `timeout`
        to publish it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            try:
                self.ledger.sync(timeout)
                self.issue(final=True)
            except Exception as exc:  # the next start issues it
                log.error("the last checkpoint at shutdown failed (%s); the next start "
                          "issues it", exc)
        if self.publisher is not None:
            self.publisher.close(timeout)

    def _run(self) -> None:
        while True:
            if self._frontier is None and self.state != "stopped":
                self._prepare_logged()
            if self._frontier is not None:
                self._issue_logged()
            if self._stopping.wait(self.interval_s):
                return

    def _prepare_logged(self) -> None:
        try:
            with self._lock:
                self._prepare()
        except Exception as exc:
            self._failed("reading the tree at start failed", exc)

    def _issue_logged(self) -> None:
        try:
            self.issue()
        except Exception as exc:
            self._failed("issuing a checkpoint failed", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{what}: {exc}"
        if self.failures == 1 or self.failures % 20 == 0:
            log.error("%s (%d failures so far); retrying every %g s", self.last_error,
                      self.failures, self.interval_s)

    # ── start: read the tree back and check it ─────────────────────────────────────────

    def _prepare(self) -> None:
        con = self.ledger.cursor()
        try:
            frontier = tree.stored_frontier(con) or Frontier()
            newest = latest(con)
            problem = self._check_stored(con, frontier, newest)
            if problem is None and self.publisher is not None:
                problem = self._check_published(con, frontier)
        finally:
            con.close()
        self.latest, self.tree_size = newest, frontier.size
        if problem is not None:
            self._stop(problem)
            return
        self._frontier = frontier
        self.state, self.detail = "ok", ""

    def _check_stored(self, con: Any, frontier: Frontier, newest: CheckpointRow | None
                      ) -> str | None:
        """Whether the ledger still gives the tree it stored (its frontier and the latest
        checkpoint): None, or what differs."""
        try:
            if frontier.size and Frontier.at(frontier.size, tree.LedgerTree(con)) != frontier:
                return (f"the ledger's records 1..{frontier.size} no longer give the tree "
                        "stored for them: records were changed since (run `mlwitness verify "
                        "--checkpoint` with the published checkpoint)")
            if newest is None:
                return None
            if newest.size > frontier.size:
                return (f"checkpoint {newest.size} is beyond the tree stored "
                        f"({frontier.size} records)")
            if tree.root(con, newest.size) != newest.root or \
                    read_note(newest.note)[0].root != newest.root:
                return (f"the ledger's records 1..{newest.size} no longer give the root of "
                        f"its own checkpoint {newest.size}: records were changed since")
        except LookupError as exc:
            return f"the tree cannot be read back: {exc}"
        return None

    def _check_published(self, con: Any, frontier: Frontier) -> str | None:
        """The checkpoint published in --checkpoint-dir must be of a tree this ledger
        extends. An unreadable directory is the publisher's to report."""
        assert self.publisher is not None
        try:
            published = self.publisher.published()
        except (OSError, NoteError, ValueError):
            return None
        if published is None or published.origin != self.origin:
            return None  # none yet; another log's is refused by the publisher, loudly
        where = self.publisher.directory
        if published.size > frontier.size:
            return (f"{where} holds checkpoint {published.size}, beyond this ledger's tree "
                    f"({frontier.size} records): the ledger was truncated or restored from "
                    "an older copy")
        try:
            same = tree.root(con, published.size) == published.root
        except LookupError as exc:
            return f"the tree cannot be read back: {exc}"
        if not same:
            return (f"the ledger's records 1..{published.size} no longer give the root "
                    f"published in {where}: records were changed since it was published")
        return None

    def _stop(self, problem: str) -> None:
        self.state, self.detail = "stopped", problem
        log.error("checkpoints stopped: %s. No further checkpoint is signed (it would not "
                  "extend the one published); serving goes on. Run `mlwitness verify "
                  "--checkpoint` to find the first record that differs.", problem)

    # ── issuing ────────────────────────────────────────────────────────────────────────

    def issue(self, *, final: bool = False) -> CheckpointRow | None:
        """Extend the tree to every loaded record and store a checkpoint of it (None when
        nothing arrived since the last one, or checkpoints are stopped)."""
        with self._lock:
            if self._frontier is None:
                if self.state == "stopped":
                    return None
                self._prepare()
                if self._frontier is None:
                    return None
            target = self.ledger.loaded_seq
            frontier = self._frontier
            if target <= frontier.size and (self.latest is not None and
                                            self.latest.size >= frontier.size):
                return None
            if target == 0:
                return None
            con = self.ledger.cursor()
            try:
                return self._extend_and_sign(con, frontier.copy(), target, final)
            finally:
                con.close()

    def _extend_and_sign(self, con: Any, frontier: Frontier, target: int, final: bool
                         ) -> CheckpointRow | None:
        nodes: list = []
        while frontier.size < target:
            end = min(target, frontier.size + self.chunk)
            if end < target:
                self.state = "building"
                self.detail = f"building the tree: {frontier.size} of {target} records"
            try:
                leaves = tree.leaf_hashes(con, frontier.size + 1, end)
            except LookupError as exc:
                self._stop(f"the tree cannot be built: {exc}")
                return None
            nodes = frontier.extend(leaves, collect_every=TILE_HEIGHT)
            if end < target:
                self._store(nodes, frontier, None)
                nodes = []
                if self._stopping.is_set() and not final:
                    return None  # shutting down: close() issues the rest
        row = self._new_row(frontier)
        self._store(nodes, frontier, row)
        self.latest, self.state, self.detail = row, "ok", ""
        if self.publisher is not None:
            self.publisher.submit()
        return row

    def _new_row(self, frontier: Frontier) -> CheckpointRow:
        checkpoint = Checkpoint(self.origin, frontier.size, frontier.root())
        return CheckpointRow(frontier.size, checkpoint.root,
                             make_note(checkpoint, self.signer), time.time_ns() // 1000)

    def _store(self, nodes: list, frontier: Frontier, row: CheckpointRow | None) -> None:
        """Nodes, the frontier and the checkpoint row in one transaction of the writer."""
        stored = frontier.copy()

        def write(con: Any) -> None:
            tree.store(con, nodes, stored)
            if row is not None:
                con.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, NULL)",
                            [row.size, row.root, row.note, row.created_us])

        self.ledger.write(write)
        self._frontier, self.tree_size = stored, stored.size
