"""Fuzzing ModelInfer: adversarial requests, built field by field or damaged on the wire,
sent as exact bytes to one real sidecar (the demo credit model, guards observing, audit
port open) for the whole module.

Every call must come back within its deadline with an expected status (never INTERNAL
unless onnxruntime itself failed, never a traceback, never an unexpected exception in the
log); a valid request must be answered OK. After the run the sidecar still answers health
checks, its ledger holds exactly one record per call (as DuckDB and the audit API see it),
and after a clean stop the ledger verifies. Profiles and the long run: tests/fuzz_support.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fuzz_requests import (
    GUARDS,
    INPUT,
    MODEL,
    OUTPUTS,
    RequestPlan,
    TensorPlan,
    build,
    mutated,
    plans,
)
from fuzz_support import ErrorLog, alive, check, examples, no_errors_logged, unary, watch_errors
from hypothesis import event, given
from hypothesis import strategies as st
from sidecar import RunningSidecar, start_with_audit_port
from tritonclient.grpc import service_pb2

from mlwitness.ledger.verify import verify
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import inference as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
# As `mlwitness audit` connects: a page of records with 70 kB request ids is over 4 MB.
UNLIMITED = [("grpc.max_receive_message_length", -1)]


@dataclass
class Target:
    running: RunningSidecar
    channel: grpc.Channel
    audit: grpc.Channel
    errors: ErrorLog
    calls: int = 0  # ModelInfer calls made: each must leave exactly one record

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<sidecar {self.running.address}>")  # as a failing example shows it

    def infer(self, payload: bytes, fuzzed: bool = True) -> Any:
        outcome = unary(self.channel, INFER, payload)
        self.calls += 1
        if fuzzed:
            event(outcome.code.name)  # --hypothesis-show-statistics: how far examples got
        errors = self.errors.take()  # before asserting: none left for the next example
        check(outcome, payload)
        no_errors_logged(errors, payload)
        return outcome


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, credit_model: Any) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz-inference")
    guards = root / "guards.toml"
    guards.write_text(GUARDS)
    running = start_with_audit_port(dict(
        model=credit_model.path, model_name=MODEL, ledger=root / "ledger.duckdb",
        host="127.0.0.1", port=0, metrics_port=0, durability="write", drain_timeout=5.0,
        features=list(credit_model.builder.FEATURES), guards=guards,
        record_metadata=["x-caller"]))
    with watch_errors() as errors, grpc.insecure_channel(running.address) as channel, \
            grpc.insecure_channel(f"127.0.0.1:{running.sidecar.audit_port}",
                                  options=UNLIMITED) as audit:
        yield Target(running, channel, audit, errors)
    running.stop()


def seeds(credit_model: Any) -> list[bytes]:
    """Valid requests of several shapes: raw and typed, with parameters and outputs."""
    x = credit_model.features(3, seed=11).astype("<f4")
    raw = RequestPlan(MODEL, "", "seed-raw", {"age_band": ("string_param", "26-40")},
                      [TensorPlan(INPUT, "FP32", [3, 6], raw=x.tobytes(), valid=True)],
                      [(OUTPUTS[1], {})])
    typed = RequestPlan(MODEL, "1", "", {"priority": ("int64_param", 3)},
                        [TensorPlan(INPUT, "FP32", [1, 6],
                                    typed={"fp32_contents": x[0].tolist()}, valid=True)],
                        [(OUTPUTS[0], {}), (OUTPUTS[1], {})])
    return [build(pb, raw), build(pb, typed), build(service_pb2, raw)]


@examples(ci=200)
@given(plan=plans(), module=st.sampled_from([pb, service_pb2]))
def test_structured_requests_are_answered_within_the_expected_statuses(
        target: Target, plan: RequestPlan, module: Any) -> None:
    payload = build(module, plan)
    outcome = target.infer(payload)
    if plan.valid:
        assert outcome.code == grpc.StatusCode.OK, f"a valid request refused: " \
                                                   f"{outcome.describe()}"
    if outcome.code == grpc.StatusCode.OK:
        response = pb.ModelInferResponse.FromString(outcome.responses[0])
        assert response.model_name == MODEL
        if plan.id:
            assert response.id == plan.id


@pytest.fixture(scope="module")
def valid_requests(credit_model: Any) -> list[bytes]:
    return seeds(credit_model)


@examples(ci=200)
@given(data=st.data())
def test_damaged_request_bytes_are_answered_within_the_expected_statuses(
        target: Target, valid_requests: list[bytes], data: st.DataObject) -> None:
    target.infer(data.draw(mutated(valid_requests), label="payload"))


@examples(ci=40)
@given(method=st.sampled_from(["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                               "ModelMetadata"]),
       payload=st.binary(max_size=120))
def test_the_other_inference_rpcs_answer_damaged_bytes(
        target: Target, method: str, payload: bytes) -> None:
    outcome = unary(target.channel, f"/inference.GRPCInferenceService/{method}", payload)
    check(outcome, payload)
    no_errors_logged(target.errors.take(), payload)


def _audit_count(target: Target) -> int:
    """Inference records as the audit API lists them (every page)."""
    call = target.audit.unary_unary(
        "/mlwitness.audit.v1.AuditService/ListRecords",
        request_serializer=apb.ListRecordsRequest.SerializeToString,
        response_deserializer=apb.ListRecordsResponse.FromString)
    total, token = 0, ""
    for _ in range(1_000):
        page = call(apb.ListRecordsRequest(page_size=1000, page_token=token), timeout=30)
        total += len(page.records)
        token = page.next_page_token
        if not token:
            return total
    raise AssertionError("ListRecords did not finish paging")


def test_the_sidecar_lives_on_and_its_ledger_holds_every_call(target: Target) -> None:
    """Runs after the fuzz tests above (module order): the same sidecar and ledger."""
    assert alive(target.channel)
    target.infer(build(pb, RequestPlan(MODEL, "", "after-the-fuzz", {}, [TensorPlan(
        INPUT, "FP32", [1, 6], raw=np.ones(6, "<f4").tobytes(), valid=True)], [])), fuzzed=False)
    running = target.running
    running.sync()
    (infer,) = running.query("SELECT count(*) FROM entries WHERE kind = 'infer'")[0]
    assert infer == target.calls
    assert _audit_count(target) == target.calls
    ledger = running.sidecar.ledger
    assert ledger is not None
    assert ledger.stats.undecoded == 0, "records loaded without their decoded columns"
    path = Path(running.ledger_path)
    running.stop()
    report = verify(path)
    assert report.ok, report.problems[:5]
    assert report.records >= target.calls
    no_errors_logged(target.errors.take(), b"")
