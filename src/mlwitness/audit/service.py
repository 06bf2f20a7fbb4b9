"""The audit service's core: records, replay, what-if, sensitivity, traffic replay.

Every question is itself appended to a ledger as a record of kind "audit" (who asked, the
exact request bytes, what, when, and a summary of the answer), in the same hash chain as
the decisions when the sidecar serves it. Questions refused before they are read (no or
unknown credentials, a role too low) are tallied instead (refusals.py): the first of a
caller, status, message and RPC in an interval at once, the rest in one record. Results
are plain dicts shaped like the audit API's messages; `mlwitness.wire.audit` turns them
into protobuf.

Models run in a sandbox worker process (`mlwitness.model.sandbox`), bounded in memory and in
time (the caller's deadline, and `run_timeout` a run). An uploaded candidate is at most
`max_candidate_bytes`, must be self-contained, and is put in the ledger's model store only
once it has run — before the answer that rests on it; one that fails to load or run is not
kept. The audit record's request bytes name an upload by `sha256:<hex>` instead of
holding it again (`mlwitness.wire.audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlwitness.analytics.baseline import latest_baseline, load_baseline
from mlwitness.analytics.bias import bias_report
from mlwitness.analytics.drift import Window, drift_report
from mlwitness.audit import replay as rp
from mlwitness.audit import traffic
from mlwitness.codec import INLINE_BYTES
from mlwitness.errors import FailedPrecondition, InvalidInput, MlwitnessError, TooLarge
from mlwitness.guards.checks import InlineChecks, guard_record, rate_states
from mlwitness.guards.file import loads_guards
from mlwitness.guards.violations import violations_report
from mlwitness.inference.refusals import Refusals, sha256_proof
from mlwitness.ledger import environment, store
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import LedgerReader, StoredRecord, detail_json
from mlwitness.ledger.record import Record
from mlwitness.model.external_data import NotProtobuf, NotSelfContained, check_self_contained
from mlwitness.model.sandbox import Aborted, Limits, Sandbox, SandboxedModel, Sandboxes

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class Asker:
    """Who asks, the bytes of the question (for the audit trail), and by when the answer
    is wanted (a time.monotonic() value; None: no deadline)."""

    caller: str = ""
    rpc: str = ""
    raw: bytes = b""
    deadline: float | None = None


@dataclass(frozen=True)
class AuditLimits:
    # 16 MiB: the tabular models mlwitness serves are kilobytes to a few MiB, and every
    # candidate that runs is kept for good in the ledger's model store.
    max_candidate_bytes: int = 16 << 20
    # What one question's sandbox worker may allocate beyond its start-up size, for all
    # the models it holds: a credit model's session is a few MiB, a batch of 8,192 rows
    # well under one. A model that needs more is refused, the sidecar untouched.
    memory_bytes: int = 512 << 20
    run_timeout: float = 60.0  # seconds one model run may take, deadline or not

    @classmethod
    def of(cls, settings: Any) -> AuditLimits:
        return cls(settings.max_candidate_bytes, settings.audit_memory_bytes,
                   settings.audit_run_timeout)


class AuditService:
    def __init__(
        self,
        reader: LedgerReader,
        *,
        trail: Callable[[Record], None] | None,
        store_model: Callable[[bytes, dict[str, Any]], str] | None = None,
        threads: int = 1,
        checks: InlineChecks | None = None,
        limits: AuditLimits | None = None,
    ) -> None:
        self.reader = reader
        self.trail = trail
        self.store_model = store_model  # (onnx, signature) -> sha256, in the model store
        self.limits = limits or AuditLimits()
        self.sandboxes = Sandboxes(Limits(self.limits.memory_bytes, self.limits.run_timeout,
                                          threads))
        self.environment = environment.fingerprint()
        self.checks = checks  # the sidecar's live guards (None: none, or a standalone server)
        self.refusals = Refusals(self._append, self._refusal)

    def close(self) -> None:
        """End the idle sandbox workers."""
        self.sandboxes.close()

    # ── questions refused before they are read ─────────────────────────────────────────

    async def refuse(self, asker: Asker, error: MlwitnessError) -> None:
        """Record a question refused before it is read: who, which RPC, the size and
        SHA-256 of what was sent (not the bytes: an anonymous caller must not make the
        ledger keep large blobs), tallied per caller, status, message and RPC so that a
        flood of them costs a few records. The caller's answer is the refusal, whether or
        not the record can be written."""
        record = self._refusal()
        record.peer, record.status, record.message = asker.caller, error.status, error.message
        raw = asker.raw
        proof = (await asyncio.to_thread(sha256_proof, raw) if len(raw) > INLINE_BYTES
                 else sha256_proof(raw))
        if self.refusals.tally(record, len(raw), proof, rpc=asker.rpc):
            return
        record.responded_us = time.time_ns() // 1000
        try:
            await self._append(record)
        except MlwitnessError as exc:
            log.warning("a refused %s question could not be recorded: %s", asker.rpc,
                        exc.message)

    async def close_refusals(self) -> None:
        """Record the refusals tallied so far: at shutdown, once no question is left."""
        await self.refusals.close()

    def _refusal(self) -> Record:
        now = time.time_ns() // 1000
        return Record(kind="audit", request_id=uuid.uuid4().hex, received_us=now,
                      responded_us=now, env_id=environment.env_id(self.environment))

    async def _append(self, record: Record) -> None:
        if self.trail is not None:
            await asyncio.to_thread(self.trail, record)

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
        except BaseException:  # cancelled: the task, or a streamed question's generator
            record.status, record.message = "CANCELLED", "the caller cancelled the question"
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

    @contextlib.contextmanager
    def _runs(self, asker: Asker) -> Iterator[Runs]:
        runs = Runs(self, asker.deadline)
        try:
            yield runs
        finally:
            runs.close()

    def _upload(self, runs: Runs, onnx: bytes) -> SandboxedModel:
        """An uploaded candidate, checked and loaded (not stored: see `_keep`)."""
        if self.store_model is None:
            raise FailedPrecondition("this audit server cannot store uploaded models; "
                                     "pass candidate_sha256 of a stored model")
        limit = self.limits.max_candidate_bytes
        if len(onnx) > limit:
            raise TooLarge(f"candidate_onnx of {len(onnx)} bytes exceeds the limit of "
                           f"{limit} bytes (--max-candidate-bytes)")
        try:
            check_self_contained(onnx)  # here too: onnxruntime must never see it
            return runs.upload(onnx)
        except Aborted:
            raise
        except (NotSelfContained, NotProtobuf) as exc:
            raise InvalidInput(f"candidate_onnx: {exc.message}") from None
        except FailedPrecondition as exc:  # the caller's upload, not the ledger's state
            raise InvalidInput(f"candidate_onnx is not a model onnxruntime can load: "
                               f"{exc.message}") from None

    def _keep(self, onnx: bytes, model: SandboxedModel) -> None:
        """Store a candidate that has run: the bytes an answer rests on, before it is sent."""
        assert self.store_model is not None
        self.store_model(onnx, model.signature.to_dict())

    def _names(self, stored: StoredRecord) -> list[str]:
        first = stored.inputs[0] if stored.inputs else {}
        return [k for k, v in first.items() if not isinstance(v, str)]

    def replay(self, asker: Asker, request_id: str = "", seq: int = 0,
               candidate_sha256: str = "", candidate_onnx: bytes = b"") -> dict[str, Any]:
        what = dict(request_id=request_id, seq=seq, candidate_sha256=candidate_sha256,
                    candidate_upload_sha256=hashlib.sha256(candidate_onnx).hexdigest()
                    if candidate_onnx else "")
        with self.audited(asker, **what) as summary, self._runs(asker) as runs:
            record = self.reader.get(request_id, seq, rows=False).record
            call = rp.decode_call(record)
            if candidate_onnx:
                model = self._upload(runs, candidate_onnx)
            else:
                sha = self.reader.resolve_model(candidate_sha256) if candidate_sha256 \
                    else record.model_sha256
                if not sha:
                    raise FailedPrecondition(f"record seq {record.seq} names no model")
                model = runs.model(sha)
            if candidate_onnx or candidate_sha256:
                _check_fits(model, call, record.seq)
            replayed = model.run(call.inputs, call.requested)
            if candidate_onnx:
                self._keep(candidate_onnx, model)
            sha = model.sha256
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
                          all_rows=all_rows) as summary, self._runs(asker) as runs:
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
            model = runs.model(stored.record.model_sha256)
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
                          output=output, threshold=threshold) as summary, \
                self._runs(asker) as runs:
            points = rp.sweep_values(start, stop, steps, scale, values or [])
            stored = self.reader.get(request_id, seq)
            call = rp.decode_call(stored.record)
            names = self._names(stored)
            index, column, display = rp.locate(call.inputs, names, feature)
            n = call.inputs[index].array.shape[0]
            if not 0 <= row < n:
                raise InvalidInput(f"row {row} is out of range: the request has {n} rows")
            model = runs.model(stored.record.model_sha256)
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

    # ── guards ─────────────────────────────────────────────────────────────────────────

    def violations(self, asker: Asker, *, since_us: int = 0, until_us: int = 0,
                   model: str = "") -> dict[str, Any]:
        with self.audited(asker, since_us=since_us, until_us=until_us, model=model) as summary:
            report = violations_report(self.reader.cursor(), since_us=since_us,
                                       until_us=until_us, model=model)
            report["rates_now"] = rate_states(self.checks.status()) if self.checks else []
            summary.update(calls=report["calls"], refused=report["refused"],
                           rate_breaches=len(report["rate_breaches"]))
            return report

    def get_guards(self, asker: Asker) -> dict[str, Any]:
        with self.audited(asker):
            return self._guards_state()

    def set_guards(self, asker: Asker, text: str, fmt: str) -> dict[str, Any]:
        """Replace the guards in force; the new version goes on the ledger first."""
        with self.audited(asker, format=fmt) as summary:
            if self.checks is None:
                raise FailedPrecondition("no guards are in force here: start the sidecar with "
                                         "--guards FILE to manage guards at run time")
            config = loads_guards(text, fmt)
            if self.trail is not None:
                self.trail(guard_record(config, mode=self.checks.mode,
                                        source="audit API", caller=asker.caller))
            warnings = self.checks.replace(config)
            summary.update(sha256=config.sha256, **({"warnings": warnings} if warnings else {}))
            return self._guards_state()

    def _guards_state(self) -> dict[str, Any]:
        if self.checks is None:
            return {"active": False}
        from mlwitness.guards.file import dumps_toml

        return {"active": True, "sha256": self.checks.sha256, "mode": self.checks.mode,
                "toml": dumps_toml(self.checks.config),
                "rates_now": rate_states(self.checks.status())}

    # ── drift and bias ─────────────────────────────────────────────────────────────────

    def drift(self, asker: Asker, *, since_us: int = 0, until_us: int = 0, model: str = "",
              baseline: str = "", reference_since_us: int = 0, reference_until_us: int = 0,
              features: list[str] | None = None) -> dict[str, Any]:
        with self.audited(asker, since_us=since_us, until_us=until_us, model=model,
                          baseline=baseline, reference_since_us=reference_since_us,
                          reference_until_us=reference_until_us,
                          features=features) as summary:
            con = self.reader.cursor()
            reference: Any
            if reference_since_us or reference_until_us:
                if baseline:
                    raise InvalidInput("compare with a baseline or a reference window, "
                                       "not both")
                reference = Window(reference_since_us, reference_until_us)
                label = f"window {reference_since_us}..{reference_until_us}"
            else:
                reference = load_baseline(con, baseline or latest_baseline(con))
                label = f"baseline {reference.sha256}"
            report = drift_report(con, reference, since_us=since_us, until_us=until_us,
                                  model=model, columns=features or None).to_dict()
            drifted = list(dict.fromkeys(  # a label drifts as numbers and as categories
                f["name"] for f in report["features"] if f["verdict"] == "drift"))
            summary.update(verdict=report["verdict"], drifted=drifted, rows=report["rows"],
                           reference=label)
            return {"drift": report["verdict"] == "drift", "drifted": drifted,
                    "window_rows": report["rows"], "reference": label,
                    "report_json": json.dumps(report, sort_keys=True)}

    def bias(self, asker: Asker, *, attribute: str, favorable: str, since_us: int = 0,
             until_us: int = 0, model: str = "", privileged: str = "",
             bins: list[float] | None = None) -> dict[str, Any]:
        with self.audited(asker, attribute=attribute, favorable=favorable, since_us=since_us,
                          until_us=until_us, model=model, privileged=privileged,
                          bins=bins or []) as summary:
            if not attribute or not favorable:
                raise InvalidInput("give an attribute (e.g. age_band) and a favorable outcome "
                                   "(e.g. label=1)")
            report = bias_report(self.reader.cursor(), attribute=attribute,
                                 favorable=favorable, since_us=since_us, until_us=until_us,
                                 model=model, privileged=privileged or None,
                                 bins=list(bins) if bins else None)
            data = report.to_dict()
            summary.update(verdict=report.verdict, groups=len(report.groups))
            chi2 = report.chi2 or {}
            fisher = report.fisher or {}
            return {
                "attribute": attribute, "favorable": favorable,
                "privileged": report.privileged,
                "groups": [{"group": g.group, "n": g.n, "favorable": g.favorable,
                            "rate": g.rate, "disparate_impact": g.disparate_impact,
                            "statistical_parity_difference": g.statistical_parity_difference,
                            "pvalue": g.pvalue, "pvalue_holm": g.pvalue_holm}
                           for g in report.groups],
                "chi2": chi2.get("statistic", 0.0), "chi2_pvalue": chi2.get("pvalue", 1.0),
                "dof": int(chi2.get("dof", 0)), "has_fisher": bool(fisher),
                "fisher_odds_ratio": fisher.get("odds_ratio", 0.0),
                "fisher_pvalue": fisher.get("pvalue", 1.0),
                "biased": report.verdict == "disparity", "verdict": report.verdict,
                "report_json": json.dumps(data, sort_keys=True),
            }

    # ── traffic replay ─────────────────────────────────────────────────────────────────

    def replay_range(self, asker: Asker, filters: Filters, candidate_sha256: str = "",
                     candidate_onnx: bytes = b"", max_listed: int = 100
                     ) -> Generator[dict[str, Any], None, None]:
        """Yield {"progress"|"changed"|"summary": {...}} events."""
        what = dict(filters=filters.__dict__, candidate_sha256=candidate_sha256,
                    candidate_upload_sha256=hashlib.sha256(candidate_onnx).hexdigest()
                    if candidate_onnx else "", max_listed=max_listed)
        with self.audited(asker, **what) as summary, self._runs(asker) as runs:
            candidate = ""  # fail early when the candidate is unusable
            if candidate_onnx:
                candidate = self._upload(runs, candidate_onnx).sha256
            elif candidate_sha256:
                candidate = runs.model(self.reader.resolve_model(candidate_sha256)).sha256
            kept = not candidate_onnx  # an upload is stored once a record has run on it
            total = self.reader.count(filters)
            started = last = time.monotonic()
            counts = dict(records=0, rows=0, identical=0, changed=0, failed=0,
                          decisions_changed=0)
            max_abs = 0.0
            failures: list[str] = []
            listed = 0
            rule = rp.DecisionRule()
            for batch in self.reader.window(filters):
                for outcome in traffic.replay_batch(batch, candidate, rule, runs.model):
                    counts["records"] += 1
                    if isinstance(outcome, str):
                        counts["failed"] += 1
                        if len(failures) < 10:
                            failures.append(outcome)
                        continue
                    if not kept:  # before any answer resting on it leaves
                        self._keep(candidate_onnx, runs.model(candidate))
                        kept = True
                    counts["rows"] += outcome.rows
                    if outcome.identical:
                        counts["identical"] += 1
                    else:
                        counts["changed"] += 1
                        max_abs = max(max_abs, outcome.max_abs_diff)
                    counts["decisions_changed"] += len(outcome.flips)
                    record = outcome.record
                    for row_index, old, new in outcome.flips:
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


def _check_fits(model: SandboxedModel, call: rp.Decoded, seq: int) -> None:
    """A candidate that cannot take the recorded call: the auditor's choice, said so."""
    try:
        model.signature.check_inputs(call.inputs)
        model.signature.check_outputs(call.requested)
    except InvalidInput as exc:
        raise InvalidInput(f"the candidate cannot take record seq {seq}'s call: "
                           f"{exc.message}") from None


