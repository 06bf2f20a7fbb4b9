"""The table builder: a low-priority child process that turns journaled records into the
Arrow table the ledger writer inserts into DuckDB.

    sidecar (serving)                            child: python -m mlwitness.ledger.tabler
    loader thread ── "FIRST LAST\\n" ──────────►  read seqs FIRST..LAST from the journal,
                  ◄── b"T" ‖ u64 n ‖ Arrow IPC ──  decode their tensors, tabulate them
                  INSERT INTO entries …

Why a process: building the `entries` rows of a call (decoding its tensors again, the row
maps, the Arrow columns) is Python work that holds the GIL, and the serving process kept
every call's record alive until its load. At 8 concurrent callers that cost the sidecar
about a tenth of its throughput. The child reads the records back from the journal (they
are durable there before anyone is answered), so the serving process keeps nothing, and
it runs at the lowest CPU priority (SCHED_IDLE, and TABLER_NICE): it uses what the
serving path leaves idle.

The child answers requests strictly in order; any failure (it died, hung past the
timeout, or answered something else) raises TablerFailed, and the writer builds that range
itself from the journal, in-process, as it always can. Nothing here decides what is loaded
or when: the loader thread does.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import importlib.abc
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from mlwitness.errors import DataLoss
from mlwitness.ledger import journal as journal_mod
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator, TensorDecoder, record_table

log = logging.getLogger(__name__)

TABLER_NICE = 10  # added to the child's nice value: it yields the CPU to serving
# The allocators of the serving processes (this child here, the server in
# server/lifecycle.return_freed_memory), unless the environment names others. The child
# frees every table once sent, but pyarrow's default pool (mimalloc) kept what it had
# freed: it held 84-87 MiB PSS at 8 callers, 72-80 with these (bench/bench_memory.py).
ALLOCATORS = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"}
TIMEOUT_S = 10.0  # a table not answered by then: the loader builds it itself
RESTART_AFTER_S = 10.0
GIVE_UP_AFTER = 3  # failures in a row (without a table between): no more restarts
_REPLY = struct.Struct(">cQ")  # kind (T: table, E: error), length of what follows


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        if os.confstr("CS_GNU_LIBC_VERSION"):
            return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    return None


malloc_trim = _glibc_malloc_trim()  # None where the C library is not glibc


def trim_heap() -> None:
    """Have glibc give back to the system the free pages inside its heaps (malloc_trim).
    Memory a process frees stays resident otherwise, unless it lies at a heap's top: the
    sidecar held about 5 MiB more PSS without this (bench/HISTORY.md, 2026-12-08). It takes
    0.5-2 ms at the sidecar's size, holding each arena's lock meanwhile (a thread that
    allocates then waits), so it runs rarely or off the serving process: in the loader once
    every SQUEEZE_INTERVAL_S, and in the table builder after each table it sends. Nothing
    where the C library is not glibc."""
    if malloc_trim is not None:
        malloc_trim(0)


class TablerFailed(Exception):
    """The child did not deliver a table; the caller builds it in-process instead."""


def decoder_path(decoder: Callable[..., Any]) -> str:
    """`module:function` of a module-level function, or ValueError when the child could
    not import it under that name."""
    module = getattr(decoder, "__module__", None)
    path = f"{module}:{getattr(decoder, '__qualname__', decoder)}"
    try:
        found = None if module in (None, "__main__") else _import(path)
    except (ImportError, AttributeError):
        found = None
    if found is not decoder:
        raise ValueError(f"the record decoder {path} cannot be imported by a child process")
    return path


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


class JournalTail:
    """Reads records by seq from a live journal, resuming where the last read stopped.
    Only records already written (durable, or in `write` mode written) may be asked for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path: Path | None = None
        self._offset = 0  # where the next unread frame of self._path starts
        self._next = 0  # the seq of that frame

    def records(self, first: int, last: int) -> list[Record]:
        if self._path is None or first != self._next or not self._path.exists():
            self._seek(first)
        out: list[Record] = []
        while True:
            assert self._path is not None
            with contextlib.suppress(FileNotFoundError), open(self._path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
                start = self._offset
                for record, _batch, end in journal_mod.frames(data, 0, self._path, base=start,
                                                              from_seq=first):
                    if record.seq != self._next:
                        raise DataLoss(f"journal segment {self._path} holds seq {record.seq} "
                                       f"where seq {self._next} was expected")
                    self._offset, self._next = start + end, self._next + 1
                    out.append(record)
                    if record.seq == last:
                        return out
            following = self.directory / f"{self._next:020d}{journal_mod.SUFFIX}"
            if following == self._path or not following.exists():
                raise DataLoss(f"the journal in {self.directory} has no seq {self._next} "
                               f"(records {first}-{last} were asked for)")
            self._path, self._offset = following, journal_mod.HEADER_SIZE

    def _seek(self, first: int) -> None:
        holding = [p for p in journal_mod.segment_paths(self.directory) if int(p.stem) <= first]
        if not holding:
            raise DataLoss(f"the journal in {self.directory} has no segment holding seq {first}")
        self._path, self._offset = holding[-1], journal_mod.HEADER_SIZE
        self._next = first  # the frames before it are passed over


# ── the child ────────────────────────────────────────────────────────────────────────


def _serve(journal: Path, tabulator: Tabulator, decoder: TensorDecoder) -> None:
    tail = JournalTail(journal)
    for line in sys.stdin.buffer:
        _answer(line, tail, tabulator, decoder, sys.stdout.buffer)
        trim_heap()  # the table and the records it was built from are freed by now


def _answer(line: bytes, tail: JournalTail, tabulator: Tabulator, decoder: TensorDecoder,
            replies: Any) -> None:
    try:
        first, last = (int(part) for part in line.split())
        table = record_table(tail.records(first, last), tabulator, decoder)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        body = sink.getvalue()
        replies.write(_REPLY.pack(b"T", body.size))
        replies.write(memoryview(body))
    except Exception as exc:  # reported to the parent, which builds the table itself
        message = f"{type(exc).__name__}: {exc}".encode()
        replies.write(_REPLY.pack(b"E", len(message)))
        replies.write(message)
    replies.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlwitness.ledger.tabler")
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--decoder", required=True, help="module:function")
    parser.add_argument("--feature-names", default="{}", help="JSON: tensor -> column names")
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: the sidecar drains and then
    # closes this child's stdin, which is how it stops (also if the sidecar is killed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _lower_priority()
    keep_pandas_out()
    names = {k: tuple(v) for k, v in json.loads(args.feature_names).items()}
    try:
        _serve(args.journal, Tabulator(names), _import(args.decoder))
    except BrokenPipeError:  # the sidecar is gone (killed): nobody to answer
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is kept out of mlwitness's serving processes",
                                      name=name)
        return None


