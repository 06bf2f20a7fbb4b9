"""What the ledger costs: the sidecar against a bare v2 server, under tritonclient load.

    python bench/bench_sidecar.py [--rounds 3] [--duration 5] [--warmup 1.5] \\
        [--concurrency 1,8] [--batch 1] [--configs b,a,a_write,c] [--json out.json]

Configurations (every server a subprocess on a free 127.0.0.1 port, model built fresh
from examples/credit into a temp dir):

    b        bench/bare_server.py: grpc.aio + onnxruntime in-process, no ledger
    n        bench/sidecar_noledger.py: mlwitness serve with the ledger off (appends discarded)
    a        mlwitness serve, embedded, --durability fsync (the default: durable ledger)
    a_write  mlwitness serve, embedded, --durability write (acked once in the OS)
    a_guards mlwitness serve, embedded, fsync, with a suggested guard file (observe mode)
    c0       bench/bare_server.py called directly, measured in the same slot as c, on the
             same process that c then forwards to
    c        mlwitness serve --upstream <that bare server> (forwarding, fsync)

Each round runs every configuration once (the order rotates per round), and within a
server's lifetime every concurrency level once. Figures are medians over rounds; the ratios
are medians of per-round paired ratios (a and b of the same round ran seconds apart).

After each sidecar run the sidecar gets SIGTERM (it drains and flushes), and the ledger is
opened read-only: its `records` count must equal the calls the load generator saw
acknowledged (and the OK count the OK answers). Server CPU per call comes from
/proc/PID/stat (all threads, and its child processes) over the run, divided by the calls it
answered.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import Job, LoadPool, LoadResult  # noqa: E402
from machine import basics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BARE = REPO / "bench" / "bare_server.py"
NOLEDGER = REPO / "bench" / "sidecar_noledger.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LABELS = {
    "b": "(b)  bare server, no ledger",
    "n": "(n)  sidecar, ledger off",
    "a": "(a)  sidecar embedded, fsync",
    "a_write": "(a') sidecar embedded, write",
    "a_guards": "(g)  sidecar fsync + guards, observe",
    "c0": "(c0) bare server, direct",
    "c": "(c)  sidecar forwarding -> (c0)",
}


# ── machine ───────────────────────────────────────────────────────────────────────────


def machine() -> dict[str, str]:
    import duckdb
    import grpc
    import onnxruntime

    return {
        **basics(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "duckdb": duckdb.__version__,
        "tritonclient": importlib.metadata.version("tritonclient"),
        "source": source_revision(),
    }


def source_revision() -> str:
    """The commit the measured code is at, and whether src/ has uncommitted changes."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


# ── servers ───────────────────────────────────────────────────────────────────────────