class Runs:
    """The models one question runs, in one sandbox worker (opened on first use)."""

    def __init__(self, service: AuditService, deadline: float | None) -> None:
        self.service = service
        self.deadline = deadline
        self.uploads: dict[str, bytes] = {}  # candidates by SHA-256: not in the store yet
        self._sandbox: Sandbox | None = None

    def _open(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = self.service.sandboxes.open(self.deadline)
        return self._sandbox

    def model(self, sha256: str) -> SandboxedModel:
        """A stored model (or this question's upload) by SHA-256, loaded in the worker.
        A stored one is looked up even when the worker has it loaded: a worker may still
        hold an earlier question's upload that failed and was never stored, and an answer
        must rest only on models the store holds."""
        onnx = self.uploads.get(sha256)
        if onnx is None:
            onnx = self.service.reader.model(sha256).onnx  # or FailedPrecondition, DataLoss
        return self._open().load(sha256, lambda: onnx)

    def upload(self, onnx: bytes) -> SandboxedModel:
        sha = hashlib.sha256(onnx).hexdigest()
        self.uploads[sha] = onnx
        return self.model(sha)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()


def store_model_with(writer_write: Callable[[Callable], Any]
                     ) -> Callable[[bytes, dict[str, Any]], str]:
    """A `store_model` for AuditService that puts candidate bytes in the ledger's store."""

    def put(onnx: bytes, signature: dict[str, Any]) -> str:
        return writer_write(lambda con: store.put_model(con, onnx, "candidate", "",
                                                       signature))

    return put
