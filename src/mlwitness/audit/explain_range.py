"""ExplainRange: attributions and reason codes for every decision in a window, streamed.

Records are read oldest first (`LedgerReader.decisions`); one Explainer serves every record
of a model and feature layout. With `exact`, the hybrid rows of consecutive decisions of
one Explainer go to the model together, as many as one run of `CHUNK_CELLS` takes (54
decisions of 6 features against 100 reference rows), so a window costs a few large runs
rather than one per decision. While one run is in the sandbox worker (on a thread of the
window's own: the run mostly waits on the worker), the decisions of the run before it are
streamed and the next run's records read, so the model's time and the server's overlap;
at most one run is in flight, so the worker's memory is as without it. A record that
cannot be explained (not answered, minimised, erased, not tabular, a model the question
does not fit) is counted and named, and the window goes on. Events: progress every
PROGRESS_EVERY_S, each decision as it is explained, then the summary, whose
`results_sha256` is the SHA-256 of the decisions as `decision_line` writes them: the same
question asked again streams the same lines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mlwitness.audit import replay as rp
from mlwitness.audit.explainer import Decided, Explainer, Features, features_of
from mlwitness.audit.results import (
    ExplainedDecision,
    ExplainEvent,
    ExplainRangeSummary,
    ReplayProgress,
)
from mlwitness.codec import Tensor
from mlwitness.errors import FailedPrecondition, MlwitnessError
from mlwitness.explain.attribution import Attribution
from mlwitness.explain.reasons import ReasonTexts
from mlwitness.explain.shapley import CHUNK_CELLS
from mlwitness.ledger.record import Record
from mlwitness.model.sandbox import Aborted

PROGRESS_EVERY_S = 0.5
FAILURES_LISTED = 10
TREE_BATCH = 512  # decisions `tree` explains together

ExplainerFor = Callable[[str, Features, Sequence[Tensor]], Explainer]


@dataclass(frozen=True)
class Method:
    name: str
    top: int
    seed: int
    samples: int


@dataclass
class _Pending:
    record: Record
    features: Features
    decided: list[Decided]


@dataclass
class _Run:
    """Decisions sent to the model together: their attributions once the run is done.
    `order` places a failed run's records among the failures as if it had not waited."""

    pending: list[_Pending]
    key: tuple
    order: int
    result: Future[list[Attribution]]


