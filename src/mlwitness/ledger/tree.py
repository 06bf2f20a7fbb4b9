"""The Merkle tree over the ledger, as DuckDB holds it, and the proofs read from it.

Leaf i (from 0) is the record with seq i + 1, of every kind (infer, audit, admin: all are
in the chain), and its data is the record's 32-byte chain hash, `entries.hash`:

    leaf hash i = SHA-256(0x00 ‖ hash of record seq i + 1)        (RFC 6962 §2.1)

so the tree is a function of the chain alone, the same whatever a record's format, and can
be rebuilt from the ledger. (A record's hash covers its prev_hash and every field, so the
leaf commits to the record; the tree adds what the chain cannot give: a short proof that a
record is in a signed tree head, and that one tree head extends another.)

Stored (`merkle_nodes`): the hashes of the perfect subtrees of levels 8, 16, 24, … (tile
boundaries, c2sp.org/tlog-tiles), written by the checkpointer as their last leaf arrives —
about 0.2 bytes a record. Any other perfect subtree is folded from at most 128 hashes of
one tile: levels 0-7 from ≤ 256 records' `entries.hash` (one range read by seq), levels
9-15 from ≤ 256 level-8 rows, and so on (`LedgerTree`). The frontier of the tree built so
far (evidence/merkle.py, `Frontier`) is kept in `ledger_meta` under FRONTIER_KEY, written
in the transaction that stores the nodes it completed.

Proofs are asked for tree sizes up to the tree built so far; `LedgerTree` refuses
(LookupError) a subtree it cannot derive from stored data rather than guess it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.evidence import merkle
from mlwitness.evidence.merkle import Frontier, Node
from mlwitness.evidence.tiles import TILE_HEIGHT, TILE_WIDTH, tile_span

FRONTIER_KEY = "merkle_frontier"  # ledger_meta: hex of Frontier.to_bytes() of the tree built
# Ranges of one level read in one query when they lie at most this many hashes apart.
_GAP = TILE_WIDTH


def leaf_hashes(con: Any, first_seq: int, last_seq: int) -> list[bytes]:
    """The leaf hashes of records first_seq..last_seq, read in one query. LookupError when
    the ledger does not hold every one of them (deleted once archived, or missing)."""
    if last_seq < first_seq:
        return []
    rows = con.execute("SELECT seq, hash FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq",
                       [first_seq, last_seq]).fetchall()
    if len(rows) != last_seq - first_seq + 1 or rows[0][0] != first_seq:
        held = f"{len(rows)} of them" if rows else "none"
        raise LookupError(f"the tree needs records {first_seq}..{last_seq} and the ledger "
                          f"holds {held} (records deleted once archived, or missing)")
    return [merkle.leaf_hash(bytes(digest)) for _, digest in rows]


def stored_nodes(con: Any, level: int, first: int, last: int) -> list[bytes]:
    """Stored subtree hashes idx first..last of `level` (a multiple of 8, at least 8)."""
    if last < first:
        return []
    rows = con.execute("SELECT idx, hash FROM merkle_nodes WHERE level = ? AND idx BETWEEN ? "
                       "AND ? ORDER BY idx", [level, first, last]).fetchall()
    if len(rows) != last - first + 1 or rows[0][0] != first:
        raise LookupError(f"the tree's stored level {level} lacks some of nodes "
                          f"{first}..{last}")
    return [bytes(digest) for _, digest in rows]


class LedgerTree:
    """Perfect subtree hashes (`merkle.SubtreeHashes`) derived from one DuckDB cursor: the
    stored nodes of tile levels, the rest folded from a tile's worth of hashes below."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def subtree_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        spans = [tile_span(level, index) for level, index in nodes]
        wanted: dict[int, list[tuple[int, int]]] = {}  # tile level -> (first position, count)
        for span in spans:
            first = span.tile_index * TILE_WIDTH + span.first
            wanted.setdefault(span.tile_level, []).append((first, span.length))
        known = {tile_level: self._read(tile_level, ranges)
                 for tile_level, ranges in wanted.items()}
        out = []
        for span in spans:
            first = span.tile_index * TILE_WIDTH + span.first
            level = known[span.tile_level]
            out.append(merkle.root_from_hashes([level[p] for p in
                                                range(first, first + span.length)]))
        return out

    def _read(self, tile_level: int, ranges: list[tuple[int, int]]) -> dict[int, bytes]:
        """{position: hash} at tree level 8·tile_level covering `ranges`, read a block of
        neighbouring ranges at a time."""
        blocks: list[list[int]] = []
        for first, count in sorted(ranges):
            last = first + count - 1
            if blocks and first <= blocks[-1][1] + _GAP:
                blocks[-1][1] = max(blocks[-1][1], last)
            else:
                blocks.append([first, last])
        found: dict[int, bytes] = {}
        for first, last in blocks:
            if tile_level == 0:
                hashes = leaf_hashes(self.con, first + 1, last + 1)
            else:
                hashes = stored_nodes(self.con, TILE_HEIGHT * tile_level, first, last)
            found.update(zip(range(first, last + 1), hashes, strict=True))
        return found


