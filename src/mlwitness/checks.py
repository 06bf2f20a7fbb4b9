"""Inline guard checks on every ModelInfer call.

    inputs ──► input guards ──► model ──► output guards ──► rate bounds

`enforce` refuses a call whose inputs or outputs break a guard (INVALID_ARGUMENT naming
row, column, value and bound; the refusal is recorded). `observe` serves it and records the
violations. Rate bounds never refuse: a breach (its Wilson interval wholly outside the
bounds) is recorded on the call where it begins, exported as metrics and listed by the
audit API. The guard set can be replaced at run time (file reload, audit API); every
record names the guard version (SHA-256) that judged it.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlwitness.guards import GuardConfig, GuardSet, Violation, refusal
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.rates import RateStatus, RateTracker

GUARD_MODES = ("observe", "enforce")


@dataclass
class Verdict:
    """What the checks found for one call, ready for the record's `violations` column."""

    guards_sha256: str
    violations: list[Violation]
    rate_events: list[RateStatus]

    def to_json(self) -> str:
        if not self.violations and not self.rate_events:  # the common case: one string
            return _clean_verdict(self.guards_sha256)
        data: dict[str, Any] = {"guards": self.guards_sha256}
        if self.violations:
            data["violations"] = [v.to_dict() for v in self.violations]
        if self.rate_events:
            data["rate_breaches"] = [s.to_dict() for s in self.rate_events]
        return json.dumps(data, sort_keys=True)


@functools.lru_cache(maxsize=16)
def _clean_verdict(guards_sha256: str) -> str:
    return json.dumps({"guards": guards_sha256}, sort_keys=True)


class InlineChecks:
    def __init__(self, config: GuardConfig, mode: str, tabulator: Tabulator,
                 metrics: Any = None) -> None:
        if mode not in GUARD_MODES:
            raise ValueError(f"guard mode must be one of {GUARD_MODES}")
        self.mode = mode
        self.tabulator = tabulator
        self.metrics = metrics
        self._lock = threading.Lock()
        self.replace(config)
        if metrics is not None:
            metrics.before_scrape(self._refresh)

    def replace(self, config: GuardConfig) -> None:
        """Switch to a new guard version. Rate windows restart: a new bound is judged on
        decisions made under it."""
        guard_set = GuardSet(config)
        tracker = RateTracker(config.rates)
        with self._lock:
            self.config, self.guard_set, self.tracker = config, guard_set, tracker
            self._breached: set[str] = set()
            if self.metrics is not None:  # no gauge may outlive its window or its guard
                m = self.metrics
                for gauge in (m.rate_estimate, m.rate_low, m.rate_high, m.rate_breach):
                    gauge.clear()
                for rate in config.rates:
                    m.rate_breach.labels(rate.name).set(0.0)

    @property
    def sha256(self) -> str:
        return self.config.sha256

    def before(self, inputs: Sequence[Any], parameters: dict[str, str] | None) -> Verdict:
        """Check a call's inputs (and request parameters)."""
        guard_set = self.guard_set
        found = guard_set.check_inputs(self.tabulator.rows(inputs), parameters)
        self._count(found)
        return Verdict(guard_set.sha256, found, [])

    def after(self, verdict: Verdict, outputs: Sequence[Any]) -> list[Violation]:
        """Check a call's outputs and feed the rate bounds; return the output violations
        (also added to the verdict)."""
        rows = self.tabulator.rows(outputs)
        found = self.guard_set.check_outputs(rows)
        self._count(found)
        verdict.violations.extend(found)
        tracker = self.tracker
        if tracker.guards and not (found and self.enforcing):
            verdict.rate_events = self._transitions(tracker, tracker.observe(rows))
        return found

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def refuse(self, found: Sequence[Violation]) -> None:
        """In enforce mode, refuse a call with these violations (GuardViolation)."""
        if found and self.enforcing:
            raise refusal(found)

    def _transitions(self, tracker: RateTracker, statuses: Sequence[RateStatus]
                     ) -> list[RateStatus]:
        """Statuses of guards that just entered a breach; updates the rate metrics. Nothing
        when `tracker` was replaced meanwhile (its windows are gone)."""
        events: list[RateStatus] = []
        with self._lock:
            if tracker is not self.tracker:
                return events
            for status in statuses:
                if self.metrics is not None:
                    self._export(status)
                if status.breached and status.guard not in self._breached:
                    self._breached.add(status.guard)
                    events.append(status)
                elif not status.breached:
                    self._breached.discard(status.guard)
        return events

    def _refresh(self) -> None:
        """Rate gauges as of now, at scrape time: a time window empties without traffic."""
        with self._lock:
            for status in self.tracker.status():
                self._export(status)

    def _export(self, status: RateStatus) -> None:
        m = self.metrics
        if status.n:
            m.rate_estimate.labels(status.guard).set(status.estimate)
        else:
            m.rate_estimate.remove(status.guard)
        if status.breached or status.state == "ok":
            low, high = status.interval
            m.rate_low.labels(status.guard).set(low)
            m.rate_high.labels(status.guard).set(high)
        m.rate_breach.labels(status.guard).set(1.0 if status.breached else 0.0)

    def _count(self, found: Sequence[Violation]) -> None:
        if self.metrics is None:
            return
        for v in found:
            self.metrics.violations.labels(v.guard, v.column, v.kind).inc()

    def status(self) -> list[RateStatus]:
        return self.tracker.status()


def guard_record(config: GuardConfig, *, mode: str, source: str, caller: str) -> Record:
    """The "admin" ledger record that puts a guard version in force."""
    now = time.time_ns() // 1000
    return Record(
        kind="admin", request_id=uuid.uuid4().hex, received_us=now, responded_us=now,
        peer=caller, detail=json.dumps({"action": "guards", "sha256": config.sha256,
                                        "source": source, "mode": mode,
                                        "config": config.to_dict()}, sort_keys=True),
    )


def rate_states(statuses: Sequence[RateStatus]) -> list[dict[str, Any]]:
    out = []
    for status in statuses:
        low, high = status.interval if status.n else (0.0, 1.0)
        out.append({"guard": status.guard, "state": status.state, "n": status.n,
                    "estimate": status.estimate if status.n else 0.0, "low": low,
                    "high": high, "min": status.min, "max": status.max})
    return out
