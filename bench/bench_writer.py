"""Ledger writer micro-benchmark: how many records per second the ledger ingests.

    python bench/bench_writer.py [--records 100000] [--tasks 8,64,1024] [--modes fsync,write]
        [--loading process,thread]

Drives `mlwitness.ledger.writer.LedgerWriter` the way the sidecar does, without gRPC or a
model: many concurrent asyncio tasks (`append`, one event loop) or threads
(`append_blocking`) each append records one after another, each awaiting durability before
the next. Records are realistic: the protobuf request (~110 B: one FP32 [1, 6] input, raw,
and an `age_band` parameter) and response (~110 B: INT64 [1] label, FP32 [1, 2]
probabilities) of a tritonclient call, the sidecar's string fields, and those tensors
decoded in memory. Records are built before the clock starts; the figure is the writer's,
not the caller's.

`--loading process` loads as the sidecar does: DuckDB rows are built by the table builder
process from the journal, except while loading has fallen behind, when the writer keeps
records and builds their rows from memory. A benchmark burst falls behind within the first
load, so most rows are built from memory: the `by child` column says how many were not.
`--loading thread` builds every row in the loader thread.

Per run it reports
  ack rate        records / time until the last `append` returned (journal written, and
                  fdatasync'ed in fsync mode): what a caller waiting for its ack sees;
  ingest rate     records / time until `writer.sync()` returned as well, i.e. every record
                  is loaded into DuckDB and queryable: the end-to-end figure (target 40,000/s);
  flushes, mean records per flush (group commit), DuckDB loads and mean load batch.
Then, separately: the DuckDB load alone (`_insert` of 8,192-record batches, split into
tabulating, Arrow building and the INSERT), the flusher's per-record CPU (canonical
encoding, chain hash, journal frame), and fdatasync latency on this disk.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from mlwitness.codec import Tensor, encode_inputs, encode_outputs
from mlwitness.ledger import journal as journal_mod
from mlwitness.ledger import schema
from mlwitness.ledger.record import Record, chain_hash, encode
from mlwitness.ledger.rows import Tabulator, arrow_columns
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.protocol import inference as pb

SHA = "5c513e084374" + "0" * 52
ENV = "e" * 16


def make_records(count: int, seed: int = 0) -> list[Record]:
    """Records as the sidecar makes them: the request and response bytes a tritonclient
    call and its answer are (raw contents, a request parameter), and the tensors decoded
    from them in memory."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(count, 6)).astype(np.float32)
    probs = rng.uniform(size=(count, 2)).astype(np.float32)
    now = time.time_ns() // 1000
    records = []
    for i in range(count):
        request_id = uuid.uuid4().hex
        inputs = [Tensor("input", "FP32", (1, 6), features[i : i + 1])]
        outputs = [
            Tensor("label", "INT64", (1,), np.array([i & 1], dtype=np.int64)),
            Tensor("probabilities", "FP32", (1, 2), probs[i : i + 1]),
        ]
        request = pb.ModelInferRequest(model_name="credit", id=request_id)
        request.parameters["age_band"].string_param = ("18-25", "26-40", "41-65")[i % 3]
        encode_inputs(request, inputs, raw=True)
        response = pb.ModelInferResponse(model_name="credit", model_version="1", id=request_id)
        encode_outputs(response, outputs, raw=True)
        records.append(
            Record(
                request_id=request_id,
                received_us=now + i,
                responded_us=now + i + 180,
                model_name="credit",
                model_version="1",
                model_sha256=SHA,
                env_id=ENV,
                peer="ipv4:127.0.0.1:51234",
                request=request.SerializeToString(),
                response=response.SerializeToString(),
                inputs=inputs,
                outputs=outputs,
                parameters={"age_band": request.parameters["age_band"].string_param},
            )
        )
    return records


def open_writer(path: Path, durability: str, loading: str = "process") -> LedgerWriter:
    """A writer as the sidecar opens it (loading "process": DuckDB rows built by the table
    builder process), or with rows built by its loader thread ("thread")."""
    writer = LedgerWriter(path, WriterOptions(durability=durability,
                                              table_process=loading == "process"),
                          tabulator=Tabulator(), decoder=decode_record_tensors)
    writer.open()
    return writer


def count_rows(writer: LedgerWriter) -> int:
    return int(writer.cursor().execute("SELECT count(*) FROM entries").fetchone()[0])


# ── end-to-end ingest ─────────────────────────────────────────────────────────────────


async def _drive_async(writer: LedgerWriter, records: list[Record], tasks: int) -> float:
    chunks = [records[i::tasks] for i in range(tasks)]

    async def appender(mine: list[Record]) -> None:
        for record in mine:
            await writer.append(record)

    started = time.perf_counter()
    await asyncio.gather(*(appender(c) for c in chunks))
    return time.perf_counter() - started


