"""Audit-service benchmark: single-record replay latency and traffic-replay throughput.

    python bench/bench_audit.py [--records 100000] [--rows-per-request 1] [--calls 1000]
                                [--durability fsync] [--profile] [--work DIR]

1. Records. The demo credit model (examples/credit/build_model.py, v1 and the v2
   candidate) is built, and `--records` ModelInfer calls are recorded through the
   sidecar's own code path minus gRPC: `InferenceService.infer` with the embedded backend
   and a `LedgerWriter` (durability `write`), many calls in flight so the writer commits
   in groups. Request bytes are built as tritonclient sends them (raw contents, FP32
   [rows, 6]); each response is what the sidecar answers for that call alone. The ledger
   is then closed.
2. Latency. `mlwitness serve` runs on that ledger (subprocess, audit port open,
   `--durability` as given: every audit question is itself appended to the ledger before
   it is answered). This process calls `Replay` through the generated gRPC stub: warm-up,
   then `--calls` calls on random records, by request id and by seq; p50/p90/p99.
3. Throughput. `ReplayRange` over every record, on the recorded model and on the v2
   candidate (uploaded bytes), timed from the call to the summary; the summary's counts
   are checked (records == N, identical == N on the recorded model, changed decisions
   equal to onnxruntime's count over the same inputs).
4. `--profile`: `AuditService.replay_range` in this process under cProfile, over a
   read-only connection to the closed ledger (as `mlwitness audit-server` opens it).

Targets (issue 3): replay p50 <= 5 ms warm through the gRPC API; traffic replay >= 20,000
records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.util
import io
import json
import os
import pstats
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from machine import basics  # bench/machine.py (scripts run from bench/)

from mlwitness.codec import encode_inputs, tensor_from_array
from mlwitness.inference.service import Caller, InferenceService
from mlwitness.ledger import environment, store
from mlwitness.ledger.rows import Tabulator
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.model.runtime import OnnxModel
from mlwitness.protocol import inference as pb

REPO = Path(__file__).resolve().parents[1]
IN_FLIGHT = 512


def machine() -> dict[str, str]:
    import duckdb
    import grpc
    import onnxruntime

    return {
        **basics(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "duckdb": duckdb.__version__,
        "grpcio": grpc.__version__,
    }


def credit_builder() -> Any:
    path = REPO / "examples" / "credit" / "build_model.py"
    spec = importlib.util.spec_from_file_location("credit_build_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ── 1. records ─────────────────────────────────────────────────────────────────────────


def request_bytes(x: np.ndarray, request_id: str) -> bytes:
    request = pb.ModelInferRequest(model_name="credit", id=request_id)
    encode_inputs(request, [tensor_from_array("input", x)], raw=True)
    return request.SerializeToString()


async def _record(ledger: Path, model_path: Path, x: np.ndarray, rows: int,
                  features: list[str]) -> float:
    from mlwitness.inference.backends.embedded import EmbeddedBackend

    onnx = model_path.read_bytes()
    model = OnnxModel(onnx)
    writer = LedgerWriter(ledger, WriterOptions(durability="write", max_unloaded=1 << 30),
                          tabulator=Tabulator({"input": tuple(features)}),
                          decoder=decode_record_tensors)
    writer.open()
    env_id = writer.write(lambda con: store.put_environment(
        con, environment.fingerprint(model.session_config)))
    writer.write(lambda con: store.put_model(con, onnx, "credit", "1",
                                             model.signature.to_dict()))
    service = InferenceService(backend=EmbeddedBackend(model, "credit", "1"), ledger=writer,
                               model_name="credit", model_version="1",
                               model_sha256=lambda: model.sha256, env_id=env_id,
                               max_request_bytes=64 << 20)
    count = len(x) // rows
    raws = [request_bytes(x[i * rows:(i + 1) * rows], f"bench-{i:07d}") for i in range(count)]
    callers = [Caller(peer=f"ipv4:10.0.0.{i % 7}:5000", metadata=(("x-caller", f"c{i % 7}"),))
               for i in range(7)]
    started = time.perf_counter()
    for start in range(0, count, IN_FLIGHT):
        await asyncio.gather(*(service.infer(raws[i], callers[i % 7])
                               for i in range(start, min(start + IN_FLIGHT, count))))
    writer.sync(timeout=600)
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(writer.close)
    return elapsed


def expected_changed_decisions(ledger: Path, candidate: Path) -> int:
    """Rows whose recorded label differs from the candidate's, the candidate run directly
    by onnxruntime on each recorded call's inputs (decoded from the stored request bytes)."""
    import duckdb

    from mlwitness.codec import decode_inputs, decode_outputs

    session = OnnxModel(candidate.read_bytes()).session
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        cursor = con.execute("SELECT request, response FROM entries WHERE kind = 'infer' "
                             "AND status = 'OK' ORDER BY seq")
        changed = 0
        while batch := cursor.fetchmany(4096):
            for request, response in batch:
                x = decode_inputs(pb.ModelInferRequest.FromString(request))[0].array
                recorded = decode_outputs(pb.ModelInferResponse.FromString(response))[0].array
                changed += int(np.sum(recorded != session.run(["label"], {"input": x})[0]))
    finally:
        con.close()
    return changed