_LIVE: set[Server] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a server behind, whatever went wrong in the orchestrator."""
    for server in list(_LIVE):
        server.stop(kill=True)


class Server:
    """A server subprocess that prints a JSON ready line on stdout."""

    def __init__(self, name: str, argv: list[str], log: Path, ready_timeout: float = 60) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log_file, cwd=REPO)
        _LIVE.add(self)
        line = _readline(self.proc, ready_timeout)
        try:
            info = json.loads(line)
            assert info.get("event") == "ready"
        except Exception:
            self.stop(kill=True)
            raise RuntimeError(f"{name} did not start: {line!r}\n{self.tail()}") from None
        self.port = int(info["port"])
        self.target = f"127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        """CPU seconds of the server and its child processes (the sidecar's table builder),
        all threads."""
        return sum(_process_cpu_s(pid) for pid in (self.proc.pid, *_children(self.proc.pid)))

    def stop(self, kill: bool = False, timeout: float = 60) -> int:
        _LIVE.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_file.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box: list[bytes] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0].decode(errors="replace").strip() if box else ""


def bare(model: Path, work: Path, tag: str) -> Server:
    return Server(
        tag, [sys.executable, str(BARE), "--model", str(model), "--port", "0"], work / f"{tag}.log"
    )


FEATURES = "income,debt_ratio,fico,age,years_employed,open_loans"


def guard_files(work: Path) -> list[str]:
    """`--features/--guards/--baseline` for the guarded configuration: a baseline of the
    demo training set and the guard file `mlwitness guards suggest` drafts from it."""
    baseline, guards = work / "baseline.json", work / "guards.toml"
    if not guards.exists():
        cli = [sys.executable, "-m", "mlwitness"]
        subprocess.run([*cli, "baseline", str(work / "train.csv"), "--model",
                        str(work / "credit.onnx"), "--label", "approved", "--out",
                        str(baseline)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*cli, "guards", "suggest", str(baseline), "--out", str(guards)],
                       check=True, stdout=subprocess.DEVNULL)
    return ["--features", FEATURES, "--guards", str(guards), "--guard-mode", "observe"]


def sidecar(model: Path, work: Path, tag: str, durability: str, upstream: str = "",
            extra: list[str] | None = None, ledger_off: bool = False) -> Server:
    ledger = work / f"{tag}.duckdb"
    command = [str(NOLEDGER)] if ledger_off else ["-m", "mlwitness", "serve"]
    argv = [
        sys.executable,
        *command,
        "--model",
        str(model),
        "--ledger",
        str(ledger),
        "--port",
        "0",
        "--audit-port",
        "0",
        "--metrics-port",
        "0",
        "--durability",
        durability,
    ]
    if upstream:
        argv += ["--upstream", upstream]
    argv += extra or []
    server = Server(tag, argv, work / f"{tag}.log")
    server.ledger = ledger  # type: ignore[attr-defined]
    return server


def _process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone since it was listed
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # minus idle and iowait


def ledger_counts(path: Path) -> tuple[int, int]:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'OK') FROM records"
        ).fetchone()
        assert row is not None
        total, ok = row
    finally:
        con.close()
    return int(total), int(ok)


# ── measuring ─────────────────────────────────────────────────────────────────────────


@dataclass
class Point:
    config: str
    round: int
    load: LoadResult
    server_cpu_us_per_call: float
    other_cores: float  # CPU used meanwhile by everything but the servers and the client


@dataclass
class Sanity:
    config: str
    round: int
    acked_ok: int
    calls: int
    records: int
    records_ok: int
    exit_code: int
    verified: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.records == self.calls
            and self.records_ok == self.acked_ok
            and self.exit_code == 0
            and self.verified in ("", "OK")
        )


@dataclass
class Run:
    points: list[Point] = field(default_factory=list)
    sanity: list[Sanity] = field(default_factory=list)


def measure(
    pool: LoadPool,
    server: Server,
    config: str,
    rnd: int,
    args: argparse.Namespace,
    run: Run,
    others: tuple[Server, ...] = (),
) -> tuple[int, int]:
    """Run every concurrency level against one server; return (acked OK, calls made)."""
    acked = calls = 0
    levels = args.concurrency if rnd % 2 == 0 else list(reversed(args.concurrency))
    for conc in levels:
        wait_for_quiet(args)
        job = Job(
            server.target,
            "credit",
            0,
            args.batch,
            args.duration,
            args.warmup,
            args.client,
            input_name="input",
        )
        cpu0, others0, busy0, wall0 = (
            server.cpu_s(),
            sum(o.cpu_s() for o in others),
            machine_busy_s(),
            time.perf_counter(),
        )
        result = pool.run(job, args.processes, conc)
        cpu = server.cpu_s() - cpu0
        ours = cpu + sum(o.cpu_s() for o in others) - others0 + result.client_cpu_s
        other = (machine_busy_s() - busy0 - ours) / (time.perf_counter() - wall0)
        served = result.ok_total + result.errors
        point = Point(
            config, rnd, result, cpu / served * 1e6 if served else float("nan"), max(0.0, other)
        )
        run.points.append(point)
        acked += result.ok_total
        calls += served
        print(
            f"  round {rnd} {config:<8} {result.line()}  server {point.server_cpu_us_per_call:5.0f}"
            f" us CPU/call, other load {point.other_cores:.2f} cores",
            flush=True,
        )
        for sample in result.error_samples:
            print("    error:", sample, flush=True)
    return acked, calls


def wait_for_quiet(args: argparse.Namespace) -> None:
    """With --quiet-below, wait (up to --quiet-wait s) until the machine is that idle:
    other tenants' load is the main noise on a shared 2-core machine."""
    if not args.quiet_below:
        return
    deadline = time.monotonic() + args.quiet_wait
    while True:
        busy0 = machine_busy_s()
        time.sleep(0.5)
        cores = (machine_busy_s() - busy0) / 0.5
        if cores <= args.quiet_below or time.monotonic() >= deadline:
            return


def check_ledger(
    server: Server,
    config: str,
    rnd: int,
    acked: int,
    calls: int,
    args: argparse.Namespace,
    run: Run,
) -> None:
    code = server.stop()
    ledger: Path = server.ledger  # type: ignore[attr-defined]
    total, ok = ledger_counts(ledger)
    sanity = Sanity(config, rnd, acked, calls, total, ok, code)
    if args.verify:
        from mlwitness.ledger.verify import verify

        sanity.verified = "OK" if verify(ledger).ok else "FAILED"
    run.sanity.append(sanity)
    state = "ok" if sanity.ok else "MISMATCH"
    verified = f" verify {sanity.verified}" if args.verify else ""
    print(
        f"  round {rnd} {config:<8} ledger: {total} records ({ok} OK) for {calls} calls "
        f"({acked} acknowledged OK), exit {code}{verified} -> {state}",
        flush=True,
    )
    if not sanity.ok:
        print(server.tail(), flush=True)
    for suffix in ("", ".wal", ".journal"):
        path = Path(str(ledger) + suffix)
        if path.is_file() and not args.keep:
            path.unlink()


def one_config(
    config: str,
    rnd: int,
    model: Path,
    work: Path,
    pool: LoadPool,
    args: argparse.Namespace,
    run: Run,
) -> None:
    tag = f"{config}-r{rnd}"
    if config in ("b", "n"):
        server = bare(model, work, tag) if config == "b" else sidecar(
            model, work, tag, "fsync", ledger_off=True)
        try:
            measure(pool, server, config, rnd, args, run)
        finally:
            server.stop()
    elif config in ("a", "a_write", "a_guards"):
        server = sidecar(model, work, tag, "write" if config == "a_write" else "fsync",
                         extra=guard_files(work) if config == "a_guards" else None)
        try:
            acked, calls = measure(pool, server, config, rnd, args, run)
        except BaseException:
            server.stop(kill=True)
            raise
        check_ledger(server, config, rnd, acked, calls, args, run)
    elif config == "c":
        upstream = bare(model, work, f"c0-r{rnd}")
        try:
            measure(pool, upstream, "c0", rnd, args, run)
            server = sidecar(model, work, tag, "fsync", upstream=upstream.target)
            try:
                acked, calls = measure(pool, server, "c", rnd, args, run, (upstream,))
            except BaseException:
                server.stop(kill=True)
                raise
            check_ledger(server, "c", rnd, acked, calls, args, run)
        finally:
            upstream.stop()
    else:
        raise ValueError(f"unknown configuration {config!r}")


# ── reporting ─────────────────────────────────────────────────────────────────────────


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _points(run: Run, config: str, conc: int) -> dict[int, Point]:
    return {p.round: p for p in run.points if p.config == config and p.load.concurrency == conc}


def report(run: Run, args: argparse.Namespace) -> dict[str, object]:
    configs = [
        c for c in ("b", "n", "a", "a_write", "a_guards", "c0", "c")
        if any(p.config == c for p in run.points)
    ]
    print()
    print(
        f"medians over {args.rounds} rounds (batch {args.batch}, {args.duration:g} s measured "
        f"per point after {args.warmup:g} s warm-up, client {args.client} x{args.processes})"
    )
    header = (
        f"{'configuration':<34}{'c':>3}{'req/s':>9}{'rows/s':>9}{'p50 ms':>8}{'p90 ms':>8}"
        f"{'p99 ms':>8}{'CPU us/call':>12}{'other':>7}  req/s per round"
    )
    print(header)
    print("-" * len(header))
    table = []
    for config in configs:
        for conc in args.concurrency:
            pts = list(_points(run, config, conc).values())
            if not pts:
                continue
            row = {
                "config": config,
                "concurrency": conc,
                "rps": _median([p.load.rps for p in pts]),
                "rows_per_s": _median([p.load.rows_per_s for p in pts]),
                "p50_ms": _median([p.load.p50_ms for p in pts]),
                "p90_ms": _median([p.load.p90_ms for p in pts]),
                "p99_ms": _median([p.load.p99_ms for p in pts]),
                "server_cpu_us_per_call": _median([p.server_cpu_us_per_call for p in pts]),
                "errors": sum(p.load.errors for p in pts),
                "other_cores": _median([p.other_cores for p in pts]),
            }
            table.append(row)
            rounds = " ".join(f"{p.load.rps:.0f}" for p in sorted(pts, key=lambda p: p.round))
            print(
                f"{LABELS[config]:<34}{conc:>3}{row['rps']:>9.0f}{row['rows_per_s']:>9.0f}"
                f"{row['p50_ms']:>8.3f}{row['p90_ms']:>8.3f}{row['p99_ms']:>8.3f}"
                f"{row['server_cpu_us_per_call']:>12.0f}{row['other_cores']:>7.2f}  {rounds}"
                + (f"  errors {row['errors']}" if row["errors"] else "")
            )

    def paired(x: str, y: str, conc: int, fn) -> tuple[float, list[float]]:
        xs, ys = _points(run, x, conc), _points(run, y, conc)
        values = [fn(xs[r].load, ys[r].load) for r in sorted(xs) if r in ys]
        return _median(values), values

    hi, lo = max(args.concurrency), min(args.concurrency)
    ratio = lambda p, q: p.rps / q.rps  # noqa: E731
    p99 = lambda p, q: p.p99_ms - q.p99_ms  # noqa: E731
    p50 = lambda p, q: p.p50_ms - q.p50_ms  # noqa: E731
    # The (b) is "the same with the ledger off (or the bare in-process server)":
    # its targets are checked against both, (n) and (b).
    checks = [
        (f"(a)/(n) throughput, c={hi}", "a", "n", hi, ratio, ">=", 0.85, "x"),
        (f"(a) p99 - (n) p99, c={hi}", "a", "n", hi, p99, "<=", 3.0, " ms"),
        (f"(a) p50 - (n) p50, c={lo}", "a", "n", lo, p50, "<=", 0.5, " ms"),
        (f"(a)/(b) throughput, c={hi}", "a", "b", hi, ratio, ">=", 0.85, "x"),
        (f"(a) p99 - (b) p99, c={hi}", "a", "b", hi, p99, "<=", 3.0, " ms"),
        (f"(a) p50 - (b) p50, c={lo}", "a", "b", lo, p50, "<=", 0.5, " ms"),
        (f"(n)/(b) throughput, c={hi}", "n", "b", hi, ratio, None, None, "x"),
        (f"(a')/(n) throughput, c={hi}", "a_write", "n", hi, ratio, None, None, "x"),
        (f"(a')/(b) throughput, c={hi}", "a_write", "b", hi, ratio, None, None, "x"),
        (f"(g)/(a) throughput, c={hi}", "a_guards", "a", hi, ratio, ">=", 0.90, "x"),
        (f"(a') p50 - (b) p50, c={lo}", "a_write", "b", lo, p50, None, None, " ms"),
        (f"(c)/(c0) throughput, c={hi}", "c", "c0", hi, ratio, None, None, "x"),
        (f"(c) p50 - (c0) p50, c={lo}", "c", "c0", lo, p50, None, None, " ms"),
        (f"(c) p99 - (c0) p99, c={hi}", "c", "c0", hi, p99, None, None, " ms"),
    ]
    print()
    print("ratios (median of per-round paired values)")
    ratios = []
    for name, x, y, conc, fn, op, target, unit in checks:
        value, values = paired(x, y, conc, fn)
        if not values:
            continue
        verdict = ""
        if target is not None:
            met = value >= target if op == ">=" else value <= target
            verdict = (
                f"target {op} {target:g}{unit.strip() and unit}: {'MET' if met else 'NOT MET'}"
            )
        per_round = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<30} {value:7.2f}{unit:<3}  [{per_round}]  {verdict}")
        ratios.append(
            {"name": name, "value": value, "per_round": values, "target": target, "op": op}
        )
    if run.sanity:
        bad = [s for s in run.sanity if not s.ok]
        print()
        print(
            f"ledger sanity: {len(run.sanity) - len(bad)}/{len(run.sanity)} sidecar runs had "
            "records == calls and OK records == acknowledged OK calls"
            + ("" if not bad else f"; MISMATCH in {[(s.config, s.round) for s in bad]}")
        )
    return {"table": table, "ratios": ratios}


