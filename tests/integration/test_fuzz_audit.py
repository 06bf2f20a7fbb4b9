"""Fuzzing the audit API: adversarial questions to every RPC of mlwitness.audit.v1, built
field by field or damaged on the wire, sent as exact bytes to one real sidecar for the
whole module (the demo credit model, on a copy of the recorded audit ledger, guards
observing so that GetGuards/SetGuards have something to manage).

Every call must come back within its deadline with an expected status (never INTERNAL
unless onnxruntime itself failed, never a traceback, never an unexpected exception in the
log). After the run the sidecar still answers health checks, every question that could be
read is on the ledger as one `audit` record, and after a clean stop the ledger verifies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fuzz_audit import REQUESTS, STREAMING, Known, questions
from fuzz_requests import GUARDS, mutated
from fuzz_support import (
    ErrorLog,
    Outcome,
    alive,
    check,
    examples,
    no_errors_logged,
    streaming,
    unary,
    watch_errors,
)
from google.protobuf.message import DecodeError
from hypothesis import event, given
from hypothesis import strategies as st
from sidecar import RunningSidecar, start_with_audit_port

from mlwitness.ledger.verify import verify

SERVICE = "/mlwitness.audit.v1.AuditService/"


@dataclass
class Target:
    running: RunningSidecar
    channel: grpc.Channel  # the audit port
    inference: grpc.Channel
    errors: ErrorLog
    known: Known
    read: int = 0  # questions whose bytes are a valid request: each leaves one audit record

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<sidecar {self.running.address}>")  # as a failing example shows it

    def ask(self, name: str, payload: bytes, fuzzed: bool = True) -> Outcome:
        method = SERVICE + name
        call = streaming if name in STREAMING else unary
        outcome = call(self.channel, method, payload)
        self.read += _readable(name, payload)
        if fuzzed:
            event(f"{name} {outcome.code.name}")  # --hypothesis-show-statistics
        errors = self.errors.take()  # before asserting: none left for the next example
        check(outcome, payload)
        no_errors_logged(errors, payload)
        return outcome


def _readable(name: str, payload: bytes) -> bool:
    """Whether the service can read the question (it records only those)."""
    try:
        message = REQUESTS[name].FromString(payload)
    except DecodeError:
        return False
    return name != "SetGuards" or bool(message.toml) != bool(message.json)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, audit_ledger: Any) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz-audit")
    guards = root / "guards.toml"
    guards.write_text(GUARDS)
    models = audit_ledger.models
    running = start_with_audit_port(dict(
        model=models.v1, model_name="credit", ledger=audit_ledger.copy(root),
        host="127.0.0.1", port=0, metrics_port=0, durability="write", drain_timeout=5.0,
        features=list(models.features), guards=guards,
        checkpoint_interval=0.2))  # checkpoints soon: proofs have trees to come from
    entries = audit_ledger.entries.values()
    received = [e.received_us for e in entries]
    known = Known(
        request_ids=tuple(audit_ledger.entries), seqs=tuple(e.seq for e in entries),
        first_us=min(received), last_us=max(received),
        model_names=("credit", "credit_v2"), model_shas=(models.sha_v1, models.sha_v2),
        features=models.features, model_bytes=Path(models.v1).read_bytes(), guards=GUARDS)
    audit = f"127.0.0.1:{running.sidecar.audit_port}"
    with watch_errors() as errors, grpc.insecure_channel(audit) as channel, \
            grpc.insecure_channel(running.address) as inference:
        yield Target(running, channel, inference, errors, known)
    running.stop()


RPCS = sorted(REQUESTS)


@pytest.mark.parametrize("rpc", RPCS)
@examples(ci=20)
@given(data=st.data())
def test_structured_questions_are_answered_within_the_expected_statuses(
        target: Target, rpc: str, data: st.DataObject) -> None:
    name, payload = data.draw(questions(target.known, (rpc,)), label="question")
    target.ask(name, payload)


@pytest.mark.parametrize("rpc", RPCS)
@examples(ci=12)
@given(data=st.data())
def test_damaged_questions_are_answered_within_the_expected_statuses(
        target: Target, rpc: str, data: st.DataObject) -> None:
    valid = data.draw(st.lists(questions(target.known, (rpc,)), min_size=1, max_size=3),
                      label="seeds")
    payload = data.draw(mutated([payload for _, payload in valid]), label="payload")
    target.ask(rpc, payload)


def test_the_audit_service_lives_on_and_records_every_question(target: Target) -> None:
    """Runs after the fuzz tests above (module order): the same sidecar and ledger."""
    assert alive(target.inference)
    target.ask("VerifyLedger", b"", fuzzed=False)
    running = target.running
    running.sync()
    (audit,) = running.query("SELECT count(*) FROM entries WHERE kind = 'audit'")[0]
    assert audit == target.read
    path = Path(running.ledger_path)
    running.stop()
    report = verify(path)
    assert report.ok, report.problems[:5]
    no_errors_logged(target.errors.take(), b"")
