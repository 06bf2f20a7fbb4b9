"""One recorded call run again: replay (on its model or a candidate), what-if, sensitivity.

The arithmetic is `mlwitness.audit.replay`'s and the judgement of a difference
`mlwitness.audit.fidelity`'s; this is the question around it: which model, in a session
with which options (those the record's environment names), which rows, what the trail
keeps, and the answer as `mlwitness.audit.results`.
"""

from __future__ import annotations

import numpy as np

from mlwitness.audit import fidelity
from mlwitness.audit import replay as rp
from mlwitness.audit.candidates import Candidates, check_fits, upload_sha256
from mlwitness.audit.results import (
    DecisionFlip,
    EnvDifference,
    ReplayResult,
    SensitivityPoint,
    SensitivityResult,
    WhatIfResult,
)
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.ledger import environment
from mlwitness.ledger.reader import LedgerReader, StoredRecord
from mlwitness.model.runtime import SessionConfig


def feature_names(stored: StoredRecord) -> list[str]:
    """The numeric input columns of a record's first row, by name."""
    first = stored.inputs[0] if stored.inputs else {}
    return [k for k, v in first.items() if not isinstance(v, str)]


def changed_rows(before: list[str], after: list[str]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b]


class Reruns:
    def __init__(self, reader: LedgerReader, trail: Trail, candidates: Candidates) -> None:
        self.reader = reader
        self.trail = trail
        self.candidates = candidates

    def replay(self, asker: Asker, request_id: str = "", seq: int = 0,
               candidate_sha256: str = "", candidate_onnx: bytes = b"") -> ReplayResult:
        with self.trail.audited(asker, request_id=request_id, seq=seq,
                                candidate_sha256=candidate_sha256,
                                candidate_upload_sha256=upload_sha256(candidate_onnx)
                                ) as summary, self.candidates.runs(asker.deadline) as runs:
            record = self.reader.get(request_id, seq, rows=False).record
            call = rp.decode_call(record)
            recorded_env = self.reader.environment(record.env_id)
            session = SessionConfig.from_environment(recorded_env)  # as it was decided
            if candidate_onnx:
                model = self.candidates.upload(runs, candidate_onnx, session)
            else:
                sha = self.reader.resolve_model(candidate_sha256) if candidate_sha256 \
                    else record.model_sha256
                if not sha:
                    raise FailedPrecondition(f"record seq {record.seq} names no model")
                model = runs.model(sha, session)
            if candidate_onnx or candidate_sha256:
                check_fits(model, call, record.seq)
            replayed = model.run(call.inputs, call.requested)
            if candidate_onnx:
                self.candidates.keep(candidate_onnx, model)
            diffs = rp.compare(call.outputs, replayed)
            rule = rp.DecisionRule()
            # This machine and process, with the options the replay's session ran with.
            env_diff = environment.differences(
                recorded_env, environment.fingerprint(model.session_config))
            identical = all(d.identical for d in diffs)
            verdict = fidelity.verdict(call.outputs, diffs, env_diff, model.unavailable)
            summary.update(seq=record.seq, bit_identical=identical, model_sha256=model.sha256,
                           verdict=verdict)
            return ReplayResult(
                seq=record.seq, request_id=record.request_id,
                recorded_model_sha256=record.model_sha256,
                replayed_model_sha256=model.sha256, bit_identical=identical, outputs=diffs,
                environment_differences=[
                    EnvDifference(k, environment.text(v[0]), environment.text(v[1]))
                    for k, v in env_diff.items()],
                recorded_outputs=rp.row_dicts(call.outputs),
                replayed_outputs=rp.row_dicts(replayed),
                decisions_changed=changed_rows(rule.decisions(call.outputs),
                                               rule.decisions(replayed)),
                decision_output=rule.describe(call.outputs), verdict=verdict,
            )

    def what_if(self, asker: Asker, overrides: list[tuple[str, float]], request_id: str = "",
                seq: int = 0, row: int = 0, all_rows: bool = False) -> WhatIfResult:
        with self.trail.audited(asker, request_id=request_id, seq=seq, overrides=overrides,
                                row=row, all_rows=all_rows) as summary, \
                self.candidates.runs(asker.deadline) as runs:
            if not overrides:
                raise InvalidInput("give at least one override, e.g. income=45000")
            stored = self.reader.get(request_id, seq)
            call = rp.decode_call(stored.record)
            names = feature_names(stored)
            n = call.inputs[0].array.shape[0] if call.inputs and call.inputs[0].array.ndim else 1
            if not all_rows and not 0 <= row < n:
                raise InvalidInput(f"row {row} is out of range: the request has {n} rows")
            changes = []
            for feature, value in overrides:
                if not np.isfinite(value):
                    raise InvalidInput(f"override {feature}={value} is not a finite number")
                index, column, _ = rp.locate(call.inputs, names, feature)
                changes.append((index, column, value))
            modified = rp.with_values(call.inputs, changes, None if all_rows else [row])
            model = runs.model(stored.record.model_sha256,
                               self.candidates.session_of(stored.record.env_id))
            original = model.run(call.inputs, call.requested)
            counterfactual = model.run(modified, call.requested)
            rule = rp.DecisionRule()
            changed = changed_rows(rule.decisions(original), rule.decisions(counterfactual))
            summary.update(seq=stored.record.seq, decisions_changed=changed)
            return WhatIfResult(
                seq=stored.record.seq, request_id=stored.record.request_id,
                model_sha256=stored.record.model_sha256,
                original_inputs=rp.row_dicts(call.inputs, names),
                counterfactual_inputs=rp.row_dicts(modified, names),
                original_outputs=rp.row_dicts(original),
                counterfactual_outputs=rp.row_dicts(counterfactual),
                decisions_changed=changed, decision_output=rule.describe(original),
            )

    def sensitivity(self, asker: Asker, feature: str, *, request_id: str = "", seq: int = 0,
                    start: float = 0.0, stop: float = 0.0, steps: int = 0, scale: str = "",
                    values: list[float] | None = None, row: int = 0, output: str = "",
                    threshold: float | None = None) -> SensitivityResult:
        with self.trail.audited(asker, request_id=request_id, seq=seq, feature=feature,
                                start=start, stop=stop, steps=steps, scale=scale,
                                values=values, row=row, output=output,
                                threshold=threshold) as summary, \
                self.candidates.runs(asker.deadline) as runs:
            points = rp.sweep_values(start, stop, steps, scale, values or [])
            stored = self.reader.get(request_id, seq)
            call = rp.decode_call(stored.record)
            index, column, display = rp.locate(call.inputs, feature_names(stored), feature)
            n = call.inputs[index].array.shape[0]
            if not 0 <= row < n:
                raise InvalidInput(f"row {row} is out of range: the request has {n} rows")
            model = runs.model(stored.record.model_sha256,
                               self.candidates.session_of(stored.record.env_id))
            # The recorded row repeated once per point, the feature swept down the batch.
            base = [rp.row_of(t, row, len(points)) for t in call.inputs]
            swept = rp.with_values(base, [(index, column, points)], None)
            if model.signature.inputs and all(
                s.shape and s.shape[0] == -1 for s in model.signature.inputs
            ):
                outputs = model.run(swept, call.requested)
            else:  # fixed batch size: one point at a time
                outputs = model.run_rows(swept, call.requested)
            rule = rp.DecisionRule(output, threshold)
            decisions = rule.decisions(outputs)
            recorded = rule.decisions(model.run([rp.row_of(t, row, 1) for t in call.inputs],
                                                call.requested))
            rows = rp.row_dicts(outputs)
            flips = [DecisionFlip(float(points[i - 1]), float(points[i]), decisions[i - 1],
                                  decisions[i])
                     for i in range(1, len(decisions)) if decisions[i] != decisions[i - 1]]
            summary.update(seq=stored.record.seq, points=len(points), flips=len(flips))
            return SensitivityResult(
                seq=stored.record.seq, request_id=stored.record.request_id,
                feature=display,
                recorded_value=float(call.inputs[index].array.reshape(n, -1)[row, column]),
                recorded_decision=recorded[0] if recorded else "",
                points=[SensitivityPoint(float(v), rows[i], decisions[i] if decisions else "")
                        for i, v in enumerate(points)],
                flips=flips, decision_output=rule.describe(outputs),
            )
