"""The sidecar's memory under sustained load: RSS, PSS, USS of its process tree, page cache.

    python bench/bench_memory.py [--minutes 10] [--interval 10] [--concurrency 8] \\
        [--batch 1] [--servers sidecar,bare] [--durability fsync] [--limit-mib 200] \\
        [--max-growth 0.5] [--settle 60] [--json out.json]

For each server (`sidecar`: `mlwitness serve` on the demo model with its defaults, fsync
ledger; `sidecar_thread`: the same with `--table-builder thread`, no table-builder child;
`bare`: bench/bare_server.py, for comparison), one after the other on a free
127.0.0.1 port: sample once idle, then drive `--concurrency` closed-loop tritonclient
callers for `--minutes` and sample every `--interval` seconds:

- RSS, PSS and USS (Private_Clean + Private_Dirty) of the server and every descendant
  process (the sidecar's table builder, `python -m mlwitness.ledger.tabler`), from
  /proc/PID/smaps_rollup, summed over the tree; PSS per process too. PSS is the figure
  that adds up: pages shared between the server and its child count once in the sum.
- the page cache charged to the server's memory cgroup (memory.stat `file` on cgroup v2,
  `total_cache` on v1): everything the container reads or writes through the cache, the
  ledger's files included; it is the cgroup's, so other processes in it count too (read
  its change from the idle sample).
- the ledger's own files: their size on disk and how much of each is resident in the page
  cache (mincore(2) on a read-only mapping, as util-linux's fincore does), the journal's
  segments apart from the DuckDB file and its WAL.

Then the growth slope of each over the samples after `--settle` seconds (least squares, in
MiB per minute) and, for the sidecar, the targets: tree PSS at the end ≤ `--limit-mib`, and
PSS growth ≤ `--max-growth` MiB/min ("no growth"). The sidecar's ledger is checked as in
bench_sidecar.py afterwards: as many records as calls made.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sidecar import (  # noqa: E402
    MODEL_KINDS,
    Server,
    bare,
    build_model,
    ledger_counts,
    ledger_files,
    machine,
    sidecar,
)
from load import Job, LoadPool, LoadResult  # noqa: E402

MIB = 1 << 20
# The sidecars measured, by name: their flags beyond the defaults
SIDECARS = {"sidecar": [], "sidecar_thread": ["--table-builder", "thread"]}
PAGE = mmap.PAGESIZE


# ── what one sample reads ─────────────────────────────────────────────────────────────


def smaps_rollup(pid: int) -> dict[str, int]:
    """Bytes of each smaps_rollup field ({} when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def process_name(pid: int, server_pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "mlwitness.ledger.tabler" in cmdline:
        return "tabler"
    return "server" if pid == server_pid else f"child {pid}"


def cgroup_stat(pid: int) -> tuple[Path | None, str]:
    """The memory.stat file of `pid`'s memory cgroup and its page-cache key."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None, ""
    for line in lines:  # cgroup v1 memory controller (also on hybrid hosts)
        _, controllers, path = line.split(":", 2)
        stat = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.stat"
        if "memory" in controllers.split(",") and stat.is_file():
            return stat, "total_cache"
    for line in lines:  # cgroup v2
        _, controllers, path = line.split(":", 2)
        stat = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.stat"
        if controllers == "" and stat.is_file():
            return stat, "file"
    return None, ""


def cgroup_cache(stat: Path | None, key: str) -> int | None:
    if stat is None:
        return None
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return None


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache: mincore(2) over a read-only shared mapping,
    which maps the pages without reading (or caching) any of them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a journal segment deleted since it was listed
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            return 0
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                return 0
            return int((np.frombuffer(bytes(vec), dtype=np.uint8) & 1).sum()) * PAGE
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


@dataclass
class Sample:
    t_s: float
    rss: int = 0
    pss: int = 0
    uss: int = 0
    pss_anon: int = 0
    pss_file: int = 0
    pss_by_process: dict[str, int] = field(default_factory=dict)
    cgroup_cache: int | None = None
    journal_disk: int = 0
    journal_cached: int = 0
    duckdb_disk: int = 0  # the DuckDB file and its WAL
    duckdb_cached: int = 0


def sample(server: Server, t_s: float, stat: Path | None, key: str) -> Sample:
    out = Sample(t_s)
    for pid in server.pids():
        fields = smaps_rollup(pid)
        if not fields:
            continue
        out.rss += fields.get("Rss", 0)
        out.pss += fields.get("Pss", 0)
        out.uss += fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        out.pss_anon += fields.get("Pss_Anon", 0)
        out.pss_file += fields.get("Pss_File", 0)
        out.pss_by_process[process_name(pid, server.proc.pid)] = fields.get("Pss", 0)
    out.cgroup_cache = cgroup_cache(stat, key)
    ledger: Path | None = getattr(server, "ledger", None)
    if ledger is not None:
        for path in ledger_files(ledger):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            cached = resident_bytes(path)
            if path.parent.name.endswith(".journal"):
                out.journal_disk += size
                out.journal_cached += cached
            else:
                out.duckdb_disk += size
                out.duckdb_cached += cached
    return out


# ── one server under load ─────────────────────────────────────────────────────────────


@dataclass
class Trace:
    server: str
    samples: list[Sample]
    load: LoadResult | None
    records: int | None = None
    exit_code: int | None = None


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def print_header(ledgered: bool) -> None:
    columns = f"{'t s':>6}{'RSS':>8}{'PSS':>8}{'USS':>8}{'PSS anon':>10}  PSS per process"
    print(f"{columns:<70}{'cgroup cache':>13}"
          + (f"{'journal':>9}{'cached':>8}{'duckdb':>8}{'cached':>8}" if ledgered else ""))
    print("  (MiB)")


def print_sample(s: Sample, ledgered: bool) -> None:
    procs = " ".join(f"{name} {mib(v)}" for name, v in sorted(s.pss_by_process.items()))
    line = (f"{s.t_s:>6.0f}{mib(s.rss):>8}{mib(s.pss):>8}{mib(s.uss):>8}{mib(s.pss_anon):>10}"
            f"  {procs}")
    line = f"{line:<70}{mib(s.cgroup_cache):>13}"
    if ledgered:
        line += (f"{mib(s.journal_disk):>9}{mib(s.journal_cached):>8}"
                 f"{mib(s.duckdb_disk):>8}{mib(s.duckdb_cached):>8}")
    print(line, flush=True)


def run_one(kind: str, pool: LoadPool, model: Path, work: Path,
            args: argparse.Namespace) -> Trace:
    ledgered = kind in SIDECARS
    server = (sidecar(model, work, kind, args.durability, extra=SIDECARS[kind]) if ledgered
              else bare(model, work, kind))
    stat, key = cgroup_stat(server.proc.pid)
    print(f"\n{kind}: pid {server.proc.pid}, {args.minutes:g} min at c={args.concurrency}, "
          f"batch {args.batch}, a sample every {args.interval:g} s; page cache from "
          f"{stat or 'no memory cgroup found'}" + (f" ({key})" if stat else ""), flush=True)
    print_header(ledgered)
    samples = [sample(server, 0.0, stat, key)]
    print_sample(samples[0], ledgered)
    job = Job(server.target, model.stem, 0, args.batch, args.minutes * 60, 0.0,
              input_name="input", features=len(MODEL_KINDS["credit"].features))
    box: list[LoadResult | BaseException] = []

    def drive() -> None:
        try:
            box.append(pool.run(job, 1, args.concurrency, start_delay=0.5))
        except BaseException as exc:  # reported below, after the samples
            box.append(exc)

    driver = threading.Thread(target=drive, daemon=True)
    started = time.monotonic()
    driver.start()
    next_at = args.interval
    try:
        while True:
            driver.join(max(0.0, started + next_at - time.monotonic()))
            if not driver.is_alive():
                break
            samples.append(sample(server, time.monotonic() - started, stat, key))
            print_sample(samples[-1], ledgered)
            next_at += args.interval
    except BaseException:
        server.stop(kill=True)
        raise
    samples.append(sample(server, time.monotonic() - started, stat, key))  # after the load
    print_sample(samples[-1], ledgered)
    load = box[0] if box and isinstance(box[0], LoadResult) else None
    if load is None:
        print(f"  load failed: {box[0] if box else 'no result'}")
    else:
        print(f"  load: {load.line()}")
    trace = Trace(kind, samples, load)
    trace.exit_code = server.stop()
    if ledgered:
        trace.records, _, _ = ledger_counts(server.ledger)  # type: ignore[attr-defined]
        calls = None if load is None else load.ok_total + load.errors
        print(f"  ledger: {trace.records} records for {calls} calls, exit {trace.exit_code}"
              f" -> {'ok' if trace.records == calls and trace.exit_code == 0 else 'MISMATCH'}")
    return trace


# ── summary ───────────────────────────────────────────────────────────────────────────


def slope_mib_per_min(samples: list[Sample], attr: str) -> float:
    """Least-squares slope of `attr` over the samples, MiB per minute (nan under 2)."""
    if len(samples) < 2:
        return float("nan")
    t = np.array([s.t_s / 60 for s in samples])
    y = np.array([getattr(s, attr) / MIB for s in samples], dtype=float)
    if np.ptp(t) == 0:
        return float("nan")
    return float(np.polyfit(t, y, 1)[0])


def summarize(trace: Trace, args: argparse.Namespace) -> dict[str, object]:
    loaded = trace.samples[1:-1] or trace.samples[1:]  # under load (the last is after it)
    settle = min(args.settle, args.minutes * 60 / 2)
    steady = [s for s in loaded if s.t_s >= settle] or loaded[-1:]
    last = steady[-1]
    idle = trace.samples[0]
    attrs = ["rss", "pss", "uss", "cgroup_cache"]
    if trace.server in SIDECARS:
        attrs += ["journal_cached", "duckdb_cached"]
    slopes = {attr: slope_mib_per_min(steady, attr) for attr in attrs}
    max_pss = max(s.pss for s in steady)
    cache_change = (None if last.cgroup_cache is None or idle.cgroup_cache is None
                    else last.cgroup_cache - idle.cgroup_cache)
    summary: dict[str, object] = {
        "server": trace.server,
        "steady_from_s": settle,
        "samples_steady": len(steady),
        "last": asdict(last),
        "max_pss": max_pss,
        "idle_pss": idle.pss,
        "slopes_mib_per_min": slopes,
        "cgroup_cache_change": cache_change,
    }
    print(f"\n{trace.server}: over {len(steady)} samples from t={settle:g} s "
          f"(idle PSS {mib(idle.pss)} MiB)")
    print(f"  at the end: RSS {mib(last.rss)}, PSS {mib(last.pss)} (max {mib(max_pss)}), "
          f"USS {mib(last.uss)} MiB; page cache in the cgroup {mib(last.cgroup_cache)} MiB "
          f"({mib(cache_change)} since idle)")
    if trace.server in SIDECARS:
        print(f"  ledger files: journal {mib(last.journal_disk)} MiB on disk, "
              f"{mib(last.journal_cached)} cached; DuckDB {mib(last.duckdb_disk)} on disk, "
              f"{mib(last.duckdb_cached)} cached")
    print("  growth, MiB/min: " + ", ".join(
        f"{name} {value:+.2f}" for name, value in slopes.items() if value == value))
    if trace.server in SIDECARS:
        pss_ok = last.pss <= args.limit_mib * MIB
        growth_ok = slopes["pss"] <= args.max_growth
        summary["targets"] = {"pss_limit_met": pss_ok, "no_growth_met": growth_ok}
        print(f"  target: tree PSS <= {args.limit_mib:g} MiB at the end: {mib(last.pss)} MiB -> "
              f"{'MET' if pss_ok else 'NOT MET'}")
        print(f"  target: PSS growth <= {args.max_growth:g} MiB/min: {slopes['pss']:+.2f} -> "
              f"{'MET' if growth_ok else 'NOT MET'}")
    return summary


# ── main ──────────────────────────────────────────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="load per server")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--servers", default="sidecar,bare",
                        help=f"comma-separated subset of {','.join([*SIDECARS, 'bare'])}")
    parser.add_argument("--durability", choices=("fsync", "write"), default="fsync")
    parser.add_argument("--limit-mib", type=float, default=200.0, help="tree PSS target")
    parser.add_argument("--max-growth", type=float, default=0.5,
                        help="largest PSS slope (MiB/min) that counts as no growth")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds of load before the steady state (at most half the run)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and ledger")
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or set(servers) - {*SIDECARS, "bare"}:
        parser.error(f"--servers takes a subset of {','.join([*SIDECARS, 'bare'])}")

    info = machine()
    print("machine: " + info["uname"])
    print(f"  nproc {info['nproc']}, cpu {info['cpu']}, loadavg {info['loadavg']}")
    print(f"  mlwitness source: {info['source']}")
    print(f"  python {info['python']}, onnxruntime {info['onnxruntime']}, grpcio "
          f"{info['grpcio']}, duckdb {info['duckdb']}, tritonclient {info['tritonclient']}")
    work = Path(tempfile.mkdtemp(prefix="mlwitness-bench-memory-"))
    model = build_model(MODEL_KINDS["credit"], work)
    print(f"model {model}, work dir {work}", flush=True)
    traces = []
    with LoadPool(1) as pool:
        for kind in servers:
            traces.append(run_one(kind, pool, model, work, args))
    summaries = [summarize(trace, args) for trace in traces]
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": info,
             "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
             "traces": [{"server": t.server, "samples": [asdict(s) for s in t.samples],
                         "load": None if t.load is None else asdict(t.load),
                         "records": t.records, "exit_code": t.exit_code} for t in traces],
             "summary": summaries},
            indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    failed = any(t.load is None or t.exit_code != 0 for t in traces)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