# ── main ──────────────────────────────────────────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per point")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured s per point")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--configs",
        default="b,n,a,a_write,c",
        help="comma-separated subset of b,n,a,a_write,a_guards,c (c includes c0)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes (on 2 cores, 1 aio process loads the server "
        "hardest; more processes take CPU from the server)",
    )
    parser.add_argument("--client", choices=("aio", "sync"), default="aio")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.0,
        metavar="CORES",
        help="before each point wait until the idle machine uses at most this "
        "many cores (0: don't wait)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="longest wait for --quiet-below, in seconds"
    )
    parser.add_argument("--verify", action="store_true", help="also run `verify` on each ledger")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and ledgers")
    parser.add_argument("--json", type=Path, help="write every point and the summary here")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]

    info = machine()
    print("machine: " + info["uname"])
    print(f"  nproc {info['nproc']}, cpu {info['cpu']}, loadavg {info['loadavg']}")
    print(f"  mlwitness source: {info['source']}")
    print(
        f"  python {info['python']}, onnxruntime {info['onnxruntime']}, grpcio "
        f"{info['grpcio']}, duckdb {info['duckdb']}, tritonclient {info['tritonclient']}"
    )

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mlwitness-bench-"))
    subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "credit" / "build_model.py"),
            "--out-dir",
            str(work),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    model = work / "credit.onnx"
    print(f"model {model}, work dir {work}", flush=True)
    run = Run()
    with LoadPool(max(1, args.processes)) as pool:
        for rnd in range(args.rounds):
            order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
            for config in order:
                one_config(config, rnd, model, work, pool, args, run)
    summary = report(run, args)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    },
                    "points": [
                        {
                            **asdict(p.load),
                            "config": p.config,
                            "round": p.round,
                            "server_cpu_us_per_call": p.server_cpu_us_per_call,
                            "other_cores": p.other_cores,
                        }
                        for p in run.points
                    ],
                    "sanity": [asdict(s) for s in run.sanity],
                    **summary,
                },
                indent=1,
            )
        )
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    bad = [s for s in run.sanity if not s.ok]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
