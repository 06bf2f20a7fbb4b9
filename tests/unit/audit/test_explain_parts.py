"""The parts of `audit explain` that need no model run: which output is explained and which
outcome is favourable (audit/favorable.py), the reference set from a real baseline
(audit/references.py), a recorded call as a feature table (audit/explainer.py), and the
digest line of an explained decision (audit/explain_range.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from mlwitness.analytics.baseline import Baseline, build_baseline
from mlwitness.audit.explain import feature_pairs
from mlwitness.audit.explain_range import decision_line
from mlwitness.audit.explainer import features_of
from mlwitness.audit.favorable import resolve
from mlwitness.audit.references import reference_for
from mlwitness.audit.results import ExplainedDecision, FeatureAttribution, ReasonCode
from mlwitness.codec import Tensor, tensor_from_array
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.explain.reference import sample_rows

LABELS = np.array([1, 0, 1], dtype=np.int64)
PROBS = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]], dtype=np.float32)


def classifier_outputs() -> list[Tensor]:
    return [tensor_from_array("label", LABELS), tensor_from_array("probabilities", PROBS)]


# ── the favourable outcome and the explained output ────────────────────────────────────


def test_a_two_class_model_favours_its_second_class_by_default() -> None:
    target = resolve("", "", classifier_outputs(), (0, 1))
    assert (target.favorable, target.explained.name, target.sign) == (
        "label=1", "probabilities_1", 1.0)
    tensors = {"label": LABELS, "probabilities": PROBS}
    assert target.favorable_rows(tensors).tolist() == [True, False, True]
    assert target.decisions(tensors) == ["1", "0", "1"]
    np.testing.assert_array_equal(target.values(tensors), PROBS[:, 1].astype(np.float64))
    words = tensor_from_array("label", np.array(["deny", "approve", "deny"], dtype=object))
    text = resolve("", "", [words, tensor_from_array("probabilities", PROBS)],
                   ("deny", "approve"))
    assert (text.favorable, text.explained.name) == ("label=approve", "probabilities_1")
    assert text.favorable_rows({"label": words.array}).tolist() == [False, True, False]


def test_a_label_names_its_class_column_by_the_models_class_labels() -> None:
    target = resolve("label=7", "", classifier_outputs(), (7, 3))
    assert (target.explained.name, target.sign) == ("probabilities_0", 1.0)
    unnamed = resolve("label==1", "", classifier_outputs(), None)  # no labels: the index
    assert (unnamed.favorable, unnamed.explained.name) == ("label=1", "probabilities_1")
    other = resolve("label=0", "probabilities_1", classifier_outputs(), (0, 1))
    assert other.sign == -1.0  # the other class of two: its probability falls as ours rises
    with pytest.raises(InvalidInput, match="cannot tell which output column"):
        resolve("label=5", "", classifier_outputs(), None)
    with pytest.raises(InvalidInput, match="integers; 'yes' is not one"):
        resolve("label=yes", "", classifier_outputs(), (0, 1))


def test_a_threshold_explains_its_column_and_a_lower_one_flips_the_sign() -> None:
    high = resolve("probabilities_1>=0.6", "", classifier_outputs(), None)
    assert (high.explained.name, high.sign, high.favorable) == (
        "probabilities_1", 1.0, "probabilities_1>=0.6")
    tensors = {"label": LABELS, "probabilities": PROBS}
    assert high.favorable_rows(tensors).tolist() == [True, False, True]
    assert high.decisions(tensors) == ["probabilities_1 >= 0.6", "probabilities_1 < 0.6",
                                       "probabilities_1 >= 0.6"]
    risk = resolve("probabilities_0 < 0.5", "", classifier_outputs(), None)
    assert risk.sign == -1.0 and risk.favorable_rows(tensors).tolist() == [True, False, True]
    alone = resolve("", "probabilities_1", classifier_outputs(), None)
    assert alone.favorable == "probabilities_1>=0.5"


@pytest.mark.parametrize(("favorable", "output", "message"), [
    ("", "nope", "unknown output column 'nope'; the model's output columns: label, "
                 "probabilities_0, probabilities_1"),
    ("probabilities_1=1", "", "is not a label output"),
    ("label!=0", "", "not what it is not"),
    ("label", "", "must look like label=1"),
    ("probabilities_1>=x", "", "'x' is not a finite number"),
    ("probabilities_1>=0.5", "probabilities_0", "explains the column it reads"),
])
def test_unknown_outputs_and_malformed_rules_are_refused(favorable: str, output: str,
                                                         message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        resolve(favorable, output, classifier_outputs(), (0, 1))


def test_a_model_without_two_classes_must_be_told_what_is_favourable() -> None:
    score = [tensor_from_array("score", np.array([0.1, 2.0], dtype=np.float32))]
    with pytest.raises(InvalidInput, match="say which outcome is favourable"):
        resolve("", "", score, None)
    assert resolve("score>=1", "", score, None).explained.name == "score"


# ── the reference set ──────────────────────────────────────────────────────────────────

FEATURES = ("a", "b", "c")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("reference") / "train.csv"
    rows = np.column_stack([rng.normal(10, 2, 600).round(3), rng.integers(0, 9, 600),
                            rng.normal(0, 1, 600).round(3)])
    path.write_text("a,b,c\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in rows))
    return build_baseline(path, feature_dtype="FP32", reference_rows=300)


def test_the_baseline_reference_is_its_joint_rows_evenly_spaced_and_hashed(
    baseline: Baseline
) -> None:
    ref = reference_for("", ["c", "a", "b"], np.dtype(np.float32), baseline, 40)
    stored = np.asarray(baseline.rows)[:, [2, 0, 1]]
    np.testing.assert_array_equal(ref.rows, sample_rows(stored, 40).astype(np.float32))
    assert ref.rows.dtype == np.float32 and ref.rows.shape == (40, 3)
    text = json.dumps({"features": ["c", "a", "b"], "rows": ref.rows.astype(float).tolist()},
                      sort_keys=True, separators=(",", ":"))
    assert ref.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert ref.baseline_sha256 == baseline.sha256
    assert "40 rows: evenly spaced through the 300 joint rows" in ref.description
    np.testing.assert_array_equal(ref.quoted, np.median(ref.rows.astype(float), axis=0))
    assert ref.integer.tolist() == [False, False, True]  # b only ever took whole numbers
    assert ref.low is not None and ref.low[2] == baseline.columns["b"].numeric.min
    again = reference_for("baseline", ["c", "a", "b"], np.dtype(np.float32), baseline, 40)
    assert again.sha256 == ref.sha256  # the same baseline, the same rows: no randomness


def test_median_and_given_rows_are_one_reference_row(baseline: Baseline) -> None:
    median = reference_for("median", FEATURES, np.dtype(np.float64), baseline)
    assert median.rows.tolist() == [[baseline.columns[n].numeric.quantiles["p50"]
                                     for n in FEATURES]]
    given = reference_for("b=4, a=9.5", FEATURES, np.dtype(np.float64), baseline)
    assert given.rows.tolist() == [[9.5, 4.0, median.rows[0, 2]]]
    assert "a=9.5, b=4" in given.description and "medians" in given.description
    alone = reference_for("a=1,b=2,c=3", FEATURES, np.dtype(np.float64), None)
    assert alone.rows.tolist() == [[1.0, 2.0, 3.0]] and alone.low is None


@pytest.mark.parametrize(("spec", "error", "message"), [
    ("a=1,zz=2", InvalidInput, "unknown feature 'zz'"),
    ("a=one", InvalidInput, "'a=one' is none of them"),
    ("sideways", InvalidInput, "expected baseline, median or FEATURE=VALUE"),
])
def test_bad_reference_specs_are_refused(baseline: Baseline, spec: str, error: type,
                                         message: str) -> None:
    with pytest.raises(error, match=message):
        reference_for(spec, FEATURES, np.dtype(np.float64), baseline)


def test_a_reference_the_ledger_cannot_give_is_a_failed_precondition(
    baseline: Baseline
) -> None:
    with pytest.raises(FailedPrecondition, match="the ledger has none"):
        reference_for("", FEATURES, np.dtype(np.float64), None)
    with pytest.raises(InvalidInput, match="give every feature .* missing: c"):
        reference_for("a=1,b=2", FEATURES, np.dtype(np.float64), None)
    old = dataclasses.replace(baseline, rows=[])
    with pytest.raises(FailedPrecondition, match="keeps no joint feature rows"):
        reference_for("baseline", FEATURES, np.dtype(np.float64), old)
    with pytest.raises(FailedPrecondition, match="has no feature 'income'"):
        reference_for("baseline", ["a", "income"], np.dtype(np.float64), baseline)
    with pytest.raises(InvalidInput, match="between 1 and 10000"):
        reference_for("baseline", FEATURES, np.dtype(np.float64), baseline, 10_001)


# ── a recorded call as a feature table ─────────────────────────────────────────────────


def test_numeric_inputs_become_one_table_and_back() -> None:
    x = np.array([[1.5, 2.5], [3.5, 4.5]], dtype=np.float32)
    n = np.array([7, 8], dtype=np.int64)
    features = features_of([tensor_from_array("x", x), tensor_from_array("n", n)],
                           ["x_0", "x_1", "n"], seq=3)
    assert features.names == ("x_0", "x_1", "n") and features.dtype == np.float64
    rows = np.array([[0.25, 1.0, 3.0]])
    back = features.tensors(rows)
    assert [(t.name, t.datatype, t.shape) for t in back] == [
        ("x", "FP32", (1, 2)), ("n", "INT64", (1,))]
    assert back[1].array.tolist() == [3]
    single = features_of([tensor_from_array("input", x)], ["income", "fico"], seq=3)
    assert single.dtype == np.float32 and single.names == ("income", "fico")
    unnamed = features_of([tensor_from_array("input", x)], [], seq=3)
    assert unnamed.names == ("input_0", "input_1")


@pytest.mark.parametrize("tensor", [
    tensor_from_array("text", np.array(["a", "b"], dtype=object)),
    tensor_from_array("image", np.zeros((1, 2, 2), dtype=np.float32)),
    tensor_from_array("flag", np.array([True, False])),
], ids=["text", "image", "bool"])
def test_inputs_that_are_not_a_numeric_table_are_refused(tensor: Tensor) -> None:
    with pytest.raises(FailedPrecondition, match=f"record seq 9 is not tabular: input "
                                                 f"'{tensor.name}'"):
        features_of([tensor], [], seq=9)


# ── the digest of explain-range ────────────────────────────────────────────────────────


def test_the_digest_line_is_the_decisions_fields_as_sorted_json() -> None:
    decision = ExplainedDecision(
        seq=4, request_id="a", row=1, received_us=1_796_000_000_000_000, model_sha256="ab",
        decision="0", favorable_outcome=False, recorded_value=0.25, fx=0.2500001,
        reference_value=1 / 3, efficient=True,
        attributions=[FeatureAttribution("fico", 600.0, 690.5, -0.1)],
        reasons=[ReasonCode(1, "fico", -0.1, 600.0, 690.5, "below", "Credit score")])
    expected = json.dumps(dataclasses.asdict(decision), sort_keys=True,
                          separators=(",", ":")) + "\n"
    assert decision_line(decision) == expected


def test_pairs_are_two_features_each() -> None:
    assert feature_pairs(["income:debt_ratio", " fico : age "]) == [
        ("income", "debt_ratio"), ("fico", "age")]
    for bad in ("income", "a:b:c", ":fico"):
        with pytest.raises(InvalidInput, match="FEATURE:FEATURE"):
            feature_pairs([bad])
    with pytest.raises(InvalidInput, match="at most 20 pairs"):
        feature_pairs(["a:b"] * 21)
