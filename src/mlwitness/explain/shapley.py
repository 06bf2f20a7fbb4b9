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
    answer is the one `exact_shapley` gives when `f` rounds a row alike in any batch."""
    xs = np.asarray(xs)
    if xs.ndim != 2 or xs.shape[0] == 0:
        raise ValueError(f"xs must be rows of features, got shape {xs.shape}")
    _, reference = instance_and_reference(xs[0], reference)
    m, n_ref = xs.shape[1], reference.shape[0]
    per_decision = 2**m * n_ref * m
    if m > MAX_EXACT_FEATURES or per_decision > chunk_cells:
        return [exact_shapley(f, x, reference, max_cells=max_cells, chunk_cells=chunk_cells)
                for x in xs]
    masks = coalition_masks(m)
    dtype = np.result_type(xs, reference)
    per_call = max(1, chunk_cells // per_decision)
    out: list[Attribution] = []
    for start in range(0, xs.shape[0], per_call):
        part = xs[start:start + per_call]
        rows = np.where(masks[None, :, None, :], part[:, None, None, :],
                        reference[None, None, :, :])
        values = model_values(f, rows.reshape(-1, m).astype(dtype, copy=False))
        values = values.reshape(part.shape[0], 2**m, n_ref).mean(axis=2)
        out.extend(Attribution(
            method="exact", values=shapley_from_values(v, m), fx=float(v[-1]),
            reference_value=float(v[0]), reference_rows=n_ref, samples=2**m,
            model_rows=2**m * n_ref, model_calls=1) for v in values)
    return out
