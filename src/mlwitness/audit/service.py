"""The audit service's core: records, replay, what-if, sensitivity, traffic replay.

Every question is itself appended to a ledger as a record of kind "audit" (who asked, the
exact request bytes, what, when, and a summary of the answer), in the same hash chain as
the decisions when the sidecar serves it. Results are plain dicts shaped like the audit
API's messages; `mlwitness.wire.audit` turns them into protobuf.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlwitness.audit import replay as rp
from mlwitness.audit.reader import Filters, LedgerReader, StoredRecord, detail_json
from mlwitness.errors import FailedPrecondition, InvalidInput, MlwitnessError
from mlwitness.ledger import environment, store
from mlwitness.ledger.record import Record
from mlwitness.runtime import OnnxModel

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5
REPLAY_BATCH_ROWS = 8192


@dataclass(frozen=True)
class Asker:
    """Who asks, and the exact bytes of the question (for the audit trail)."""

    caller: str = ""
    rpc: str = ""
    raw: bytes = b""


class AuditService:
    def __init__(
        self,
        reader: LedgerReader,
        *,
        trail: Callable[[Record], None] | None,
        store_model: Callable[[bytes], str] | None = None,
        threads: int = 1,
    ) -> None:
        self.reader = reader
        self.trail = trail
        self.store_model = store_model
        self.models = rp.ModelCache(threads=threads)
        self.environment = environment.fingerprint()

    # ── the audit trail ────────────────────────────────────────────────────────────────

    @contextlib.contextmanager
    def audited(self, asker: Asker, **what: Any) -> Iterator[dict[str, Any]]:
        """Run a question; append it, with `summary` filled in by the block, to the ledger."""
        summary: dict[str, Any] = {}
        record = Record(kind="audit", request_id=uuid.uuid4().hex,
                        received_us=time.time_ns() // 1000, peer=asker.caller,
                        request=asker.raw, env_id=environment.env_id(self.environment))
        try:
            yield summary
        except MlwitnessError as exc:
            record.status, record.message = exc.status, exc.message
            raise
        except Exception:
            record.status, record.message = "INTERNAL", "internal error"
            raise
        finally:
            record.responded_us = time.time_ns() // 1000
            record.detail = detail_json(rpc=asker.rpc, request=what, result=summary)
            if self.trail is not None:
                self.trail(record)

    # ── records ────────────────────────────────────────────────────────────────────────

    def get_record(self, asker: Asker, request_id: str = "", seq: int = 0) -> dict[str, Any]:
        with self.audited(asker, request_id=request_id, seq=seq) as summary:
            stored = self.reader.get(request_id, seq)
            r = stored.record
            summary.update(seq=r.seq, status=r.status)
            env = self.reader.environment(r.env_id)
            return {
                "seq": r.seq, "request_id": r.request_id, "kind": r.kind,
                "received_us": r.received_us, "responded_us": r.responded_us,
                "model_name": r.model_name, "model_version": r.model_version,
                "model_sha256": r.model_sha256, "env_id": r.env_id,
                "environment_json": environment.canonical(env) if env else "",
                "caller": r.peer, "metadata_json": r.metadata, "status": r.status,
                "message": r.message, "violations_json": r.violations,
                "inputs": stored.inputs, "outputs": stored.outputs,
                "prev_hash": r.prev_hash.hex(), "hash": r.hash.hex(),
                "request_bytes": len(r.request), "response_bytes": len(r.response),
            }

    def list_records(self, asker: Asker, filters: Filters, page_size: int, page_token: str
                     ) -> tuple[list[dict[str, Any]], str]:
        with self.audited(asker, filters=filters.__dict__, page_token=page_token) as summary:
            items, token = self.reader.list(filters, page_size, page_token)
            summary.update(returned=len(items))
            return items, token

    # ── replay ─────────────────────────────────────────────────────────────────────────

    def _model(self, sha256: str) -> OnnxModel:
        return self.models.get(sha256, lambda: self.reader.model(sha256).onnx)

    def _candidate(self, sha256: str, onnx: bytes) -> str:
        if onnx:
            if self.store_model is None:
                raise FailedPrecondition("this audit server cannot store uploaded models; "
                                         "pass candidate_sha256 of a stored model")
            sha = self.store_model(onnx)  # evidence first: the bytes the answer rests on
            self.models.get(sha, lambda: onnx)
            return sha
        return sha256

    def _names(self, stored: StoredRecord) -> list[str]:
        first = stored.inputs[0] if stored.inputs else {}
        return [k for k, v in first.items() if not isinstance(v, str)]

    def replay(self, asker: Asker, request_id: str = "", seq: int = 0,
               candidate_sha256: str = "", candidate_onnx: bytes = b"") -> dict[str, Any]:
        what = dict(request_id=request_id, seq=seq, candidate_sha256=candidate_sha256,
                    candidate_upload_sha256=hashlib.sha256(candidate_onnx).hexdigest()
                    if candidate_onnx else "")
        with self.audited(asker, **what) as summary:
            stored = self.reader.get(request_id, seq)
            record = stored.record
            call = rp.decode_call(record)
            sha = self._candidate(candidate_sha256, candidate_onnx) or record.model_sha256
            if not sha:
                raise FailedPrecondition(f"record seq {record.seq} names no model")
            replayed = self._model(sha).run(call.inputs, call.requested)
            diffs = rp.compare(call.outputs, replayed)
            rule = rp.DecisionRule()
            before, after = rule.decisions(call.outputs), rule.decisions(replayed)
            env_diff = environment.differences(self.reader.environment(record.env_id),
                                               self.environment)
            identical = all(d.identical for d in diffs)
            summary.update(seq=record.seq, bit_identical=identical, model_sha256=sha)
            return {
                "seq": record.seq, "request_id": record.request_id,
                "recorded_model_sha256": record.model_sha256, "replayed_model_sha256": sha,
                "bit_identical": identical, "outputs": [d.__dict__ for d in diffs],
                "environment_differences": [
                    {"key": k, "recorded": str(v[0]), "current": str(v[1])}
                    for k, v in env_diff.items()
                ],
                "recorded_outputs": rp.row_dicts(call.outputs),
                "replayed_outputs": rp.row_dicts(replayed),
                "decisions_changed": [i for i, (a, b) in enumerate(zip(before, after,
                                                                       strict=False)) if a != b],
                "decision_output": rule.describe(call.outputs),
            }

    def what_if(self, asker: Asker, overrides: list[tuple[str, float]], request_id: str = "",
                seq: int = 0, row: int = 0, all_rows: bool = False) -> dict[str, Any]:
        with self.audited(asker, request_id=request_id, seq=seq, overrides=overrides, row=row,
                          all_rows=all_rows) as summary:
            if not overrides:
                raise InvalidInput("give at least one override, e.g. income=45000")
            stored = self.reader.get(request_id, seq)
            call = rp.decode_call(stored.record)
            names = self._names(stored)
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
            model = self._model(stored.record.model_sha256)
            original = model.run(call.inputs, call.requested)
            counterfactual = model.run(modified, call.requested)
            rule = rp.DecisionRule()
            before, after = rule.decisions(original), rule.decisions(counterfactual)
            changed = [i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b]
            summary.update(seq=stored.record.seq, decisions_changed=changed)
            return {
                "seq": stored.record.seq, "request_id": stored.record.request_id,
                "model_sha256": stored.record.model_sha256,
                "original_inputs": rp.row_dicts(call.inputs, names),
                "counterfactual_inputs": rp.row_dicts(modified, names),
                "original_outputs": rp.row_dicts(original),
                "counterfactual_outputs": rp.row_dicts(counterfactual),
                "decisions_changed": changed, "decision_output": rule.describe(original),
            }

    def sensitivity(self, asker: Asker, feature: str, *, request_id: str = "", seq: int = 0,
                    start: float = 0.0, stop: float = 0.0, steps: int = 0, scale: str = "",
                    values: list[float] | None = None, row: int = 0, output: str = "",
                    threshold: float | None = None) -> dict[str, Any]:
        with self.audited(asker, request_id=request_id, seq=seq, feature=feature, start=start,
                          stop=stop, steps=steps, scale=scale, values=values, row=row,
                          output=output, threshold=threshold) as summary:
            points = rp.sweep_values(start, stop, steps, scale, values or [])
            stored = self.reader.get(request_id, seq)
            call = rp.decode_call(stored.record)
            names = self._names(stored)
            index, column, display = rp.locate(call.inputs, names, feature)
            n = call.inputs[index].array.shape[0]
            if not 0 <= row < n:
                raise InvalidInput(f"row {row} is out of range: the request has {n} rows")
            model = self._model(stored.record.model_sha256)
            # The recorded row repeated once per point, the feature swept down the batch.
            base = [rp_row(t, row, len(points)) for t in call.inputs]
            swept = rp.with_values(base, [(index, column, points)], None)
            if model.signature.inputs and all(
                s.shape and s.shape[0] == -1 for s in model.signature.inputs
            ):
                outputs = model.run(swept, call.requested)
            else:  # fixed batch size: one point at a time
                parts = [model.run([rp_row(t, i, 1) for t in swept], call.requested)
                         for i in range(len(points))]
                outputs = [rp.Tensor(p[0].name, p[0].datatype, (len(points), *p[0].shape[1:]),
                                     np.concatenate([q.array for q in p]))
                           for p in zip(*parts, strict=True)]
            rule = rp.DecisionRule(output, threshold)
            decisions = rule.decisions(outputs)
            recorded = rule.decisions(model.run([rp_row(t, row, 1) for t in call.inputs],
                                                call.requested))
            rows = rp.row_dicts(outputs)
            flips = [
                {"from_value": float(points[i - 1]), "to_value": float(points[i]),
                 "from_decision": decisions[i - 1], "to_decision": decisions[i]}
                for i in range(1, len(decisions)) if decisions[i] != decisions[i - 1]
            ]
            summary.update(seq=stored.record.seq, points=len(points), flips=len(flips))
            recorded_value = float(call.inputs[index].array.reshape(n, -1)[row, column])
            return {
                "seq": stored.record.seq, "request_id": stored.record.request_id,
                "feature": display, "recorded_value": recorded_value,
                "recorded_decision": recorded[0] if recorded else "",
                "points": [{"value": float(v), "outputs": rows[i],
                            "decision": decisions[i] if decisions else ""}
                           for i, v in enumerate(points)],
                "flips": flips, "decision_output": rule.describe(outputs),
            }

    # ── traffic replay ─────────────────────────────────────────────────────────────────

    def replay_range(self, asker: Asker, filters: Filters, candidate_sha256: str = "",
                     candidate_onnx: bytes = b"", max_listed: int = 100
                     ) -> Iterator[dict[str, Any]]:
        """Yield {"progress"|"changed"|"summary": {...}} events."""
        what = dict(filters=filters.__dict__, candidate_sha256=candidate_sha256,
                    max_listed=max_listed)
        with self.audited(asker, **what) as summary:
            candidate = self._candidate(candidate_sha256, candidate_onnx)
            if candidate:
                self._model(candidate)  # fail early when the candidate is unusable
            total = self.reader.count(filters)
            started = last = time.monotonic()
            counts = dict(records=0, rows=0, identical=0, changed=0, failed=0,
                          decisions_changed=0)
            max_abs = 0.0
            failures: list[str] = []
            listed = 0
            rule = rp.DecisionRule()
            for batch in self.reader.window(filters):
                for outcome in self._replay_batch(batch, candidate, rule):
                    counts["records"] += 1
                    if isinstance(outcome, str):
                        counts["failed"] += 1
                        if len(failures) < 10:
                            failures.append(outcome)
                        continue
                    record, diffs, flips, rows = outcome
                    counts["rows"] += rows
                    if all(d.identical for d in diffs):
                        counts["identical"] += 1
                    else:
                        counts["changed"] += 1
                        max_abs = max([max_abs, *(d.max_abs_diff for d in diffs)])
                    counts["decisions_changed"] += len(flips)
                    for row_index, old, new in flips:
                        if listed < (max_listed or 100):
                            listed += 1
                            stored = self.reader.get(seq=record.seq)  # rows by feature name
                            inputs = stored.inputs[row_index] if row_index < len(
                                stored.inputs) else {}
                            yield {"changed": {"seq": record.seq, "request_id": record.request_id,
                                               "row": row_index, "recorded_decision": old,
                                               "replayed_decision": new, "inputs": inputs}}
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_S:
                    last = now
                    yield {"progress": {"done": counts["records"], "total": total,
                                        "elapsed_s": now - started}}
            elapsed = max(time.monotonic() - started, 1e-9)
            result = dict(counts, records_per_second=counts["records"] / elapsed,
                          replayed_model_sha256=candidate, max_abs_diff=max_abs,
                          failures=failures)
            summary.update({k: v for k, v in result.items() if k != "failures"})
            yield {"summary": result}

    def _replay_batch(self, records: list[Record], candidate: str, rule: rp.DecisionRule
                      ) -> Iterator[Any]:
        """Replay records, running rows of the same model and input layout together."""
        groups: dict[tuple, list[tuple[Record, rp.Decoded]]] = {}
        for record in records:
            try:
                call = rp.decode_call(record)
            except Exception as exc:  # noqa: BLE001 — reported per record
                yield f"seq {record.seq}: {getattr(exc, 'message', exc)}"
                continue
            sha = candidate or record.model_sha256
            key = (sha, tuple(call.requested),
                   tuple((t.name, t.datatype, t.shape[1:]) for t in call.inputs))
            groups.setdefault(key, []).append((record, call))
        for (sha, requested, _), items in groups.items():
            try:
                model = self._model(sha)
            except MlwitnessError as exc:
                for record, _ in items:
                    yield f"seq {record.seq}: {exc.message}"
                continue
            batchable = all(s.shape and s.shape[0] == -1 for s in model.signature.inputs)
            chunks = _chunks(items, REPLAY_BATCH_ROWS) if batchable else [[i] for i in items]
            for chunk in chunks:
                try:
                    outputs = _run_concatenated(model, [c for _, c in chunk], list(requested))
                except MlwitnessError as exc:
                    for record, _ in chunk:
                        yield f"seq {record.seq}: {exc.message}"
                    continue
                for (record, call), replayed in zip(chunk, outputs, strict=True):
                    diffs = rp.compare(call.outputs, replayed)
                    if len(chunk) > 1 and not all(d.identical for d in diffs):
                        # A batched run may round differently; judge this call on its own.
                        replayed = model.run(call.inputs, list(requested))
                        diffs = rp.compare(call.outputs, replayed)
                    flips = []
                    if not all(d.identical for d in diffs):
                        before, after = rule.decisions(call.outputs), rule.decisions(replayed)
                        changed_rows = [i for i, (a, b) in enumerate(zip(before, after,
                                        strict=False)) if a != b]
                        flips = [(i, before[i], after[i]) for i in changed_rows]
                    n = call.inputs[0].array.shape[0] if call.inputs and call.inputs[0].array.ndim \
                        else 1
                    yield record, diffs, flips, n


def rp_row(tensor: rp.Tensor, row: int, repeat: int) -> rp.Tensor:
    """Row `row` of a tensor, repeated `repeat` times along the batch dimension."""
    array = np.repeat(tensor.array[row:row + 1], repeat, axis=0)
    return rp.Tensor(tensor.name, tensor.datatype, array.shape, array)


def _chunks(items: list, rows: int) -> list[list]:
    chunks, current, size = [], [], 0
    for item in items:
        n = item[1].inputs[0].array.shape[0] if item[1].inputs else 1
        if current and size + n > rows:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        chunks.append(current)
    return chunks


def _run_concatenated(model: OnnxModel, calls: list[rp.Decoded], requested: list[str]
                      ) -> list[list[rp.Tensor]]:
    """Run many calls' rows in one onnxruntime call; split the outputs back per call."""
    if len(calls) == 1:
        return [model.run(calls[0].inputs, requested)]
    inputs = []
    for position, first in enumerate(calls[0].inputs):
        array = np.concatenate([c.inputs[position].array for c in calls])
        inputs.append(rp.Tensor(first.name, first.datatype, array.shape, array))
    outputs = model.run(inputs, requested)
    sizes = [c.inputs[0].array.shape[0] for c in calls]
    bounds = np.cumsum([0, *sizes])
    split = []
    for i in range(len(calls)):
        part = []
        for tensor in outputs:
            array = tensor.array[bounds[i]:bounds[i + 1]]
            part.append(rp.Tensor(tensor.name, tensor.datatype, array.shape, array))
        split.append(part)
    return split


def store_model_with(writer_write: Callable[[Callable], Any]) -> Callable[[bytes], str]:
    """A `store_model` for AuditService that puts candidate bytes in the ledger's store."""

    def put(onnx: bytes) -> str:
        model = OnnxModel(onnx)
        return writer_write(lambda con: store.put_model(con, onnx, "candidate", "",
                                                       model.signature.to_dict()))

    return put