# ── 2./3. the sidecar and its audit port ──────────────────────────────────────────────


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@contextlib.contextmanager
def serve(model: Path, ledger: Path, features: list[str], durability: str,
          log: Path) -> Iterator[str]:
    port, audit_port = free_ports(2)
    script = Path(sys.executable).with_name("mlwitness")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mlwitness"]
    args = [*command, "serve", "--model", str(model), "--ledger", str(ledger), "--host",
            "127.0.0.1", "--port", str(port), "--audit-port", str(audit_port),
            "--metrics-port", "0", "--features", ",".join(features), "--durability",
            durability, "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mlwitness serve exited: {log.read_text()[-2000:]}")
        ready = json.loads(line)
        assert ready["audit_port"] == audit_port, ready
        yield f"127.0.0.1:{audit_port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.array(samples_ms)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "mean_ms": float(a.mean())}


def replay_latency(stub: Any, apb: Any, count: int, calls: int, by: str) -> dict[str, float]:
    rng = random.Random(1)

    def ref(i: int) -> Any:
        if by == "seq":
            return apb.RecordRef(seq=i + 1)
        return apb.RecordRef(request_id=f"bench-{i:07d}")

    for _ in range(50):  # warm-up: sessions, caches, connections
        r = stub.Replay(apb.ReplayRequest(ref=ref(rng.randrange(count))), timeout=30)
        assert r.bit_identical
    samples = []
    for _ in range(calls):
        request = apb.ReplayRequest(ref=ref(rng.randrange(count)))
        started = time.perf_counter()
        r = stub.Replay(request, timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
        assert r.bit_identical
    return percentiles(samples)


def replay_range(stub: Any, apb: Any, **request: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    summary = None
    for event in stub.ReplayRange(apb.ReplayRangeRequest(max_listed=10, **request),
                                  timeout=3600):
        if event.WhichOneof("event") == "summary":
            summary = event.summary
    return time.perf_counter() - started, summary


# ── 4. profile ─────────────────────────────────────────────────────────────────────────


def profile_replay_range(ledger: Path, candidate: bytes | None) -> tuple[dict, str]:
    from mlwitness.audit.service import Asker, AuditService
    from mlwitness.ledger import schema
    from mlwitness.ledger.filters import Filters
    from mlwitness.ledger.reader import LedgerReader

    con = schema.connect(ledger, read_only=True)
    service = AuditService(LedgerReader(con.cursor), trail=None,
                           store_model=(lambda onnx, signature: __import__("hashlib").sha256(
                               onnx).hexdigest()) if candidate else None)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    events = list(service.replay_range(Asker(rpc="bench"), Filters(),
                                       candidate_onnx=candidate or b""))
    profiler.disable()
    elapsed = time.perf_counter() - started
    service.close()
    con.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(28)
    summary = events[-1]["summary"]
    summary["wall_s_under_profiler"] = elapsed
    return summary, out.getvalue()


# ── main ───────────────────────────────────────────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1000, help="Replay calls timed")
    parser.add_argument("--durability", choices=["fsync", "write"], default="fsync",
                        help="of the serving sidecar (audit questions are appended)")
    parser.add_argument("--profile", action="store_true", help="cProfile replay_range")
    parser.add_argument("--work", type=Path, default=None, help="work dir (kept)")
    args = parser.parse_args(argv)

    from mlwitness.protocol import audit_pb2 as apb
    from mlwitness.protocol import audit_pb2_grpc

    print(json.dumps({"machine": machine()}, indent=2))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    builder = credit_builder()
    v1 = builder.train_and_export(work / "models", n_rows=20_000, seed=7).model
    v2 = builder.train_and_export(work / "models", n_rows=20_000, seed=7, variant="v2").model
    features = list(builder.FEATURES)
    rows = args.rows_per_request
    x = builder.feature_matrix(builder.make_dataset(args.records * rows, 11))

    ledger = work / "ledger.duckdb"
    for stale in (ledger, ledger.with_name(ledger.name + ".journal")):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    elapsed = asyncio.run(_record(ledger, v1, x, rows, features))
    n = args.records
    print(json.dumps({"recorded": {"records": n, "rows_per_request": rows,
                                   "seconds": round(elapsed, 2),
                                   "records_per_s": round(n / elapsed)}}))

    expected_changed = expected_changed_decisions(ledger, v2)

    results: dict[str, Any] = {}
    with serve(v1, ledger, features, args.durability, work / "serve.log") as target:
        import grpc

        channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", -1)])
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=30)
        results["replay_by_request_id"] = replay_latency(stub, apb, n, args.calls, "id")
        results["replay_by_seq"] = replay_latency(stub, apb, n, args.calls, "seq")
        print(json.dumps({"replay_latency": results}, indent=2))

        for name, request in (("recorded_model", {}),
                              ("candidate_v2", {"candidate_onnx": v2.read_bytes()})):
            wall, summary = replay_range(stub, apb, **request)
            identical_expected = n if name == "recorded_model" else None
            check = {
                "records_ok": summary.records == n,
                "identical_ok": identical_expected is None
                or summary.identical == identical_expected,
                "decisions_changed_ok": summary.decisions_changed == (
                    0 if name == "recorded_model" else expected_changed),
            }
            results[f"replay_range_{name}"] = {
                "records": summary.records, "rows": summary.rows,
                "identical": summary.identical, "changed": summary.changed,
                "failed": summary.failed, "decisions_changed": summary.decisions_changed,
                "expected_decisions_changed": 0 if name == "recorded_model"
                else expected_changed,
                "wall_s": round(wall, 3), "records_per_s_wall": round(summary.records / wall),
                "records_per_s_reported": round(summary.records_per_second), **check,
            }
            print(json.dumps({f"replay_range_{name}": results[f"replay_range_{name}"]}))
        channel.close()

    if args.profile:
        for name, candidate in (("recorded_model", None), ("candidate_v2", v2.read_bytes())):
            summary, text = profile_replay_range(ledger, candidate)
            print(f"\n── cProfile: AuditService.replay_range on {name} "
                  f"({summary['records']} records, {summary['wall_s_under_profiler']:.2f} s "
                  "under the profiler) ──")
            print(text)

    targets = {
        "replay_p50_le_5ms": results["replay_by_request_id"]["p50_ms"] <= 5.0,
        "replay_range_ge_20k_per_s": min(
            results["replay_range_recorded_model"]["records_per_s_wall"],
            results["replay_range_candidate_v2"]["records_per_s_wall"]) >= 20_000,
    }
    print(json.dumps({"targets": targets, "work": str(work), "run_id": uuid.uuid4().hex[:8]}))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
