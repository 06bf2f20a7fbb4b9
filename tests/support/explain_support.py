"""Helpers for the tests of `audit explain` (tests/integration/test_audit_explain.py).

Real things only: the demo credit models (audit_support: v1 a logistic regression, v2
gradient-boosted trees behind a Scaler), a baseline of their training data built by
`mlwitness.analytics.baseline`, a sidecar serving a model with that baseline, tritonclient
as the caller, onnxruntime run directly (and the `shap` library) as the oracles.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from audit_support import AuditedSidecar, CreditModels, credit_run, start_audited_sidecar
from onnx import helper

from mlwitness.analytics.baseline import Baseline, build_baseline
from mlwitness.explain.reference import sample_rows
from mlwitness.protocol import audit_pb2 as apb

REPO = Path(__file__).resolve().parents[2]
REASONS = REPO / "examples" / "credit" / "reasons.toml"
SINGLE_CALLS = 12  # one-row calls app-00 … app-11, then a 3-row call "batch"


def credit_baseline(models: CreditModels, directory: Path) -> Path:
    """The baseline of the credit models' training data (train.csv next to them),
    profiled as the v2 model receives it, with 1,000 joint rows kept."""
    baseline = build_baseline(models.v2.parent / "train.csv", model=models.v2,
                              features=list(models.features), label="approved")
    path = directory / "baseline.json"
    path.write_text(baseline.to_json())
    return path


def margin_model(v2: Path, path: Path) -> Path:
    """credit v2 with its trees' post_transform NONE: `probabilities_1` is then the trees'
    raw score (the margin) and `probabilities_0` its negative."""
    model = onnx.load(str(v2))
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    kept = [a for a in node.attribute if a.name != "post_transform"]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("post_transform", "NONE")])
    onnx.save(model, str(path))
    return path


def logit_model(v1: Path, path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """credit v1 (Scaler, LinearClassifier) with post_transform NONE: `probabilities_1` is
    then the logit of class 1, w · z + b with z = (x - offset) * scale. Returns the model,
    and w, offset, scale as float32."""
    model = onnx.load(str(v1))
    linear = next(n for n in model.graph.node if n.op_type == "LinearClassifier")
    scaler = next(n for n in model.graph.node if n.op_type == "Scaler")
    kept = [a for a in linear.attribute if a.name != "post_transform"]
    del linear.attribute[:]
    linear.attribute.extend([*kept, helper.make_attribute("post_transform", "NONE")])
    onnx.save(model, str(path))
    attributes = {a.name: helper.get_attribute_value(a)
                  for a in (*linear.attribute, *scaler.attribute)}
    weights = np.asarray(attributes["coefficients"], dtype=np.float32).reshape(2, -1)[1]
    return (path, weights, np.asarray(attributes["offset"], dtype=np.float32),
            np.asarray(attributes["scale"], dtype=np.float32))


@dataclass
class Explained:
    """A sidecar serving `model` with the credit baseline, and the calls it recorded."""

    side: AuditedSidecar
    model: Path
    baseline: Baseline
    x: dict[str, np.ndarray]  # request id -> the rows sent

    def explain(self, request_id: str, row: int = 0, no_flips: bool = False,
                pairs: tuple[str, ...] = (), **options: object) -> apb.ExplainResponse:
        return self.side.stub.Explain(apb.ExplainRequest(
            ref=apb.RecordRef(request_id=request_id), row=row, no_flips=no_flips,
            pairs=list(pairs), options=apb.ExplainOptions(**options)), timeout=120)

    def reference(self, rows: int = 100) -> np.ndarray:
        """The reference rows `baseline` gives, rebuilt from the baseline itself."""
        stored = np.asarray(self.baseline.rows)
        index = [self.baseline.feature_names.index(n) for n in FEATURES]
        return sample_rows(stored[:, index], rows).astype(np.float32)

    def audit_detail(self, audit_request_id: str) -> dict:
        (detail,) = self.side.query("SELECT detail FROM entries WHERE request_id = ?",
                                    [audit_request_id])[0]
        return json.loads(detail)


FEATURES = ("income", "debt_ratio", "fico", "age", "years_employed", "open_loans")


@contextlib.contextmanager
def explained_sidecar(model: Path, baseline: Path, ledger: Path, rows: np.ndarray
                      ) -> Iterator[Explained]:
    """Serve `model` with `baseline`, record SINGLE_CALLS one-row calls and a 3-row one."""
    side = start_audited_sidecar(model, ledger, baseline=baseline)
    try:
        sent = {f"app-{i:02d}": rows[i:i + 1] for i in range(SINGLE_CALLS)}
        sent["batch"] = rows[SINGLE_CALLS:SINGLE_CALLS + 3]
        for request_id, x in sent.items():
            outputs = side.infer(x, request_id)
            assert np.array_equal(outputs["label"], credit_run(model, x)["label"])
        yield Explained(side, model, Baseline.from_json(baseline.read_text()), sent)
    finally:
        side.stop()
