"""Explanations benchmark: `Explain` latency per decision, `ExplainRange` decisions/s.

    python bench/bench_explain.py [--records 5000] [--calls 200] [--work DIR]

1. Records. The demo credit model v2 (gradient boosting: a Scaler before 60 trees of
   depth 2; examples/credit/build_model.py) and a baseline of its training data (1,000
   joint rows kept) are built, and `--records` one-row ModelInfer calls are recorded
   through the sidecar's own code path minus gRPC (`bench_audit._record`).
2. `mlwitness serve` runs on that ledger with `--baseline` (subprocess, audit port open,
   durability `write`). Through the generated gRPC stub: warm-up, then `--calls` `Explain`
   calls on random records, method exact against 100 reference rows (6 features: 2^6 x
   100 = 6,400 rows in one onnxruntime run), without and with the nearest-flip search;
   and method tree. p50/p90/p99.
3. `ExplainRange` over every record, methods exact and tree, timed from the call to the
   summary; the summary's counts are checked.

Targets (issue 18): exact <= 50 ms per decision through the API; explain-range >= 200
decisions/s; tree >= 2,000 decisions/s on the demo model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_audit import _record, credit_builder, free_ports, machine, percentiles

from mlwitness.analytics.baseline import build_baseline


@contextlib.contextmanager
def serve(model: Path, ledger: Path, baseline: Path, features: list[str],
          log: Path) -> Iterator[str]:
    port, audit_port = free_ports(2)
    script = Path(sys.executable).with_name("mlwitness")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mlwitness"]
    args = [*command, "serve", "--model", str(model), "--ledger", str(ledger), "--host",
            "127.0.0.1", "--port", str(port), "--audit-port", str(audit_port),
            "--metrics-port", "0", "--features", ",".join(features), "--baseline",
            str(baseline), "--durability", "write", "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mlwitness serve exited: {log.read_text()[-2000:]}")
        yield f"127.0.0.1:{json.loads(line)['audit_port']}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def explain_latency(stub: Any, apb: Any, count: int, calls: int, **options: Any
                    ) -> dict[str, float]:
    rng = random.Random(1)
    flips = options.pop("flips", False)

    def request() -> Any:
        return apb.ExplainRequest(ref=apb.RecordRef(seq=rng.randrange(count) + 1),
                                  options=apb.ExplainOptions(**options), no_flips=not flips)

    for _ in range(20):  # warm-up: the sandbox worker, the model, the baseline
        assert stub.Explain(request(), timeout=60).efficient
    samples = []
    for _ in range(calls):
        message = request()
        started = time.perf_counter()
        r = stub.Explain(message, timeout=60)
        samples.append((time.perf_counter() - started) * 1000)
        assert r.efficient
    return percentiles(samples)


def explain_range(stub: Any, apb: Any, method: str, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    summary = None
    decisions = 0
    for event in stub.ExplainRange(apb.ExplainRangeRequest(
            options=apb.ExplainOptions(method=method)), timeout=3600):
        kind = event.WhichOneof("event")
        decisions += kind == "decision"
        if kind == "summary":
            summary = event.summary
    wall = time.perf_counter() - started
    assert summary is not None and summary.decisions == decisions == n, summary
    return {"decisions": decisions, "wall_s": round(wall, 3),
            "decisions_per_s_client": round(decisions / wall),
            "decisions_per_s_server": round(summary.decisions_per_second),
            "failed": summary.failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=200, help="Explain calls timed")
    parser.add_argument("--work", type=Path, default=None, help="work dir (kept)")
    args = parser.parse_args(argv)

    import grpc

    from mlwitness.protocol import audit_pb2 as apb
    from mlwitness.protocol import audit_pb2_grpc

    print(json.dumps({"machine": machine()}, indent=2))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-explain-"))
    work.mkdir(parents=True, exist_ok=True)
    builder = credit_builder()
    outputs = builder.train_and_export(work / "models", n_rows=20_000, seed=7, variant="v2")
    features = list(builder.FEATURES)
    baseline = work / "baseline.json"
    baseline.write_text(build_baseline(outputs.train_csv, model=outputs.model,
                                       features=features, label="approved").to_json())
    x = builder.feature_matrix(builder.make_dataset(args.records, 11))
    ledger = work / "ledger.duckdb"
    for stale in (ledger, ledger.with_name(ledger.name + ".journal")):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    asyncio.run(_record(ledger, outputs.model, x, 1, features))
    n = args.records

    results: dict[str, Any] = {}
    with serve(outputs.model, ledger, baseline, features, work / "serve.log") as target:
        channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", -1)])
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        results["explain_exact"] = explain_latency(stub, apb, n, args.calls)
        results["explain_exact_with_flips"] = explain_latency(stub, apb, n, args.calls,
                                                              flips=True)
        results["explain_tree"] = explain_latency(stub, apb, n, args.calls, method="tree")
        results["explain_range_exact"] = explain_range(stub, apb, "exact", n)
        results["explain_range_tree"] = explain_range(stub, apb, "tree", n)
    targets = {
        "exact_p50_ms<=50": results["explain_exact"]["p50_ms"] <= 50,
        "explain_range_exact>=200/s": results["explain_range_exact"][
            "decisions_per_s_client"] >= 200,
        "explain_range_tree>=2000/s": results["explain_range_tree"][
            "decisions_per_s_client"] >= 2000,
    }
    print(json.dumps({"results": results, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