class Window:
    """One ExplainRange question: explainers per model and feature layout, the decisions
    waiting for a shared run, the counts and the digest of what was streamed."""

    def __init__(self, explainer_for: ExplainerFor,
                 texts_for: Callable[[Sequence[str]], ReasonTexts | None], method: Method,
                 total: int) -> None:
        self.explainer_for, self.texts_for, self.method = explainer_for, texts_for, method
        self.total = total
        self.explainers: dict[tuple, tuple[Explainer, ReasonTexts | None] | str] = {}
        self.pending: list[_Pending] = []
        self.pending_key: tuple | None = None
        self.held = 0  # rows of the pending decisions
        self.running: _Run | None = None  # the run in the sandbox worker
        self._runner: ThreadPoolExecutor | None = None
        self.records = self.decisions = self.failed = 0
        self._failures: list[tuple[int, str]] = []  # (order, why): the first listed
        self._order = 0
        self.first: Attribution | None = None
        self.digest = hashlib.sha256()
        self.started = time.monotonic()

    def run(self, batches: Iterator[list[tuple[Record, list[str], int | None]]]
            ) -> Iterator[ExplainEvent]:
        last = self.started
        try:
            for batch in batches:
                for record, names, erased in batch:
                    yield from self._take(record, names, erased)
                    now = time.monotonic()
                    if now - last >= PROGRESS_EVERY_S:
                        last = now
                        yield ReplayProgress(done=self.records, total=self.total,
                                             elapsed_s=now - self.started)
            yield from self._flush()
            yield from self._finish(self._done())
        finally:
            # Stopped (an error, a cancelled call): the worker goes back to the pool only
            # once no run of ours is in it.
            if self._runner is not None:
                self._runner.shutdown(wait=True)

    def _take(self, record: Record, names: list[str], erased: int | None
              ) -> Iterator[ExplainEvent]:
        self.records += 1
        try:
            if erased is not None:
                raise FailedPrecondition(f"record seq {record.seq} was erased by admin record "
                                         f"seq {erased}")
            call = rp.decode_call(record)
            features = features_of(call.inputs, names, record.seq)
            key = (record.model_sha256, features.key)
            explainer, _ = self._explainer(key, features, call.outputs)
            decided = explainer.decided(call.outputs)
        except Aborted:
            raise
        except MlwitnessError as exc:
            self._fail(record, exc.message)
            return
        if key != self.pending_key or self._full(explainer, features):
            yield from self._flush()
        self.pending_key = key
        self.pending.append(_Pending(record, features, decided))
        self.held += features.matrix.shape[0]

    def _explainer(self, key: tuple, features: Features, outputs: Sequence[Tensor]
                   ) -> tuple[Explainer, ReasonTexts | None]:
        if key not in self.explainers:
            try:
                explainer = self.explainer_for(key[0], features, outputs)
                self.explainers[key] = (explainer, self.texts_for(features.names))
            except Aborted:
                raise
            except MlwitnessError as exc:
                self.explainers[key] = exc.message  # the same for every record of the key
        found = self.explainers[key]
        if isinstance(found, str):
            raise FailedPrecondition(found)
        return found

    def _full(self, explainer: Explainer, features: Features) -> bool:
        """Whether adding `features`' rows would take the pending ones past one run (for
        `exact`), or past TREE_BATCH rows (`tree`); `kernel` explains a record at a time."""
        if self.method.name == "kernel":
            return bool(self.pending)
        room = TREE_BATCH
        if self.method.name == "exact":
            m, r = features.matrix.shape[1], explainer.reference.rows.shape[0]
            room = max(1, CHUNK_CELLS // (2**m * r * m))
        return self.held + features.matrix.shape[0] > room

    def _flush(self) -> Iterator[ExplainEvent]:
        """Send the pending decisions to the model: `tree` (no run) answers them here;
        for the others, their run starts once the one in flight is done, and that one's
        decisions are streamed while it goes on."""
        pending, key = self.pending, self.pending_key
        self.pending, self.held = [], 0
        if not pending or key is None:
            return
        found = self.explainers[key]
        assert not isinstance(found, str)  # a failed key's records are never pending
        explainer = found[0]
        xs = np.concatenate([p.features.matrix for p in pending])
        m = self.method
        run = _Run(pending, key, self._tick(), Future())
        if m.name == "tree":  # no model run: answered here
            try:
                run.result.set_result(explainer.attribute_many(xs, m.name))
            except MlwitnessError as exc:
                run.result.set_exception(exc)
            yield from self._finish(run)
            return
        done = self._done()
        if self._runner is None:
            self._runner = ThreadPoolExecutor(1, thread_name_prefix="explain-range")
        run.result = self._runner.submit(explainer.attribute_many, xs, m.name, seed=m.seed,
                                         samples=m.samples)
        self.running = run
        yield from self._finish(done)

    def _done(self) -> _Run | None:
        """The run in flight, once it is done; a stopped one ends the question here."""
        run, self.running = self.running, None
        if run is not None and isinstance(run.result.exception(), Aborted):  # waits
            run.result.result()
        return run

    def _finish(self, run: _Run | None) -> Iterator[ExplainEvent]:
        """A done run's decisions, or its records among the failures."""
        if run is None:
            return
        found = self.explainers[run.key]
        assert not isinstance(found, str)
        explainer, texts = found
        try:
            attributions = run.result.result()
        except Aborted:
            raise
        except MlwitnessError as exc:
            for p in run.pending:
                self._fail(p.record, exc.message, run.order)
            return
        self.first = self.first or attributions[0]
        at = 0
        for p in run.pending:
            for row, decided in enumerate(p.decided):
                yield self._decision(explainer, texts, p, row, decided,
                                     p.features.matrix[row], attributions[at])
                at += 1

    def _decision(self, explainer: Explainer, texts: ReasonTexts | None, p: _Pending,
                  row: int, decided: Decided, x: np.ndarray, a: Attribution
                  ) -> ExplainedDecision:
        result = ExplainedDecision(
            seq=p.record.seq, request_id=p.record.request_id, row=row,
            received_us=p.record.received_us, model_sha256=p.record.model_sha256,
            decision=decided.decision, favorable_outcome=decided.favorable,
            recorded_value=decided.value, fx=a.fx, reference_value=a.reference_value,
            efficient=a.efficient, attributions=explainer.attributions(x, a),
            reasons=explainer.reasons(x, a, self.method.top, texts).codes)
        self.decisions += 1
        self.digest.update(decision_line(result).encode())
        return result

    def _tick(self) -> int:
        self._order += 1
        return self._order

    def _fail(self, record: Record, why: str, order: int | None = None) -> None:
        self.failed += 1
        self._failures.append((self._tick() if order is None else order,
                               f"seq {record.seq}: {why}"))
        self._failures.sort(key=lambda f: f[0])  # stable: a run's records in their order
        del self._failures[FAILURES_LISTED:]

    @property
    def failures(self) -> list[str]:
        return [why for _, why in self._failures]

    def summary(self, record_id: str, favorable: str) -> ExplainRangeSummary:
        explainers = [found[0] for found in self.explainers.values()
                      if not isinstance(found, str)]
        first = self.first
        return ExplainRangeSummary(
            records=self.records, decisions=self.decisions, failed=self.failed,
            failures=self.failures,
            decisions_per_second=self.decisions / max(time.monotonic() - self.started, 1e-9),
            method=self.method.name,
            favorable=explainers[0].target.favorable if explainers else favorable,
            explains=list(dict.fromkeys(_explains(e, self.method.name) for e in explainers)),
            reference=list(dict.fromkeys(f"{e.reference.sha256} {e.reference.description}"
                                         for e in explainers)),
            baseline_sha256=explainers[0].reference.baseline_sha256 if explainers else "",
            samples=first.samples or 0 if first else 0,
            seed=first.seed or 0 if first else 0,
            seeded=first is not None and first.seed is not None,
            results_sha256=self.digest.hexdigest(), audit_request_id=record_id)


def _explains(explainer: Explainer, method: str) -> str:
    return explainer.tree().explains if method == "tree" else explainer.target.explained.name


def decision_line(d: ExplainedDecision) -> str:
    """One decision as a line of the digest ExplainRange's summary carries: its fields as
    JSON (keys sorted, no spaces; what `dataclasses.asdict` gives, built directly) and a
    newline."""
    fields = {f: getattr(d, f) for f in _SCALARS}
    fields["attributions"] = [{"attribution": a.attribution, "feature": a.feature,
                               "reference": a.reference, "value": a.value}
                              for a in d.attributions]
    fields["reasons"] = [{"attribution": c.attribution, "direction": c.direction,
                          "feature": c.feature, "rank": c.rank, "reference": c.reference,
                          "text": c.text, "value": c.value} for c in d.reasons]
    return json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n"


_SCALARS = tuple(f.name for f in dataclasses.fields(ExplainedDecision)
                 if f.name not in ("attributions", "reasons"))
