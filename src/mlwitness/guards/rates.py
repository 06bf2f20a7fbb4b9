"""Rate bounds on decisions over a rolling window, judged with a Wilson interval.

A rate guard watches one output column (e.g. `label`) and counts a decision as a success
when it `equals` a value ("1") or is `at_least` a threshold (0.5 on a score). Over the last
`window` decisions (a count window) or the last `window_seconds` (a time window) it keeps
n and successes, and `RateTracker.observe` returns, per guard, the point estimate, the
Wilson interval at `confidence` and a state:

* ``insufficient`` — fewer than `min_samples` decisions in the window;
* ``breach_low`` — the whole interval lies below `min`;
* ``breach_high`` — the whole interval lies above `max`;
* ``ok`` — otherwise (the interval touches [min, max]).

Decisions whose output is NaN, or whose column is absent from a response, are not counted.
`RateGuard` (the configuration of one guard) lives here; `mlwitness.guards.file` reads it
from the guard file.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from mlwitness.analytics.stats import wilson_interval
from mlwitness.errors import ConfigError

if TYPE_CHECKING:
    from mlwitness.ledger.rows import Rows

__all__ = ["RateGuard", "RateStatus", "RateTracker", "TIME_BUCKETS"]

STATES = ("insufficient", "ok", "breach_low", "breach_high")
TIME_BUCKETS = 600
"""A time window is kept as this many buckets, so memory does not grow with traffic; an
observation made at time t is counted while ``now - t < window_seconds`` and dropped at
the latest when ``now - t >= window_seconds * (1 + 1 / TIME_BUCKETS)``."""

_RATE_KEYS = (
    "name",
    "output",
    "equals",
    "at_least",
    "min",
    "max",
    "window",
    "window_seconds",
    "confidence",
    "min_samples",
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateGuard:
    """One `[[rates]]` entry: the rate of `output == equals` (or `output >= at_least`) must
    stay within [min, max] over a count `window` or a `window_seconds` time window."""

    name: str
    output: str
    equals: str | None = None
    at_least: float | None = None
    min: float = 0.0
    max: float = 1.0
    window: int | None = None
    window_seconds: float | None = None
    confidence: float = 0.95
    min_samples: int = 100

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "rates") -> RateGuard:
        """Validate one entry; `where` names it in error messages."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_RATE_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(_RATE_KEYS)}"
            )
        name, output = data.get("name"), data.get("output")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' (a non-empty string) is required")
        where = f"{where} ({name})"
        if not isinstance(output, str) or not output:
            raise ConfigError(f"{where}: 'output' (the output column name) is required")
        equals, at_least = data.get("equals"), data.get("at_least")
        if (equals is None) == (at_least is None):
            raise ConfigError(f"{where}: set exactly one of 'equals' or 'at_least'")
        if equals is not None:
            if isinstance(equals, bool) or not isinstance(equals, str | int):
                raise ConfigError(f"{where}: 'equals' must be a string such as \"1\"")
            equals = str(equals)
        if at_least is not None:
            at_least = require_number(at_least, f"{where}: 'at_least'")
        if "min" not in data and "max" not in data:
            raise ConfigError(f"{where}: set 'min' and/or 'max' (rates between 0 and 1)")
        low = require_number(data.get("min", 0.0), f"{where}: 'min'")
        high = require_number(data.get("max", 1.0), f"{where}: 'max'")
        if not 0.0 <= low <= 1.0 or not 0.0 <= high <= 1.0:
            raise ConfigError(f"{where}: min and max are rates and must lie in [0, 1]")
        if low > high:
            raise ConfigError(f"{where}: min {low:g} is greater than max {high:g}")
        window, seconds = data.get("window"), data.get("window_seconds")
        if (window is None) == (seconds is None):
            raise ConfigError(f"{where}: set exactly one of 'window' or 'window_seconds'")
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or not 0 < window <= MAX_WINDOW
        ):
            raise ConfigError(f"{where}: 'window' must be an integer from 1 to {MAX_WINDOW:,} "
                              f"decisions, got {_shown(window)}")
        if seconds is not None:
            seconds = require_number(seconds, f"{where}: 'window_seconds'")
            if seconds <= 0:
                raise ConfigError(f"{where}: 'window_seconds' must be positive, got {seconds:g}")
        confidence = require_number(data.get("confidence", 0.95), f"{where}: 'confidence'")
        if not 0.0 < confidence < 1.0:
            raise ConfigError(f"{where}: 'confidence' must be in (0, 1), got {confidence:g}")
        min_samples = data.get("min_samples", 100)
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ConfigError(f"{where}: 'min_samples' must be an integer >= 1")
        if seconds is not None and seconds > MAX_WINDOW_SECONDS:
            raise ConfigError(f"{where}: 'window_seconds' must be at most "
                              f"{MAX_WINDOW_SECONDS:,} (a year), got {seconds:g}")
        if window is not None and min_samples > window:
            raise ConfigError(
                f"{where}: 'min_samples' {min_samples} exceeds 'window' {window}; "
                "the guard could never judge"
            )
        return cls(
            name, output, equals, at_least, low, high, window, seconds, confidence, min_samples
        )

    def to_dict(self) -> dict[str, Any]:
        """The entry as written in a guard file (unset alternatives omitted)."""
        items = {field: getattr(self, field) for field in _RATE_KEYS}
        return {key: value for key, value in items.items() if value is not None}