def stored_frontier(con: Any) -> Frontier | None:
    """The frontier of the tree built so far, as stored (None: no tree yet)."""
    rows = con.execute("SELECT value FROM ledger_meta WHERE key = ?", [FRONTIER_KEY]).fetchall()
    if not rows:
        return None
    return Frontier.from_bytes(bytes.fromhex(rows[0][0]))


def built_size(con: Any) -> int:
    """Leaves in the tree built so far (0: none)."""
    frontier = stored_frontier(con)
    return frontier.size if frontier is not None else 0


def store(con: Any, nodes: Sequence[merkle.Subtree], frontier: Frontier) -> None:
    """Store completed subtrees and the frontier reached (in the caller's transaction)."""
    if nodes:
        con.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)",
                        [[n.level, n.index, n.hash] for n in nodes])
    con.execute("INSERT INTO ledger_meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value", [FRONTIER_KEY, frontier.to_bytes().hex()])


def root(con: Any, size: int) -> bytes:
    """The root hash of the first `size` leaves (within the tree built so far)."""
    return merkle.tree_root(size, LedgerTree(con))


# ── proofs ─────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Inclusion:
    """Record `seq` is leaf `seq - 1` of the tree of `tree_size` leaves with root `root`:
    `hashes` is its RFC 9162 inclusion proof (audit path, leaf's sibling first)."""

    seq: int
    tree_size: int
    chain_hash: bytes  # the leaf's data: the record's hash
    leaf_hash: bytes
    hashes: tuple[bytes, ...]
    root: bytes

    @property
    def leaf_index(self) -> int:
        return self.seq - 1


def check_size(size: int, built: int, what: str = "tree size") -> None:
    """A tree size a proof may be asked for: 1..built (the tree built so far)."""
    if size < 0:
        raise InvalidInput(f"{what} must be positive, got {size}")
    if size == 0:
        raise InvalidInput(f"{what} 0 is the empty tree: nothing is in it, and nothing "
                           "follows from it")
    if size > built:
        raise FailedPrecondition(f"{what} {size} is beyond the tree built so far "
                                 f"({built} records): ask again after the next checkpoint")


def inclusion(con: Any, seq: int, size: int, built: int, root: bytes | None = None
              ) -> Inclusion:
    """The inclusion proof of record `seq` in the tree of the first `size` records. `root`:
    that tree's root when the caller knows it (a checkpoint's), else it is worked out."""
    if seq <= 0:
        raise InvalidInput(f"seq must be positive, got {seq}")
    check_size(size, built)
    if seq > size:
        raise FailedPrecondition(f"record seq {seq} is not in the tree of size {size} "
                                 f"(records 1..{size}); ask for a later checkpoint")
    rows = con.execute("SELECT hash FROM entries WHERE seq = ?", [seq]).fetchall()
    if not rows:
        raise FailedPrecondition(f"record seq {seq} is not in the ledger (deleted once "
                                 "archived?): no inclusion proof without its hash")
    chain_hash = bytes(rows[0][0])
    tree = LedgerTree(con)
    try:
        hashes = merkle.inclusion_proof(seq - 1, size, tree)
        head = root if root is not None else merkle.tree_root(size, tree)
    except LookupError as exc:
        raise FailedPrecondition(f"no inclusion proof of seq {seq} in size {size}: "
                                 f"{exc}") from None
    return Inclusion(seq, size, chain_hash, merkle.leaf_hash(chain_hash), tuple(hashes), head)


@dataclass(frozen=True)
class Consistency:
    """The tree of `new_size` leaves (root `new_root`) extends the tree of `old_size`
    leaves (root `old_root`): `hashes` is the RFC 9162 consistency proof."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    hashes: tuple[bytes, ...]


def consistency(con: Any, old_size: int, new_size: int, built: int) -> Consistency:
    """The consistency proof from the first `old_size` to the first `new_size` records."""
    check_size(old_size, built, "from size")
    check_size(new_size, built, "to size")
    if old_size > new_size:
        raise InvalidInput(f"from size {old_size} is larger than to size {new_size}: a "
                           "consistency proof goes from the older (smaller) tree to the newer")
    tree = LedgerTree(con)
    try:
        hashes = merkle.consistency_proof(old_size, new_size, tree)
        roots = (merkle.tree_root(old_size, tree), merkle.tree_root(new_size, tree))
    except LookupError as exc:
        raise FailedPrecondition(f"no consistency proof from size {old_size} to {new_size}: "
                                 f"{exc}") from None
    return Consistency(old_size, new_size, *roots, tuple(hashes))
