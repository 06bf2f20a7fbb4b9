"""Load generator for Open Inference Protocol v2 servers, using the real `tritonclient`.

    python bench/load.py --target 127.0.0.1:8701 --model-name credit \\
        --concurrency 8 --batch 1 --duration 8 --warmup 2 [--processes 1] [--client aio|sync]

Closed loop: `--concurrency` callers each send ModelInfer (one FP32 [batch, features] input
named `input`, raw contents as tritonclient sends them: the demo model's six features, or
`--features N` standard-normal ones for a wider model), wait for the answer, send the next. The
callers are spread over `--processes` client processes (each an asyncio loop with a
`tritonclient.grpc.aio` client, or threads with the sync client) so that one Python client
process need not be the bottleneck; their latencies are merged. On the 2-core machines here
one aio process loads a bare server hardest (≈ 8,500 req/s at c=8, against ≈ 5,000-6,300
with two processes, which take CPU from the server), hence the default of 1.

All processes start together, run `--warmup` seconds unmeasured, then `--duration` seconds
measured. Throughput counts calls that completed inside the measured window; latency
percentiles are over calls that started and completed inside it. Bounded: every process
stops at the end of the window (or after `--max-requests` calls) and is killed if it does
not report back in time.

Importable: `LoadPool` keeps client processes alive across many runs (bench_sidecar does
that), `run_load` is one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FEATURES = 6


@dataclass
class Job:
    target: str
    model_name: str
    callers: int  # concurrent callers in this process
    batch: int
    duration: float
    warmup: float
    client: str = "aio"  # "aio" (tritonclient.grpc.aio) or "sync" (threads)
    max_requests: int = 10_000_000  # per process, a hard bound besides the time
    input_name: str = "input"
    features: int = FEATURES  # columns of the input: 6 for the demo model


@dataclass
class WorkerResult:
    ok: int = 0  # calls answered OK inside the measured window
    ok_total: int = 0  # calls answered OK at all (warm-up included): what the server acked
    errors: int = 0  # failed calls (any phase)
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0
    cpu_s: float = 0.0  # this client process's CPU time during the run


@dataclass
class LoadResult:
    concurrency: int
    batch: int
    processes: int
    duration_s: float
    ok: int
    ok_total: int
    errors: int
    error_samples: list[str]
    rps: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_s: float

    def line(self) -> str:
        return (
            f"c={self.concurrency:<3} batch={self.batch:<4} {self.rps:9.1f} req/s "
            f"{self.rows_per_s:10.1f} rows/s  p50 {self.p50_ms:6.3f}  p90 {self.p90_ms:6.3f}  "
            f"p99 {self.p99_ms:6.3f} ms  errors {self.errors}"
        )


def _payload(batch: int, seed: int, features: int = FEATURES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if features != FEATURES:
        return rng.normal(0.0, 1.0, (batch, features)).astype(np.float32)
    cols = [
        rng.normal(52_000, 15_000, batch),  # income
        rng.uniform(0, 1, batch),  # debt_ratio
        rng.normal(690, 50, batch),  # fico
        rng.uniform(18, 80, batch),  # age
        rng.uniform(0, 30, batch),  # years_employed
        rng.integers(0, 8, batch),  # open_loans
    ]
    return np.stack(cols, axis=1).astype(np.float32)


# ── one client process ────────────────────────────────────────────────────────────────


class _Window:
    """Shared timing of a run: [start, start + warmup) unmeasured, then measured."""

    def __init__(self, start: float, job: Job) -> None:
        self.measure_from = start + job.warmup
        self.end = self.measure_from + job.duration


def _record(result: WorkerResult, window: _Window, started: float, done: float) -> None:
    result.ok_total += 1
    if started >= window.measure_from and done <= window.end:
        result.latencies_ms.append((done - started) * 1e3)
    if window.measure_from <= done <= window.end:
        result.ok += 1


def _error(result: WorkerResult, exc: BaseException) -> None:
    result.errors += 1
    if len(result.error_samples) < 5:
        result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])


async def _run_aio(job: Job, start: float, seed: int) -> WorkerResult:
    import asyncio

    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(job.target)
    data = _payload(job.batch, seed, job.features)
    result = WorkerResult()
    window = _Window(start, job)
    budget = [job.max_requests]

    async def caller() -> None:
        inp = grpcclient.InferInput(job.input_name, list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        while True:
            started = time.perf_counter()
            if started >= window.end or budget[0] <= 0:
                return
            budget[0] -= 1
            try:
                await client.infer(job.model_name, [inp])
            except Exception as exc:
                _error(result, exc)
                continue
            _record(result, window, started, time.perf_counter())

    try:
        await client.is_server_ready()
        delay = start - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(caller() for _ in range(job.callers)))
    finally:
        await client.close()
    return result


def _run_sync(job: Job, start: float, seed: int) -> WorkerResult:
    import threading

    import tritonclient.grpc as grpcclient

    data = _payload(job.batch, seed, job.features)
    result = WorkerResult()
    window = _Window(start, job)
    lock = threading.Lock()
    budget = [job.max_requests]
    clients = [grpcclient.InferenceServerClient(job.target) for _ in range(job.callers)]
    for client in clients:
        client.is_server_ready()

    def caller(client: Any) -> None:
        inp = grpcclient.InferInput(job.input_name, list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        local = WorkerResult()
        while True:
            started = time.perf_counter()
            if started >= window.end:
                break
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            try:
                client.infer(job.model_name, [inp])
            except Exception as exc:
                _error(local, exc)
                continue
            _record(local, window, started, time.perf_counter())
        with lock:
            result.ok += local.ok
            result.ok_total += local.ok_total
            result.errors += local.errors
            result.error_samples.extend(local.error_samples[: 5 - len(result.error_samples)])
            result.latencies_ms.extend(local.latencies_ms)

    delay = start - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(job.warmup + job.duration + 30)
    for client in clients:
        client.close()
    return result


def _worker_main(conn: Any, index: int) -> None:
    """Client process: receive a Job and a start time, run it, send back a WorkerResult."""
    import asyncio

    while True:
        message = conn.recv()
        if message is None:
            return
        job, start = message
        cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        try:
            if job.client == "aio":
                result = asyncio.run(_run_aio(job, start, seed=index))
            else:
                result = _run_sync(job, start, seed=index)
        except Exception as exc:  # setup failure (server gone): report, don't hang
            result = WorkerResult()
            _error(result, exc)
        result.window_s = job.duration
        result.cpu_s = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
        conn.send(result)


# ── the pool and one run ──────────────────────────────────────────────────────────────


class LoadPool:
    """`size` client processes (spawned, not forked: grpc and fork do not mix), reused for
    many runs so each run does not pay Python and tritonclient start-up."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for index in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, index), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(
        self, job: Job, processes: int, concurrency: int, start_delay: float = 1.0
    ) -> LoadResult:
        processes = max(1, min(processes, concurrency, len(self.procs)))
        shares = [
            concurrency // processes + (i < concurrency % processes) for i in range(processes)
        ]
        # perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process here.
        start = time.perf_counter() + start_delay
        for conn, callers in zip(self.conns, shares, strict=False):  # shares may be fewer
            conn.send((Job(**{**asdict(job), "callers": callers}), start))
        deadline = start + job.warmup + job.duration + 60
        results: list[WorkerResult] = []
        for conn in self.conns[:processes]:
            if not conn.poll(max(0.0, deadline - time.perf_counter())):
                self.close(kill=True)
                raise TimeoutError("a load process did not report back in time")
            results.append(conn.recv())
        return _merge(results, job, concurrency, processes)

    def close(self, kill: bool = False) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if not kill and proc.is_alive():
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send(None)
        for proc in self.procs:
            proc.join(0 if kill else 5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.procs, self.conns = [], []

    def __enter__(self) -> LoadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merge(results: list[WorkerResult], job: Job, concurrency: int, processes: int) -> LoadResult:
    lat = np.concatenate([np.asarray(r.latencies_ms, dtype=np.float64) for r in results])
    ok = sum(r.ok for r in results)
    p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat.size else (np.nan,) * 3
    samples = [s for r in results for s in r.error_samples][:5]
    return LoadResult(
        concurrency=concurrency,
        batch=job.batch,
        processes=processes,
        duration_s=job.duration,
        ok=ok,
        ok_total=sum(r.ok_total for r in results),
        errors=sum(r.errors for r in results),
        error_samples=samples,
        rps=ok / job.duration,
        rows_per_s=ok * job.batch / job.duration,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(lat.mean()) if lat.size else float("nan"),
        client_cpu_s=sum(r.cpu_s for r in results),
    )


def run_load(job: Job, concurrency: int, processes: int) -> LoadResult:
    with LoadPool(max(1, min(processes, concurrency))) as pool:
        return pool.run(job, processes, concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the v2 gRPC server")
    parser.add_argument("--model-name", default="credit")
    parser.add_argument("--input-name", default="input")
    parser.add_argument(
        "--features", type=int, default=FEATURES, help="input columns (6: the demo model)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes sharing the concurrency (default 1: on a 2-core machine one "
        "aio client process drives a server hardest; a second one takes CPU from the server)",
    )
    parser.add_argument("--client", choices=("aio", "sync"), default="aio")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=10_000_000,
        help="hard bound on calls per client process",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    job = Job(
        args.target,
        args.model_name,
        0,
        args.batch,
        args.duration,
        args.warmup,
        args.client,
        args.max_requests,
        args.input_name,
        args.features,
    )
    result = run_load(job, args.concurrency, args.processes)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(result.line())
        for sample in result.error_samples:
            print("  error:", sample)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