MAX_WINDOW = 10_000_000  # decisions in a count window: one byte each in memory
MAX_WINDOW_SECONDS = 366 * 86_400


def require_number(value: Any, where: str) -> float:
    """`value` as a float; ConfigError (naming `where`) unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        raise ConfigError(f"{where} must be finite, got {_shown(value)}") from None
    if math.isnan(number):
        raise ConfigError(f"{where} must be a number, got {_shown(value)}")
    if math.isinf(number):
        raise ConfigError(f"{where} must be finite, got {_shown(value)}")
    return number


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


@lru_cache(maxsize=8192)
def _wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    # stats.wilson_interval costs ~30 µs (scipy's norm.ppf); counts repeat, so cache.
    return wilson_interval(successes, n, confidence=confidence)


class RateStatus(NamedTuple):
    """A rate guard's window right now. `interval` is the Wilson interval of
    `successes` of `n` at `confidence` (``(0, 1)`` when n is 0). A NamedTuple because one
    is made per guard per request."""

    guard: str
    n: int
    successes: int
    min: float
    max: float
    confidence: float
    state: str

    @property
    def estimate(self) -> float:
        return self.successes / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return _wilson(self.successes, self.n, self.confidence)

    @property
    def breached(self) -> bool:
        return self.state in ("breach_low", "breach_high")

    def message(self) -> str:
        low, high = self.interval
        head = (
            f"rate {self.guard} = {self.estimate:.4g} ({self.successes} of {self.n}; "
            f"{self.confidence:.0%} interval {low:.4g}–{high:.4g})"
        )
        if self.state == "breach_low":
            return f"{head} is below min {self.min:g}"
        if self.state == "breach_high":
            return f"{head} is above max {self.max:g}"
        if self.state == "insufficient":
            return f"{head}: too few decisions to judge"
        return f"{head} is within [{self.min:g}, {self.max:g}]"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (an empty window's estimate is None)."""
        low, high = self.interval
        return {
            "guard": self.guard,
            "state": self.state,
            "n": self.n,
            "successes": self.successes,
            "estimate": self.estimate if self.n else None,
            "low": low,
            "high": high,
            "min": self.min,
            "max": self.max,
            "confidence": self.confidence,
        }


