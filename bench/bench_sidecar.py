"""The sidecar against what users would run without it, under tritonclient load.

    python bench/bench_sidecar.py [--rounds 3] [--duration 5] [--warmup 1.5] \\
        [--concurrency 1,8] [--batch 1] [--model-kind credit|wide100] \\
        [--configs b,k,m,a,p,c,c_write] [--upstream bare|kserve|mlserver] [--json out.json]

Configurations (every server a subprocess on free 127.0.0.1 ports, the model built fresh
into a temp dir: the demo model from examples/credit, or bench/wide_model.py's 100-feature
one):

    b        bench/bare_server.py: grpc.aio + onnxruntime in-process, no ledger: what the
             embedded sidecar is compared with first
    k        KServe's Python ModelServer, bench/kserve_server.py (.venv-kserve)
    m        Seldon MLServer, parallel workers 0 (.venv-upstream)
    n        bench/sidecar_noledger.py: mlwitness serve with the ledger off (appends discarded)
    a        mlwitness serve, embedded, --durability fsync (the default: durable ledger)
    a_write  mlwitness serve, embedded, --durability write (acked once in the OS)
    a_guards mlwitness serve, embedded, fsync, with a suggested guard file (observe mode)
    a_cp     mlwitness serve, embedded, fsync, checkpoints signed and published to a
             directory every 10 s (--signing-key, --checkpoint-dir); `a` has them unsigned
             and unpublished, the default
    a_nocp   mlwitness serve, embedded, fsync, --checkpoint-interval 0: no Merkle tree, no
             checkpoints (what a_cp is compared with: issue 15's 3 % at c=8)
    a_arch   mlwitness serve, embedded, fsync, --archive file://<a directory of its own>
             with --archive-interval 2: segments sealed and shipped while the load runs
             (compared with `a`: issue 17's 3 % at c=8)
    a_thread mlwitness serve, embedded, fsync, --table-builder thread: no table-builder
             child (less memory, more CPU in the serving process)
    p        bench/bare_proxy.py in front of an upstream: the bare proxy hop, what forwarding
             is compared with first
    c        mlwitness serve --upstream <an upstream> (forwarding, fsync); also measures
    c0       that upstream called directly, in the same slot, before c forwards to it
    c_write  mlwitness serve --upstream <an upstream> --durability write
    c_thread mlwitness serve --upstream <an upstream> --table-builder thread
    a_base, c_base
             a and c from another source tree (--baseline-src DIR: its src directory, put
             first on the sidecar's PYTHONPATH), for a before/after in one interleaved run

The forwarding configurations (p, c, c_write) each start their own upstream of the
`--upstream` kind (default: bench/bare_server.py, as in the issue; kserve or mlserver to
measure the hop in front of those). KServe and MLServer need `bench/setup_peers.sh` first.

Each round runs every configuration once (the order rotates per round), and within a
server's lifetime every concurrency level once. Figures are medians over rounds; the ratios
are medians of per-round paired ratios (a and b of the same round ran seconds apart). The
ratios a user reads first come first, each with its target: the embedded sidecar against
the bare server and against KServe, forwarding against the bare proxy hop.

After each sidecar run the sidecar gets SIGTERM (it drains and flushes), and the ledger is
opened read-only: its `records` count must equal the calls the load generator saw
acknowledged (and the OK count the OK answers). Server CPU per call comes from
/proc/PID/stat (all threads, and its descendant processes) over the run, divided by the
calls it answered. What a sidecar recorded is read from its ledger afterwards: the request
and response bytes of its records (payload) and what its files on disk (the DuckDB file,
its WAL and what is left of the journal) grew by from ready to clean exit, each per record,
times a point's req/s.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from load import Job, LoadPool, LoadResult  # noqa: E402
from machine import basics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BARE = REPO / "bench" / "bare_server.py"
PROXY = REPO / "bench" / "bare_proxy.py"
NOLEDGER = REPO / "bench" / "sidecar_noledger.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# In report order: the baselines users compare with first.
LABELS = {
    "b": "(b)  bare server, no ledger",
    "a": "(a)  sidecar embedded, fsync",
    "a_write": "(a') sidecar embedded, write",
    "a_guards": "(g)  sidecar fsync + guards, observe",
    "a_cp": "(a+) sidecar, checkpoints published",
    "a_nocp": "(a0) sidecar, checkpoints off",
    "a_arch": "(a~) sidecar, archive shipping",
    "a_thread": "(a^) sidecar, table builder thread",
    "a_base": "(A)  (a) from --baseline-src",
    "k": "(k)  KServe ModelServer",
    "m": "(m)  MLServer",
    "n": "(n)  sidecar, ledger off",
    "p": "(p)  bare proxy hop -> upstream",
    "c": "(c)  sidecar forwarding, fsync",
    "c_write": "(c') sidecar forwarding, write",
    "c_thread": "(c^) forwarding, table builder thread",
    "c_base": "(C)  (c) from --baseline-src",
    "c0": "(c0) upstream, called directly",
}
CONFIGS = tuple(c for c in LABELS if c != "c0")  # c0 comes with c
PEERS = {"k": "kserve", "m": "mlserver"}
EMBEDDED = ("a", "a_write", "a_guards", "a_cp", "a_nocp", "a_arch", "a_thread", "a_base")
FORWARDING = ("c", "c_write", "c_thread", "c_base")
LEDGERED = EMBEDDED + FORWARDING
BASELINE = ("a_base", "c_base")  # the sidecar of another source tree (--baseline-src)
THREAD_BUILDER = ["--table-builder", "thread"]


@dataclass(frozen=True)
class ModelKind:
    """A model the benchmark builds and serves: its file, served name and input columns."""

    name: str
    builder: tuple[str, ...]  # script (and its arguments) that writes it into --out-dir
    features: tuple[str, ...]


MODEL_KINDS = {
    "credit": ModelKind(
        "credit",
        ("examples/credit/build_model.py",),
        ("income", "debt_ratio", "fico", "age", "years_employed", "open_loans"),
    ),
    "wide100": ModelKind(
        "wide100", ("bench/wide_model.py",), tuple(f"f{i:03d}" for i in range(100))
    ),
}


def build_model(kind: ModelKind, work: Path) -> Path:
    """Build the model (and the train.csv its guard file is drafted from) into `work`."""
    subprocess.run(
        [sys.executable, str(REPO / kind.builder[0]), *kind.builder[1:], "--out-dir", str(work)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return work / f"{kind.name}.onnx"


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


def peer_versions(kinds: set[str]) -> dict[str, str]:
    return {kind: peers.version(kind) for kind in sorted(kinds)}


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
    """A server subprocess that prints a JSON ready line on stdout or, given its `port`
    (MLServer prints none), answers ServerReady and ModelReady(`model_name`) there."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        ready_timeout: float = 60,
        env: dict[str, str] | None = None,
        port: int | None = None,
        model_name: str = "",
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115  (closed in stop)
        stdout = subprocess.PIPE if port is None else self._log_file
        self.proc = subprocess.Popen(
            argv, stdout=stdout, stderr=self._log_file, cwd=REPO, env=env
        )
        _LIVE.add(self)
        if port is None:
            line = _readline(self.proc, ready_timeout)
            try:
                info = json.loads(line)
                assert info.get("event") == "ready"
            except Exception:
                self.stop(kill=True)
                raise RuntimeError(f"{name} did not start: {line!r}\n{self.tail()}") from None
            port = int(info["port"])
        else:
            problem = _poll_ready(self.proc, f"127.0.0.1:{port}", model_name, ready_timeout)
            if problem:
                self.stop(kill=True)
                raise RuntimeError(f"{name} did not start: {problem}\n{self.tail()}")
        self.port = port
        self.target = f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server and its descendant processes (the sidecar's table builder)."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def cpu_s(self) -> float:
        """CPU seconds of the server and its descendant processes, all threads."""
        return sum(_process_cpu_s(pid) for pid in self.pids())

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


def _poll_ready(proc: subprocess.Popen, target: str, model_name: str, timeout: float) -> str:
    """Poll ServerReady and ModelReady until both say yes: "" then, else why not."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    deadline = time.monotonic() + timeout
    last = "never answered"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with code {proc.returncode}"
            try:
                if client.is_server_ready(client_timeout=1.0) and client.is_model_ready(
                    model_name, client_timeout=1.0
                ):
                    return ""
                last = "server or model not ready"
            except Exception as exc:  # not listening yet
                last = f"{type(exc).__name__}: {exc}"[:300]
            time.sleep(0.25)
        return f"not ready after {timeout:g} s (last: {last})"
    finally:
        client.close()


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


def proxy(upstream: str, work: Path, tag: str) -> Server:
    return Server(
        tag,
        [sys.executable, str(PROXY), "--upstream", upstream, "--port", "0"],
        work / f"{tag}.log",
    )


def peer(kind: str, model: Path, work: Path, tag: str) -> Server:
    """A server of `kind` (bare, kserve, mlserver) serving `model` under its file stem."""
    if kind == "bare":
        return bare(model, work, tag)
    name = model.stem
    launch = (
        peers.kserve(model, name) if kind == "kserve" else peers.mlserver(model, name, work / tag)
    )
    return Server(
        tag, launch.argv, work / f"{tag}.log", ready_timeout=120, env=launch.env,
        port=launch.port, model_name=name,
    )


def guard_files(work: Path, model: Path, features: tuple[str, ...]) -> list[str]:
    """`--features/--guards/--baseline` for the guarded configuration: a baseline of the
    model's training set and the guard file `mlwitness guards suggest` drafts from it."""
    baseline, guards = work / "baseline.json", work / "guards.toml"
    if not guards.exists():
        cli = [sys.executable, "-m", "mlwitness"]
        subprocess.run([*cli, "baseline", str(work / "train.csv"), "--model",
                        str(model), "--label", "approved", "--out",
                        str(baseline)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*cli, "guards", "suggest", str(baseline), "--out", str(guards)],
                       check=True, stdout=subprocess.DEVNULL)
    return ["--features", ",".join(features), "--guards", str(guards), "--guard-mode", "observe"]


def checkpoint_flags(work: Path, tag: str) -> list[str]:
    """Checkpoints as a pod would run them: signed by a key made once, published to a
    directory of this run's own."""
    key = work / "signing.key"
    if not key.exists():
        subprocess.run([sys.executable, "-m", "mlwitness", "keygen", "--out", str(key)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    witness = work / f"{tag}.witness"
    witness.mkdir(exist_ok=True)
    return ["--signing-key", str(key), "--checkpoint-dir", str(witness)]


def archive_flags(work: Path, tag: str, root: Path | None = None) -> list[str]:
    """Shipping as a pod would, to a directory of this run's own, every 2 s so that several
    segments are sealed and uploaded while the load runs (the default is every 60 s). The
    directory is under `root` when given (another file system than the journal's, as object
    storage is), else in the work dir, on the journal's disk."""
    archive = (root or work) / f"{work.name}-{tag}.archive"
    archive.mkdir(exist_ok=True)
    return ["--archive", f"file://{archive}", "--archive-interval", "2"]


def sidecar(model: Path, work: Path, tag: str, durability: str, upstream: str = "",
            extra: list[str] | None = None, ledger_off: bool = False,
            src: Path | None = None) -> Server:
    """The sidecar, from this checkout or (`src`) from another source tree's `src`
    directory, put first on its PYTHONPATH (e.g. a `git worktree` of the commit before)."""
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
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(src), *filter(None, [os.environ.get("PYTHONPATH")])])}
    server = Server(tag, argv, work / f"{tag}.log", env=env)
    server.ledger = ledger  # type: ignore[attr-defined]
    server.ledger_bytes0 = ledger_disk_bytes(ledger)  # type: ignore[attr-defined]
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


