"""Ledger growth per request: how much disk the ledger claim needs per million requests.

    python bench/bench_ledger_size.py [--records 0,50000,200000] [--concurrency 32] \\
        [--mode forwarding|embedded] [--durability fsync|write] [--json out.json]

The sidecar is the real one, set up as the pod runs it: `mlwitness serve` (a subprocess)
with the demo credit model (built fresh from examples/credit), the kustomize base's
settings file, guards (observe) and baseline (deploy/kubernetes/base/config/), forwarding
to bench/bare_server.py the way the pod forwards to Triton (or, with --mode embedded,
running the model itself). For each count in --records it starts a sidecar on a fresh
ledger and sends that many batch-1 ModelInfer calls, tritonclient style: raw input contents
built with `mlwitness.protocol.inference` and `mlwitness.codec`, a request id, the applicant's
age band as a request parameter and an x-caller header, rows from the demo data set. Then
SIGTERM: the sidecar drains, loads the journal, CHECKPOINTs DuckDB and removes the journal,
and the script measures what is left on disk, checks the ledger holds every call, and
samples the ledger directory while the calls run (DuckDB's WAL and the journal included)
for the peak. With record format 2 (erasable payloads) it also reports what the format's
columns (format, salt, payload_commitment, erased_by) take per record: `entries` copied
into two fresh files, with and without them.

Bytes per record come from the slope between the two largest counts (the fixed part,
the model bytes, baseline, environment and schema, cancels out); the fixed part is the
size at the smallest count. GiB per million requests = bytes per record x 10^6 / 2^30.
DuckDB grows its file in 256 KiB blocks and leaves blocks freed by a checkpoint in the
file for reuse, so the file slope is reported next to the slope of the blocks in use; at
small counts the free blocks make the file slope noisy (hence the default 50,000 and
200,000 calls, about three minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sidecar import Server, bare, machine, source_revision  # noqa: E402

from mlwitness.codec import Tensor, encode_inputs  # noqa: E402
from mlwitness.protocol import inference as pb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "deploy" / "kubernetes" / "base" / "config"
BUILDER = REPO / "examples" / "credit" / "build_model.py"
FEATURES = ("income", "debt_ratio", "fico", "age", "years_employed", "open_loans")
MODEL_INFER = f"/{pb.SERVICE}/ModelInfer"
GIB = 1 << 30


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("credit_build_model", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def build_model(work: Path) -> Path:
    subprocess.run(
        [sys.executable, str(BUILDER), "--out-dir", str(work)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return work / "credit.onnx"


def make_requests(count: int, seed: int) -> list[bytes]:
    """Serialized ModelInferRequests as tritonclient sends them (raw contents, batch 1)."""
    data = _builder().make_dataset(max(count, 1), seed)
    x = np.column_stack([data[name] for name in FEATURES]).astype(np.float32)
    requests = []
    for i in range(count):
        request = pb.ModelInferRequest(model_name="credit", id=f"application-{i:08d}")
        encode_inputs(request, [Tensor("input", "FP32", (1, 6), x[i : i + 1])], raw=True)
        request.parameters["age_band"].string_param = str(data["age_band"][i])
        requests.append(request.SerializeToString())
    return requests


def ledger_parts(directory: Path, stem: str) -> dict[str, int]:
    """What the ledger has on disk: the DuckDB file, DuckDB's WAL, the journal."""
    file = directory / stem
    wal = directory / f"{stem}.wal"
    journal = directory / f"{stem}.journal"
    return {
        "file": file.stat().st_size if file.exists() else 0,
        "wal": wal.stat().st_size if wal.exists() else 0,
        "journal": sum(p.stat().st_size for p in journal.rglob("*") if p.is_file())
        if journal.is_dir()
        else 0,
    }


