"""Exact interventional Shapley values over all 2^M coalitions (method `exact`).

For a decision `x` and reference rows `R` (r = 1..|R|) the value of a coalition `S` is
``v(S) = mean_r f(hybrid(S, r))`` where ``hybrid(S, r)`` takes `x`'s value for the
features in `S` and `r`'s for the others. All 2^M × |R| hybrid rows are built at once and
passed to `f` in one call (a 6-feature decision against 100 reference rows is one call of
6,400 rows); only past `CHUNK_CELLS` (rows × features) are they split into several calls,
so memory stays bounded. Then

    phi_i = sum over S not containing i of |S|! (M - |S| - 1)! / M! * (v(S + i) - v(S))

Each term is a difference of two coalition values, so a feature the model ignores gets
exactly 0 (the two rows are identical), not rounding noise.

Refused with ValueError (the caller maps it to a status): more than `MAX_EXACT_FEATURES`
features (use `kernel`), or more than `MAX_EXACT_CELLS` cells (2^M × |R| × M), the bound on
the work one explanation may ask of the model.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from mlwitness.explain.attribution import (
    Attribution,
    ModelFunction,
    instance_and_reference,
    model_values,
)

MAX_EXACT_FEATURES = 12
# 2^M × reference rows × M: 12 features × 1,365 rows, or 6 features × 174,762 rows.
MAX_EXACT_CELLS = 2**26
# Cells (rows × features) per model call: 16 MiB of float64 hybrid rows at most.
CHUNK_CELLS = 2**21


def coalition_masks(m: int) -> np.ndarray:
    """All 2^m coalitions as a bool [2^m, m] array; row k holds feature i when bit i of k is
    set (row 0 is the empty coalition, row 2^m - 1 the full one)."""
    return ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(bool)


def coalition_values(
    f: ModelFunction, x: np.ndarray, reference: np.ndarray, masks: np.ndarray,
    chunk_cells: int = CHUNK_CELLS,
) -> tuple[np.ndarray, int, int]:
    """`v(S)` for each coalition row of `masks`, with the model rows and calls it took.

    Hybrid rows have dtype ``np.result_type(x, reference)`` and are ordered coalition by
    coalition, reference row by reference row within one.
    """
    n_ref, m = reference.shape
    per_call = max(1, chunk_cells // (n_ref * m))
    dtype = np.result_type(x, reference)
    values = np.empty(masks.shape[0], dtype=np.float64)
    calls = 0
    for start in range(0, masks.shape[0], per_call):
        part = masks[start:start + per_call]
        rows = np.where(part[:, None, :], x[None, None, :], reference[None, :, :])
        out = model_values(f, rows.reshape(-1, m).astype(dtype, copy=False))
        values[start:start + part.shape[0]] = out.reshape(part.shape[0], n_ref).mean(axis=1)
        calls += 1
    return values, masks.shape[0] * n_ref, calls


@lru_cache(maxsize=16)
def _pairs(m: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Per feature i: the coalitions without i, the same with i, and their Shapley weight."""
    sizes = coalition_masks(m).sum(axis=1)
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
                       for s in range(m)])
    index = np.arange(2**m)
    out = []
    for i in range(m):
        without = index[(index >> i) & 1 == 0]
        out.append((without, without | (1 << i), weight[sizes[without]]))
    return tuple(out)


def shapley_from_values(values: np.ndarray, m: int) -> np.ndarray:
    """Shapley values of the game whose 2^m coalition values are `values` (bit order as in
    :func:`coalition_masks`)."""
    return np.array([np.dot(w, values[with_i] - values[without])
                     for without, with_i, w in _pairs(m)])


def exact_shapley(f: ModelFunction, x: np.ndarray, reference: np.ndarray, *,
                  max_cells: int = MAX_EXACT_CELLS, chunk_cells: int = CHUNK_CELLS
                  ) -> Attribution:
    """Interventional Shapley values of `f` at `x` against every row of `reference`."""
    x, reference = instance_and_reference(x, reference)
    m = x.shape[0]
    if m > MAX_EXACT_FEATURES:
        raise ValueError(f"exact Shapley values enumerate 2^M coalitions and are limited to "
                         f"{MAX_EXACT_FEATURES} features; this input has {m}: use the "
                         "'kernel' method")
    cells = 2**m * reference.shape[0] * m
    if cells > max_cells:
        raise ValueError(f"exact Shapley values for {m} features against {reference.shape[0]}"
                         f" reference rows need 2^{m} x {reference.shape[0]} x {m} = {cells:,}"
                         f" cells, over the limit of {max_cells:,}: use fewer reference rows "
                         "or the 'kernel' method")
    values, rows, calls = coalition_values(f, x, reference, coalition_masks(m), chunk_cells)
    return Attribution(
        method="exact", values=shapley_from_values(values, m), fx=float(values[-1]),
        reference_value=float(values[0]), reference_rows=reference.shape[0],
        samples=2**m, model_rows=rows, model_calls=calls,
    )


