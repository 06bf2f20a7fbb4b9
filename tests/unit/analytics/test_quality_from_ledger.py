"""Quality read from a real ledger (decisions, outcomes, reviews as records) equals
scikit-learn's metrics on the same data; coverage, label delay, groups and review figures
count what they should. sklearn is the oracle only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn import metrics

from mlwitness.analytics.outcomes import QualityQuery, fetch, quality_answer
from mlwitness.codec import tensor_from_array
from mlwitness.errors import InvalidInput
from mlwitness.ledger import outcomes
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter

DAY = 86_400_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01


@dataclass
class Truth:
    """What the test put on the ledger, row by row (two rows per decision)."""

    score: np.ndarray
    label: np.ndarray
    band: np.ndarray
    outcome: np.ndarray  # -1: none
    reviewed: np.ndarray
    final: np.ndarray
    received_us: np.ndarray
    observed_us: np.ndarray


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LedgerWriter, Truth]]:
    rng = np.random.default_rng(3)
    records, rows = 400, 2
    n = records * rows
    y = rng.integers(0, 2, n)
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).astype(np.float32)
    label = (score >= 0.5).astype(np.int64)
    band = rng.choice(["18-25", "26-40", "41-60"], n)
    outcome = np.where(rng.random(n) < 0.6, y, -1)
    outcome[-rows:] = -1  # the newest decision: no outcome yet
    reviewed = rng.random(n) < 0.15
    final = np.where(reviewed & (rng.random(n) < 0.3), 1 - label, label)
    received = T0 + np.repeat(np.arange(records), rows) * 3_600_000_000
    observed = received + rng.integers(DAY, 30 * DAY, n)
    writer = LedgerWriter(tmp_path_factory.mktemp("quality") / "ledger.duckdb")
    writer.open()
    decided = []
    for r in range(records):
        s = slice(r * rows, (r + 1) * rows)
        probs = np.stack([1 - score[s], score[s]], axis=1)
        decided.append(Record(
            request_id=f"app-{r}", received_us=int(received[s][0]),
            responded_us=int(received[s][0]) + 100, model_name="credit", model_sha256="ab" * 32,
            inputs=[tensor_from_array("x", rng.random((rows, 2)).astype(np.float32))],
            outputs=[tensor_from_array("label", label[s]),
                     tensor_from_array("probabilities", probs.astype(np.float32))],
            parameters={"age_band": band[s][0]}))
    writer.append_group(decided)
    band = np.repeat(band[::rows], rows)  # a request parameter: one per call
    later = []
    for i in range(n):
        record = decided[i // rows]
        ref = outcomes.Decision(record.seq, record.hash.hex(), record.request_id, i % rows)
        if outcome[i] >= 0:
            if i % 7 == 0:  # an earlier, wrong outcome that a later one supersedes
                later.append(outcomes.outcome_record(ref, {"defaulted": 1 - outcome[i]},
                                                     int(observed[i]) - 1, caller="t"))
            later.append(outcomes.outcome_record(ref, {"defaulted": float(outcome[i])},
                                                 int(observed[i]), caller="t"))
        if reviewed[i]:
            later.append(outcomes.review_record(ref, {"label": int(final[i])}, "looked",
                                                reviewer="token:rev"))
    writer.append_group(later)
    writer.sync()
    yield writer, Truth(score.astype(float), label, band, outcome, reviewed, final,
                        received, observed.astype(float))
    writer.close()


def answer(writer: LedgerWriter, **query):
    q = QualityQuery(label="defaulted", **query)
    return quality_answer(fetch(writer.cursor(), q), q)


def test_quality_equals_sklearn_on_the_decisions_with_outcomes(ledger) -> None:
    writer, t = ledger
    a = answer(writer)
    has = t.outcome >= 0
    y, s = t.outcome[has], t.score[has].astype(np.float32).astype(float)
    pred = (s >= 0.5).astype(int)
    r = a.quality
    assert r is not None and r.n == has.sum()
    assert r.accuracy.value == pytest.approx(metrics.accuracy_score(y, pred), abs=1e-12)
    assert r.precision.value == pytest.approx(metrics.precision_score(y, pred), abs=1e-12)
    assert r.recall.value == pytest.approx(metrics.recall_score(y, pred), abs=1e-12)
    assert r.roc_auc.value == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert r.brier.value == pytest.approx(metrics.brier_score_loss(y, s), abs=1e-12)
    assert a.decisions == t.outcome.size and a.with_outcome == has.sum()
    assert a.coverage.value == pytest.approx(has.mean())
    delay = (t.observed_us - t.received_us)[has] / 1e6
    assert a.label_delay.median_s == pytest.approx(np.median(delay))
    assert a.decision == "probabilities_1>=0.5"


def test_a_decision_rule_and_groups_give_sklearns_rates_per_group(ledger) -> None:
    writer, t = ledger
    a = answer(writer, decision="label=1", by="age_band", reference="26-40")
    has = t.outcome >= 0
    assert a.quality is not None and a.quality.groups is not None
    groups = {g.group: g for g in a.quality.groups.groups}
    assert sorted(groups) == ["18-25", "26-40", "41-60"]
    for name, g in groups.items():
        m = has & (t.band == name)
        tn, fp, fn, tp = metrics.confusion_matrix(t.outcome[m], t.label[m]).ravel()
        assert g.tpr.value == pytest.approx(tp / (tp + fn))
        assert g.fpr.value == pytest.approx(fp / (fp + tn))
    ref = groups["26-40"].tpr.value
    assert groups["18-25"].tpr_difference.value == pytest.approx(groups["18-25"].tpr.value - ref)


def test_reviews_count_overrides_against_the_model(ledger) -> None:
    writer, t = ledger
    a = answer(writer, decision="label=1")
    rv = a.reviews
    assert rv.decisions == t.label.size
    assert rv.reviewed == t.reviewed.sum()
    assert rv.overrides == (t.reviewed & (t.final != t.label)).sum()
    kappa = metrics.cohen_kappa_score(t.label[t.reviewed], t.final[t.reviewed])
    assert rv.kappa.value == pytest.approx(kappa)


def test_a_window_without_outcomes_has_coverage_zero_and_no_quality(ledger) -> None:
    writer, t = ledger
    a = answer(writer, since_us=int(t.received_us[-1]))
    assert a.decisions == 2 and a.with_outcome == 0 and a.coverage.value == 0
    assert a.quality is None


def test_unknown_columns_are_refused_by_name(ledger) -> None:
    writer, _ = ledger
    with pytest.raises(InvalidInput, match="no numeric output 'p9'"):
        answer(writer, score="p9")
    with pytest.raises(InvalidInput, match="no output 'verdict'"):
        answer(writer, decision="verdict=approve")
    with pytest.raises(InvalidInput, match="attribute 'zip'"):
        answer(writer, by="zip")