def descendants(pid: int) -> list[int]:
    """Children, their children, and so on (a peer's launcher or workers, the sidecar's
    table builder)."""
    found: list[int] = []
    todo = _children(pid)
    while todo and len(found) < 1000:
        child = todo.pop()
        found.append(child)
        todo += _children(child)
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # minus idle and iowait


def ledger_counts(path: Path) -> tuple[int, int, int]:
    """Records, OK records, and the request + response bytes the records hold."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'OK'), "
            "coalesce(sum(octet_length(request) + octet_length(response)), 0) "
            "FROM entries WHERE kind = 'infer'"
        ).fetchone()
        assert row is not None
        total, ok, payload = row
    finally:
        con.close()
    return int(total), int(ok), int(payload)


def ledger_files(path: Path) -> list[Path]:
    """The ledger's files: DuckDB, its WAL, and the journal's segments."""
    journal = Path(str(path) + ".journal")
    segments = sorted(journal.iterdir()) if journal.is_dir() else []
    return [p for p in (path, Path(str(path) + ".wal"), *segments) if p.is_file()]


def ledger_disk_bytes(path: Path) -> int:
    total = 0
    for file in ledger_files(path):
        try:
            total += file.stat().st_size
        except OSError:  # a segment deleted since it was listed
            continue
    return total


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
    payload_bytes: int = 0  # request + response bytes in the ledger's records
    disk_bytes: int = 0  # what the ledger's files grew by from start to the clean exit
    shipped_records: int = 0  # a_arch: what the shipper logged at the clean exit
    shipper_cpu_s: float = 0.0

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
            args.kind.name,
            0,
            args.batch,
            args.duration,
            args.warmup,
            args.client,
            input_name="input",
            features=len(args.kind.features),
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


SHIPPED = re.compile(r"archive: shipped (\d+) records in \d+ segments, ([0-9.]+) s of CPU")


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
    total, ok, payload = ledger_counts(ledger)
    grown = ledger_disk_bytes(ledger) - server.ledger_bytes0  # type: ignore[attr-defined]
    sanity = Sanity(config, rnd, acked, calls, total, ok, code, "", payload, grown)
    shipped = SHIPPED.findall(server.tail())
    if shipped:
        sanity.shipped_records, sanity.shipper_cpu_s = int(shipped[-1][0]), float(shipped[-1][1])
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
    if sanity.shipped_records:
        per_call = [p.server_cpu_us_per_call for p in run.points
                    if (p.config, p.round) == (config, rnd)]
        per_record = sanity.shipper_cpu_s * 1e6 / sanity.shipped_records
        print(f"  round {rnd} {config:<8} shipper: {sanity.shipped_records} records, "
              f"{sanity.shipper_cpu_s:.3f} s CPU: {per_record:.1f} us a record"
              + (f" = {100 * per_record / per_call[-1]:.1f} % of the server's CPU a call"
                 if per_call else ""), flush=True)
    if not sanity.ok:
        print(server.tail(), flush=True)
    if not args.keep:
        for path in ledger_files(ledger):
            path.unlink(missing_ok=True)
        shutil.rmtree(str(ledger) + ".journal", ignore_errors=True)


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
    if config in ("b", "n", "k", "m"):
        if config == "n":
            server = sidecar(model, work, tag, "fsync", ledger_off=True)
        else:
            server = peer(PEERS.get(config, "bare"), model, work, tag)
        try:
            measure(pool, server, config, rnd, args, run)
        finally:
            server.stop()
    elif config in EMBEDDED:
        extra = (guard_files(work, model, args.kind.features) if config == "a_guards" else
                 checkpoint_flags(work, tag) if config == "a_cp" else
                 ["--checkpoint-interval", "0"] if config == "a_nocp" else
                 archive_flags(work, tag, args.archive_root) if config == "a_arch" else
                 THREAD_BUILDER if config == "a_thread" else None)
        server = sidecar(model, work, tag, "write" if config == "a_write" else "fsync",
                         extra=extra, src=args.baseline_src if config == "a_base" else None)
        try:
            acked, calls = measure(pool, server, config, rnd, args, run)
        except BaseException:
            server.stop(kill=True)
            raise
        check_ledger(server, config, rnd, acked, calls, args, run)
    elif config in ("p", *FORWARDING):
        upstream = peer(args.upstream, model, work, f"{config}-up-r{rnd}")
        try:
            if config == "c":
                measure(pool, upstream, "c0", rnd, args, run)
            forward(config, rnd, model, work, pool, args, run, upstream)
        finally:
            upstream.stop()
    else:
        raise ValueError(f"unknown configuration {config!r}")


def forward(
    config: str,
    rnd: int,
    model: Path,
    work: Path,
    pool: LoadPool,
    args: argparse.Namespace,
    run: Run,
    upstream: Server,
) -> None:
    """One forwarding configuration in front of `upstream`: the bare proxy hop (p) or the
    sidecar (c, c_write)."""
    tag = f"{config}-r{rnd}"
    if config == "p":
        server = proxy(upstream.target, work, tag)
        try:
            measure(pool, server, config, rnd, args, run, (upstream,))
        finally:
            server.stop()
        return
    durability = "write" if config == "c_write" else "fsync"
    server = sidecar(model, work, tag, durability, upstream=upstream.target,
                     extra=THREAD_BUILDER if config == "c_thread" else None,
                     src=args.baseline_src if config == "c_base" else None)
    try:
        acked, calls = measure(pool, server, config, rnd, args, run, (upstream,))
    except BaseException:
        server.stop(kill=True)
        raise
    check_ledger(server, config, rnd, acked, calls, args, run)


# ── reporting ─────────────────────────────────────────────────────────────────────────


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _points(run: Run, config: str, conc: int) -> dict[int, Point]:
    return {p.round: p for p in run.points if p.config == config and p.load.concurrency == conc}


def _ratio(p: LoadResult, q: LoadResult) -> float:
    return p.rps / q.rps


def _p99(p: LoadResult, q: LoadResult) -> float:
    return p.p99_ms - q.p99_ms


def _p50(p: LoadResult, q: LoadResult) -> float:
    return p.p50_ms - q.p50_ms


@dataclass(frozen=True)
class Check:
    """A paired comparison of configuration x with y at one concurrency, and its target."""

    name: str
    x: str
    y: str
    concurrency: int
    fn: Callable[[LoadResult, LoadResult], float]
    op: str | None = None  # ">=", ">" or "<=": None for a figure without a target
    target: float | None = None
    unit: str = "x"

    def met(self, value: float) -> bool:
        assert self.target is not None
        if self.op == ">=":
            return value >= self.target
        if self.op == ">":
            return value > self.target
        return value <= self.target


def checks(hi: int, lo: int) -> dict[str, list[Check]]:
    """The comparisons reported, those users read first (issue 16's targets) first."""
    ms = " ms"
    return {
        "what users compare with": [
            Check(f"(a)/(b) throughput, c={hi}", "a", "b", hi, _ratio, ">=", 0.85),
            Check(f"(a) p99 - (b) p99, c={hi}", "a", "b", hi, _p99, "<=", 2.0, ms),
            Check(f"(a)/(k) throughput, c={lo}", "a", "k", lo, _ratio, ">", 1.0),
            Check(f"(a)/(k) throughput, c={hi}", "a", "k", hi, _ratio, ">", 1.0),
            Check(f"(a) p50 - (k) p50, c={lo}", "a", "k", lo, _p50, unit=ms),
            Check(f"(a)/(m) throughput, c={lo}", "a", "m", lo, _ratio),
            Check(f"(a)/(m) throughput, c={hi}", "a", "m", hi, _ratio),
            Check(f"(k)/(b) throughput, c={hi}", "k", "b", hi, _ratio),
            Check(f"(m)/(b) throughput, c={hi}", "m", "b", hi, _ratio),
            Check(f"(c)/(p) throughput, c={hi}", "c", "p", hi, _ratio, ">=", 0.90),
            Check(f"(c) p99 - (p) p99, c={hi}", "c", "p", hi, _p99, "<=", 2.0, ms),
            Check(f"(c) p50 - (p) p50, c={lo}", "c", "p", lo, _p50, "<=", 0.3, ms),
            Check(f"(c')/(p) throughput, c={hi}", "c_write", "p", hi, _ratio),
            Check(f"(c') p99 - (p) p99, c={hi}", "c_write", "p", hi, _p99, unit=ms),
            Check(f"(c') p50 - (p) p50, c={lo}", "c_write", "p", lo, _p50, unit=ms),
        ],
        "what the ledger costs": [
            # The earlier issue's (b) is "the same with the ledger off (or the bare
            # in-process server)": its targets are checked against both, (n) and (b).
            Check(f"(a)/(n) throughput, c={hi}", "a", "n", hi, _ratio, ">=", 0.85),
            Check(f"(a) p99 - (n) p99, c={hi}", "a", "n", hi, _p99, "<=", 3.0, ms),
            Check(f"(a) p50 - (n) p50, c={lo}", "a", "n", lo, _p50, "<=", 0.5, ms),
            Check(f"(a) p50 - (b) p50, c={lo}", "a", "b", lo, _p50, "<=", 0.5, ms),
            Check(f"(n)/(b) throughput, c={hi}", "n", "b", hi, _ratio),
            Check(f"(a')/(n) throughput, c={hi}", "a_write", "n", hi, _ratio),
            Check(f"(a')/(b) throughput, c={hi}", "a_write", "b", hi, _ratio),
            Check(f"(g)/(a) throughput, c={hi}", "a_guards", "a", hi, _ratio, ">=", 0.90),
            Check(f"(a+)/(a0) throughput, c={hi}", "a_cp", "a_nocp", hi, _ratio, ">=", 0.97),
            Check(f"(a)/(a0) throughput, c={hi}", "a", "a_nocp", hi, _ratio, ">=", 0.97),
            Check(f"(a+) p99 - (a0) p99, c={hi}", "a_cp", "a_nocp", hi, _p99, unit=ms),
            Check(f"(a~)/(a) throughput, c={hi}", "a_arch", "a", hi, _ratio, ">=", 0.97),
            Check(f"(a~) p99 - (a) p99, c={hi}", "a_arch", "a", hi, _p99, unit=ms),
            Check(f"(a^)/(a) throughput, c={hi}", "a_thread", "a", hi, _ratio),
            Check(f"(a^)/(b) throughput, c={hi}", "a_thread", "b", hi, _ratio),
            Check(f"(a^) p99 - (a) p99, c={hi}", "a_thread", "a", hi, _p99, unit=ms),
            Check(f"(c^)/(c) throughput, c={hi}", "c_thread", "c", hi, _ratio),
            Check(f"(c^)/(p) throughput, c={hi}", "c_thread", "p", hi, _ratio),
            Check(f"(a') p50 - (b) p50, c={lo}", "a_write", "b", lo, _p50, unit=ms),
            Check(f"(c)/(c0) throughput, c={hi}", "c", "c0", hi, _ratio),
            Check(f"(c) p50 - (c0) p50, c={lo}", "c", "c0", lo, _p50, unit=ms),
            Check(f"(c) p99 - (c0) p99, c={hi}", "c", "c0", hi, _p99, unit=ms),
            Check(f"(p)/(c0) throughput, c={hi}", "p", "c0", hi, _ratio),
        ],
        "against --baseline-src": [
            Check(f"(a)/(A) throughput, c={hi}", "a", "a_base", hi, _ratio),
            Check(f"(a)/(A) throughput, c={lo}", "a", "a_base", lo, _ratio),
            Check(f"(a) p99 - (A) p99, c={hi}", "a", "a_base", hi, _p99, unit=ms),
            Check(f"(c)/(C) throughput, c={hi}", "c", "c_base", hi, _ratio),
            Check(f"(c)/(C) throughput, c={lo}", "c", "c_base", lo, _ratio),
            Check(f"(c) p99 - (C) p99, c={hi}", "c", "c_base", hi, _p99, unit=ms),
            Check(f"(c) p50 - (C) p50, c={lo}", "c", "c_base", lo, _p50, unit=ms),
        ],
    }


def report(run: Run, args: argparse.Namespace) -> dict[str, object]:
    configs = [c for c in LABELS if any(p.config == c for p in run.points)]
    print()
    print(
        f"medians over {args.rounds} rounds (model {args.kind.name}, {len(args.kind.features)} "
        f"features, batch {args.batch}, {args.duration:g} s measured per point after "
        f"{args.warmup:g} s warm-up, client {args.client} x{args.processes}"
        + (f", forwarding to {args.upstream}"
           if {"p", *FORWARDING} & set(configs) else "")
        + ")"
    )
    header = (
        f"{'configuration':<38}{'c':>3}{'req/s':>9}{'rows/s':>9}{'p50 ms':>8}{'p90 ms':>8}"
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
                f"{LABELS[config]:<38}{conc:>3}{row['rps']:>9.0f}{row['rows_per_s']:>9.0f}"
                f"{row['p50_ms']:>8.3f}{row['p90_ms']:>8.3f}{row['p99_ms']:>8.3f}"
                f"{row['server_cpu_us_per_call']:>12.0f}{row['other_cores']:>7.2f}  {rounds}"
                + (f"  errors {row['errors']}" if row["errors"] else "")
            )
    volume = report_volume(run, args)
    ratios = []
    for group, group_checks in checks(max(args.concurrency), min(args.concurrency)).items():
        lines = []
        for check in dict.fromkeys(group_checks):  # with one level, c=lo is c=hi
            xs = _points(run, check.x, check.concurrency)
            ys = _points(run, check.y, check.concurrency)
            values = [check.fn(xs[r].load, ys[r].load) for r in sorted(xs) if r in ys]
            if not values:
                continue
            value = _median(values)
            verdict = ""
            if check.target is not None:
                unit = check.unit.strip() and check.unit  # "x" or " ms"
                verdict = (
                    f"target {check.op} {check.target:g}{unit}: "
                    f"{'MET' if check.met(value) else 'NOT MET'}"
                )
            per_round = ", ".join(f"{v:.2f}" for v in values)
            lines.append(
                f"  {check.name:<30} {value:7.2f}{check.unit:<3}  [{per_round}]  {verdict}"
            )
            ratios.append(
                {"group": group, "name": check.name, "value": value, "per_round": values,
                 "target": check.target, "op": check.op,
                 "met": None if check.target is None else check.met(value)}
            )
        if lines:
            print()
            print(f"{group} (median of per-round paired values)")
            print("\n".join(lines))
    if run.sanity:
        bad = [s for s in run.sanity if not s.ok]
        print()
        print(
            f"ledger sanity: {len(run.sanity) - len(bad)}/{len(run.sanity)} sidecar runs had "
            "records == calls and OK records == acknowledged OK calls"
            + ("" if not bad else f"; MISMATCH in {[(s.config, s.round) for s in bad]}")
        )
    shipping = report_shipping(run)
    return {"table": table, "ratios": ratios, "volume": volume, "shipping": shipping}


def report_shipping(run: Run) -> dict[str, float]:
    """What the archive shipper's thread cost (a_arch), from the CPU time it logs at exit:
    a direct measure where the throughput ratio is within the machine's noise."""
    shipped = [s for s in run.sanity if s.shipped_records]
    if not shipped:
        return {}
    cpu_call = {(p.config, p.round): p.server_cpu_us_per_call for p in run.points}
    per_record = [s.shipper_cpu_s * 1e6 / s.shipped_records for s in shipped]
    share = [r / cpu_call[(s.config, s.round)] for r, s in zip(per_record, shipped, strict=True)
             if cpu_call.get((s.config, s.round))]
    out = {"shipper_us_per_record": statistics.median(per_record),
           "share_of_server_cpu": statistics.median(share) if share else float("nan")}
    print(f"archive shipping (a~): the shipper thread's CPU {out['shipper_us_per_record']:.1f} us "
          f"a record, {100 * out['share_of_server_cpu']:.1f} % of the server's CPU a call "
          f"(medians of {len(shipped)} rounds; target <= 3 %)")
    return out


def report_volume(run: Run, args: argparse.Namespace) -> list[dict[str, object]]:
    """What each sidecar recorded, per point: rows/s, and bytes/s as the point's req/s times
    the bytes per record its ledger holds (request + response payload; files on disk)."""
    sanity = {(s.config, s.round): s for s in run.sanity if s.records}
    if not sanity:
        return []
    print()
    print("recorded (bytes per record from each sidecar's ledger after its run, x req/s; "
          "disk = growth of the ledger's files)")
    header = (
        f"{'configuration':<38}{'c':>3}{'rows/s':>9}{'payload B/rec':>15}{'disk B/rec':>12}"
        f"{'payload MB/s':>14}{'disk MB/s':>11}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for config in LEDGERED:
        for conc in args.concurrency:
            pairs = [
                (p, sanity[(config, r)]) for r, p in sorted(_points(run, config, conc).items())
                if (config, r) in sanity
            ]
            if not pairs:
                continue
            row = {
                "config": config,
                "concurrency": conc,
                "rows_per_s": _median([p.load.rows_per_s for p, _ in pairs]),
                "payload_bytes_per_record": _median(
                    [s.payload_bytes / s.records for _, s in pairs]
                ),
                "disk_bytes_per_record": _median([s.disk_bytes / s.records for _, s in pairs]),
                "payload_bytes_per_s": _median(
                    [p.load.rps * s.payload_bytes / s.records for p, s in pairs]
                ),
                "disk_bytes_per_s": _median(
                    [p.load.rps * s.disk_bytes / s.records for p, s in pairs]
                ),
            }
            rows.append(row)
            print(
                f"{LABELS[config]:<38}{conc:>3}{row['rows_per_s']:>9.0f}"
                f"{row['payload_bytes_per_record']:>15.0f}{row['disk_bytes_per_record']:>12.0f}"
                f"{row['payload_bytes_per_s'] / 1e6:>14.2f}{row['disk_bytes_per_s'] / 1e6:>11.2f}"
            )
    return rows


# ── main ──────────────────────────────────────────────────────────────────────────────

DEFAULT_CONFIGS = "b,k,m,a,a_write,n,p,c,c_write"


def choose_configs(args: argparse.Namespace) -> list[str]:
    """The configurations to run. KServe and MLServer need their venvs: missing ones are
    skipped from the default set (with a note) and an error when asked for by name."""
    explicit = args.configs is not None
    configs = [c.strip() for c in (args.configs or DEFAULT_CONFIGS).split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if set(BASELINE) & set(configs) and args.baseline_src is None:
        raise SystemExit("configurations a_base and c_base need --baseline-src")
    if args.upstream != "bare" and {"p", *FORWARDING} & set(configs):
        problem = peers.missing(args.upstream)
        if problem:
            raise SystemExit(f"--upstream {args.upstream}: {problem}")
    chosen = []
    for config in configs:
        problem = peers.missing(PEERS[config]) if config in PEERS else ""
        if problem and explicit:
            raise SystemExit(f"configuration {config}: {problem}")
        if problem:
            print(f"skipping configuration {config}: {problem}")
            continue
        chosen.append(config)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per point")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured s per point")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--batch", type=int, default=1, help="rows per call")
    parser.add_argument(
        "--model-kind",
        choices=sorted(MODEL_KINDS),
        default="credit",
        help="credit: the demo model (6 features); wide100: bench/wide_model.py (100 features)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated subset of {','.join(CONFIGS)} (c includes c0; default "
        f"{DEFAULT_CONFIGS}, less k and m when their venvs are missing)",
    )
    parser.add_argument(
        "--upstream",
        choices=("bare", "kserve", "mlserver"),
        default="bare",
        help="what the forwarding configurations p, c, c_write forward to",
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
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="the src directory of another checkout (e.g. `git worktree add /tmp/base main`: "
        "/tmp/base/src), whose sidecar configurations a_base and c_base run, interleaved "
        "with this one's",
    )
    parser.add_argument(
        "--archive-root",
        type=Path,
        metavar="DIR",
        help="where a_arch's directory archive goes (default: the work dir, on the journal's "
        "disk; a tmpfs such as /dev/shm stands in for object storage, whose disk is not the "
        "pod's)",
    )
    parser.add_argument("--verify", action="store_true", help="also run `verify` on each ledger")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and ledgers")
    parser.add_argument("--json", type=Path, help="write every point and the summary here")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.kind = MODEL_KINDS[args.model_kind]
    configs = choose_configs(args)

    info = machine()
    kinds = {PEERS[c] for c in configs if c in PEERS}
    if {"p", *FORWARDING} & set(configs) and args.upstream != "bare":
        kinds.add(args.upstream)
    info.update(peer_versions(kinds))
    print("machine: " + info["uname"])
    print(f"  nproc {info['nproc']}, cpu {info['cpu']}, loadavg {info['loadavg']}")
    print(f"  mlwitness source: {info['source']}")
    print(
        f"  python {info['python']}, onnxruntime {info['onnxruntime']}, grpcio "
        f"{info['grpcio']}, duckdb {info['duckdb']}, tritonclient {info['tritonclient']}"
        + "".join(f", {kind} {info[kind]}" for kind in sorted(kinds))
    )

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mlwitness-bench-"))
    model = build_model(args.kind, work)
    print(f"model {model} (batch {args.batch}), work dir {work}", flush=True)
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
                        k: (str(v) if isinstance(v, Path) else v)
                        for k, v in vars(args).items()
                        if k != "kind"
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
        shutil.rmtree(work, ignore_errors=True)
        if args.archive_root:
            for archive in args.archive_root.glob(f"{work.name}-*.archive"):
                shutil.rmtree(archive, ignore_errors=True)
    bad = [s for s in run.sanity if not s.ok]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
