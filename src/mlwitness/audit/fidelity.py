"""How far a replay is from the recorded decision, and what that says.

Outputs are compared bit for bit (`mlwitness.audit.replay.compare`); where they differ, the
distance in ulps tells rounding — the same model summed in another order, on more threads
or with other SIMD kernels — from a different model or input, and the environment fields
that differ (`mlwitness.ledger.environment.differences`) name the likely cause.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlwitness.audit.results import OutputDiff
from mlwitness.codec import Tensor
from mlwitness.ledger import environment
from mlwitness.model.runtime import SessionConfig

# Largest distance (in ulps) that rounding alone explains: a kernel that sums in another
# order (more threads, other SIMD widths) moves a sum by a few ulps, and what is computed
# from the sum (a sigmoid, 1 - p) moves further: the demo GBT's probabilities on 512 rows
# moved up to 32 ulps between 1 and 2 threads. A different model moves them by far more:
# the demo's two credit models are a median 1.3e6 ulps apart on the same rows.
ROUNDING_ULPS = 1024


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per element, how far apart `a` and `b` (one dtype and shape) are, as float64.

    Floats: units in the last place, counted along IEEE 754's order of the bit patterns, so
    -0 and +0 are 1 apart, the largest finite value and infinity 1 apart, subnormals one
    step each; two NaNs are 0 apart when their bits match and 1 when their payload or sign
    differs (which NaN a kernel propagated); a NaN and a number are infinitely far apart.
    Integers and booleans: their difference. Zero exactly where the bits are equal."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        ka, kb = _ordered(a), _ordered(b)
        out = _distance(ka, kb)
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        out = np.where(nan_a & nan_b, (ka != kb).astype(np.float64), out)
        return np.where(nan_a ^ nan_b, math.inf, out)
    if a.dtype.kind == "u":
        x, y = a.astype(np.uint64), b.astype(np.uint64)
        return np.where(x >= y, x - y, y - x).astype(np.float64)
    return _distance(a.astype(np.int64), b.astype(np.int64))  # signed integers, booleans


def _ordered(x: np.ndarray) -> np.ndarray:
    """The bit patterns of floats as int64 in the floats' order: the sign-magnitude
    pattern of a negative value becomes -(magnitude) - 1, so -0 sits just below +0."""
    bits = x.view(np.dtype(f"i{x.dtype.itemsize}")).astype(np.int64)
    magnitude = bits & np.int64((1 << (8 * x.dtype.itemsize - 1)) - 1)
    return np.where(bits < 0, ~magnitude, bits)


def _distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x - y| of int64 arrays without overflow (it may need 64 unsigned bits)."""
    ux, uy = x.view(np.uint64), y.view(np.uint64)  # wrapping subtraction is exact here
    return np.where(x >= y, ux - uy, uy - ux).astype(np.float64)


def verdict(recorded: Sequence[Tensor], diffs: Sequence[OutputDiff],
            env_diff: dict[str, list[Any]], unavailable: Sequence[str] = ()) -> str:
    """One line an auditor reads first: bit-identical; a difference rounding explains
    (every differing output floating-point and within ROUNDING_ULPS), with the environment
    fields that differ as its likely cause; or a material difference."""
    why = environment_clause(env_diff, unavailable)
    differing = [d for d in diffs if not d.identical]
    if not differing:
        return "bit-identical" + (f" ({why})" if why else "")
    sizes = {t.name: int(t.array.size) for t in recorded}
    kinds = {t.name: t.array.dtype.kind for t in recorded}
    where = ", ".join(f"{d.elements_differing} of {sizes.get(d.name, 0)} elements of {d.name}"
                      for d in differing)
    most = max(d.max_ulps for d in differing)
    if all(kinds.get(d.name) == "f" and d.max_ulps <= ROUNDING_ULPS for d in differing):
        return (f"differs by ≤ {most:g} ulp{'' if most == 1 else 's'} in {where} "
                f"(rounding: a kernel or threading difference; "
                f"{why or 'no recorded environment field differs'})")
    numbers = [d for d in differing if kinds.get(d.name) == "f" and math.isfinite(d.max_ulps)]
    parts = [f"max {max(d.max_ulps for d in numbers):.2g} ulps"] if numbers else []
    parts += [f"{d.name} differs in {d.elements_differing} of {sizes.get(d.name, 0)} elements"
              for d in differing if d not in numbers]
    return (f"differs materially ({'; '.join(parts)}): a different model or input"
            + (f"; {why}" if why else ""))


def environment_clause(env_diff: dict[str, list[Any]], unavailable: Sequence[str] = ()
                       ) -> str:
    """The environment differences a verdict names: session options, CPU features, the
    rest (`mlwitness.ledger.environment.differences` keys), and providers that were
    recorded but are not available here."""
    session: list[tuple[str, Any, Any]] = []
    cpu, other = "", []
    for key, (old, new) in env_diff.items():
        if key.startswith("session_options."):
            session.append((key.removeprefix("session_options."), old, new))
        elif key == "cpu_features" and old is None:
            cpu = "CPU features not recorded"
        elif key == "cpu_features" and isinstance(old, list) and isinstance(new, list):
            cpu = "CPU features differ: " + "; ".join(
                part for part in (f"{' '.join(old)} only when recorded" if old else "",
                                  f"{' '.join(new)} only here" if new else "") if part)
        else:
            other.append(f"{key} {_shown(old)} → {_shown(new)}")
    parts = []
    if unavailable:
        parts.append(f"recorded provider{'s' if len(unavailable) > 1 else ''} "
                     f"{', '.join(unavailable)} not available here: ran on the CPU provider")
    session.sort(key=lambda item: _SESSION_ORDER.index(item[0].partition(".")[0])
                 if item[0].partition(".")[0] in _SESSION_ORDER else len(_SESSION_ORDER))
    if session and all(old is None for _, old, _ in session):  # recorded before they were
        parts.append("session options not recorded (replayed with " + ", ".join(
            f"{name} {_shown(new)}" for name, _, new in session) + ")")
    elif session:
        parts.append("session options differ: " + ", ".join(
            f"{name} {_shown(old)} → {_shown(new)}" for name, old, new in session))
    if cpu:
        parts.append(cpu)
    if other:
        parts.append("environment differs: " + ", ".join(other))
    return "; ".join(parts)


_SESSION_ORDER = list(SessionConfig().to_environment())  # threads first


def _shown(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v
                                                 for v in value):
        return "+".join(str(v["name"]) for v in value)  # providers, by name
    return environment.text(value)
