"""The answer of every attribution method, and the checks its inputs go through.

An attribution explains one model output `f(x)` (a scalar per row: the probability of the
favourable class, a margin, a regression value) against a *reference set* `R` (rows of
the same shape as `x`). All three methods compute *interventional* Shapley values of the
game `v(S) = mean over r in R of f(x_S, r_{not S})`: the features in `S` take the
applicant's values, the others the reference row's, and nothing else about the data's
joint distribution is assumed. Efficiency then says the values add up to
`v(all) - v(none) = f(x) - mean f(R)`; every :class:`Attribution` carries both sides and
the gap between them, so an answer shows whether it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# f(X[n, M]) -> y[n]: the explained output, one value per row.
ModelFunction = Callable[[np.ndarray], np.ndarray]

# Attributions should add up to f(x) - mean f(R) to this absolute tolerance.
EFFICIENCY_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class Attribution:
    """Shapley values of one decision, and what they were computed from.

    `values[i]` is feature i's share of `fx - reference_value`. `samples` is the number of
    coalitions whose value was computed (2^M for `exact`, the distinct sampled or
    enumerated coalitions plus the empty and full ones for `kernel`, None for `tree`,
    which calls no model); `seed` is set when coalitions were sampled. `model_rows` and
    `model_calls` count what was passed to the model function (0 for `tree`; for
    `exact_shapley_many`, the rows the values stand on, each distinct one run once, and
    the one call they share).
    """

    method: str
    values: np.ndarray
    fx: float
    reference_value: float
    reference_rows: int
    samples: int | None = None
    seed: int | None = None
    model_rows: int = 0
    model_calls: int = 0
    explains: str = "f(x)"

    @property
    def total(self) -> float:
        """Sum of the attributions."""
        return float(np.sum(self.values))

    @property
    def expected_total(self) -> float:
        """What efficiency says the sum must be: f(x) - mean f(reference)."""
        return self.fx - self.reference_value

    @property
    def gap(self) -> float:
        """`total - expected_total`; |gap| <= EFFICIENCY_TOLERANCE when efficiency holds."""
        return self.total - self.expected_total

    @property
    def efficient(self) -> bool:
        return abs(self.gap) <= EFFICIENCY_TOLERANCE


def instance_and_reference(x: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`x` as a 1-D row and `reference` as a 2-D [R, M] array of the same width.

    A single reference row (baseline Shapley, e.g. the median applicant) may be given 1-D.
    Both keep their dtype (rows built from them go to the model as they are).
    """
    x = np.asarray(x)
    reference = np.asarray(reference)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"x must be one row of features, got shape {x.shape}")
    if reference.ndim == 1:
        reference = reference[None, :]
    if reference.ndim != 2 or reference.shape[0] == 0:
        raise ValueError(f"reference must be a non-empty [rows, features] array, got shape "
                         f"{reference.shape}")
    if reference.shape[1] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} features but the reference rows have "
                         f"{reference.shape[1]}")
    return x, reference


def model_values(f: ModelFunction, rows: np.ndarray, index: np.ndarray | None = None
                 ) -> np.ndarray:
    """`f(rows)` as a float64 vector, checked: one finite value per row. With `index`,
    the values of `rows[index]`, each row of `rows` run once."""
    out = np.asarray(f(rows))
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.shape != (rows.shape[0],):
        raise ValueError(f"the model function must return one value per row: got shape "
                         f"{out.shape} for {rows.shape[0]} rows")
    out = out.astype(np.float64, copy=False)
    if index is not None:
        out = out[index]
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise ValueError(f"the model returned {bad} non-finite value(s); attributions need "
                         "a finite output for every row")
    return out