def keep_pandas_out() -> None:
    """Make `import pandas` fail in this process, as where pandas is not installed.
    pyarrow imports pandas, when it is installed, on calls that never use it (`pa.array`,
    `Table.append_column`, `Array.to_numpy`): ~0.3 s of CPU on the first such call and
    ~50 MiB in each serving process of an image that has pandas for other reasons.
    mlwitness does not depend on pandas, so its serving processes (the sidecar, the audit
    server, this table builder) run as they do without it. For entry points only: a test
    process may need pandas."""
    if not any(isinstance(finder, _NoPandas) for finder in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


def _lower_priority() -> None:
    """Run only on CPU that serving leaves idle: Linux's SCHED_IDLE policy where there is
    one (at 8 callers, 3 % more calls/s than nice +10 alone), and nice +10 besides. Should
    the machine be saturated for long, the writer notices (the child falls behind or times
    out) and builds rows itself."""
    with contextlib.suppress(OSError):
        os.nice(TABLER_NICE)
    if hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


# ── the parent's side ────────────────────────────────────────────────────────────────


class Tabler:
    """The loader thread's handle on the child. Not thread-safe: one loader uses it."""

    def __init__(self, journal: Path, decoder: str, feature_names: Mapping[str, Sequence[str]],
                 *, timeout_s: float = TIMEOUT_S, restart_after_s: float = RESTART_AFTER_S
                 ) -> None:
        # -P: the working directory must not shadow the sidecar's own modules
        self.command = [
            sys.executable, "-P", "-m", "mlwitness.ledger.tabler", "--journal", str(journal),
            "--decoder", decoder,
            "--feature-names", json.dumps({k: list(v) for k, v in feature_names.items()}),
        ]
        self.timeout_s = timeout_s
        self.restart_after_s = restart_after_s
        self._child: subprocess.Popen | None = None
        self._failed_at: float | None = None
        self._failures = 0  # in a row

    def table(self, first: int, last: int) -> pa.Table:
        """The `entries` rows of records first..last, built by the child."""
        child = self._running()
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(f"{first} {last}\n".encode())
            child.stdin.flush()
            deadline = time.monotonic() + self.timeout_s
            kind, size = _REPLY.unpack(_read_exact(child.stdout, _REPLY.size, deadline))
            body = _read_exact(child.stdout, size, deadline)
        except (OSError, ValueError, struct.error) as exc:
            raise self._fail(f"it stopped answering ({exc})") from exc
        if kind == b"E":
            raise self._fail(body.decode(errors="replace"))
        if kind != b"T":
            raise self._fail(f"it answered {kind!r}")
        try:
            table = pa.ipc.open_stream(body).read_all()
            seqs = table.column("seq")
            answered = table.num_rows == last - first + 1 and (
                seqs[0].as_py(), seqs[-1].as_py()) == (first, last)
        except (pa.ArrowException, KeyError, IndexError) as exc:
            raise self._fail(f"its table is unreadable ({exc})") from exc
        if not answered:
            raise self._fail(f"it answered rows other than seq {first}-{last}")
        self._failures = 0
        return table

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(OSError):
            assert child.stdin is not None
            child.stdin.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    def _running(self) -> subprocess.Popen:
        if self._child is not None and self._child.poll() is None:
            return self._child
        if self._child is not None:
            self._fail(f"it exited with status {self._child.returncode}")
        if self._failures >= GIVE_UP_AFTER:
            raise TablerFailed("the table builder failed too often; not restarted")
        if self._failed_at is not None and (
            time.monotonic() - self._failed_at < self.restart_after_s
        ):
            raise TablerFailed("the table builder failed recently; not restarted yet")
        try:
            self._child = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, bufsize=0,
                                           env={**ALLOCATORS, **os.environ})
        except OSError as exc:
            raise self._fail(f"it could not start ({exc})") from exc
        return self._child

    def _fail(self, why: str) -> TablerFailed:
        self._failures += 1
        if self._failures >= GIVE_UP_AFTER:
            log.error("the ledger's table builder process failed %d times in a row (%s); "
                      "the sidecar builds DuckDB rows itself from now on", self._failures, why)
        else:
            log.warning("the ledger's table builder process failed: %s; the sidecar builds "
                        "DuckDB rows itself until it restarts", why)
        self._failed_at = time.monotonic()
        child, self._child = self._child, None
        if child is not None:
            with contextlib.suppress(OSError):
                child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]
        return TablerFailed(why)


def _read_exact(stream: Any, size: int, deadline: float) -> bytearray:
    fd = stream.fileno()
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise OSError("timed out")
        count = os.readv(fd, [view[got:]])
        if not count:
            raise OSError("end of stream")
        got += count
    return buffer


if __name__ == "__main__":
    raise SystemExit(main())