class _CountWindow:
    """The last `size` outcomes (0/1 bytes) in a ring buffer, with a running sum."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray(size)  # never-written slots are 0, so they count no successes
        self.pos = 0
        self.n = 0
        self.successes = 0

    def add_one(self, outcome: int, now: float) -> None:
        self.successes += outcome - self.buf[self.pos]
        self.buf[self.pos] = outcome
        self.pos = (self.pos + 1) % self.size
        if self.n < self.size:
            self.n += 1

    def add(self, outcomes: bytes, now: float) -> None:
        m, size, pos = len(outcomes), self.size, self.pos
        if m >= size:
            self.buf[:] = outcomes[m - size :]
            self.pos, self.n, self.successes = 0, size, self.buf.count(1)
            return
        end = pos + m
        if end <= size:
            self.successes -= self.buf.count(1, pos, end)
            self.buf[pos:end] = outcomes
        else:
            first = size - pos
            self.successes -= self.buf.count(1, pos) + self.buf.count(1, 0, end - size)
            self.buf[pos:] = outcomes[:first]
            self.buf[: end - size] = outcomes[first:]
        self.successes += outcomes.count(1)
        self.pos = end % size
        self.n = min(size, self.n + m)

    def evict(self, now: float) -> None:
        pass


class _TimeWindow:
    """(n, successes) per time bucket of width window/TIME_BUCKETS, oldest first."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.width = seconds / TIME_BUCKETS
        self.buckets: deque[list[int]] = deque()  # [bucket index, n, successes]
        self.n = 0
        self.successes = 0
        self.latest = -math.inf

    def add_one(self, outcome: int, now: float) -> None:
        self._add(1, outcome, now)

    def add(self, outcomes: bytes, now: float) -> None:
        self._add(len(outcomes), outcomes.count(1), now)

    def _add(self, n: int, successes: int, now: float) -> None:
        self.evict(now)
        index = math.floor(self.latest / self.width)  # a `now` earlier than seen counts as latest
        if self.buckets and self.buckets[-1][0] == index:
            self.buckets[-1][1] += n
            self.buckets[-1][2] += successes
        else:
            self.buckets.append([index, n, successes])
        self.n += n
        self.successes += successes

    def evict(self, now: float) -> None:
        self.latest = max(self.latest, now)
        # Bucket i holds times in [i*w, (i+1)*w); drop it once all of them are >= W old.
        limit = math.floor((self.latest - self.seconds) / self.width)
        buckets = self.buckets
        while buckets and buckets[0][0] < limit:
            _, n, successes = buckets.popleft()
            self.n -= n
            self.successes -= successes


