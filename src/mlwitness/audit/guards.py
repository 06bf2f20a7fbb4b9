"""Questions about the range guards: which fired over a window, the guards in force, and
replacing them at run time (the sidecar's only: `checks` is None on a standalone server)."""

from __future__ import annotations

from mlwitness.audit.results import (
    GuardsState,
    RateBreach,
    RateState,
    ViolationCount,
    ViolationsResult,
)
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import FailedPrecondition
from mlwitness.guards.checks import InlineChecks, guard_record, rate_states
from mlwitness.guards.file import dumps_toml, loads_guards
from mlwitness.guards.violations import violations_report
from mlwitness.ledger.reader import LedgerReader


class Guards:
    def __init__(self, reader: LedgerReader, trail: Trail, checks: InlineChecks | None) -> None:
        self.reader = reader
        self.trail = trail
        self.checks = checks  # the sidecar's live guards (None: none, or a standalone server)

    def violations(self, asker: Asker, *, since_us: int = 0, until_us: int = 0,
                   model: str = "") -> ViolationsResult:
        with self.trail.audited(asker, since_us=since_us, until_us=until_us,
                                model=model) as summary:
            report = violations_report(self.reader.cursor(), since_us=since_us,
                                       until_us=until_us, model=model)
            summary.update(calls=report["calls"], refused=report["refused"],
                           rate_breaches=len(report["rate_breaches"]))
            return ViolationsResult(
                calls=report["calls"], calls_with_violations=report["calls_with_violations"],
                refused=report["refused"],
                violations=[ViolationCount(**v) for v in report["violations"]],
                rate_breaches=[RateBreach(**b) for b in report["rate_breaches"]],
                rates_now=self._rates_now(),
            )

    def get(self, asker: Asker) -> GuardsState:
        with self.trail.audited(asker):
            return self._state()

    def set(self, asker: Asker, text: str, fmt: str) -> GuardsState:
        """Replace the guards in force; the new version goes on the ledger first."""
        with self.trail.audited(asker, format=fmt) as summary:
            if self.checks is None:
                raise FailedPrecondition("no guards are in force here: start the sidecar with "
                                         "--guards FILE to manage guards at run time")
            config = loads_guards(text, fmt)
            if self.trail.append is not None:
                self.trail.append(guard_record(config, mode=self.checks.mode,
                                               source="audit API", caller=asker.caller))
            warnings = self.checks.replace(config)
            summary.update(sha256=config.sha256, **({"warnings": warnings} if warnings else {}))
            return self._state()

    def _state(self) -> GuardsState:
        if self.checks is None:
            return GuardsState(active=False)
        return GuardsState(active=True, sha256=self.checks.sha256, mode=self.checks.mode,
                           toml=dumps_toml(self.checks.config), rates_now=self._rates_now())

    def _rates_now(self) -> list[RateState]:
        states = rate_states(self.checks.status()) if self.checks else []
        return [RateState(**state) for state in states]
