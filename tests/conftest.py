"""Shared fixtures: real ONNX models, real sidecars on port 0, real DuckDB ledgers.

Nothing here is a mock: `make_sidecar` starts `mlwitness.server.sidecar.Sidecar` on
127.0.0.1 port 0 with a ledger file under the test's tmp_path; `serve_process` runs the
`mlwitness serve` command itself.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from sidecar import RunningSidecar, ServeProcess, start_serve_process, start_sidecar

from mlwitness.settings import Settings

try:
    from tests import models
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import models

REPO = Path(__file__).resolve().parents[1]
CREDIT_BUILDER = REPO / "examples" / "credit" / "build_model.py"


# ── models ─────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every model of tests/support/models.py, built once: name -> .onnx path."""
    root = tmp_path_factory.mktemp("models")
    return {name: build(root / f"{name}.onnx") for name, build in models.BUILDERS.items()}


@pytest.fixture(scope="session")
def affine_model(model_paths: dict[str, Path]) -> Path:
    return model_paths["affine_fp32"]


def _load_credit_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("credit_build_model", CREDIT_BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CreditModel:
    path: Path
    builder: ModuleType

    def features(self, rows: int, seed: int) -> np.ndarray:
        return self.builder.feature_matrix(self.builder.make_dataset(rows, seed))


@pytest.fixture(scope="session")
def credit_model(tmp_path_factory: pytest.TempPathFactory) -> CreditModel:
    """The demo credit model (examples/credit/build_model.py), trained on a small sample."""
    builder = _load_credit_builder()
    out = builder.train_and_export(tmp_path_factory.mktemp("credit"), n_rows=2000, seed=7)
    return CreditModel(out.model, builder)


@dataclass(frozen=True)
class SlowModel:
    """x FP32 [N, 16] -> y FP32 [N, 16] through a chain of wide MatMuls: a lot of compute per
    input byte. `rows_for(seconds)` is N for a call of about that long on one core here
    (calibrated once per session)."""

    path: Path
    seconds_per_row: float

    def rows_for(self, seconds: float) -> int:
        return max(64, int(seconds / self.seconds_per_row))

    def input(self, seconds: float, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((self.rows_for(seconds), SLOW_IO)).astype(np.float32)


SLOW_IO, SLOW_WIDTH, SLOW_LAYERS = 16, 1024, 24


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> SlowModel:
    rng = np.random.default_rng(0)
    # Variance 1/width keeps activations near unit scale through the chain.
    square = rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / np.sqrt(SLOW_WIDTH)
    widen = rng.standard_normal((SLOW_IO, SLOW_WIDTH)) / np.sqrt(SLOW_WIDTH)
    narrow = rng.standard_normal((SLOW_WIDTH, SLOW_IO)) / np.sqrt(SLOW_WIDTH)
    names = ["x", *(f"h{i}" for i in range(SLOW_LAYERS + 1)), "y"]
    weights = ["widen", *(["square"] * SLOW_LAYERS), "narrow"]
    nodes = [
        helper.make_node("MatMul", [names[i], weights[i]], [names[i + 1]])
        for i in range(len(weights))
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, SLOW_IO])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, SLOW_IO])],
        [
            numpy_helper.from_array(widen.astype(np.float32), "widen"),
            numpy_helper.from_array(square.astype(np.float32), "square"),
            numpy_helper.from_array(narrow.astype(np.float32), "narrow"),
        ],
    )
    model = helper.make_model(
        graph, ir_version=models.IR_VERSION, opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("slow") / "slow.onnx"
    onnx.save_model(model, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.ones((256, SLOW_IO), np.float32)
    session.run(None, {"x": x})  # warm up
    started = time.perf_counter()
    session.run(None, {"x": x})
    return SlowModel(path, (time.perf_counter() - started) / len(x))


# ── sidecars ───────────────────────────────────────────────────────────────────────────

SidecarFactory = Callable[..., RunningSidecar]


@pytest.fixture
def make_sidecar(tmp_path: Path) -> Iterator[SidecarFactory]:
    """`make_sidecar(model, **settings)` starts a sidecar on 127.0.0.1:0 with its ledger at
    tmp_path/ledger.duckdb (unless `ledger=` is given); all are stopped at teardown."""
    running: list[RunningSidecar] = []

    def make(model: Path, sidecar_class: Any = None, **overrides: Any) -> RunningSidecar:
        values: dict[str, Any] = {
            "model": model,
            "ledger": tmp_path / "ledger.duckdb",
            "host": "127.0.0.1",
            "port": 0,
            "audit_port": 0,
            "metrics_port": 0,
            "drain_timeout": 5.0,
        }
        values.update(overrides)
        kwargs = {"sidecar_class": sidecar_class} if sidecar_class is not None else {}
        sidecar = start_sidecar(Settings(**values), **kwargs)
        running.append(sidecar)
        return sidecar

    yield make
    for sidecar in reversed(running):
        sidecar.stop()


@pytest.fixture
def sidecar(make_sidecar: SidecarFactory, affine_model: Path) -> RunningSidecar:
    """A sidecar serving the affine FP32 model (name `affine_fp32`)."""
    return make_sidecar(affine_model)


@pytest.fixture
def client(sidecar: RunningSidecar) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(sidecar.address) as c:
        yield c


@pytest.fixture
def channel(sidecar: RunningSidecar) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(sidecar.address) as ch:
        yield ch


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """`serve_process(model, ledger, *flags)` runs `mlwitness serve`; killed at teardown."""
    started: list[ServeProcess] = []

    def start(model: Path, ledger: Path, *flags: str) -> ServeProcess:
        process = start_serve_process(model, ledger, *flags, log_dir=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


# ── the audit tests' shared ledger (one per test module: module scope) ────────────────

@pytest.fixture(scope="module")
def audit_ledger(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A ledger of recorded credit decisions (tests/support/audit_support.py), per test module."""
    from audit_support import recorded_ledger

    return recorded_ledger(tmp_path_factory)


@pytest.fixture(scope="module")
def audit_sidecar(tmp_path_factory: pytest.TempPathFactory, audit_ledger: Any) -> Iterator[Any]:
    """A sidecar with its audit port, serving a copy of `audit_ledger`."""
    from audit_support import sidecar_on_copy

    with sidecar_on_copy(tmp_path_factory, audit_ledger) as side:
        yield side