class RateTracker:
    """Rolling windows for a set of rate guards. Thread-safe: one lock around every update
    and read. `now` (seconds, any monotonic clock) defaults to `time.monotonic()`; pass it
    always or never. A `now` earlier than one already seen is treated as the latest seen."""

    def __init__(self, guards: Sequence[RateGuard]) -> None:
        self.guards = tuple(guards)
        self._windows = [
            _CountWindow(g.window) if g.window is not None else _TimeWindow(g.window_seconds or 1)
            for g in self.guards
        ]
        self._plans: dict[tuple[tuple[str, ...], tuple[str, ...]], list[_Spec]] = {}
        self._lock = threading.Lock()
        if self.guards:
            try:  # import scipy.stats now, not on the first request that needs an interval
                wilson_interval(0, 1)
            except ImportError as exc:
                raise ConfigError(f"rate guards need scipy installed ({exc})") from None

    def observe(self, rows: Rows, *, now: float | None = None) -> list[RateStatus]:
        """Count each row of a response's outputs as one decision in every applicable
        guard's window; return every guard's status after the update."""
        if now is None:
            now = time.monotonic()
        plan = self._plans.get((rows.num_names, rows.text_names))
        if plan is None:
            plan = self._plan(rows)
        if rows.n == 1:
            updates = [(w, _one(rows, numeric, j, g, eq)) for w, numeric, j, g, eq in plan]
            with self._lock:
                for window, outcome in updates:
                    if outcome is not None:
                        window.add_one(outcome, now)
                return self._statuses(now)
        batches = [(w, _many(rows, numeric, j, g, eq)) for w, numeric, j, g, eq in plan]
        with self._lock:
            for window, outcomes in batches:
                if outcomes:
                    window.add(outcomes, now)
            return self._statuses(now)

    def status(self, *, now: float | None = None) -> list[RateStatus]:
        """Every guard's status without adding decisions (time windows are evicted)."""
        with self._lock:
            return self._statuses(time.monotonic() if now is None else now)

    def _statuses(self, now: float) -> list[RateStatus]:
        result = []
        for guard, window in zip(self.guards, self._windows, strict=True):
            window.evict(now)
            n, k = window.n, window.successes
            if n < guard.min_samples:
                state = "insufficient"
            elif guard.min <= k / n <= guard.max:
                state = "ok"  # the estimate is inside [min, max]; so is part of the interval
            else:
                low, high = _wilson(k, n, guard.confidence)
                state = (
                    "breach_low" if high < guard.min else "breach_high" if low > guard.max else "ok"
                )
            result.append(
                RateStatus(guard.name, n, k, guard.min, guard.max, guard.confidence, state)
            )
        return result

    def _plan(self, rows: Rows) -> list[_Spec]:
        """Which guards apply to this column layout, and where their column is."""
        plan: list[_Spec] = []
        for guard, window in zip(self.guards, self._windows, strict=True):
            number = _float_or_none(guard.equals)
            if guard.output in rows.num_names:
                if guard.at_least is not None or number is not None:
                    j = rows.num_names.index(guard.output)
                    plan.append((window, True, j, guard, number))
                else:
                    _never(guard, f"output {guard.output!r} is numeric and equals = "
                           f"{guard.equals!r} is not a number (use \"1\", or true/false)")
            elif guard.output in rows.text_names:
                if guard.equals is not None:
                    plan.append((window, False, rows.text_names.index(guard.output), guard,
                                 None))
                else:
                    _never(guard, f"output {guard.output!r} is text: at_least cannot apply; "
                           "use equals")
        if len(self._plans) > 64:
            self._plans.clear()
        self._plans[(rows.num_names, rows.text_names)] = plan
        return plan


_Spec = tuple["_CountWindow | _TimeWindow", bool, int, RateGuard, "float | None"]


def _one(rows: Rows, numeric: bool, j: int, guard: RateGuard, number: float | None) -> int | None:
    """A single decision as 0/1, or None when its output is NaN."""
    if not numeric:
        return int(rows.text_values[0, j] == guard.equals)
    value = rows.num_values[0, j].item()
    if value != value:
        return None
    return int(value >= guard.at_least if guard.at_least is not None else value == number)


def _many(rows: Rows, numeric: bool, j: int, guard: RateGuard, number: float | None) -> bytes:
    """Decisions as 0/1 bytes, NaN outputs left out."""
    if not numeric:
        return (rows.text_values[:, j] == guard.equals).astype(np.uint8).tobytes()
    column = rows.num_values[:, j]
    column = column[~np.isnan(column)]
    hit = column >= guard.at_least if guard.at_least is not None else column == number
    return hit.astype(np.uint8).tobytes()


def _float_or_none(text: str | None) -> float | None:
    """`equals` as a number for a numeric output; true/false are 1/0 (BOOL outputs)."""
    if text is None:
        return None
    if text.strip().lower() in _BOOLS:
        return _BOOLS[text.strip().lower()]
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


_BOOLS = {"true": 1.0, "false": 0.0}
_WARNED: set[tuple[str, str]] = set()


def _never(guard: RateGuard, why: str) -> None:
    """Warn (once per guard and reason) about a rate guard that cannot judge its output."""
    if (guard.name, why) not in _WARNED:
        _WARNED.add((guard.name, why))
        log.warning("rate guard %s never judges a decision: %s", guard.name, why)
