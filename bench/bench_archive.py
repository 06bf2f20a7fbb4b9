"""The archive at fleet scale: ship generated ledgers, then time the fleet's questions.

    python bench/bench_archive.py [--records 1000000] [--chains 10] [--dir DIR]
                                  [--segment 100000] [--s3] [--no-decoded] [--no-verify]

1. **Generate** `--chains` ledgers of `--records` records in all (kept in --dir and reused
   when they exist), each written by the real LedgerWriter: credit-model calls of one row
   (a real v2 ModelInferRequest / ModelInferResponse each, FP32 [1, 6] in, label and
   probabilities out, drawn from a pool of 4,096 distinct calls; income × 1.3 in the
   second half of every chain, so that drift has something to find), every record with
   its own request id, two records a millisecond apart.
2. **Ship** every ledger with the real Shipper in segments of `--segment` records to a
   directory archive (`file://`), or with `--s3` to moto's S3 server on 127.0.0.1 started
   here (moto keeps objects in memory: mind the RAM for 10M records); prints records/s of
   sealing + uploading.
3. **Fleet**: `open_fleet` (sync + download + views, cold cache), then `audit show` of
   request ids in random chains (FleetReader.get: the locate by request id and the fetch),
   the record count, drift of the second half against the first half over every record
   (analytics.drift_report with a reference window), and `verify_archive` (records/s; with
   the decoded-column check unless `--no-decoded`; skipped with `--no-verify`). Drift is
   asked twice: the first answer of a process also pays its imports (scipy), as an audit
   server's first drift question does.

Bounded: nothing runs forever; the generator writes exactly --records records. Prints the
machine (bench/machine.py) with its load average first: on a shared machine, read wall
times with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from machine import basics  # bench/machine.py (scripts run from bench/)

from mlwitness.analytics.drift import Window, drift_report
from mlwitness.archive import ObjectStore, open_store
from mlwitness.archive.fleet import FleetReader, open_fleet
from mlwitness.archive.shipper import Shipper, ShipperOptions
from mlwitness.archive.verify import verify_archive
from mlwitness.codec import encode_inputs, encode_outputs, tensor_from_array
from mlwitness.ledger import schema
from mlwitness.ledger.record import Record
from mlwitness.ledger.store import put_model
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.protocol import inference as pb

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
POOL = 4096
# Model bytes in the ledger's model store, so that the archive holds a model to check.
MODEL = b"bench: stands for the credit model"
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
SIGNATURE = {"inputs": [], "outputs": [], "error": "bench model: not ONNX"}


def calls(shift: bool) -> list[tuple[bytes, bytes, list, list, dict]]:
    """POOL distinct one-row credit calls: request, response and their decoded tensors."""
    rng = np.random.default_rng(2026 if shift else 7)
    x = np.column_stack([rng.lognormal(10.8, 0.4, POOL) * (1.3 if shift else 1.0),
                         rng.uniform(0, 1, POOL), rng.normal(690, 50, POOL),
                         rng.integers(18, 80, POOL), rng.integers(0, 30, POOL),
                         rng.integers(0, 8, POOL)]).astype(np.float32)
    pool = []
    for i in range(POOL):
        request = pb.ModelInferRequest(model_name="credit", id=f"pool-{i}")
        encode_inputs(request, [tensor_from_array("input", x[i:i + 1])], raw=True)
        p = float(1 / (1 + np.exp(-(x[i, 2] - 690) / 40)))
        response = pb.ModelInferResponse(model_name="credit", id=f"pool-{i}")
        encode_outputs(response, [
            tensor_from_array("label", np.array([int(p > 0.5)], np.int64)),
            tensor_from_array("probabilities", np.array([[1 - p, p]], np.float32))], raw=True)
        record = Record(request=request.SerializeToString(),
                        response=response.SerializeToString())
        inputs, outputs, parameters = decode_record_tensors(record)
        pool.append((record.request, record.response, inputs, outputs, parameters))
    return pool


def write_chain(path: Path, count: int, chain_index: int) -> None:
    pools = (calls(False), calls(True))
    writer = LedgerWriter(path, WriterOptions(durability="write", max_unloaded=1_000_000))
    writer.open()
    writer.write(lambda con: put_model(con, MODEL, "credit", "1", SIGNATURE))

    async def append_all() -> None:
        gate = asyncio.Semaphore(4096)

        async def one(i: int) -> None:
            request, response, inputs, outputs, parameters = \
                pools[i >= count // 2][i % POOL]
            received = T0 + i * 1000
            async with gate:
                await writer.append(Record(
                    request_id=f"c{chain_index}-{i}", received_us=received,
                    responded_us=received + 400, model_name="credit", model_version="1",
                    model_sha256=MODEL_SHA, peer="10.0.0.1", request=request,
                    response=response, inputs=inputs, outputs=outputs,
                    parameters=parameters))

        for start in range(0, count, 50_000):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 50_000, count))))

    asyncio.run(append_all())
    writer.sync(timeout=3600)
    writer.close()


def ledgers(root: Path, records: int, chains: int) -> list[Path]:
    paths = []
    for k in range(chains):
        count = records // chains + (1 if k < records % chains else 0)
        path = root / f"chain{k}-{count}.duckdb"
        if not path.exists():
            started = time.perf_counter()
            tmp = path.with_suffix(".tmp.duckdb")
            write_chain(tmp, count, k)
            tmp.rename(path)
            print(f"  wrote {path.name}: {count:,} records in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        paths.append(path)
    return paths


@contextlib.contextmanager
def archive(root: Path, s3: bool) -> Iterator[ObjectStore]:
    if not s3:
        directory = root / "archive"
        directory.mkdir(exist_ok=True)
        yield open_store(directory.as_uri())
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
    from s3_server import point_aws_at, running_s3  # noqa: PLC0415

    with running_s3() as server, _env() as env:
        point_aws_at(env, server.endpoint)
        yield open_store(f"s3://{server.create_bucket()}/fleet")


@contextlib.contextmanager
def _env() -> Iterator[object]:
    import pytest  # noqa: PLC0415  (its MonkeyPatch restores the environment)

    with pytest.MonkeyPatch.context() as patch:
        yield patch


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    started, cpu = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chains", type=int, default=10)
    parser.add_argument("--segment", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mlwitness-bench-archive"))
    parser.add_argument("--s3", action="store_true", help="ship to moto's S3 on 127.0.0.1")
    parser.add_argument("--no-verify", action="store_true", help="skip verify_archive")
    parser.add_argument("--no-decoded", action="store_true",
                        help="verify without deriving the decoded columns again")
    args = parser.parse_args(argv)
    print(" · ".join(f"{k} {v}" for k, v in basics().items()), flush=True)
    root = args.dir / f"{args.records}-{args.chains}"
    root.mkdir(parents=True, exist_ok=True)
    paths = ledgers(root, args.records, args.chains)

    with archive(root, args.s3) as store:
        shipped, wall, cpu = 0, 0.0, 0.0
        for path in paths:
            con = schema.connect_reader(path)
            chain = con.execute("SELECT value FROM ledger_meta WHERE key = 'chain_id'"
                                ).fetchall()[0][0]
            shipper = Shipper(store, con.cursor, chain,
                              ShipperOptions(max_records=args.segment, max_bytes=1 << 40))
            n, w, c = timed(shipper.ship_pending)
            shipped, wall, cpu = shipped + n, wall + w, cpu + c
            con.close()
        if shipped:
            print(f"ship: {shipped:,} records in {wall:.1f} s wall, {cpu:.1f} s CPU: "
                  f"{shipped / wall:,.0f} records/s", flush=True)

        cache = root / ("cache-s3" if args.s3 else "cache")
        cold = not cache.exists()
        fleet, wall, _ = timed(open_fleet, store, cache)
        print(f"open_fleet ({'cold cache' if cold else 'cache kept'}): "
              f"{wall:.2f} s, "
              f"{len(fleet.chains)} chains", flush=True)
        reader = FleetReader(fleet.cursor)
        count, wall, _ = timed(lambda: fleet.cursor().execute(
            "SELECT count(*) FROM records").fetchall()[0][0])
        print(f"count(*) of records: {count:,} in {wall:.2f} s", flush=True)
        rng = random.Random(1)
        shows = []
        for _ in range(5):
            k = rng.randrange(args.chains)
            i = rng.randrange(args.records // args.chains)
            stored, wall, _ = timed(reader.get, f"c{k}-{i}")
            assert stored.record.request_id == f"c{k}-{i}"
            shows.append(wall)
        print(f"audit show by request id: best {min(shows):.2f} s, median "
              f"{statistics.median(shows):.2f} s, worst {max(shows):.2f} s", flush=True)
        span = (args.records // args.chains) * 1000
        for ask in ("first", "again"):
            report, wall, cpu = timed(drift_report, fleet.cursor(),
                                      Window(T0, T0 + span // 2), since_us=T0 + span // 2)
            drifted = [f.name for f in report.features if f.verdict == "drift"]
            print(f"drift, second half against first over every chain ({ask}): {wall:.2f} s "
                  f"wall, {cpu:.2f} s CPU ({report.rows:,} rows; drift: "
                  f"{', '.join(drifted) or 'none'})", flush=True)
        fleet.close()
        if args.no_verify:
            print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
            return 0
        report, wall, cpu = timed(verify_archive, store,
                                  decoded_columns=not args.no_decoded)
        print(f"verify_archive{'' if not args.no_decoded else ' (no decoded check)'}: "
              f"{report.records:,} records in {wall:.1f} s wall, {cpu:.1f} s CPU: "
              f"{report.records / wall:,.0f} records/s; ok={report.ok}", flush=True)
        for problem in report.all_problems[:5]:
            print(f"  {problem}")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
