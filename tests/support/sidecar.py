"""Run a real mlwitness sidecar for tests: in a background thread, or as a subprocess.

`start_sidecar(settings)` runs `mlwitness.server.sidecar.Sidecar` on its own asyncio loop
in a thread, listening on 127.0.0.1 port 0, and returns a `RunningSidecar` (bound address,
ledger path, `sync()`, `query()`, `stop()`). `start_serve_process(...)` runs
`mlwitness serve` as a child process on explicit free ports and waits for the JSON
"ready" line it prints on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mlwitness.ledger import journal
from mlwitness.ledger.record import chain_hash, encode
from mlwitness.ledger.verify import RECORD_FIELDS, records_from
from mlwitness.server.sidecar import Sidecar
from mlwitness.settings import Settings

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago (held together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    return free_ports(1)[0]


def read_ledger(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Run a query on a closed ledger file, read-only."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


# The stored fields a rewrite may change (format, salt and the erasure's stay as they are)
_RECORD_FIELDS = ("kind", "request_id", "received_us", "responded_us", "model_name",
                  "model_version", "model_sha256", "env_id", "peer", "metadata", "status",
                  "message", "violations", "detail", "request", "response", "seq", "prev_hash",
                  "hash")


def rewrite_record(path: Path, seq: int, **changes: Any) -> None:
    """Change record `seq` and recompute its hash and every later one, as someone with
    write access who knows the chain would: the result is a whole, valid chain."""
    con = duckdb.connect(str(path))
    try:
        records = records_from(con.sql(
            f"SELECT {', '.join(RECORD_FIELDS)} FROM entries WHERE seq >= {int(seq)} "
            "ORDER BY seq").to_arrow_table())
        prev = records[0].prev_hash
        for record in records:
            if record.seq == seq:
                for name, value in changes.items():
                    setattr(record, name, value)
            record.prev_hash, record.hash = prev, chain_hash(prev, encode(record))
            prev = record.hash
            con.execute(f"UPDATE entries SET {', '.join(f'{n} = ?' for n in _RECORD_FIELDS)} "
                        "WHERE seq = ?", [*(getattr(record, n) for n in _RECORD_FIELDS),
                                          record.seq])
    finally:
        con.close()


@dataclass
class RunningSidecar:
    """A sidecar serving in a background thread of this process."""

    sidecar: Sidecar
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stopped: bool = False

    @property
    def settings(self) -> Settings:
        return self.sidecar.settings

    @property
    def port(self) -> int:
        return self.sidecar.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sidecar.port}"

    @property
    def ledger_path(self) -> Path:
        return Path(self.settings.ledger)

    @property
    def journal_dir(self) -> Path:
        return journal.journal_dir(self.ledger_path)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = STOP_TIMEOUT_S) -> Any:
        """Run a coroutine on the sidecar's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self) -> int:
        """Wait until every acknowledged record is in DuckDB; return the last seq."""
        assert self.sidecar.ledger is not None
        return self.sidecar.ledger.sync(timeout=10.0)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Query the live ledger (after `sync`) through the writer's read cursor."""
        self.sync()
        assert self.sidecar.ledger is not None
        cursor = self.sidecar.ledger.cursor()
        try:
            return cursor.execute(sql, list(params)).fetchall()
        finally:
            cursor.close()

    def stop(self) -> None:
        """Drain, flush and close the ledger, stop the loop. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.run(self.sidecar.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_TIMEOUT_S)
            assert not self.thread.is_alive(), "sidecar loop thread did not stop"
            self.loop.close()


def start_sidecar(settings: Settings, sidecar_class: type[Sidecar] = Sidecar) -> RunningSidecar:
    """Start `sidecar_class(settings)` (port 0 unless set) in a thread; return once serving."""
    sidecar = sidecar_class(settings)
    loop = asyncio.new_event_loop()
    started: dict[str, BaseException | None] = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(sidecar.start())
        except BaseException as exc:  # handed to the starting thread
            started["error"] = exc
            ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(sidecar.stop())
            return
        started["error"] = None
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="sidecar-loop", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT_S):
        raise RuntimeError(f"sidecar did not start within {START_TIMEOUT_S} s")
    error = started["error"]
    if error is not None:
        thread.join(STOP_TIMEOUT_S)
        loop.close()
        raise error
    return RunningSidecar(sidecar, loop, thread)


def start_with_audit_port(values: dict[str, Any]) -> RunningSidecar:
    """`start_sidecar(Settings(**values))` with the audit server on a port that was free a
    moment ago (audit_port = 0 disables it), retrying with another port if someone took it
    in between."""
    error: BaseException | None = None
    for _ in range(5):
        (audit_port,) = free_ports(1)
        try:
            return start_sidecar(Settings(**{**values, "audit_port": audit_port}))
        except RuntimeError as exc:  # grpc: the port was taken between probe and bind
            error = exc
    raise RuntimeError(f"could not bind an audit port: {error}")


@dataclass
class Served:
    """A running sidecar and the addresses of its inference and audit ports."""

    running: RunningSidecar

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def audit_address(self) -> str:
        return f"127.0.0.1:{self.running.sidecar.audit_port}"

    @property
    def ledger_path(self) -> Path:
        return self.running.ledger_path

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.running.query(sql, params)

    def stop(self) -> None:
        self.running.stop()


# ── `mlwitness serve` as a subprocess ──────────────────────────────────────────────────


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    port: int
    ledger_path: Path
    stderr_path: Path
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def journal_dir(self) -> Path:
        return journal.journal_dir(self.ledger_path)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-8000:]

    def kill(self) -> int:
        """SIGKILL and reap; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.process.poll() is None:
            self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_serve_process(
    model: Path,
    ledger: Path,
    *extra: str,
    log_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> ServeProcess:
    """Run `mlwitness serve` on a free port; return once it printed its "ready" line."""
    (port,) = free_ports(1)
    log_dir = Path(log_dir or ledger.parent)
    stderr_path = log_dir / f"serve-{port}.stderr"
    args = [
        *mlwitness_command(),
        "serve",
        "--model",
        str(model),
        "--ledger",
        str(ledger),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--audit-port",
        "0",
        "--metrics-port",
        "0",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
        )
    serve = ServeProcess(process, port, ledger, stderr_path)
    try:
        serve.ready = _read_ready_line(process, timeout)
    except BaseException:
        serve.close()
        raise
    if serve.ready.get("port") != port:
        serve.close()
        raise RuntimeError(f"serve reported {serve.ready}, expected port {port}")
    return serve


def _read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"mlwitness serve printed no ready line in {timeout} s")
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"mlwitness serve exited ({process.wait(5)}) before ready")
            buffer += chunk
    line = buffer.split(b"\n", 1)[0]
    data = json.loads(line)
    if data.get("event") != "ready":
        raise RuntimeError(f"unexpected first line from mlwitness serve: {line!r}")
    return data


def mlwitness_command() -> list[str]:
    """The installed `mlwitness` console script (next to this Python), else `-m mlwitness`."""
    script = Path(sys.executable).with_name("mlwitness")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlwitness"]


def run_verify(ledger: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`mlwitness verify --ledger LEDGER [args]` as a subprocess."""
    return subprocess.run(
        [*mlwitness_command(), "verify", "--ledger", str(ledger), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ── raw calls: exact bytes in, exact bytes out ─────────────────────────────────────────

INFERENCE_SERVICE = "/inference.GRPCInferenceService/"


def raw_rpc(
    channel: Any,
    method: str,
    payload: bytes,
    timeout: float = 10.0,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> bytes:
    """Call an inference RPC with these exact request bytes; return the response bytes."""
    call = channel.unary_unary(INFERENCE_SERVICE + method)  # no (de)serializers: bytes
    return call(payload, timeout=timeout, metadata=metadata)
