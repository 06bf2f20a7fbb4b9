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
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mlwitness.errors import GuardViolation
from mlwitness.guards.file import GuardConfig
from mlwitness.guards.rates import RateStatus, RateTracker
from mlwitness.guards.rules import LISTED, Findings, GuardSet, Violation, refusal
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator

log = logging.getLogger(__name__)

GUARD_MODES = ("observe", "enforce")


@dataclass
class Verdict:
    """What the checks found for one call, ready for the record's `violations` column.

    It keeps the guard set (and rate windows) that judged the call's inputs, so that its
    outputs are judged by the same version even if the guards are replaced meanwhile."""

    guard_set: GuardSet
    tracker: RateTracker
    violations: list[Violation] = field(default_factory=list)  # the first LISTED
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # all of them
    rate_events: list[RateStatus] = field(default_factory=list)
    refused: bool = False
    unchecked: str = ""  # why the inputs were not checked (forwarding: undecodable)

    @property
    def guards_sha256(self) -> str:
        return self.guard_set.sha256

    def add(self, found: Findings, withheld: frozenset[str] = frozenset()) -> None:
        listed = found.listed
        if withheld:
            listed = [replace(v, withheld=True) if v.column in withheld else v for v in listed]
        room = LISTED - len(self.violations)
        self.violations.extend(listed[:room])
        for key, n in found.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> str:
        if not (self.counts or self.rate_events or self.refused or self.unchecked):
            return _clean_verdict(self.guards_sha256)  # the common case: one string
        data: dict[str, Any] = {"guards": self.guards_sha256}
        if self.counts:
            data["violations"] = [v.to_dict() for v in self.violations]
            data["counts"] = [{"guard": g, "column": c, "kind": k, "n": n}
                              for (g, c, k), n in sorted(self.counts.items())]
            if self.total > len(self.violations):
                data["unlisted"] = self.total - len(self.violations)
        if self.rate_events:
            data["rate_breaches"] = [s.to_dict() for s in self.rate_events]
        if self.refused:
            data["refused"] = True
        if self.unchecked:
            data["unchecked"] = self.unchecked
        return json.dumps(data, sort_keys=True)


@functools.lru_cache(maxsize=16)
def _clean_verdict(guards_sha256: str) -> str:
    return json.dumps({"guards": guards_sha256}, sort_keys=True)


