"""Nearest flip: the smallest change to one feature (or a pair) that changes the decision.

`nearest_flips` searches each feature in both directions from the applicant's value, only
within that feature's observed range ``[low, high]`` (the baseline's), on replay through a
batched decision function ``decide(X[n, M]) -> labels[n]``:

1. one call evaluates `x` and, per feature and direction, `grid` evenly spaced values from
   `x` to the range's end (every integer when an `integer` feature has no more than `grid`
   of them there, else `grid` evenly spaced integers);
2. the first grid value whose decision differs from x's, and the one before it, bracket the
   change; all brackets are then bisected together, one call per step, until they are no
   wider than the feature's `tolerance` (adjacent integers for an integer feature).

The answer per feature is the nearest flipping value found (the smaller change of the two
directions; on a tie, the increase) — it is a value the model was seen to decide
differently, at most `tolerance` beyond the boundary — or none: "no flip within range".
A change region narrower than the grid step (1/`grid` of the way to the range's end) can
be missed; a finer `grid` finds it.

Pairs (optional): for each pair ``(i, j)`` a ``pair_grid × pair_grid`` grid over both
ranges (plus x's own values), all pairs in the same first call; the flipping grid point
nearest in range-normalised distance ``sqrt(di^2 + dj^2)`` (``d = change / (high - low)``)
is then pulled toward `x` by bisection along the straight line to it (for two continuous
features), to the pair tolerance.

Model calls are bounded: ``1 + bisection steps`` for the features (at most
`MAX_BISECTIONS`), plus at most as many for the pairs; `FlipSearch` reports calls and rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Decide = Callable[[np.ndarray], np.ndarray]

GRID = 64
PAIR_GRID = 33
MAX_GRID = 4096
MAX_PAIR_GRID = 201
MAX_BISECTIONS = 60
RELATIVE_TOLERANCE = 1e-4  # default tolerance: this fraction of the feature's range
MAX_ROWS = 2_000_000  # rows of the first call (x, the grids and the pair grids)


@dataclass(frozen=True)
class Flip:
    """The nearest flipping value of one feature, or `to is None`: no flip within range."""

    feature: int
    value: float  # the applicant's
    to: float | None
    direction: str | None  # "up" or "down"
    distance: float | None  # |to - value|
    decision: Any  # the decision at `to` (None when there is no flip)
    tolerance: float


@dataclass(frozen=True)
class PairFlip:
    features: tuple[int, int]
    values: tuple[float, float]
    to: tuple[float, float] | None
    distance: float | None  # range-normalised
    decision: Any


@dataclass(frozen=True)
class FlipSearch:
    decision: Any  # x's decision
    flips: tuple[Flip, ...]
    pairs: tuple[PairFlip, ...]
    model_calls: int
    model_rows: int


class _Counter:
    """`decide`, checked and counted."""

    def __init__(self, decide: Decide) -> None:
        self.decide, self.calls, self.rows = decide, 0, 0

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = np.asarray(self.decide(rows))
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (rows.shape[0],):
            raise ValueError(f"the decision function must return one decision per row: got "
                             f"shape {out.shape} for {rows.shape[0]} rows")
        self.calls += 1
        self.rows += rows.shape[0]
        return out


@dataclass
class _Bracket:
    """A change between `near` (x's decision) and `far` (another) on feature `feature`."""

    feature: int
    direction: str
    near: float
    far: float
    decision: Any


def nearest_flips(
    decide: Decide, x: np.ndarray, low: np.ndarray, high: np.ndarray, *,
    integer: Sequence[bool] | np.ndarray | None = None,
    tolerance: float | np.ndarray | None = None, grid: int = GRID,
    pairs: Sequence[tuple[int, int]] = (), pair_grid: int = PAIR_GRID,
) -> FlipSearch:
    """Search every feature (and the given pairs) for the nearest decision change.

    Rows passed to `decide` have x's dtype, and every value reported is one the model saw
    (rounded to that dtype).
    """
    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x must be one row of features, got shape {x.shape}")
    m = x.size
    low, high = (np.broadcast_to(np.asarray(v, dtype=np.float64), (m,)) for v in (low, high))
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
        raise ValueError("each feature needs a finite range with low <= high")
    is_int = np.zeros(m, dtype=bool) if integer is None else np.asarray(integer, dtype=bool)
    if is_int.shape != (m,):
        raise ValueError(f"integer needs one flag per feature ({m})")
    tol = (RELATIVE_TOLERANCE * (high - low) if tolerance is None
           else np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (m,)))
    if np.any(tol < 0) or not np.all(np.isfinite(tol)):
        raise ValueError("tolerance must be finite and not negative")
    if not 1 <= grid <= MAX_GRID or not 2 <= pair_grid <= MAX_PAIR_GRID:
        raise ValueError(f"grid must be 1..{MAX_GRID} and pair_grid 2..{MAX_PAIR_GRID}")
    pairs = [(int(i), int(j)) for i, j in pairs]
    for i, j in pairs:
        if not (0 <= i < m and 0 <= j < m and i != j):
            raise ValueError(f"pair ({i}, {j}) must name two different features of {m}")
    search = _Search(decide, x)
    xf = search.xf

    singles = [(i, d, search.seen(_candidates(xf[i], low[i], high[i], d, grid, is_int[i])))
               for i in range(m) for d in ("up", "down")]
    axes = [(search.seen(_axis(xf[i], low[i], high[i], pair_grid, is_int[i])),
             search.seen(_axis(xf[j], low[j], high[j], pair_grid, is_int[j])))
            for i, j in pairs]
    n_rows = 1 + sum(v.size for *_, v in singles) + sum(a.size * b.size for a, b in axes)
    if n_rows > MAX_ROWS:
        raise ValueError(f"the flip search would evaluate {n_rows:,} rows at once, over the "
                         f"limit of {MAX_ROWS:,}: use a smaller grid or fewer pairs")
    blocks = [x[None, :]]
    for i, _, values in singles:
        blocks.append(search.rows({i: values}))
    for (i, j), (a, b) in zip(pairs, axes, strict=True):
        va, vb = np.meshgrid(a, b, indexing="ij")
        blocks.append(search.rows({i: va.ravel(), j: vb.ravel()}))
    out = search.decide(np.concatenate(blocks))
    search.base = out[0]
    at = 1
    brackets: list[_Bracket] = []
    for i, direction, values in singles:
        seen = out[at:at + values.size]
        at += values.size
        changed = np.flatnonzero(seen != search.base)
        if changed.size:
            k = int(changed[0])
            # Before the first grid value lies x's own value, or, when x is outside the
            # range, nothing searchable: the range's edge (values[0]) is then the answer.
            inside = low[i] <= xf[i] <= high[i]
            near = float(values[k - 1]) if k else (xf[i] if inside else float(values[0]))
            brackets.append(_Bracket(i, direction, near, float(values[k]), seen[k]))
    _bisect(search, brackets, tol, is_int)
    flips = tuple(_nearest(i, float(xf[i]), tol[i], [b for b in brackets if b.feature == i])
                  for i in range(m))
    pair_flips = _pairs(search, out[at:], pairs, axes, low, high, is_int)
    return FlipSearch(_plain(search.base), flips, pair_flips, search.decide.calls,
                      search.decide.rows)