def exact_shapley_many(f: ModelFunction, xs: np.ndarray, reference: np.ndarray, *,
                       max_cells: int = MAX_EXACT_CELLS, chunk_cells: int = CHUNK_CELLS
                       ) -> list[Attribution]:
    """`exact_shapley` for each row of `xs` against the same reference rows, the hybrid rows
    of as many decisions as fit in `chunk_cells` passed to `f` in one call (a decision too
    big for one call is worked out on its own, as `exact_shapley` does). Each decision's
    answer is the one `exact_shapley` gives when `f` rounds a row alike in any batch.

    A hybrid row that occurs more than once in a call goes to `f` once, its value copied to
    every coalition and reference row it stands for (`_Distinct`): the reference rows
    themselves (the empty coalition, and any coalition whose features `x` shares with the
    reference row), once a call; reference rows alike outside a coalition; and coalitions
    that differ only in features where `x` has the reference row's value. The values
    averaged are those of all 2^M × |R| rows, in the same order, so the numbers are the
    same as sending every row. `model_rows` is still 2^M × |R|, the rows the values stand
    on."""
    xs = np.asarray(xs)
    if xs.ndim != 2 or xs.shape[0] == 0:
        raise ValueError(f"xs must be rows of features, got shape {xs.shape}")
    _, reference = instance_and_reference(xs[0], reference)
    m, n_ref = xs.shape[1], reference.shape[0]
    per_decision = 2**m * n_ref * m
    if m > MAX_EXACT_FEATURES or per_decision > chunk_cells:
        return [exact_shapley(f, x, reference, max_cells=max_cells, chunk_cells=chunk_cells)
                for x in xs]
    dtype = np.result_type(xs, reference)
    reference = np.ascontiguousarray(reference, dtype=dtype)
    distinct = _distinct(reference.tobytes(), dtype.str, reference.shape)
    per_call = max(1, chunk_cells // per_decision)
    out: list[Attribution] = []
    for start in range(0, xs.shape[0], per_call):
        part = xs[start:start + per_call].astype(dtype, copy=False)
        rows, index = distinct.rows(part)
        values = model_values(f, rows, index.reshape(-1))
        values = values.reshape(part.shape[0], 2**m, n_ref).mean(axis=2)
        out.extend(Attribution(
            method="exact", values=shapley_from_values(v, m), fx=float(v[-1]),
            reference_value=float(v[0]), reference_rows=n_ref, samples=2**m,
            model_rows=2**m * n_ref, model_calls=1) for v in values)
    return out


@lru_cache(maxsize=4)
def _distinct(data: bytes, dtype: str, shape: tuple[int, int]) -> _Distinct:
    """The `_Distinct` of a reference set (by its bytes): a window's calls share one."""
    return _Distinct(np.frombuffer(data, dtype=dtype).reshape(shape))


class _Distinct:
    """The distinct hybrid rows of decisions against one reference set, and where each of
    the 2^M × |R| rows of a decision is among them.

    Rows are compared by their bytes, so rows taken as the same are the same input to `f`.
    Hybrid row (S, r) takes x's values in S and r's elsewhere. With E the features where
    x's value is r's, it is also the row (S | E, r), and every reference row alike with r
    outside S | E gives it too: so N = S | E and a = `first`[N, r], the first of those,
    name it, and two pairs of a decision give the same row exactly when they have the same
    name. A row that is reference row a itself (x has a's values in all of N) is sent once
    a call, for every decision."""

    def __init__(self, reference: np.ndarray) -> None:
        n_ref, m = reference.shape
        self.reference = reference
        self.masks = coalition_masks(m)
        self.bits = _bits(reference)  # [R, M]: None when the dtype's bytes cannot be viewed
        first = np.empty((2**m, n_ref), dtype=np.int64)
        for k, mask in enumerate(self.masks):
            first[k] = _first_alike(self.bits, ~mask) if self.bits is not None \
                else np.arange(n_ref)
        self.first_flat = first.reshape(-1).astype(np.int32)
        self.r = np.arange(n_ref, dtype=np.int32)
        self.shared = np.flatnonzero(first[0] == np.arange(n_ref))  # distinct reference rows
        self.shared_at = np.cumsum(first[0] == np.arange(n_ref)) - 1

    def rows(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the distinct rows of decisions `xs`: the reference rows, then each decision's
        own; where each decision's row (coalition, reference row) is, [len(xs), 2^M, R])."""
        n_ref, m = self.reference.shape
        k = 2**m
        bits = _bits(xs)
        if self.bits is None or bits is None:
            same = np.zeros((xs.shape[0], 1, n_ref), dtype=np.int32)
        else:
            equal = bits[:, None, :] == self.bits[None, :, :]  # [P, R, M]
            same = (equal @ (1 << np.arange(m, dtype=np.int32)).astype(np.int32)
                    ).astype(np.int32)[:, None, :]  # E, as a coalition: [P, 1, R]
        coalition = np.arange(k, dtype=np.int32)[None, :, None]
        named = coalition | same  # S | E: [P, K, R]
        alike = self.first_flat[named * n_ref + self.r]  # first[S | E, r]
        decision = np.arange(xs.shape[0], dtype=np.int32)[:, None, None]
        shared = (same[decision, 0, alike] & named) == named  # the row is reference row a
        own = ((named == coalition) & (alike == self.r) & ~shared).reshape(-1)  # rows sent
        at = np.cumsum(own, dtype=np.int64) - 1 + self.shared.size
        index = np.where(shared, self.shared_at[self.first_flat[alike]],
                         at[(decision.astype(np.int64) * k + named) * n_ref + alike])
        every = np.where(self.masks[None, :, None, :], xs[:, None, None, :],
                         self.reference[None, None, :, :]).reshape(-1, m)
        mine = np.take(every, np.flatnonzero(own), axis=0)
        return np.concatenate([self.reference[self.shared], mine]), index


def _bits(a: np.ndarray) -> np.ndarray | None:
    """`a`'s elements as unsigned integers holding their bytes (None: no such integer)."""
    size = a.dtype.itemsize
    if size not in (1, 2, 4, 8):
        return None
    return np.ascontiguousarray(a).view(np.dtype(f"u{size}"))


def _first_alike(bits: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """For each row, the first row with the same bytes in `columns` (a bool mask)."""
    n = bits.shape[0]
    if not columns.any():
        return np.zeros(n, dtype=np.int64)
    _, inverse = np.unique(bits[:, columns], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.full(int(inverse.max()) + 1, n, dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(n))
    return first[inverse]
