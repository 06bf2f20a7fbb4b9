"""Reference sets: what a decision is explained *against*.

Two documented choices:

- `sample_rows`: up to `rows` rows of the training baseline's stored sample (default 100),
  chosen deterministically — evenly spaced through the sample in its stored order
  (indices ``round(k (n - 1) / (rows - 1))``), so the same baseline always gives the
  same reference set, with no seed to record;
- `median_row`: one row, the per-feature median of the sample ("baseline Shapley", e.g.
  the median applicant). The median of each feature separately is not necessarily a
  row anyone has; the attributions then answer "compared with this one row".

`feature_summary` gives the per-feature value a reason code quotes as the reference.
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_ROWS = 100


def _sample(sample: np.ndarray) -> np.ndarray:
    sample = np.asarray(sample)
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise ValueError(f"the baseline sample must be a non-empty [rows, features] array, "
                         f"got shape {sample.shape}")
    return sample


def sample_rows(sample: np.ndarray, rows: int = DEFAULT_ROWS) -> np.ndarray:
    """`rows` rows evenly spaced through `sample` (all of it when it has no more)."""
    sample = _sample(sample)
    if rows < 1:
        raise ValueError(f"a reference set needs at least one row, got {rows}")
    n = sample.shape[0]
    if n <= rows:
        return sample.copy()
    index = np.rint(np.linspace(0, n - 1, rows)).astype(np.int64)
    return sample[index]


def median_row(sample: np.ndarray) -> np.ndarray:
    """The per-feature median of `sample` (NaNs ignored), as one row of `sample`'s dtype."""
    sample = _sample(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: reported below
        row = np.nanmedian(sample.astype(np.float64), axis=0)
    if np.any(np.isnan(row)):
        missing = int(np.flatnonzero(np.isnan(row))[0])
        raise ValueError(f"feature {missing} has no value in the baseline sample")
    return row.astype(sample.dtype) if np.issubdtype(sample.dtype, np.floating) else row


def feature_summary(reference: np.ndarray) -> np.ndarray:
    """Per-feature median of the reference rows: the value a reason code quotes."""
    return median_row(np.atleast_2d(reference))