def _drive_threads(writer: LedgerWriter, records: list[Record], tasks: int) -> float:
    chunks = [records[i::tasks] for i in range(tasks)]

    def appender(mine: list[Record]) -> None:
        for record in mine:
            writer.append_blocking(record)

    threads = [threading.Thread(target=appender, args=(c,)) for c in chunks]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def ingest(work: Path, durability: str, tasks: int, count: int, driver: str,
           loading: str) -> dict:
    path = work / f"ingest-{durability}-{driver}-{tasks}-{loading}.duckdb"
    writer = open_writer(path, durability, loading)
    records = make_records(count)
    try:
        started = time.perf_counter()
        if driver == "async":
            acked_s = asyncio.run(_drive_async(writer, records, tasks))
        else:
            acked_s = _drive_threads(writer, records, tasks)
        writer.sync(timeout=300)
        loaded_s = time.perf_counter() - started
        stats = writer.stats
        rows = count_rows(writer)
    finally:
        writer.close()
    return {
        "durability": durability,
        "driver": driver,
        "tasks": tasks,
        "records": count,
        "rows": rows,
        "ack_rate": count / acked_s,
        "ingest_rate": count / loaded_s,
        "flushes": stats.flushes,
        "per_flush": stats.appended / max(1, stats.flushes),
        "flush_ms": stats.flush_seconds / max(1, stats.flushes) * 1e3,
        "loads": stats.loads,
        "per_load": stats.loaded / max(1, stats.loads),
        "by_child": stats.built_by_child,
        "load_rate": stats.loaded / stats.load_seconds if stats.load_seconds else float("nan"),
    }


# ── components ────────────────────────────────────────────────────────────────────────


def _chain(records: list[Record], start_seq: int) -> None:
    prev = b"\0" * 32
    for offset, record in enumerate(records):
        record.seq = start_seq + offset
        record.prev_hash = prev
        record.hash = prev = chain_hash(prev, encode(record))


class _TimedConnection:
    """Pass-through to a DuckDB connection that adds up the time spent in `execute`."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.execute_s = 0.0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.con.execute(*args, **kwargs)
        finally:
            self.execute_s += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def duckdb_load(work: Path, batch: int, batches: int) -> dict:
    """`_insert` alone, on a writer whose threads never started, plus its parts."""
    path = work / "load-only.duckdb"
    writer = LedgerWriter(path, tabulator=Tabulator())
    con = _TimedConnection(schema.connect(path))
    writer._db.con = con  # type: ignore[assignment]  # the loader's connection, no threads
    tab = Tabulator()
    insert_s = arrow_s = 0.0
    try:
        for n in range(batches):
            records = make_records(batch, seed=n)
            _chain(records, 1 + n * batch)
            t1 = time.perf_counter()
            arrow_columns([r.inputs for r in records], [r.outputs for r in records], tab)
            t2 = time.perf_counter()
            writer._db.insert(writer._loader.sources.table(records))
            t3 = time.perf_counter()
            arrow_s += t2 - t1
            insert_s += t3 - t2
        total = int(con.execute("SELECT count(*) FROM entries").fetchone()[0])
    finally:
        con.close()
    n = batch * batches
    return {
        "records": n,
        "rows": total,
        "insert_rate": n / insert_s,  # the whole _insert: tabulate + Arrow + DuckDB INSERT
        "arrow_us": arrow_s / n * 1e6,
        "insert_us": insert_s / n * 1e6,
        "duckdb_us": con.execute_s / n * 1e6,  # the INSERT statement (Arrow scan) alone
    }


def flusher_cpu(count: int) -> dict:
    records = make_records(count)
    prev = b"\0" * 32
    t0 = time.perf_counter()
    payloads = [encode(r) for r in records]
    t1 = time.perf_counter()
    for record, payload in zip(records, payloads, strict=True):
        record.prev_hash = prev
        record.hash = prev = chain_hash(prev, payload)
    t2 = time.perf_counter()
    frames = [journal_mod.frame(r, p, 1) for r, p in zip(records, payloads, strict=True)]
    t3 = time.perf_counter()
    return {
        "encode_us": (t1 - t0) / count * 1e6,
        "hash_us": (t2 - t1) / count * 1e6,
        "frame_us": (t3 - t2) / count * 1e6,
        "payload_bytes": statistics.mean(len(p) for p in payloads[:1000]),
        "frame_bytes": statistics.mean(len(f) for f in frames[:1000]),
    }


def fdatasync_latency(work: Path, n: int = 500, *, zeroed: bool = False) -> dict:
    """fdatasync after each 450 B write: appended to a growing file (zeroed=False), or
    over blocks already written with zeros, as the journal's segments are (zeroed=True):
    then there is no new size or block to commit through the file system's journal."""
    path = work / f"fsync-probe-{int(zeroed)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    times = []
    try:
        chunk = os.urandom(450)
        if zeroed:
            os.pwrite(fd, bytes(len(chunk) * n), 0)
            os.fsync(fd)
        for i in range(n):
            os.pwrite(fd, chunk, i * len(chunk))
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    arr = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