class PeakSampler:
    """Samples the ledger's parts while calls run: the peak of their sum, and of each."""

    def __init__(self, directory: Path, stem: str, interval: float = 0.1) -> None:
        self.directory, self.stem, self.interval = directory, stem, interval
        self.peak = 0
        self.peaks = {"file": 0, "wal": 0, "journal": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # a journal segment may be deleted while we list it
            with contextlib.suppress(FileNotFoundError):
                parts = ledger_parts(self.directory, self.stem)
                self.peak = max(self.peak, sum(parts.values()))
                for name, size in parts.items():
                    self.peaks[name] = max(self.peaks[name], size)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def send_all(target: str, requests: list[bytes], concurrency: int) -> int:
    """Send every request; return how many were answered OK (all, or the run is invalid)."""
    metadata = (("x-caller", "loan-origination-service"),)
    next_index = 0
    ok = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(MODEL_INFER)

        async def worker() -> None:
            nonlocal next_index, ok
            while next_index < len(requests):
                raw = requests[next_index]
                next_index += 1
                answer = await call(raw, metadata=metadata, timeout=60)
                response = pb.ModelInferResponse.FromString(answer)
                assert response.outputs, response
                ok += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def sidecar(model: Path, ledger: Path, mode: str, durability: str, upstream: str) -> Server:
    argv = [
        sys.executable, "-m", "mlwitness", "serve",
        f"--config={CONFIG / 'mlwitness.toml'}",
        f"--guards={CONFIG / 'guards.toml'}",
        f"--baseline={CONFIG / 'baseline.json'}",
        f"--model={model}", "--model-name=credit", "--model-version=1",
        f"--ledger={ledger}", f"--durability={durability}",
        "--host=127.0.0.1", "--port=0", "--audit-port=0", "--metrics-port=0",
        "--log-level=warning",
    ]  # fmt: skip
    if mode == "forwarding":
        argv.append(f"--upstream={upstream}")
    return Server(f"sidecar-{ledger.stem}", argv, ledger.with_suffix(".log"))


def wait_ready(target: str, timeout: float = 60) -> None:
    """Until the sidecar's readiness (health service "") says SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target} not ready within {timeout} s")
            time.sleep(0.1)


def one_run(
    count: int, work: Path, model: Path, args: argparse.Namespace, upstream: str
) -> dict[str, Any]:
    requests = make_requests(count, seed=11 + count)
    ledger = work / f"ledger-{count}.duckdb"
    server = sidecar(model, ledger, args.mode, args.durability, upstream)
    try:
        wait_ready(server.target)
        with PeakSampler(work, ledger.name) as sampler:
            started = time.perf_counter()
            ok = asyncio.run(send_all(server.target, requests, args.concurrency)) if count else 0
            elapsed = time.perf_counter() - started
    finally:
        code = server.stop(timeout=120)  # SIGTERM: drain, load, CHECKPOINT, remove journal
    if code != 0:
        raise RuntimeError(f"sidecar exited {code}:\n{server.tail()}")
    left = sorted(p.name for p in work.glob(f"{ledger.name}*") if p != ledger)
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        kinds = dict(con.execute("SELECT kind, count(*) FROM entries GROUP BY kind").fetchall())
        blobs = con.execute(
            "SELECT avg(octet_length(request)), avg(octet_length(response)), "
            "avg(length(metadata)), avg(length(violations)) FROM entries WHERE kind <> 'admin'"
        ).fetchone()
        size = con.execute(
            "SELECT block_size, total_blocks, used_blocks, free_blocks FROM pragma_database_size()"
        ).fetchone()
    finally:
        con.close()
    calls = sum(n for kind, n in kinds.items() if kind != "admin")
    format_columns = format2_column_bytes(ledger, work) if count else None
    if calls != count or ok != count:
        raise RuntimeError(f"{count} calls sent, {ok} answered OK, {calls} on the ledger")
    assert blobs is not None and size is not None
    return {
        "records": count,
        "admin_records": kinds.get("admin", 0),
        "file_bytes": ledger.stat().st_size,
        "left_beside_file": left,
        "peak_running_bytes": sampler.peak,
        "peak_parts": sampler.peaks,
        "block_size": size[0],
        "used_blocks": size[2],
        "free_blocks": size[3],
        "calls_per_s": count / elapsed if count else 0.0,
        "avg_request_bytes": blobs[0],
        "avg_response_bytes": blobs[1],
        "avg_metadata_chars": blobs[2],
        "avg_violations_chars": blobs[3],
        "format2_column_bytes": format_columns,
    }


FORMAT2_COLUMNS = ("format", "salt", "payload_commitment", "erased_by")


def format2_column_bytes(ledger: Path, work: Path) -> int | None:
    """What record format 2's columns of `entries` take in a DuckDB file: the table copied
    into two fresh files, with and without them, and the sizes subtracted (to DuckDB's
    256 KiB block). None for a ledger without them (written before format 2)."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{ledger}' AS l (READ_ONLY)")
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = 'l' "
            "AND table_name = 'entries'").fetchall()}
        if not set(FORMAT2_COLUMNS) <= have:
            return None
        sizes = []
        without = f"* EXCLUDE ({', '.join(FORMAT2_COLUMNS)})"
        for name, select in (("with", "*"), ("without", without)):
            path = work / f"columns-{name}.duckdb"
            path.unlink(missing_ok=True)
            con.execute(f"ATTACH '{path}' AS c")
            con.execute(f"CREATE TABLE c.entries AS SELECT {select} FROM l.entries ORDER BY seq")
            con.execute("DETACH c")
            sizes.append(path.stat().st_size)
            path.unlink()
        return sizes[0] - sizes[1]
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--records",
        default="0,50000,200000",
        help="comma-separated call counts, one fresh ledger each",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--mode", choices=("forwarding", "embedded"), default="forwarding")
    parser.add_argument("--durability", choices=("fsync", "write"), default="fsync")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the ledgers go (default: a temp dir, removed)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    counts = sorted({int(c) for c in args.records.split(",")})
    if len(counts) < 2:
        parser.error("--records needs at least two counts (the slope needs two points)")

    info = {**machine(), "source": source_revision()}
    print("machine:")
    for key, value in info.items():
        print(f"  {key:10} {value}")
    work = Path(tempfile.mkdtemp(prefix="ledger-size-", dir=args.workdir))
    print(
        f"mode {args.mode}, durability {args.durability}, concurrency {args.concurrency}, "
        f"work dir {work} ({shutil.disk_usage(work).free / GIB:.0f} GiB free)"
    )
    upstream_server = None
    try:
        model = build_model(work / "model")
        if args.mode == "forwarding":
            upstream_server = bare(model, work, "upstream")
        upstream = upstream_server.target if upstream_server else ""
        runs = []
        for count in counts:
            run = one_run(count, work, model, args, upstream)
            runs.append(run)
            peaks = run["peak_parts"]
            print(
                f"  {count:>9,} calls: file {run['file_bytes']:>12,} B after close "
                f"({run['used_blocks']:,} blocks used, {run['free_blocks']:,} free; beside it: "
                f"{run['left_beside_file'] or 'nothing'}); running peak "
                f"{run['peak_running_bytes'] / 1e6:.1f} MB (file {peaks['file'] / 1e6:.1f}, "
                f"WAL {peaks['wal'] / 1e6:.1f}, journal {peaks['journal'] / 1e6:.1f}); "
                f"{run['calls_per_s']:,.0f} calls/s"
            )
    finally:
        if upstream_server is not None:
            upstream_server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    low, high = runs[-2], runs[-1]
    per_record = (high["file_bytes"] - low["file_bytes"]) / (high["records"] - low["records"])
    used_per_record = (
        (high["used_blocks"] - low["used_blocks"])
        * high["block_size"]
        / (high["records"] - low["records"])
    )
    transient = high["peak_running_bytes"] - high["file_bytes"]
    columns = high["format2_column_bytes"]
    format2_per_record = columns / high["records"] if columns is not None else None
    fixed = runs[0]["file_bytes"] - runs[0]["records"] * per_record
    gib_per_million = per_record * 1e6 / GIB
    print(
        f"per call stored: request {high['avg_request_bytes']:.0f} B, response "
        f"{high['avg_response_bytes']:.0f} B, metadata {high['avg_metadata_chars']:.0f} chars, "
        f"violations {high['avg_violations_chars']:.0f} chars"
    )
    print(
        f"ledger growth:   {per_record:,.0f} bytes per record "
        f"(slope {low['records']:,} -> {high['records']:,} calls)"
    )
    print(f"fixed part:      {fixed / 1e6:.1f} MB (model, baseline, environment, schema)")
    print(f"per million:     {gib_per_million:.2f} GiB per million requests (closed file)")
    print(
        f"in used blocks:  {used_per_record:,.0f} bytes per record (the rest of the growth is "
        f"free blocks DuckDB reuses)"
    )
    if format2_per_record is not None:
        print(f"format 2:        its columns (format, salt, payload_commitment, erased_by) "
              f"take {format2_per_record:,.1f} bytes per record of entries, copied alone "
              f"(±{high['block_size'] / high['records']:.1f}: DuckDB's blocks)")
    print(
        f"while running:   up to {transient / 1e6:.0f} MB above the closed file at "
        f"{high['records']:,} calls (DuckDB WAL before its checkpoint, unloaded journal)"
    )
    result = {
        "machine": info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "bytes_per_record": per_record,
        "fixed_bytes": fixed,
        "gib_per_million": gib_per_million,
        "used_bytes_per_record": used_per_record,
        "running_overhead_bytes": transient,
        "format2_column_bytes_per_record": format2_per_record,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
