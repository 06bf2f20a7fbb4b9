"""Helpers for the end-to-end monitoring tests (guards, rate bounds, drift, bias, metrics).

Real things only: the demo credit model and its training CSV (examples/credit), a baseline
and a suggested guard file written by the `mlwitness baseline` and `mlwitness guards
suggest` commands, `mlwitness.server.sidecar.Sidecar` on 127.0.0.1 with its ledger under a
tmp dir, tritonclient as the caller, the generated audit stub or the `mlwitness audit`
command as the auditor, and plain HTTP scrapes of the Prometheus endpoint.

The expected answers come from outside mlwitness: onnxruntime run directly, tomllib on the
guard file, scipy on the values the client sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binomtest
from sidecar import RunningSidecar, free_ports, mlwitness_command, run_verify, start_sidecar

from mlwitness.protocol import audit_pb2_grpc
from mlwitness.settings import Settings

MODEL_NAME = "credit"
START_ATTEMPTS = 5


def now_us() -> int:
    return time.time_ns() // 1000


def run_mlwitness(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`mlwitness ARGS…` as a subprocess (the installed command), environment cleaned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    return subprocess.run([*mlwitness_command(), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not reached within {timeout} s")
        time.sleep(interval)


# ── the credit model, its baseline and the suggested guards ───────────────────────────


@dataclass(frozen=True)
class MonitoringKit:
    """The credit model and the files a user makes from its training set."""

    model: Path
    train_csv: Path
    baseline_path: Path
    guards_path: Path  # as `mlwitness guards suggest` wrote it
    builder: ModuleType

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.builder.FEATURES)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.builder.AGE_BANDS)

    def baseline(self) -> dict[str, Any]:
        return json.loads(self.baseline_path.read_text())

    def guards_text(self) -> str:
        return self.guards_path.read_text()

    def guards(self) -> dict[str, Any]:
        """The suggested guard file as a person reads it (tomllib, not mlwitness)."""
        return tomllib.loads(self.guards_text())

    def applicants(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` fresh applicants: features float32 [n, 6] and their true age bands."""
        data = self.builder.make_dataset(n, seed)
        return self.builder.feature_matrix(data), np.asarray(data["age_band"], dtype=str)

    def in_range(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` fresh applicants whose every feature lies within the training min..max."""
        x, bands = self.applicants(4 * n + 100, seed)
        columns = self.baseline()["columns"]
        low = np.array([columns[f]["numeric"]["min"] for f in self.features], np.float32)
        high = np.array([columns[f]["numeric"]["max"] for f in self.features], np.float32)
        keep = np.all((x >= low) & (x <= high), axis=1)
        assert keep.sum() >= n, "too few in-range applicants drawn"
        return x[keep][:n], bands[keep][:n]

    def run_model(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The credit model run by onnxruntime directly (one thread, as the sidecar)."""
        return run_onnx(self.model, x)


_SESSIONS: dict[Path, ort.InferenceSession] = {}


def run_onnx(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = _SESSIONS.get(model)
    if session is None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = _SESSIONS[model] = ort.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {"input": np.ascontiguousarray(x, dtype=np.float32)}
    return dict(zip(names, session.run(names, feeds), strict=True))


_KIT: dict[str, MonitoringKit] = {}


def monitoring_kit(factory: pytest.TempPathFactory, credit_model: Any) -> MonitoringKit:
    """Baseline and suggested guards of the credit training CSV, made once per session with
    the `mlwitness` command itself."""
    if "kit" in _KIT:
        return _KIT["kit"]
    model = Path(credit_model.path)
    train_csv = model.parent / "train.csv"
    assert train_csv.is_file(), "train_and_export writes train.csv beside the model"
    out = factory.mktemp("monitoring-kit")
    baseline, guards = out / "baseline.json", out / "guards.toml"
    made = run_mlwitness("baseline", str(train_csv), "--model", str(model), "--label",
                         "approved", "--out", str(baseline))
    assert made.returncode == 0, made.stderr
    made = run_mlwitness("guards", "suggest", str(baseline), "--out", str(guards))
    assert made.returncode == 0, made.stderr
    _KIT["kit"] = MonitoringKit(model, train_csv, baseline, guards, credit_model.builder)
    return _KIT["kit"]


def edited(text: str, *replacements: tuple[str, str]) -> str:
    """`text` with each (old, new) replaced; each `old` must occur exactly once."""
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


# ── a sidecar with audit and metrics ports ─────────────────────────────────────────────


@dataclass(frozen=True)
class Scrape:
    """One scrape of /metrics: sample (name, labels) → value."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = float(s.value)
        return cls(text, samples)

    def get(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None when it is not exported."""
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when absent (a counter never touched)."""
        found = self.get(name, **labels)
        return 0.0 if found is None else found

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def violation_deltas(before: Scrape, after: Scrape) -> dict[tuple[str, str, str], float]:
    name = "mlwitness_guard_violations_total"
    old = before.labelled(name)
    deltas = {}
    for labels, value in after.labelled(name).items():
        d = dict(labels)
        delta = value - old.get(labels, 0.0)
        if delta:
            deltas[(d["guard"], d["column"], d["kind"])] = delta
    return deltas



@dataclass
class Outcome:
    """One ModelInfer call as the client saw it."""

    request_id: str
    x: np.ndarray
    parameters: dict[str, str]
    outputs: dict[str, np.ndarray] | None  # None: refused
    error: grpcclient.InferenceServerException | None = None

    @property
    def labels(self) -> np.ndarray:
        assert self.outputs is not None
        return self.outputs["label"]


@dataclass
class MonitoredSidecar:
    running: RunningSidecar
    client: grpcclient.InferenceServerClient
    channel: grpc.Channel  # to the audit port
    stub: audit_pb2_grpc.AuditServiceStub
    audit_port: int
    metrics_port: int
    calls: list[Outcome] = field(default_factory=list)

    @property
    def ledger_path(self) -> Path:
        return self.running.ledger_path

    @property
    def audit_target(self) -> str:
        return f"127.0.0.1:{self.audit_port}"

    def call(self, x: np.ndarray, request_id: str, parameters: dict[str, str] | None = None
             ) -> Outcome:
        """One ModelInfer call through tritonclient (raw FP32 contents); refusals are
        returned, not raised."""
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        params = dict(parameters or {})
        try:
            result = self.client.infer(MODEL_NAME, [tensor], request_id=request_id,
                                       parameters=params or None, client_timeout=30)
        except grpcclient.InferenceServerException as exc:
            outcome = Outcome(request_id, x, params, None, exc)
        else:
            outputs = {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
            outcome = Outcome(request_id, x, params, outputs)
        self.calls.append(outcome)
        return outcome

    def infer(self, x: np.ndarray, request_id: str, parameters: dict[str, str] | None = None
              ) -> dict[str, np.ndarray]:
        outcome = self.call(x, request_id, parameters)
        assert outcome.error is None, f"{request_id} failed: {outcome.error}"
        assert outcome.outputs is not None
        return outcome.outputs

    def send(self, x: np.ndarray, prefix: str, batch: int,
             parameters: dict[str, str] | None = None) -> list[Outcome]:
        """`x` in calls of `batch` rows, ids PREFIX-0000…; every call must be answered."""
        sent = []
        for i, start in enumerate(range(0, len(x), batch)):
            rid = f"{prefix}-{i:04d}"
            self.infer(x[start:start + batch], rid, parameters)
            sent.append(self.calls[-1])
        return sent

    def entry(self, request_id: str) -> dict[str, Any]:
        """The ledger's record of one call, `violations` JSON parsed."""
        rows = self.running.query(
            "SELECT seq, status, message, violations, parameters, len(inputs), len(outputs), "
            "received_us FROM entries WHERE kind = 'infer' AND request_id = ?", [request_id])
        assert len(rows) == 1, f"{len(rows)} records for {request_id}"
        seq, status, message, violations, parameters, n_in, n_out, received = rows[0]
        return {"seq": seq, "status": status, "message": message,
                "violations": json.loads(violations) if violations else None,
                "parameters": dict(parameters or {}), "input_rows": n_in, "output_rows": n_out,
                "received_us": received}

    def admin_records(self, action: str) -> list[dict[str, Any]]:
        """Admin records of this action, oldest first: detail JSON plus seq and peer."""
        rows = self.running.query(
            "SELECT seq, peer, detail FROM entries WHERE kind = 'admin' ORDER BY seq")
        found = []
        for seq, peer, detail in rows:
            data = json.loads(detail)
            if data.get("action") == action:
                found.append({**data, "seq": seq, "peer": peer})
        return found

    def scrape(self) -> Scrape:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return Scrape.parse(response.read().decode())

    def audit_cli(self, *args: str) -> subprocess.CompletedProcess:
        """`mlwitness audit --target AUDIT_PORT ARGS…`."""
        return run_mlwitness("audit", "--target", self.audit_target, *args)

    def stop(self) -> None:
        """Idempotent."""
        self.client.close()
        self.channel.close()
        self.running.stop()

    def stop_and_verify(self) -> str:
        """Stop (flush and close the ledger), then `mlwitness verify` it; return its output."""
        self.stop()
        result = run_verify(self.ledger_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK: every record and model matches its hash" in result.stdout
        return result.stdout


def start_monitored(kit: MonitoringKit, ledger: Path, **overrides: Any) -> MonitoredSidecar:
    """A sidecar serving the credit model as `credit` with feature names, its audit and
    metrics servers on ports that were free a moment ago (retried if one was taken)."""
    values: dict[str, Any] = dict(
        model=kit.model, ledger=ledger, host="127.0.0.1", port=0, model_name=MODEL_NAME,
        features=list(kit.features), durability="write", drain_timeout=5.0,
    )
    values.update(overrides)
    error: BaseException | None = None
    for _ in range(START_ATTEMPTS):
        audit_port, metrics_port = free_ports(2)
        try:
            running = start_sidecar(Settings(**{**values, "audit_port": audit_port,
                                                "metrics_port": metrics_port}))
        except (RuntimeError, OSError) as exc:  # a port was taken between probe and bind
            error = exc
            continue
        channel = grpc.insecure_channel(f"127.0.0.1:{audit_port}")
        return MonitoredSidecar(running, grpcclient.InferenceServerClient(running.address),
                                channel, audit_pb2_grpc.AuditServiceStub(channel),
                                audit_port, metrics_port)
    raise RuntimeError(f"could not bind audit and metrics ports: {error}")


Start = Callable[..., MonitoredSidecar]


@contextlib.contextmanager
def sidecar_pool(kit: MonitoringKit, directory: Path) -> Iterator[Start]:
    """`start(**settings)` starts a monitored sidecar with its ledger at
    DIRECTORY/ledger.duckdb (unless `ledger=` is given); all are stopped on exit, so a test
    that fails half-way leaves nothing running."""
    started: list[MonitoredSidecar] = []

    def start(ledger: Path | None = None, **overrides: Any) -> MonitoredSidecar:
        side = start_monitored(kit, ledger or directory / "ledger.duckdb", **overrides)
        started.append(side)
        return side

    try:
        yield start
    finally:
        for side in reversed(started):
            side.stop()


# ── reference computations ─────────────────────────────────────────────────────────────


def grpc_code(exc: grpcclient.InferenceServerException) -> str:
    """`StatusCode.INVALID_ARGUMENT` → `INVALID_ARGUMENT`."""
    return str(exc.status()).removeprefix("StatusCode.")


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """scipy's Wilson score interval (no continuity correction)."""
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class RateState:
    n: int
    successes: int
    state: str
    low: float
    high: float

    @property
    def estimate(self) -> float:
        return self.successes / self.n


def rate_states(decisions: Sequence[np.ndarray], *, window: int, min_samples: int,
                low: float, high: float, confidence: float) -> list[RateState]:
    """The state of a count-window rate guard after each call (each an array of 0/1
    decisions), judged independently of mlwitness: n < min_samples is insufficient, a
    Wilson interval wholly above `high` (below `low`) is breach_high (breach_low)."""
    seen: list[int] = []
    states = []
    for outcomes in decisions:
        seen.extend(int(v) for v in outcomes)
        last = seen[-window:]
        n, k = len(last), sum(last)
        lo, hi = wilson(k, n, confidence)
        if n < min_samples:
            state = "insufficient"
        elif lo > high:
            state = "breach_high"
        elif hi < low:
            state = "breach_low"
        else:
            state = "ok"
        states.append(RateState(n, k, state, lo, hi))
    return states