# ── main ──────────────────────────────────────────────────────────────────────────────


def _loadings(text: str) -> str:
    if not set(text.split(",")) <= {"process", "thread"}:
        raise argparse.ArgumentTypeError("--loading takes process, thread or both")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per run")
    parser.add_argument("--tasks", default="8,64,1024", help="concurrent appenders")
    parser.add_argument("--modes", default="fsync,write")
    parser.add_argument(
        "--drivers",
        default="async,threads",
        help="async: asyncio tasks + append; threads: append_blocking",
    )
    parser.add_argument(
        "--thread-max", type=int, default=64, help="skip thread runs above this many appenders"
    )
    parser.add_argument(
        "--loading", default="process", type=_loadings,
        help="process: DuckDB rows built by the table builder process, as the sidecar "
             "does; thread: by the writer's loader thread",
    )
    parser.add_argument("--dir", type=Path, help="where the ledgers go (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mlwitness-writer-", dir=args.dir))
    tasks = [int(t) for t in args.tasks.split(",")]

    print(
        f"machine: {' '.join(platform.uname())}; nproc {os.cpu_count()}; python "
        f"{platform.python_version()}; duckdb {duckdb.__version__}; ledger dir {work}"
    )
    for zeroed, what in ((False, "append to a growing file"),
                         (True, "write over zeroed blocks (the journal's way)")):
        sync = fdatasync_latency(work, zeroed=zeroed)
        print(f"fdatasync after a 450 B {what}: p50 {sync['p50_ms']:.3f} ms, "
              f"p99 {sync['p99_ms']:.3f} ms")
    cpu = flusher_cpu(20_000)
    print(
        f"flusher CPU per record: encode {cpu['encode_us']:.2f} us, chain hash "
        f"{cpu['hash_us']:.2f} us, frame {cpu['frame_us']:.2f} us "
        f"(payload {cpu['payload_bytes']:.0f} B, frame {cpu['frame_bytes']:.0f} B)"
    )
    load = duckdb_load(work, 8192, 5)
    print(
        f"DuckDB load alone (_insert, 5 x 8192 records): {load['insert_rate']:,.0f} records/s "
        f"= {load['insert_us']:.1f} us/record, of which the decoded map columns "
        f"{load['arrow_us']:.1f} us, DuckDB INSERT statement "
        f"{load['duckdb_us']:.1f} us (parts timed separately); "
        f"{load['rows']} rows stored"
    )
    print()
    header = (
        f"{'mode':<6}{'loading':<8}{'driver':<8}{'tasks':>6}{'ack rec/s':>11}"
        f"{'ingest rec/s':>14}"
        f"{'flushes':>9}{'rec/flush':>10}{'flush ms':>9}{'loads':>7}{'rec/load':>9}"
        f"{'load rec/s':>11}{'by child':>10}  rows"
    )
    print(header)
    print("-" * len(header))
    worst: float | None = None
    for driver, n, mode, loading in itertools.product(
        args.drivers.split(","), tasks, args.modes.split(","), args.loading.split(",")
    ):
        if driver == "threads" and n > args.thread_max:
            continue
        r = ingest(work, mode, n, args.records, driver, loading)
        if n >= 64 and driver == "async" and loading == "process":
            worst = r["ingest_rate"] if worst is None else min(worst, r["ingest_rate"])
        ok = "" if r["rows"] == r["records"] else "  MISMATCH"
        print(
            f"{mode:<6}{loading:<8}{driver:<8}{n:>6}{r['ack_rate']:>11,.0f}"
            f"{r['ingest_rate']:>14,.0f}"
            f"{r['flushes']:>9}{r['per_flush']:>10.1f}{r['flush_ms']:>9.3f}"
            f"{r['loads']:>7}{r['per_load']:>9.0f}{r['load_rate']:>11,.0f}{r['by_child']:>10}"
            f"  {r['rows']}{ok}",
            flush=True,
        )
    print()
    print(
        "target: ingest >= 40,000 records/s (>= 64 asyncio appenders, --loading process: "
        "loaded the sidecar's way): "
        + ("no such run" if worst is None else
           f"lowest measured {worst:,.0f} -> {'MET' if worst >= 40_000 else 'NOT MET'}")
    )
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
