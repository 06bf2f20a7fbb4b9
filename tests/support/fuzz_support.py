"""What the fuzz tests (tests/test_fuzz_*.py) share: Hypothesis profiles, exact-bytes calls
with the invariants every call must keep, and a watch on the sidecar's error log.

Profiles: `ci` (the default) runs a fixed, derandomized set of examples per test, so CI is
reproducible and never flaky; `MLWITNESS_FUZZ=long` runs `LONG_FACTOR` times as many with
random seeds (set `MLWITNESS_FUZZ_EXAMPLES=N` for N per test), keeping failures in
.hypothesis/ so that a rerun tries them first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

LONG = os.environ.get("MLWITNESS_FUZZ", "") == "long"
LONG_FACTOR = 25
_EXAMPLES = os.environ.get("MLWITNESS_FUZZ_EXAMPLES", "")

settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile(
    "long", derandomize=False, deadline=None, print_blob=True,
    database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.load_profile("long" if LONG else "ci")


def examples(ci: int) -> settings:
    """Settings for a fuzz test that runs `ci` examples in CI (more in the long run)."""
    if _EXAMPLES:
        return settings(max_examples=int(_EXAMPLES))
    return settings(max_examples=ci * LONG_FACTOR if LONG else ci)


# ── one call, and what its answer must be ─────────────────────────────────────────────

# A call must come back within this (every call has a deadline: a hang is a failure, not a
# stuck test). Fuzzed requests are small; none may take anywhere near it.
CALL_TIMEOUT_S = 30.0
EXPECTED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
})
# The one documented INTERNAL: onnxruntime failing on a request it was given (README: "a
# fault of the model, with onnxruntime's message"). Anything else INTERNAL is a bug.
MODEL_FAULT = "the model failed: "


@dataclass
class Outcome:
    code: grpc.StatusCode
    message: str
    responses: list[bytes] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.code.name}: {self.message!r}"


def unary(channel: grpc.Channel, method: str, payload: bytes) -> Outcome:
    """Call `method` (a full path) with these exact request bytes."""
    call = channel.unary_unary(method)  # no (de)serializers: bytes in, bytes out
    try:
        return Outcome(grpc.StatusCode.OK, "", [call(payload, timeout=CALL_TIMEOUT_S)])
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")


def streaming(channel: grpc.Channel, method: str, payload: bytes) -> Outcome:
    """Call a server-streaming `method` with these bytes; read every message."""
    call = channel.unary_stream(method)
    received: list[bytes] = []
    try:
        for message in call(payload, timeout=CALL_TIMEOUT_S):
            received.append(message)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", received)
    return Outcome(grpc.StatusCode.OK, "", received)


def check(outcome: Outcome, payload: bytes) -> None:
    """The invariants of every fuzzed call's answer."""
    shown = payload[:200].hex() + ("…" if len(payload) > 200 else "")
    where = f"request of {len(payload)} bytes ({shown})"
    assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer in time to {where}"
    model_fault = (outcome.code == grpc.StatusCode.INTERNAL
                   and outcome.message.startswith(MODEL_FAULT))
    assert outcome.code in EXPECTED or model_fault, f"{outcome.describe()} to {where}"
    if outcome.code != grpc.StatusCode.OK:
        assert outcome.message.strip(), f"{outcome.code.name} without a message to {where}"
        assert "Traceback" not in outcome.message, f"a traceback in the answer to {where}"


def alive(channel: grpc.Channel) -> bool:
    """Whether the server answers a health check (with SERVING)."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return response.status == health_pb2.HealthCheckResponse.SERVING


# ── the sidecar's log: an unexpected exception is a failure even when answered ────────


class ErrorLog(logging.Handler):
    """Collects ERROR (and worse) log records of this process, formatted with their
    tracebacks: a handler that fails unexpectedly logs one (wire/status.py)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self.lock_ = threading.Lock()
        self.entries: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.entries.append(self.format(record))

    def take(self) -> list[str]:
        with self.lock_:
            taken, self.entries = self.entries, []
        return taken


@contextlib.contextmanager
def watch_errors() -> Iterator[ErrorLog]:
    """An ErrorLog on the root logger for the duration."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def no_errors_logged(errors: list[str], payload: bytes) -> None:
    """`errors` (ErrorLog.take() after the call) must be empty."""
    assert not errors, f"errors logged for a request of {len(payload)} bytes " \
                       f"({payload[:200].hex()}): {errors[:3]}"
