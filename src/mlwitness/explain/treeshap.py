"""Interventional TreeSHAP read from the trees themselves (method `tree`).

The same game as `exact` (:mod:`mlwitness.explain.shapley`), for the ensemble's *raw
score* (leaf weights summed over the trees plus base value, before `post_transform`),
computed from the tree nodes with no model call. Because that raw score is a sum over
trees and leaves, so are its Shapley values; per reference row `r` and leaf `l`:

- a hybrid row (x's values on a coalition S, r's elsewhere) reaches `l` iff, for every
  feature `j` tested on `l`'s path, the value it takes there (x_j if j in S, else r_j)
  follows the path at *every* node testing `j`;
- so with ``A`` = the path's features where only x's value follows the path and ``B``
  those where only r's does (features where both do impose nothing; where neither does
  the leaf is unreachable for every S), the leaf's game is ``v_l 1[A ⊆ S, B ∩ S = ∅]``;
- whose Shapley values are ``v_l (a-1)! b! / (a+b)!`` for each feature of A and
  ``-v_l a! (b-1)! / (a+b)!`` for each feature of B (a = |A|, b = |B|): the chance that a
  feature of A comes last among A and before all of B in a random order, and minus the
  chance that one of B comes first among B after all of A.

This is the interventional algorithm of Lundberg et al. (2020, "From local explanations to
global understanding with explainable AI for trees", Algorithm 3), written over whole
arrays: all leaves × all reference rows at once, so the cost is leaves × reference rows ×
path length, and the answer is the mean over reference rows.

What it explains: the raw score of one column (see `TreeEnsemble.describe`). With
post_transform NONE that is the model's output itself (a random forest's averaged
probabilities, a regressor's prediction); with LOGISTIC or SOFTMAX it is the margin
(log-odds), whose Shapley values are *not* those of the probability.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from mlwitness.explain.attribution import Attribution, instance_and_reference
from mlwitness.explain.trees import LeafPaths, TreeEnsemble

# Leaves × path length × reference rows per step: bounds the temporary arrays (~64 MiB).
CHUNK_CELLS = 2**22
# Leaves × 4^depth × path features: the largest per-reference-set table (see TreeExplainer).
TABLE_CELLS = 2**20


@lru_cache(maxsize=8)
def _weights(width: int) -> tuple[np.ndarray, np.ndarray]:
    """[a, b] -> Shapley weight of a feature of A, and of a feature of B."""
    in_a = np.zeros((width + 1, width + 1))
    in_b = np.zeros((width + 1, width + 1))
    for a in range(width + 1):
        for b in range(width + 1 - a):
            if a:
                in_a[a, b] = 1.0 / (a * math.comb(a + b, a))
            if b:
                in_b[a, b] = -1.0 / (b * math.comb(a + b, b))
    return in_a, in_b


def tree_shap(ensemble: TreeEnsemble, x: np.ndarray, reference: np.ndarray,
              column: int = 0) -> Attribution:
    """Interventional Shapley values of raw score `column` at `x` against `reference`."""
    return TreeExplainer(ensemble, reference, column).explain(x)


class TreeExplainer:
    """`tree_shap` for many decisions against one reference set.

    A leaf sees a reference row only through the positions where the row leaves the leaf's
    path (a pattern of D bits), and sees `x` the same way. When the trees are shallow
    (2^D below the number of reference rows, and leaves × 4^D × path features within
    `TABLE_CELLS`), the reference rows are counted per pattern once, here, and every
    leaf's share for each of x's 2^D possible patterns is tabled: a decision then costs
    one pass over the leaves. Otherwise each decision works through leaves × reference rows.
    """

    def __init__(self, ensemble: TreeEnsemble, reference: np.ndarray, column: int = 0) -> None:
        if ensemble.aggregate_function in ("MIN", "MAX"):
            raise ValueError(f"TreeSHAP needs an additive ensemble; aggregate_function "
                             f"{ensemble.aggregate_function} is not: use the 'exact' method")
        if not 0 <= column < ensemble.columns:
            raise ValueError(f"score column {column} does not exist; the ensemble has "
                             f"{ensemble.columns}")
        reference = np.asarray(reference)
        if reference.ndim == 1:
            reference = reference[None, :]
        if reference.ndim != 2 or reference.shape[0] == 0:
            raise ValueError(f"reference must be a non-empty [rows, features] array, got "
                             f"shape {reference.shape}")
        if reference.shape[1] < ensemble.n_features:
            raise ValueError(f"the trees read {ensemble.n_features} features; the reference "
                             f"rows have {reference.shape[1]}")
        self.ensemble, self.reference, self.column = ensemble, reference, column
        c, p = ensemble.compiled, ensemble.paths
        value = c.leaf_values[p.leaf, column]
        if ensemble.aggregate_function == "AVERAGE":
            value = value / c.roots.size
        keep = np.flatnonzero(value != 0.0)  # a leaf worth nothing contributes nothing
        self.leaves = _Leaves(c, p, keep, value[keep])
        self.offset = float(ensemble.offset[column])
        self.reference_value = float(ensemble.raw_scores(reference)[:, column].mean())
        depth, width = p.node.shape[1], p.slot.shape[2]
        self.table: np.ndarray | None = None
        if 0 < keep.size * width * 4**depth <= TABLE_CELLS and 2**depth < reference.shape[0]:
            self.table = self._tabulate(reference)

    def _tabulate(self, reference: np.ndarray) -> np.ndarray:
        """[L, 2^D, U]: each leaf's summed shares per path feature, for each x pattern."""
        c, leaves = self.ensemble.compiled, self.leaves
        depth = leaves.node.shape[1]
        count = np.concatenate([_pattern_counts(c, part, reference)
                                for part in leaves.chunks(reference.shape[0])])
        bits = ((np.arange(2**depth)[:, None] >> np.arange(depth)) & 1).astype(bool)
        patterns = np.broadcast_to(bits.T[None], (leaves.size, depth, 2**depth))
        x_bad = _bad(leaves, patterns & leaves.valid[..., None])
        return _shares(x_bad, _bad(leaves, patterns), count, leaves.value)

    def explain(self, x: np.ndarray) -> Attribution:
        x, _ = instance_and_reference(x, self.reference)
        c, leaves, n_ref = self.ensemble.compiled, self.leaves, self.reference.shape[0]
        x_off = leaves.valid & (c.go_true(x[leaves.path_feature], leaves.node) != leaves.need)
        if self.table is not None:
            code = x_off.astype(np.int64) @ (1 << np.arange(x_off.shape[1]))
            per_slot = self.table[np.arange(leaves.size), code]
            phi = np.bincount(leaves.feature.ravel(), weights=per_slot.ravel(),
                              minlength=x.shape[0]).astype(np.float64)
        else:
            phi = np.zeros(x.shape[0])
            for rows in leaves.ranges(n_ref):
                part = leaves.part(rows)
                r_bad = _bad(part, _off_path(c, part, self.reference))
                per_slot = _shares(_bad(part, x_off[rows, :, None]), r_bad,
                                   np.ones((part.size, n_ref)), part.value)[:, 0]
                phi += np.bincount(part.feature.ravel(), weights=per_slot.ravel(),
                                   minlength=x.shape[0])
        # x reaches exactly the leaves whose path it never leaves: that is its raw score.
        fx = self.offset + float(leaves.value[~x_off.any(axis=1)].sum())
        return Attribution(
            method="tree", values=phi / n_ref, fx=fx, reference_value=self.reference_value,
            reference_rows=n_ref, explains=self.ensemble.describe(self.column),
        )


    def explain_many(self, xs: np.ndarray) -> list[Attribution]:
        """`explain` for each row of `xs`, the tabled case worked out for many rows at once
        (the same numbers, summed in the same order, as one row at a time)."""
        xs = np.asarray(xs)
        if xs.ndim != 2 or xs.shape[0] == 0:
            raise ValueError(f"xs must be rows of features, got shape {xs.shape}")
        if self.table is None:
            return [self.explain(x) for x in xs]
        c, leaves, m = self.ensemble.compiled, self.leaves, xs.shape[1]
        depth, width = leaves.node.shape[1], self.table.shape[2]
        step = max(1, CHUNK_CELLS // max(1, leaves.size * depth * width))
        out: list[Attribution] = []
        for start in range(0, xs.shape[0], step):
            part = xs[start:start + step]
            n = part.shape[0]
            go = c.go_true(part.T[leaves.path_feature], leaves.node)  # [L, D, n]
            x_off = leaves.valid[..., None] & (go != leaves.need[..., None])
            code = np.einsum("ldn,d->ln", x_off.astype(np.int64), 1 << np.arange(depth))
            per_slot = self.table[np.arange(leaves.size)[:, None], code]  # [L, n, U]
            index = np.arange(n)[:, None, None] * m + leaves.feature[None, :, :]
            phi = np.bincount(index.ravel(), weights=per_slot.transpose(1, 0, 2).ravel(),
                              minlength=n * m).reshape(n, m)
            reached = ~x_off.any(axis=1)  # [L, n]
            for k in range(n):
                fx = self.offset + float(leaves.value[reached[:, k]].sum())
                out.append(Attribution(
                    method="tree", values=phi[k] / self.reference.shape[0], fx=fx,
                    reference_value=self.reference_value,
                    reference_rows=self.reference.shape[0],
                    explains=self.ensemble.describe(self.column)))
        return out


class _Leaves:
    """The leaves worth explaining, with their paths (see `LeafPaths`)."""

    def __init__(self, c: Any, p: LeafPaths, keep: np.ndarray, value: np.ndarray) -> None:
        self.node, self.need, self.valid = p.node[keep], p.need[keep], p.valid[keep]
        self.feature, self.slot = p.feature[keep], p.slot[keep]
        self.path_feature = c.feature[self.node]
        self.value = value
        self.size = keep.size

    def ranges(self, n_ref: int) -> list[slice]:
        """Leaf ranges small enough for leaves × path length × `n_ref` temporaries."""
        step = max(1, CHUNK_CELLS // (n_ref * self.node.shape[1]))
        return [slice(i, i + step) for i in range(0, self.size, step)]

    def chunks(self, n_ref: int) -> list[_Leaves]:
        return [self.part(rows) for rows in self.ranges(n_ref)]

    def part(self, rows: slice) -> _Leaves:
        part = object.__new__(_Leaves)
        for name in ("node", "need", "valid", "feature", "slot", "path_feature", "value"):
            setattr(part, name, getattr(self, name)[rows])
        part.size = part.node.shape[0]
        return part


def _off_path(c: Any, leaves: _Leaves, reference: np.ndarray) -> np.ndarray:
    """[L, D, R]: where each reference row leaves each leaf's path."""
    go = c.go_true(reference.T[leaves.path_feature], leaves.node)
    return leaves.valid[..., None] & (go != leaves.need[..., None])


def _pattern_counts(c: Any, leaves: _Leaves, reference: np.ndarray) -> np.ndarray:
    """[L, 2^D]: reference rows per pattern of off-path positions (bit d = position d)."""
    off = _off_path(c, leaves, reference)
    depth = off.shape[1]
    code = np.einsum("ldr,d->lr", off.astype(np.int64), 1 << np.arange(depth))
    flat = (np.arange(leaves.size)[:, None] << depth) + code
    return np.bincount(flat.ravel(), minlength=leaves.size << depth).reshape(
        leaves.size, -1).astype(np.float64)


def _bad(leaves: _Leaves, off: np.ndarray) -> np.ndarray:
    """[L, D, K] off-path positions -> [L, U, K]: path features with a node left."""
    return np.matmul(leaves.slot.transpose(0, 2, 1), off.astype(np.float64)) > 0


def _shares(x_bad: np.ndarray, r_bad: np.ndarray, count: np.ndarray,
            value: np.ndarray) -> np.ndarray:
    """[L, Q, U]: the leaves' Shapley values summed over K reference rows (or patterns).

    `x_bad` [L, U, Q] for Q versions of x, `r_bad` [L, U, K], `count` [L, K] the reference
    rows each of the K stands for. A feature left only by the reference row is in A (x's
    value keeps the path), one left only by x is in B, one left by both closes the leaf.
    """
    xb, rb = x_bad[:, :, :, None], r_bad[:, :, None, :]
    in_a = rb & ~xb
    in_b = xb & ~rb
    alive = ~np.any(xb & rb, axis=1)  # [L, Q, K]
    a, b = in_a.sum(axis=1), in_b.sum(axis=1)
    weight_a, weight_b = _weights(x_bad.shape[1])
    scale = np.where(alive, count[:, None, :] * value[:, None, None], 0.0)
    return (np.einsum("luqk,lqk->lqu", in_a, weight_a[a, b] * scale)
            + np.einsum("luqk,lqk->lqu", in_b, weight_b[a, b] * scale))
