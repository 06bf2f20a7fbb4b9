"""Reason codes: the features that pushed a decision away from the favourable outcome.

Given attributions signed toward the favourable score (positive: helped, negative: hurt),
the reasons for an adverse decision are the features with a *negative* attribution, most
harmful first, at most `k` of them:

- a zero attribution (|a| <= `zero_tolerance`) is never a reason, and neither is a
  positive one: with fewer than `k` harmful features, fewer than `k` reasons are given;
- ranking is by |attribution| after rounding to multiples of `tie_tolerance`, so floating
  noise does not decide the order; equal ones (ties) keep feature order (the order of
  `features`). Tied groups are reported, and so is a cut through a tie (the k-th reason
  ties with a feature left out), so a notice never silently picks one of equals.

Each reason quotes the applicant's value, the reference value (e.g. the reference set's
median) and the direction of the one from the other (`below`, `above`, `equal`), and the
text a reasons file gives for that feature and direction.

A reasons file (TOML, ``version = 1``)::

    version = 1
    [features.income]
    below = "Income insufficient for amount of credit requested"
    [features.debt_ratio]
    above = "Excessive obligations in relation to income"
    any = "Debt-to-income ratio"      # either direction, when that direction has no text

Keys per feature: ``below`` (the applicant's value is below the reference value), ``above``
(above it), ``any`` (fallback for either, and for equal values); each a non-empty string,
at least one per feature. Features not in the file get no text (the reason is still
listed, with ``text = None``: the caller decides whether a notice may go out without it).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlwitness.errors import ConfigError

VERSION = 1
DIRECTIONS = ("below", "above", "any")
ZERO_TOLERANCE = 1e-9
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ReasonTexts:
    """Texts per feature and direction, from a reasons file."""

    texts: dict[str, dict[str, str]] = field(default_factory=dict)

    def text(self, feature: str, direction: str) -> str | None:
        entry = self.texts.get(feature, {})
        return entry.get(direction) or entry.get("any")

    @classmethod
    def from_dict(cls, data: Any, features: Sequence[str] | None = None) -> ReasonTexts:
        """Validate a parsed reasons file; `features`, when given, are the names allowed."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"reasons: expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - {"version", "features"})
        if unknown:
            raise ConfigError(f"unknown top-level key {unknown[0]!r}; expected 'version' "
                              "and 'features'")
        if data.get("version") != VERSION:
            raise ConfigError(f"'version' must be {VERSION}, got {data.get('version')!r}")
        table = data.get("features", {})
        if not isinstance(table, Mapping):
            raise ConfigError("'features' must be a table of [features.<name>] tables")
        texts: dict[str, dict[str, str]] = {}
        for name, entry in table.items():
            where = f"features.{name}"
            if features is not None and name not in features:
                raise ConfigError(f"{where}: the model has no feature {name!r}; its features "
                                  f"are {', '.join(features)}")
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{where}: expected a table with keys "
                                  f"{', '.join(DIRECTIONS)}")
            bad = sorted(set(entry) - set(DIRECTIONS))
            if bad:
                raise ConfigError(f"{where}: unknown key {bad[0]!r}; expected "
                                  f"{', '.join(DIRECTIONS)}")
            if not entry:
                raise ConfigError(f"{where}: give at least one of {', '.join(DIRECTIONS)}")
            for key, text in entry.items():
                if not isinstance(text, str) or not text.strip():
                    raise ConfigError(f"{where}: {key!r} must be a non-empty string")
            texts[name] = {key: text.strip() for key, text in entry.items()}
        return cls(texts)


def loads_reasons(text: str, features: Sequence[str] | None = None) -> ReasonTexts:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    return ReasonTexts.from_dict(data, features)


def load_reasons(path: str | Path, features: Sequence[str] | None = None) -> ReasonTexts:
    """Read a reasons file; errors name the file."""
    path = Path(path)
    try:
        return loads_reasons(path.read_text(encoding="utf-8"), features)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read reasons file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None


@dataclass(frozen=True)
class Reason:
    rank: int  # 1-based
    feature: str
    index: int  # position in the feature list
    attribution: float
    value: float  # the applicant's
    reference: float
    direction: str  # "below", "above" or "equal": the applicant's value against the reference
    text: str | None


@dataclass(frozen=True)
class Reasons:
    """The ranked reasons and how the ranking was decided."""

    reasons: tuple[Reason, ...]
    harmful: int  # features with a negative attribution (possibly more than listed)
    zero: tuple[str, ...]  # features whose attribution counts as zero
    ties: tuple[tuple[str, ...], ...]  # groups of harmful features with equal attributions
    cut_in_tie: bool  # the last listed reason ties with a harmful feature left out


def reason_codes(
    attributions: np.ndarray, x: np.ndarray, reference: np.ndarray,
    features: Sequence[str], k: int = 4, texts: ReasonTexts | None = None, *,
    zero_tolerance: float = ZERO_TOLERANCE, tie_tolerance: float = TIE_TOLERANCE,
) -> Reasons:
    """The top-`k` features that pushed the decision away from the favourable outcome."""
    a = np.asarray(attributions, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64).ravel()
    reference = np.asarray(reference, dtype=np.float64).ravel()
    m = len(features)
    if not a.shape == x.shape == reference.shape == (m,):
        raise ValueError(f"attributions, x and reference must each have one value per "
                         f"feature ({m}); got {a.size}, {x.size} and {reference.size}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not np.all(np.isfinite(a)):
        raise ValueError("attributions must be finite")
    zero = tuple(features[i] for i in range(m) if abs(a[i]) <= zero_tolerance)
    harmful = [i for i in range(m) if a[i] < -zero_tolerance]
    level = {i: round(abs(a[i]) / tie_tolerance) for i in harmful}
    harmful.sort(key=lambda i: (-level[i], i))
    groups: dict[int, list[int]] = {}
    for i in harmful:
        groups.setdefault(level[i], []).append(i)
    ties = tuple(tuple(features[i] for i in g) for g in groups.values() if len(g) > 1)
    chosen = harmful[:k]
    cut = len(harmful) > k and level[harmful[k]] == level[harmful[k - 1]]
    reasons = []
    for rank, i in enumerate(chosen, start=1):
        direction = ("below" if x[i] < reference[i] else
                     "above" if x[i] > reference[i] else "equal")
        text = texts.text(features[i], direction) if texts is not None else None
        reasons.append(Reason(rank, features[i], i, float(a[i]), float(x[i]),
                              float(reference[i]), direction, text))
    return Reasons(tuple(reasons), len(harmful), zero, ties, cut)
