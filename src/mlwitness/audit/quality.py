"""Model quality over a window once outcomes are known: the question around
`mlwitness.analytics.outcomes` (what the trail keeps, the answer as `results`)."""

from __future__ import annotations

import json

from mlwitness.analytics.intervals import Estimate
from mlwitness.analytics.outcomes import QualityAnswer, QualityQuery, fetch, quality_answer
from mlwitness.audit.results import QualityResult
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import InvalidInput
from mlwitness.ledger.reader import LedgerReader

NAN = float("nan")


def _value(e: Estimate | None) -> float:
    return NAN if e is None or e.value is None else float(e.value)


class Quality:
    def __init__(self, reader: LedgerReader, trail: Trail) -> None:
        self.reader = reader
        self.trail = trail

    def answer(self, q: QualityQuery) -> QualityAnswer:
        """The figures, unrecorded (the report's, which is recorded as a whole)."""
        if not q.label:
            raise InvalidInput("name the outcome value that is the truth, e.g. --label "
                               "defaulted")
        if not 0 < q.confidence < 1:
            raise InvalidInput(f"confidence must be between 0 and 1, got {q.confidence}")
        if not 1 <= q.calibration_bins <= 100:
            raise InvalidInput("calibration bins must be from 1 to 100")
        return quality_answer(fetch(self.reader.cursor(), q), q)

    def quality(self, asker: Asker, q: QualityQuery) -> QualityResult:
        with self.trail.audited(asker, **q.__dict__) as summary:
            a = self.answer(q)
            r = a.quality
            summary.update(decisions=a.decisions, with_outcome=a.with_outcome,
                           roc_auc=_value(r.roc_auc) if r else None)
            return QualityResult(
                decisions=a.decisions, with_outcome=a.with_outcome,
                coverage=_value(a.coverage),
                accuracy=_value(r.accuracy if r else None),
                precision=_value(r.precision if r else None),
                recall=_value(r.recall if r else None),
                roc_auc=_value(r.roc_auc if r else None),
                brier=_value(r.brier if r else None),
                review_rate=_value(a.reviews.review_rate),
                override_rate=_value(a.reviews.override_rate),
                report_json=json.dumps(a.to_dict(), sort_keys=True))
