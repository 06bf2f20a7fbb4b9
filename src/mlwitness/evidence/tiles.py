"""Tile arithmetic (c2sp.org/tlog-tiles): where a perfect subtree's hash lives in tiles.

A tile at tile level L holds up to 256 consecutive perfect subtree hashes of tree level 8·L
(merkle.py names subtrees): hash i of tile n at level L is

    MTH(D[(n·256 + i)·256**L : (n·256 + i + 1)·256**L])

A full tile's 256 hashes fold (`merkle.root_from_hashes`) into one hash of tree level 8·(L+1),
the next tile level's entry. Storage that keeps only the hashes of levels 0, 8, 16, … (level 0
being leaf hashes, which the ledger can recompute) can give any perfect subtree by folding at
most 128 neighbouring hashes of one tile.
"""

from __future__ import annotations

from typing import NamedTuple

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT


class TileSpan(NamedTuple):
    """Where a perfect subtree's hash comes from in tlog-tiles storage: the hashes at positions
    [first, first + length) of tile (tile_level, tile_index) fold, with
    merkle.root_from_hashes, into it. length is 1 when the subtree's level is a multiple of
    TILE_HEIGHT (the hash is stored as it is)."""

    tile_level: int
    tile_index: int
    first: int
    length: int


def tile_span(level: int, index: int) -> TileSpan:
    """The tile hashes that give perfect subtree (level, index): a subtree r levels above tile
    level L's tree level 8·L (0 <= r < 8) is the fold of 2**r neighbouring hashes of one tile."""
    if level < 0 or index < 0:
        raise ValueError(f"no subtree ({level}, {index})")
    tile_level, rise = divmod(level, TILE_HEIGHT)
    position = index << rise  # index of the subtree's first hash at tree level 8·tile_level
    return TileSpan(tile_level, position >> TILE_HEIGHT, position % TILE_WIDTH, 1 << rise)


def tile_width(tile_level: int, tile_index: int, size: int) -> int:
    """How many hashes tile (tile_level, tile_index) holds in a tree of `size` leaves: 256 for a
    full tile, 1..255 for the partial one (floor(size / 256**L) mod 256), 0 if not yet begun."""
    hashes_at_level = size >> (TILE_HEIGHT * tile_level)
    return max(0, min(TILE_WIDTH, hashes_at_level - tile_index * TILE_WIDTH))


def tile_path(tile_level: int, tile_index: int, width: int = TILE_WIDTH) -> str:
    """The tlog-tiles resource name of a tile: tile/<L>/<N>[.p/<W>], N in 3-digit groups with
    all but the last prefixed by "x" (1234067 → x001/x234/067)."""
    if not 0 <= tile_level <= 63 or tile_index < 0 or not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"no tile level {tile_level}, index {tile_index}, width {width}")
    groups = []
    rest = tile_index
    while True:
        rest, group = divmod(rest, 1000)
        groups.append(f"{group:03d}")
        if not rest:
            break
    groups.reverse()
    name = "/".join([f"x{g}" for g in groups[:-1]] + [groups[-1]])
    partial = f".p/{width}" if width < TILE_WIDTH else ""
    return f"tile/{tile_level}/{name}{partial}"
