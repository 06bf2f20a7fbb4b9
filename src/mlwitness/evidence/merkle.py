"""The Merkle tree over the ledger: RFC 6962 hashing, the frontier, inclusion and consistency
proofs.

Hashing is RFC 6962 §2.1 (unchanged in RFC 9162 §2.1.1), with SHA-256:

    leaf hash   = SHA-256(0x00 ‖ leaf data)
    node hash   = SHA-256(0x01 ‖ left ‖ right)
    empty tree  = SHA-256("") = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

The Merkle Tree Hash of the leaf hashes h[0:n] is

    MTH(h[0:1]) = h[0]
    MTH(h[0:n]) = node hash(MTH(h[0:k]), MTH(h[k:n]))    for n > 1, k = the largest power of 2 < n

so the left half of every node is a *perfect* subtree. Perfect subtree (level, index) is the
MTH of the 2**level leaves index·2**level .. (index+1)·2**level - 1. Its hash is fixed once its
last leaf exists, for every later tree size, which is what makes it worth storing. A tree of
size n is covered by one perfect subtree per set bit of n, largest (leftmost) first: the
*frontier*. Every hash an inclusion or consistency proof for size n carries is either a
perfect subtree or the hash of a stretch of the tree's ragged right edge, and such a stretch
is itself the fold of the perfect subtrees that cover it (`perfect_subtrees`):

    fold(p1, …, pk) = node hash(p1, node hash(p2, … node hash(p(k-1), pk)))

So proof generation here asks storage only for perfect subtrees, through `SubtreeHashes`, in
one batch per proof: which subtrees a proof needs is a pure function of the index and sizes
(`inclusion_plan`, `consistency_plan`). Proofs are lists of 32-byte hashes in the order
RFC 9162 §2.1.3 and §2.1.4 define (from the leaf's sibling up to the root's child), the order
`check.py` and any RFC 9162 verifier expect.

Where stored subtree hashes sit in c2sp.org/tlog-tiles tiles is `tiles.py`'s business.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

HASH_SIZE = 32
MAX_SIZE = (1 << 64) - 1  # tree sizes are uint64 in checkpoints and proofs

_LEAF = b"\x00"
_NODE = b"\x01"
_sha256 = hashlib.sha256
_SIZE_BYTES = 8

EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the hash of one leaf."""
    return _sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): the hash of an interior node."""
    return _sha256(_NODE + left + right).digest()


class Node(NamedTuple):
    """Perfect subtree `index` of tree level `level`: the 2**level leaves from index·2**level."""

    level: int
    index: int  # type: ignore[assignment]  # shadows tuple.index: the domain's name wins


class Subtree(NamedTuple):
    """A perfect subtree with its hash."""

    level: int
    index: int  # type: ignore[assignment]  # as in Node
    hash: bytes


class SubtreeHashes(Protocol):
    """Where proofs read perfect subtree hashes from: the ledger's tables, or memory in tests.

    Contract: `subtree_hashes(nodes)` returns, in the order asked, the hash of each perfect
    subtree `Node(level, index)` (level 0 is the leaf hashes themselves). Callers here only ask
    for subtrees that lie wholly inside the tree size they were given, so an implementation may
    refuse anything beyond the leaves it holds: it raises `LookupError` for a subtree it does
    not have, and never returns a hash it has not derived from stored data. The hashes of a
    subtree must not depend on the batch it was asked in.
    """

    def subtree_hashes(self, nodes: Sequence[Node]) -> Sequence[bytes]: ...


def root_from_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of `hashes` taken as the nodes of one level: leaf hashes give the tree root, a
    tile's hashes give the root of the subtree the tile spans. An empty list gives EMPTY_ROOT.

    Pairs neighbours level by level and lifts an odd last node unchanged, which gives the same
    hash as the recursive definition above.
    """
    level = list(hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [
            _sha256(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def perfect_subtrees(start: int, end: int) -> list[Node]:
    """The perfect subtrees that cover leaves [start, end), largest first: one per set bit of
    end - start. `start` must be a multiple of the largest of them, as it is for every node of
    an RFC 6962 tree (for [0, n), and for any subtree a proof needs)."""
    if not 0 <= start <= end:
        raise ValueError(f"not a range of leaves: [{start}, {end})")
    nodes = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start & ((1 << level) - 1):
            raise ValueError(f"leaves [{start}, {end}) do not start on a subtree boundary")
        nodes.append(Node(level, start >> level))
        start += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a stretch of tree covered by perfect subtrees `hashes` (largest first)."""
    if not hashes:
        raise ValueError("nothing to fold")
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = _sha256(_NODE + left + result).digest()
    return result


class Frontier:
    """The incremental tree head: the hashes of the perfect subtrees covering leaves 0..size-1,
    largest first (one per set bit of size, so at most 64 of them).

    `append` adds one leaf hash at amortised cost of one node hash (each merge of two equal
    subtrees is paid for by the leaf that completed it); `root` folds the frontier in at most
    63 node hashes. The state survives restarts through `to_bytes` / `to_json`:

        bytes: size as 8 bytes big-endian ‖ each frontier hash (32 bytes), largest subtree first
        JSON:  {"size": <int>, "hashes": ["<base64>", …]}   (same hashes, same order)
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def restore(cls, size: int, hashes: Sequence[bytes]) -> Frontier:
        """A frontier from its persisted parts; rejects a hash count that does not fit size."""
        if not 0 <= size <= MAX_SIZE:
            raise ValueError(f"tree size {size} is out of range")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of {size} leaves has {size.bit_count()} frontier hashes, not {len(hashes)}"
            )
        for h in hashes:
            _check_hash(h)
        frontier = cls()
        frontier._size = size
        frontier._hashes = [bytes(h) for h in hashes]
        return frontier

    @classmethod
    def at(cls, size: int, tree: SubtreeHashes) -> Frontier:
        """The frontier of the first `size` leaves of `tree`, read in one batch."""
        nodes = perfect_subtrees(0, size)
        return cls.restore(size, _read(tree, nodes))

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def subtrees(self) -> list[Subtree]:
        """The frontier as perfect subtrees with their positions."""
        return [
            Subtree(node.level, node.index, h)
            for node, h in zip(perfect_subtrees(0, self._size), self._hashes, strict=True)
        ]

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf's hash (not its data: see `leaf_hash`)."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf_hash)}")
        hashes, size, node = self._hashes, self._size, leaf_hash
        while size & 1:  # each trailing 1 bit is a subtree of the new leaf's size to merge with
            node = _sha256(_NODE + hashes.pop() + node).digest()
            size >>= 1
        hashes.append(bytes(node))
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes], collect_every: int = 0) -> list[Subtree]:
        """Append many leaf hashes. With `collect_every` = k > 0, return every perfect subtree
        completed on the way whose level is a positive multiple of k (k = 8, tiles.TILE_HEIGHT,
        gives the hashes that tile-level storage keeps), in the order they were completed."""
        if collect_every < 0:
            raise ValueError("collect_every must be >= 0")
        collected: list[Subtree] = []
        hashes = self._hashes
        for leaf in leaf_hashes:
            if len(leaf) != HASH_SIZE:
                raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
            position = self._size
            size, node, level = position, leaf, 0
            while size & 1:
                node = _sha256(_NODE + hashes.pop() + node).digest()
                size >>= 1
                level += 1
                if collect_every and level % collect_every == 0:
                    collected.append(Subtree(level, position >> level, node))
            hashes.append(bytes(node))
            self._size = position + 1
        return collected

    def root(self) -> bytes:
        """MTH of the leaves so far (EMPTY_ROOT for none)."""
        return fold(self._hashes) if self._hashes else EMPTY_ROOT

    def copy(self) -> Frontier:
        return Frontier.restore(self._size, self._hashes)

    def to_bytes(self) -> bytes:
        return self._size.to_bytes(_SIZE_BYTES, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        if len(data) < _SIZE_BYTES or (len(data) - _SIZE_BYTES) % HASH_SIZE:
            raise ValueError(f"{len(data)} bytes is not a serialised frontier")
        size = int.from_bytes(data[:_SIZE_BYTES], "big")
        body = data[_SIZE_BYTES:]
        hashes = [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)]
        return cls.restore(size, hashes)

    def to_json(self) -> str:
        return json.dumps(
            {"size": self._size, "hashes": [base64.b64encode(h).decode() for h in self._hashes]}
        )

    @classmethod
    def from_json(cls, text: str) -> Frontier:
        doc = json.loads(text)
        if not isinstance(doc, dict) or set(doc) != {"size", "hashes"}:
            raise ValueError('a frontier is {"size": …, "hashes": […]}')
        size, hashes = doc["size"], doc["hashes"]
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(hashes, list):
            raise ValueError("frontier size must be an integer and hashes a list")
        return cls.restore(size, [_b64decode(h) for h in hashes])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"