class _Search:
    """x, its decision and the checked, counted decision function."""

    def __init__(self, decide: Decide, x: np.ndarray) -> None:
        self.decide = _Counter(decide)
        self.x = x
        self.xf = x.astype(np.float64)
        self.base: Any = None

    def seen(self, values: np.ndarray) -> np.ndarray:
        """`values` as the model will see them (rounded to x's dtype), as float64."""
        return np.asarray(values).astype(self.x.dtype).astype(np.float64)

    def rows(self, changes: dict[int, np.ndarray]) -> np.ndarray:
        """Copies of x, one per value, with feature i set to `changes[i]`."""
        n = len(next(iter(changes.values())))
        rows = np.repeat(self.x[None, :], n, axis=0)
        for i, values in changes.items():
            rows[:, i] = values
        return rows


def _candidates(v: float, lo: float, hi: float, direction: str, grid: int,
                integer: bool) -> np.ndarray:
    """Values in the range beyond x's in `direction`, nearest first."""
    sign = 1 if direction == "up" else -1
    if (v >= hi) if sign > 0 else (v <= lo):
        return np.zeros(0)
    start = min(max(v, lo), hi)  # x's value, or the range's edge when x is outside it
    end = hi if sign > 0 else lo
    if integer:
        if sign > 0:
            first = max(math.floor(v) + 1, math.ceil(lo))
            last = math.floor(hi)
        else:
            first = min(math.ceil(v) - 1, math.floor(hi))
            last = math.ceil(lo)
        count = (last - first) * sign + 1
        if count <= 0:
            return np.zeros(0)
        if count <= grid:
            return first + sign * np.arange(count, dtype=np.float64)
        return np.unique(np.rint(np.linspace(first, last, grid)))[::sign]
    values = start + (end - start) * np.arange(1, grid + 1) / grid
    return values if start == v else np.concatenate([[start], values])


def _axis(v: float, lo: float, hi: float, n: int, integer: bool) -> np.ndarray:
    """A pair-grid axis: n values over [lo, hi] plus x's own (when in range), sorted."""
    values = np.linspace(lo, hi, n)
    if integer:
        values = np.rint(values)
    if lo <= v <= hi:
        values = np.append(values, v)
    return np.unique(values)


