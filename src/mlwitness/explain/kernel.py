"""KernelSHAP (Lundberg & Lee 2017): Shapley values by weighted regression (method `kernel`).

The same interventional game as `exact` (see :mod:`mlwitness.explain.shapley`), for inputs
too wide to enumerate. A coalition `S` of size `s` (0 < s < M) has the Shapley kernel
weight ``k(s) = (M - 1) / (C(M, s) s (M - s))``; the attributions are the weighted
least-squares fit of ``v(S) - v(empty) ~ sum_{i in S} phi_i`` with efficiency
(``sum phi = v(full) - v(empty)``) imposed exactly by eliminating the last feature's
unknown. Over all coalitions this fit *is* the Shapley value.

Which coalitions (`samples` is the budget of proper coalitions, default ``2M + 2048``):

1. when all ``2^M - 2`` fit in the budget, all of them, with their exact weights (then
   the answer equals `exact`, and no seed is involved);
2. otherwise sizes are taken in pairs ``{g, M - g}`` from the outside in (g = 1, 2, …,
   where the kernel puts most of its weight); a pair whose share of the remaining weight
   times the remaining budget covers all its coalitions is enumerated in full, with exact
   weights, and the first pair that does not fit stops this;
3. the rest of the budget is drawn at random from the remaining pairs — a pair with
   probability proportional to its kernel weight, a subset of size `g` uniformly, and
   always together with its complement (paired sampling) — until the budget's number of
   distinct coalitions is reached. Each drawn coalition's weight is proportional to how
   often it was drawn, scaled so the drawn coalitions carry the remaining pairs' weight.

Draws come from ``numpy.random.default_rng(seed)`` in a fixed order, so a seed gives the
same answer every time; the answer reports the seed and the number of coalitions whose
value was computed (including the empty and full ones).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from mlwitness.explain.attribution import (
    Attribution,
    ModelFunction,
    instance_and_reference,
)
from mlwitness.explain.shapley import MAX_EXACT_CELLS, coalition_masks, coalition_values

DEFAULT_SEED = 0
_DRAW_ROUNDS = 32  # bound on sampling rounds (each of `budget` draws) when duplicates pile up


def default_samples(m: int) -> int:
    return 2 * m + 2048


def kernel_shapley(
    f: ModelFunction, x: np.ndarray, reference: np.ndarray, *,
    samples: int | None = None, seed: int = DEFAULT_SEED, max_cells: int = MAX_EXACT_CELLS,
) -> Attribution:
    """KernelSHAP attributions of `f` at `x` against the rows of `reference`."""
    x, reference = instance_and_reference(x, reference)
    m = x.shape[0]
    budget = default_samples(m) if samples is None else int(samples)
    if budget < 2 * m:
        raise ValueError(f"kernel SHAP needs at least 2 x features = {2 * m} coalitions, "
                         f"got {budget}")
    cells = (min(budget, 2**m - 2) + 2) * reference.shape[0] * m
    if cells > max_cells:
        raise ValueError(f"kernel SHAP with {budget:,} coalitions against "
                         f"{reference.shape[0]} reference rows of {m} features needs "
                         f"{cells:,} cells, over the limit of {max_cells:,}: use fewer "
                         "samples or reference rows")
    sampled = m > 1 and 2**m - 2 > budget
    masks, weights = (_sampled(m, budget, seed) if sampled else _enumerated(m))
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    values, rows, calls = coalition_values(f, x, reference, np.concatenate([ends, masks]))
    base, full = values[0], values[1]
    phi = _constrained_fit(masks, weights, values[2:] - base, full - base)
    return Attribution(
        method="kernel", values=phi, fx=float(full), reference_value=float(base),
        reference_rows=reference.shape[0], samples=masks.shape[0] + 2,
        seed=seed if sampled else None, model_rows=rows, model_calls=calls,
    )


def _kernel_weight(m: int, s: int) -> float:
    return (m - 1) / (math.comb(m, s) * s * (m - s))


def _enumerated(m: int) -> tuple[np.ndarray, np.ndarray]:
    masks = coalition_masks(m)[1:-1]
    sizes = masks.sum(axis=1)
    return masks, np.array([_kernel_weight(m, int(s)) for s in sizes])


def _pairs(m: int) -> list[tuple[int, int, float]]:
    """Size pairs g = 1 .. ceil((M-1)/2): (g, number of coalitions, total kernel weight)."""
    out = []
    for g in range(1, m // 2 + 1):
        count = math.comb(m, g) * (1 if 2 * g == m else 2)
        out.append((g, count, count * _kernel_weight(m, g)))
    return out


def _sampled(m: int, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = _pairs(m)
    masks: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    left = budget
    rest = 0
    for rest, (g, count, mass) in enumerate(pairs):
        share = mass / sum(p[2] for p in pairs[rest:])
        if left * share < count - 1e-8:
            break
        full = _of_size(m, g)
        masks.append(full)
        weights.append(np.full(full.shape[0], _kernel_weight(m, g)))
        left -= count
    else:
        rest = len(pairs)
    drawn, counts = _draw(m, pairs[rest:], left, np.random.default_rng(seed))
    if drawn.shape[0]:
        masks.append(drawn)
        weights.append(counts / counts.sum() * sum(p[2] for p in pairs[rest:]))
    return np.concatenate(masks), np.concatenate(weights)


def _of_size(m: int, g: int) -> np.ndarray:
    """Every coalition of size g and (when g != M - g) its complement, of size M - g."""
    rows = np.zeros((math.comb(m, g), m), dtype=bool)
    for k, members in enumerate(itertools.combinations(range(m), g)):
        rows[k, list(members)] = True
    return rows if 2 * g == m else np.concatenate([rows, ~rows])


def _draw(m: int, pairs: list[tuple[int, int, float]], budget: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paired draws from `pairs` until `budget` distinct coalitions: (distinct, counts)."""
    if budget <= 0 or not pairs:
        return np.zeros((0, m), dtype=bool), np.zeros(0)
    sizes = np.array([g for g, _, _ in pairs])
    p = np.array([mass for _, _, mass in pairs])
    p /= p.sum()
    draws = np.zeros((0, m), dtype=bool)
    for _ in range(_DRAW_ROUNDS):
        n = max(1, budget // 2)
        g = sizes[rng.choice(len(sizes), size=n, p=p)]
        order = np.argsort(rng.random((n, m)), axis=1)
        first = np.argsort(order, axis=1) < g[:, None]  # g random features per draw
        pair = np.empty((2 * n, m), dtype=bool)
        pair[0::2], pair[1::2] = first, ~first
        draws = np.concatenate([draws, pair])
        if np.unique(draws, axis=0).shape[0] >= budget:
            break
    # Keep the draws up to the one that brings the budget-th distinct coalition (rounded
    # up to whole pairs), so the answer does not depend on how many rounds were drawn.
    _, first_seen = np.unique(draws, axis=0, return_index=True)
    first_seen.sort()
    end = int(first_seen[min(budget, first_seen.size) - 1]) + 1
    end += end % 2
    distinct, counts = np.unique(draws[:end], axis=0, return_counts=True)
    return distinct, counts.astype(np.float64)


def _constrained_fit(masks: np.ndarray, weights: np.ndarray, y: np.ndarray,
                     total: float) -> np.ndarray:
    """Weighted least squares of y ~ masks @ phi subject to sum(phi) == total."""
    m = masks.shape[1]
    if m == 1:
        return np.array([total])
    z = masks.astype(np.float64)
    design = z[:, :-1] - z[:, -1:]
    target = y - z[:, -1] * total
    root = np.sqrt(weights)
    head, *_ = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)
    return np.append(head, total - head.sum())