class InlineChecks:
    def __init__(self, config: GuardConfig, mode: str, tabulator: Tabulator,
                 metrics: Any = None,
                 columns: tuple[set[str], set[str]] | None = None) -> None:
        """`columns`: the model's (input, output) column names, to warn about guards that
        name none of them (at start-up and at every replacement)."""
        if mode not in GUARD_MODES:
            raise ValueError(f"guard mode must be one of {GUARD_MODES}")
        self.mode = mode
        self.tabulator = tabulator
        self.metrics = metrics
        self.columns = columns
        self._lock = threading.Lock()
        self.replace(config)
        if metrics is not None:
            metrics.before_scrape(self._refresh)

    def replace(self, config: GuardConfig) -> list[str]:
        """Switch to a new guard version; return (and log) warnings about guards that name
        no column of the model. Rate windows restart: a new bound is judged on decisions
        made under it."""
        warnings = unknown_names(config, *self.columns) if self.columns is not None else []
        for warning in warnings:
            log.warning("guards %s: %s", config.sha256[:12], warning)
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
        return warnings

    @property
    def sha256(self) -> str:
        return self.config.sha256

    def before(self, inputs: Sequence[Any] | None, parameters: dict[str, str] | None, *,
               withheld: frozenset[str] = frozenset(), unchecked: str = "") -> Verdict:
        """Check a call's inputs (and request parameters). `inputs` None: they could not be
        decoded (`unchecked` says why), so no input guard can pass them: in enforce mode
        the call is refused, in observe mode the record says they went unchecked.
        `withheld`: tensor and parameter names whose values are minimised, never shown."""
        with self._lock:
            verdict = Verdict(self.guard_set, self.tracker)
        if inputs is None:
            verdict.unchecked = unchecked or "the inputs could not be decoded"
            return verdict
        found = verdict.guard_set.judge_inputs(self.tabulator.rows(inputs), parameters)
        verdict.add(found, self._columns(inputs, withheld) | withheld if withheld else withheld)
        self._count(found)
        return verdict

    def after(self, verdict: Verdict, outputs: Sequence[Any]) -> Findings:
        """Check a call's outputs with the guards that checked its inputs, and feed the
        rate bounds; return the output violations (also added to the verdict)."""
        rows = self.tabulator.rows(outputs)
        found = verdict.guard_set.judge_outputs(rows)
        self._count(found)
        verdict.add(found)
        tracker = verdict.tracker
        if tracker.guards and not (found and self.enforcing):
            verdict.rate_events = self._transitions(tracker, tracker.observe(rows))
        return found

    def _columns(self, inputs: Sequence[Any], names: frozenset[str]) -> frozenset[str]:
        """The row columns that the tensors named in `names` become."""
        out: set[str] = set()
        for tensor in inputs:
            if tensor.name in names:
                out.update(self.tabulator.columns_of(tensor.name, tensor.array.shape))
        return frozenset(out)

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def refuse(self, verdict: Verdict, found: dict[tuple[str, str, str], int]) -> None:
        """In enforce mode, refuse a call (GuardViolation) with the violations counted in
        `found`, or whose inputs feature guards could not check; mark its verdict refused."""
        if not self.enforcing:
            return
        if verdict.unchecked and verdict.guard_set.config.features and not verdict.refused:
            verdict.refused = True
            raise GuardViolation(f"refused by guards: the inputs could not be decoded to "
                                 f"check them ({verdict.unchecked})")
        if found:
            verdict.refused = True
            shown = [v for v in verdict.violations if (v.guard, v.column, v.kind) in found]
            raise refusal(shown, total=sum(found.values()))

    def _transitions(self, tracker: RateTracker, statuses: Sequence[RateStatus]
                     ) -> list[RateStatus]:
        """Statuses of guards that just entered a breach. Nothing when `tracker` was
        replaced meanwhile (its windows are gone). The rate gauges are set at scrape time
        (`_refresh`), not here: setting four labelled gauges cost ~5 µs a call."""
        events: list[RateStatus] = []
        with self._lock:
            if tracker is not self.tracker:
                return events
            for status in statuses:
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
        else:  # too few decisions (again): no interval, rather than a stale one
            m.rate_low.remove(status.guard)  # (a no-op when there is none)
            m.rate_high.remove(status.guard)
        m.rate_breach.labels(status.guard).set(1.0 if status.breached else 0.0)

    def _count(self, found: Findings) -> None:
        if self.metrics is None:
            return
        for (guard, column, kind), n in found.counts.items():
            self.metrics.violations.labels(guard, column, kind).inc(n)

    def status(self) -> list[RateStatus]:
        return self.tracker.status()


def unknown_names(config: GuardConfig, inputs: set[str], outputs: set[str]) -> list[str]:
    """Guards that name no column of the model, and so never judge anything (a feature
    guard may still judge a request parameter of that name)."""
    warnings = []
    features = sorted(set(config.features) - inputs)
    if features:
        warnings.append(f"feature guards {', '.join(features)} name no input column (known: "
                        f"{', '.join(sorted(inputs))}); they judge only request parameters of "
                        "that name. Check --features.")
    names = sorted(set(config.outputs) - outputs)
    if names:
        warnings.append(f"output guards {', '.join(names)} name no output column (known: "
                        f"{', '.join(sorted(outputs))}); they never judge anything.")
    rates = sorted(f"{r.name} (output {r.output!r})" for r in config.rates
                   if r.output not in outputs)
    if rates:
        warnings.append(f"rate guards {', '.join(rates)} name no output column (known: "
                        f"{', '.join(sorted(outputs))}); they never judge anything.")
    return warnings


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