def _bisect(search: _Search, brackets: list[_Bracket], tol: np.ndarray,
            is_int: np.ndarray) -> None:
    """Narrow every bracket to its tolerance, one batched call per step."""
    for _ in range(MAX_BISECTIONS):
        todo, mids = [], []
        for b in brackets:
            mid = _midpoint(search, b.near, b.far, tol[b.feature], bool(is_int[b.feature]))
            if mid is not None:
                todo.append(b)
                mids.append(mid)
        if not todo:
            return
        rows = np.repeat(search.x[None, :], len(todo), axis=0)
        rows[np.arange(len(todo)), [b.feature for b in todo]] = mids
        for b, mid, d in zip(todo, mids, search.decide(rows), strict=True):
            if d != search.base:
                b.far, b.decision = mid, d
            else:
                b.near = mid


def _midpoint(search: _Search, near: float, far: float, tol: float,
              integer: bool) -> float | None:
    """A value strictly between near and far to test next, or None when narrow enough."""
    lo, hi = min(near, far), max(near, far)
    if integer:
        first, last = math.floor(lo) + 1, math.ceil(hi) - 1
        return float((first + last) // 2) if first <= last else None
    if hi - lo <= tol:
        return None
    mid = float(search.seen(np.array((lo + hi) / 2)))
    return mid if lo < mid < hi else None  # None: no representable value in between


def _nearest(i: int, v: float, tol: float, found: list[_Bracket]) -> Flip:
    if not found:
        return Flip(i, v, None, None, None, None, float(tol))
    best = min(found, key=lambda b: (abs(b.far - v), b.direction != "up"))
    return Flip(i, v, float(best.far), best.direction, float(abs(best.far - v)),
                _plain(best.decision), float(tol))


@dataclass
class _PairPoint:
    """The best flipping point of a pair so far: x + t (grid point - x), t in (near, 1]."""

    i: int
    j: int
    gi: float
    gj: float
    decision: Any
    t: float = 1.0
    near: float = 0.0


def _pairs(search: _Search, out: np.ndarray, pairs: list[tuple[int, int]],
           axes: list[tuple[np.ndarray, np.ndarray]], low: np.ndarray, high: np.ndarray,
           is_int: np.ndarray) -> tuple[PairFlip, ...]:
    xf = search.xf
    span = np.where(high > low, high - low, 1.0)
    found: list[_PairPoint | None] = []
    at = 0
    for (i, j), (a, b) in zip(pairs, axes, strict=True):
        seen = out[at:at + a.size * b.size].reshape(a.size, b.size)
        at += a.size * b.size
        dist = np.hypot(((a - xf[i]) / span[i])[:, None], ((b - xf[j]) / span[j])[None, :])
        dist = np.where(seen != search.base, dist, np.inf)
        k = np.unravel_index(int(np.argmin(dist)), dist.shape)
        found.append(_PairPoint(i, j, float(a[k[0]]), float(b[k[1]]), seen[k])
                     if np.isfinite(dist[k]) else None)
    # Pull continuous pairs' points toward x along the line until t is within tolerance.
    line = [p for p in found if p is not None and not (is_int[p.i] or is_int[p.j])]
    for _ in range(MAX_BISECTIONS):
        todo = [p for p in line if p.t - p.near > RELATIVE_TOLERANCE]
        if not todo:
            break
        rows = np.repeat(search.x[None, :], len(todo), axis=0)
        for r, p in enumerate(todo):
            rows[r, [p.i, p.j]] = _at(xf, p, (p.near + p.t) / 2)
        for p, d in zip(todo, search.decide(rows), strict=True):
            if d != search.base:
                p.t, p.decision = (p.near + p.t) / 2, d
            else:
                p.near = (p.near + p.t) / 2
    result = []
    for (i, j), point in zip(pairs, found, strict=True):
        if point is None:
            result.append(PairFlip((i, j), (float(xf[i]), float(xf[j])), None, None, None))
            continue
        vi, vj = search.seen(np.array(_at(xf, point, point.t)))
        dist = math.hypot((vi - xf[i]) / span[i], (vj - xf[j]) / span[j])
        result.append(PairFlip((i, j), (float(xf[i]), float(xf[j])), (float(vi), float(vj)),
                               dist,
                               _plain(point.decision)))
    return tuple(result)


def _at(xf: np.ndarray, p: _PairPoint, t: float) -> tuple[float, float]:
    return xf[p.i] + t * (p.gi - xf[p.i]), xf[p.j] + t * (p.gj - xf[p.j])


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (labels print and compare plainly)."""
    return value.item() if isinstance(value, np.generic) else value
