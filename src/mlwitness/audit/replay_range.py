"""ReplayRange: every answered record in a window replayed, on its own model or a candidate.

`mlwitness.audit.traffic` replays the records in bulk; this drives it over the window,
counts what it finds, and yields events as it goes: progress every PROGRESS_EVERY_S, each
changed decision (the first `max_listed`), then the summary.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from mlwitness.audit import replay as rp
from mlwitness.audit import traffic
from mlwitness.audit.candidates import Candidates, Runs, upload_sha256
from mlwitness.audit.results import ChangedDecision, ReplayEvent, ReplayProgress, ReplaySummary
from mlwitness.audit.trail import Asker, Trail
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import LedgerReader
from mlwitness.model.sandbox import SandboxedModel

PROGRESS_EVERY_S = 0.5
FAILURES_LISTED = 10


@dataclass
class _Counts:
    records: int = 0
    rows: int = 0
    identical: int = 0
    changed: int = 0
    failed: int = 0
    decisions_changed: int = 0
    max_abs_diff: float = 0.0
    max_ulps: float = 0.0
    failures: list[str] = field(default_factory=list)

    def add(self, outcome: traffic.Outcome | str) -> None:
        self.records += 1
        if isinstance(outcome, str):
            self.failed += 1
            if len(self.failures) < FAILURES_LISTED:
                self.failures.append(outcome)
            return
        self.rows += outcome.rows
        if outcome.identical:
            self.identical += 1
        else:
            self.changed += 1
            self.max_abs_diff = max(self.max_abs_diff, outcome.max_abs_diff)
            self.max_ulps = max(self.max_ulps, outcome.max_ulps)
        self.decisions_changed += len(outcome.flips)


class ReplayRanges:
    def __init__(self, reader: LedgerReader, trail: Trail, candidates: Candidates) -> None:
        self.reader = reader
        self.trail = trail
        self.candidates = candidates

    def replay_range(self, asker: Asker, filters: Filters, candidate_sha256: str = "",
                     candidate_onnx: bytes = b"", max_listed: int = 100
                     ) -> Generator[ReplayEvent, None, None]:
        """Yield ReplayProgress and ChangedDecision events, then one ReplaySummary."""
        with self.trail.audited(asker, filters=filters.__dict__,
                                candidate_sha256=candidate_sha256,
                                candidate_upload_sha256=upload_sha256(candidate_onnx),
                                max_listed=max_listed) as summary, \
                self.candidates.runs(asker.deadline) as runs:
            candidate = ""  # fail early when the candidate is unusable
            if candidate_onnx:
                candidate = self.candidates.upload(runs, candidate_onnx).sha256
            elif candidate_sha256:
                candidate = runs.model(self.reader.resolve_model(candidate_sha256)).sha256
            total = self.reader.count(filters)
            counts = _Counts()
            started = time.monotonic()
            yield from self._replay(runs, filters, candidate, candidate_onnx,
                                    max_listed or 100, counts, total, started)
            elapsed = max(time.monotonic() - started, 1e-9)
            result = ReplaySummary(
                records=counts.records, rows=counts.rows, identical=counts.identical,
                changed=counts.changed, failed=counts.failed,
                decisions_changed=counts.decisions_changed,
                records_per_second=counts.records / elapsed, replayed_model_sha256=candidate,
                max_abs_diff=counts.max_abs_diff, failures=counts.failures,
                max_ulps=counts.max_ulps)
            summary.update({k: v for k, v in result.__dict__.items() if k != "failures"})
            yield result

    def _replay(self, runs: Runs, filters: Filters, candidate: str, upload: bytes,
                max_listed: int, counts: _Counts, total: int, started: float
                ) -> Iterator[ReplayEvent]:
        """Replay the window into `counts`; yield progress (of `total` records since
        `started`) and the first `max_listed` changed decisions."""
        kept = not upload  # an upload is stored once a record has run on it
        last = started
        listed = 0
        rule = rp.DecisionRule()

        def model_for(sha256: str, env_id: str) -> SandboxedModel:
            # each record's decision re-run with the session options it was made with
            return runs.model(sha256, self.candidates.session_of(env_id))

        for batch in self.reader.window(filters):
            for outcome in traffic.replay_batch(batch, candidate, rule, model_for):
                counts.add(outcome)
                if isinstance(outcome, str):
                    continue
                if not kept:  # before any answer resting on it leaves
                    self.candidates.keep(upload, runs.model(candidate))
                    kept = True
                for row_index, old, new in outcome.flips:
                    if listed < max_listed:
                        listed += 1
                        yield self._changed(outcome.record.seq, outcome.record.request_id,
                                            row_index, old, new)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                yield ReplayProgress(done=counts.records, total=total, elapsed_s=now - started)

    def _changed(self, seq: int, request_id: str, row: int, old: str, new: str
                 ) -> ChangedDecision:
        stored = self.reader.get(seq=seq)  # rows by feature name
        inputs = stored.inputs[row] if row < len(stored.inputs) else {}
        return ChangedDecision(seq=seq, request_id=request_id, row=row, recorded_decision=old,
                               replayed_decision=new, inputs=inputs)