def tree_root(size: int, tree: SubtreeHashes) -> bytes:
    """MTH of the first `size` leaves of `tree`, from its perfect subtrees."""
    return Frontier.at(size, tree).root()


def inclusion_plan(index: int, size: int) -> list[list[Node]]:
    """Which perfect subtrees the inclusion proof of leaf `index` in a tree of `size` leaves
    folds from: one list per proof hash, leaf's sibling first. A list of several subtrees is a
    stretch of the ragged right edge (at most one per proof)."""
    _check_size(size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of {size} leaves")
    plan = []
    start, end = 0, size  # the node whose subtree holds the leaf, walking down from the root
    while end - start > 1:
        middle = start + _split(end - start)
        if index < middle:
            plan.append(perfect_subtrees(middle, end))
            end = middle
        else:
            plan.append(perfect_subtrees(start, middle))
            start = middle
    plan.reverse()
    return plan


def consistency_plan(old_size: int, new_size: int) -> list[list[Node]]:
    """Which perfect subtrees the consistency proof from `old_size` to `new_size` folds from,
    in proof order (RFC 9162 §2.1.4.1, SUBPROOF). Empty when the sizes are equal. A proof from
    the empty tree proves nothing and is refused, as verifiers refuse it."""
    _check_size(new_size)
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    plan: list[list[Node]] = []
    if old_size == new_size:
        return plan
    start, end = 0, new_size
    whole = True  # still on the path where the old tree's root is a node of the new tree
    while old_size != end:
        middle = start + _split(end - start)
        if old_size <= middle:
            plan.append(perfect_subtrees(middle, end))
            end = middle
        else:
            plan.append(perfect_subtrees(start, middle))
            start = middle
            whole = False
    if not whole:  # the old tree's last subtree: the verifier cannot know it from its root
        plan.append(perfect_subtrees(start, end))
    plan.reverse()
    return plan


def inclusion_proof(index: int, size: int, tree: SubtreeHashes) -> list[bytes]:
    """The RFC 9162 §2.1.3.1 inclusion proof (audit path) of leaf `index` in the tree of the
    first `size` leaves of `tree`."""
    return _resolve(inclusion_plan(index, size), tree)


def consistency_proof(old_size: int, new_size: int, tree: SubtreeHashes) -> list[bytes]:
    """The RFC 9162 §2.1.4.1 consistency proof between the first `old_size` and the first
    `new_size` leaves of `tree`."""
    return _resolve(consistency_plan(old_size, new_size), tree)


class MemoryTree:
    """A whole tree in memory (every perfect subtree of every level), for tests and small
    trees: about twice the leaf hashes' size."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> None:
        _check_hash(leaf_hash)
        levels, level, node = self._levels, 0, bytes(leaf_hash)
        levels[0].append(node)
        while len(levels[level]) % 2 == 0:
            row = levels[level]
            node = _sha256(_NODE + row[-2] + row[-1]).digest()
            level += 1
            if level == len(levels):
                levels.append([])
            levels[level].append(node)

    def subtree_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        out = []
        for level, index in nodes:
            if 0 <= level < len(self._levels) and 0 <= index < len(self._levels[level]):
                out.append(self._levels[level][index])
            else:
                raise LookupError(f"no subtree ({level}, {index}) in a tree of {self.size} leaves")
        return out

    def root(self, size: int | None = None) -> bytes:
        return tree_root(self.size if size is None else size, self)


def _split(n: int) -> int:
    """The largest power of two below n (n >= 2): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _resolve(plan: list[list[Node]], tree: SubtreeHashes) -> list[bytes]:
    nodes = [node for element in plan for node in element]
    hashes = _read(tree, nodes)
    proof, at = [], 0
    for element in plan:
        proof.append(fold(hashes[at : at + len(element)]))
        at += len(element)
    return proof


def _read(tree: SubtreeHashes, nodes: list[Node]) -> list[bytes]:
    if not nodes:
        return []
    hashes = list(tree.subtree_hashes(nodes))
    if len(hashes) != len(nodes):
        raise ValueError(f"asked for {len(nodes)} subtree hashes, got {len(hashes)}")
    for h in hashes:
        _check_hash(h)
    return hashes


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"tree size {size} is out of range")


def _check_hash(h: bytes) -> None:
    if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
        raise ValueError(f"not a {HASH_SIZE}-byte hash: {h!r:.80}")


def _b64decode(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("hashes are base64 strings")
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode() != text:
        raise ValueError(f"not canonical base64: {text!r:.80}")
    return raw
