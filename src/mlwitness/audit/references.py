"""The reference set a decision is explained against, built from the stored baseline.

Attributions answer "compared with what?": each feature's share of ``f(x) - mean f(R)``
for reference rows R. Three choices (the `reference` of a question):

* ``baseline`` (the default): `rows` rows (default 100) of the baseline's joint row sample
  (`Baseline.rows`), evenly spaced through it (`mlwitness.explain.reference.sample_rows`):
  the same baseline always gives the same rows;
* ``median``: one row, each feature's training median (the baseline's ``p50``, over every
  training row) — "baseline Shapley": compared with the median applicant;
* ``FEATURE=VALUE,…``: one row the auditor gives; features it leaves out take the
  baseline's median (every feature must be given when the ledger has no baseline).

Values are rounded to the model input's type, as the model would receive them. The set's
SHA-256 is that of ``{"features": [...], "rows": [[...], ...]}`` as canonical JSON (sorted
keys, no spaces, each value the float64 of the rounded one), so anyone holding the baseline
can rebuild it and check. The baseline also gives what the nearest-flip search needs:
each feature's observed range (min, max) and whether it only ever took whole numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlwitness.analytics.baseline import Baseline, NumericProfile
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.explain.reference import DEFAULT_ROWS, feature_summary, sample_rows

MAX_ROWS = 10_000


@dataclass(frozen=True)
class Reference:
    rows: np.ndarray  # [R, M] in the features' dtype
    description: str
    sha256: str
    baseline_sha256: str
    quoted: np.ndarray  # [M] float64: the per-feature value a reason quotes (median of rows)
    low: np.ndarray | None  # [M] the baseline's observed range, None without a baseline
    high: np.ndarray | None
    integer: np.ndarray  # [M] bool: the feature only took whole numbers (or is an integer)


def reference_for(spec: str, names: Sequence[str], dtype: np.dtype,
                  baseline: Baseline | None, rows: int = 0) -> Reference:
    """The Reference `spec` names for features `names` (see the module docstring)."""
    spec = spec.strip() or "baseline"
    rows = rows or DEFAULT_ROWS
    if not 1 <= rows <= MAX_ROWS:
        raise InvalidInput(f"reference_rows must be between 1 and {MAX_ROWS}, got {rows}")
    if spec == "baseline":
        matrix, text = _sampled(names, baseline, rows)
    elif spec == "median":
        matrix, text = _median(names, _needed(baseline, spec))[None, :], (
            f"one row, each feature's training median in baseline "
            f"{_needed(baseline, spec).sha256[:12]} (baseline Shapley)")
    else:
        matrix, text = _given(spec, names, baseline)
    matrix = np.asarray(matrix, dtype=np.float64).astype(dtype)
    low = high = None
    integer = np.full(len(names), dtype.kind in "iu")
    profiles = [_numeric(baseline, n) for n in names] if baseline is not None else []
    if profiles and all(p is not None for p in profiles):
        known = [p for p in profiles if p is not None]
        low = np.array([p.min for p in known])
        high = np.array([p.max for p in known])
        integer |= np.array([bool(p.sample) and bool(np.all(np.mod(p.sample, 1.0) == 0))
                             for p in known])
    wide = matrix.astype(np.float64)
    text_rows = json.dumps({"features": list(names), "rows": wide.tolist()}, sort_keys=True,
                           separators=(",", ":"))
    return Reference(matrix, text, hashlib.sha256(text_rows.encode()).hexdigest(),
                     baseline.sha256 if baseline is not None else "",
                     feature_summary(wide), low, high, integer)


def _needed(baseline: Baseline | None, spec: str) -> Baseline:
    if baseline is None:
        raise FailedPrecondition(f"reference {spec!r} is read from the training baseline, and "
                                 "the ledger has none: serve with --baseline FILE, or give "
                                 "the reference row itself: FEATURE=VALUE,…")
    return baseline


def _numeric(baseline: Baseline, name: str) -> NumericProfile | None:
    column = baseline.columns.get(name)
    return None if column is None else column.numeric


def _sampled(names: Sequence[str], baseline: Baseline | None, rows: int
             ) -> tuple[np.ndarray, str]:
    baseline = _needed(baseline, "baseline")
    if not baseline.rows:
        raise FailedPrecondition(
            f"baseline {baseline.sha256[:12]} keeps no joint feature rows (it was built "
            "before baselines kept them, or with --reference-rows 0); rebuild it with "
            "`mlwitness baseline`, or explain against one row: reference median or "
            "FEATURE=VALUE,…")
    missing = [n for n in names if n not in baseline.feature_names]
    if missing:
        raise FailedPrecondition(
            f"baseline {baseline.sha256[:12]} has no feature {missing[0]!r}: its features are "
            f"{', '.join(baseline.feature_names)}, the record's {', '.join(names)} (serve "
            "with --features to name the model's input columns)")
    stored = np.asarray(baseline.rows, dtype=np.float64)
    picked = sample_rows(stored[:, [baseline.feature_names.index(n) for n in names]], rows)
    how = "all" if picked.shape[0] == stored.shape[0] else "evenly spaced through"
    return picked, (f"{picked.shape[0]} rows: {how} the {stored.shape[0]} joint rows of "
                    f"baseline {baseline.sha256[:12]}")


def _median(names: Sequence[str], baseline: Baseline) -> np.ndarray:
    values = []
    for name in names:
        profile = _numeric(baseline, name)
        median = getattr(profile, "quantiles", {}).get("p50")
        if median is None:
            raise FailedPrecondition(f"baseline {baseline.sha256[:12]} has no median of "
                                     f"feature {name!r}")
        values.append(float(median))
    return np.array(values)


def _given(spec: str, names: Sequence[str], baseline: Baseline | None
           ) -> tuple[np.ndarray, str]:
    given: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, text = part.partition("=")
        name = name.strip()
        try:
            value = float(text) if sep else math.nan
        except ValueError:
            value = math.nan
        if not sep or not math.isfinite(value):
            raise InvalidInput(f"reference: expected baseline, median or FEATURE=VALUE,… "
                               f"with finite numbers; {part.strip()!r} is none of them")
        if name not in names:
            raise InvalidInput(f"reference: unknown feature {name!r}; features: "
                               f"{', '.join(names)}")
        given[name] = value
    left = [n for n in names if n not in given]
    if left and baseline is None:
        raise InvalidInput(f"reference: give every feature (the ledger has no baseline to "
                           f"take medians from); missing: {', '.join(left)}")
    row = _median(names, baseline) if left and baseline is not None else np.zeros(len(names))
    for i, name in enumerate(names):
        if name in given:
            row[i] = given[name]
    shown = ", ".join(f"{n}={given[n]:g}" for n in names if n in given)
    rest = f"; the others at baseline {baseline.sha256[:12]}'s medians" if left and \
        baseline is not None else ""
    return row[None, :], f"one row given by the auditor: {shown}{rest} (baseline Shapley)"
