"""What loading records into the ledger's DuckDB costs as the ledger grows.

    python bench/bench_duckdb_load.py [--records 491520] [--batch 8192] [--vacuum both|on|off]

The ledger writer's loader inserts the records of the last second (a few thousand) into
`entries` in one statement; DuckDB checkpoints automatically each time its WAL passes
`checkpoint_threshold` (16 MiB). This inserts `--records` records the same way, built once
by the loader's own `record_table` (the sidecar's record shape, from bench_writer.py), into
a fresh ledger file, and reports per configuration:

  CPU µs/record   process CPU for every INSERT and a final CHECKPOINT, per record;
  bytes/record    the database file's size afterwards;
  slowest         the slowest INSERTs (those that ran an automatic checkpoint), in ms,
                  in the order they happened — whether checkpoints grow with the table.

`vacuum on` is DuckDB's default (`max_vacuum_tasks` 100); `vacuum off` is what
`mlwitness.ledger.schema.connect` sets. The table build is not timed: only DuckDB's part.
Bounded: one pass over --records, each configuration in its own temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
from bench_writer import make_records
from machine import basics

from mlwitness.ledger import schema
from mlwitness.ledger.rows import Tabulator, record_table


def run(table, records: int, batch: int, vacuum: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlwitness-duckdb-load-") as tmp:
        path = Path(tmp) / "ledger.duckdb"
        con = schema.connect(path)  # the ledger's own settings (vacuum off) ...
        con.execute("SET threads = 1")  # as the sidecar's default --duckdb-threads
        if vacuum:
            con.execute("SET max_vacuum_tasks = 100")  # ... or DuckDB's default
        slow: list[int] = []
        cpu = time.process_time()
        started = time.perf_counter()
        for _ in range(records // batch):
            began = time.perf_counter()
            con.register("_batch", table)
            con.execute("INSERT INTO entries BY NAME SELECT * FROM _batch")
            con.unregister("_batch")
            slow.append(round(1e3 * (time.perf_counter() - began)))
        con.execute("CHECKPOINT")
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - started
        con.close()
        loaded = batch * (records // batch)
        return {
            "cpu_us": 1e6 * cpu / loaded,
            "wall_us": 1e6 * wall / loaded,
            "bytes": path.stat().st_size / loaded,
            "slowest": [ms for ms in slow if ms >= 3 * sorted(slow)[len(slow) // 2]],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=491_520)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--vacuum", choices=("both", "on", "off"), default="both")
    args = parser.parse_args()
    if args.records < args.batch or args.batch < 1:
        parser.error("--records must be at least --batch, and --batch at least 1")
    for key, value in basics().items():
        print(f"{key}: {value}")
    print(f"duckdb {duckdb.__version__}; {args.records} records in batches of {args.batch}")
    table = record_table(make_records(args.batch), Tabulator())
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.vacuum]
    for vacuum in modes:
        result = run(table, args.records, args.batch, vacuum)
        print(f"vacuum {'on ' if vacuum else 'off'}  CPU {result['cpu_us']:5.2f} µs/record  "
              f"wall {result['wall_us']:5.2f} µs/record  {result['bytes']:4.0f} bytes/record  "
              f"slowest inserts (ms): {result['slowest']}")


if __name__ == "__main__":
    main()
