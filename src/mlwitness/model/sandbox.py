"""Model runs for auditors, in a child process with a memory and a time limit.

An auditor can upload any ONNX bytes as a candidate, or feed a stored model values it was
never fed. A model can ask for far more memory than its size (a 218-byte ConstantOfShape
of 192 Mi floats is 768 MiB) or loop until stopped; run in the sidecar's own process, that
took the whole pod. onnxruntime has no in-process bound that holds for every kernel (its
arena cap misses kernels that allocate on their own, such as string tensors, and
`RunOptions.terminate` is seen between nodes only, not inside one long one). So every audit
model run — replay, what-if, sensitivity, traffic replay — happens in a child process:

* its address space is capped with RLIMIT_AS at what it used after start-up plus
  `memory_bytes`: an allocation past it fails inside onnxruntime (RESOURCE_EXHAUSTED,
  naming the limit), or ends the child — never the sidecar;
* a run is waited for until the question's deadline (the caller's, if any) or
  `run_timeout` seconds, whichever comes first; then the child is killed (SIGKILL ends a
  run inside any kernel) and the question gets DEADLINE_EXCEEDED.

A worker serves one question at a time, so a killed run harms no one else's question.
A worker whose question ended normally is kept, with up to MAX_MODELS models loaded, for
the next question (a replay of the same model then costs one round trip, not an
onnxruntime import and a model load); one that timed out, crashed or ran out of memory is
ended. A model is loaded with the session options the question asks for (replay: those the
decision was recorded with), so one worker may hold a model in sessions of two configs.
Tensors travel over the worker's stdin/stdout as a JSON header and raw buffers —
never pickles: the worker runs whatever the uploaded model makes onnxruntime do.

Cost (2 shared cores, under load): a round trip to the worker is 0.2-0.4 ms plus the copy
of the tensors; a warm Replay through the gRPC API measured p50 15 ms against 11 ms
in-process, what-if and sensitivity within the noise; traffic replay's throughput is
unchanged within the noise (the calls it runs alone go in one request, `run_slices`). The
first question of a server pays for starting a worker (importing onnxruntime, ~0.2 s).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

import numpy as np

from mlwitness.codec import Tensor
from mlwitness.errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    MlwitnessError,
    TooLarge,
)
from mlwitness.model.runtime import MEMORY_SIGNS, SessionConfig
from mlwitness.model.signature import Signature, TensorSpec

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
_BACKSTOP_S = 5  # the child's own alarm, past the parent's bound: if the parent is gone
MAX_MODELS = 4  # models a worker keeps loaded (its memory limit covers all of them)
# Threads a recorded session may ask for: each reserves a stack in the worker's capped
# address space. More are cut to this, and the answer names the difference.
MAX_THREADS = 64


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 512 << 20  # address space past the child's start-up size
    run_timeout: float = 60.0  # seconds one model run may take
    threads: int = 1  # onnxruntime intra-op threads when a record names no session options


class Aborted(Exception):  # noqa: N818 — a marker: the run was stopped, not answered
    """Mixed into the errors of a run that was stopped (killed, or its process ended):
    the question cannot go on, unlike a model that refuses one call's inputs."""


class RunTimedOut(DeadlineExceeded, Aborted):
    pass


class ProcessEnded(TooLarge, Aborted):
    pass


_STATUSES: dict[str, type[MlwitnessError]] = {
    "INVALID_ARGUMENT": InvalidInput, "FAILED_PRECONDITION": FailedPrecondition,
    "RESOURCE_EXHAUSTED": TooLarge, "DEADLINE_EXCEEDED": DeadlineExceeded,
    "DATA_LOSS": DataLoss,
}


def _error(status: str, message: str) -> MlwitnessError:
    cls = _STATUSES.get(status)
    if cls is not None:
        return cls(message)
    from mlwitness.model.runtime import ModelError  # INTERNAL: the model failed

    return ModelError(message)


# ── frames: a JSON header, then raw buffers ─────────────────────────────────────────────

def _pack(array: np.ndarray) -> tuple[dict[str, Any], list[bytes | memoryview]]:
    if array.dtype == object:  # BYTES in, tensor(string) out: lengths, then the bytes
        text = any(isinstance(v, str) for v in array.flat)
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.flat]
        lengths = np.array([len(v) for v in items], dtype="<u8")
        return ({"dtype": "str" if text else "bytes", "shape": list(array.shape)},
                [lengths.tobytes(), b"".join(items)])
    data = array if array.flags.c_contiguous else array.copy(order="C")  # keeps 0-d as 0-d
    return {"dtype": data.dtype.str, "shape": list(data.shape)}, [
        data.reshape(-1).view(np.uint8).data]


def _unpack(meta: dict[str, Any], buffers: list[memoryview]) -> np.ndarray:
    shape = tuple(meta["shape"])
    if meta["dtype"] in ("str", "bytes"):
        lengths = np.frombuffer(buffers.pop(0), dtype="<u8")
        blob = bytes(buffers.pop(0))
        ends = np.cumsum(lengths)
        items = [blob[int(e - n):int(e)] for n, e in zip(lengths, ends, strict=True)]
        out = np.empty(len(items), dtype=object)
        out[:] = [v.decode("utf-8") for v in items] if meta["dtype"] == "str" else items
        return out.reshape(shape)
    return np.frombuffer(buffers.pop(0), dtype=np.dtype(meta["dtype"])).reshape(shape)


def _encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = (),
            raw: Sequence[bytes] = ()) -> list[bytes | memoryview]:
    """A frame: the header's length, the header, each array's buffers, then `raw` ones."""
    metas: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for array in arrays:
        meta, parts = _pack(array)
        metas.append(meta)
        buffers.extend(parts)
    buffers.extend(raw)
    header = {**header, "arrays": metas, "sizes": [memoryview(b).nbytes for b in buffers]}
    text = json.dumps(header).encode()
    return [_LENGTH.pack(len(text)), text, *buffers]


def _decode(header: dict[str, Any], buffers: list[memoryview]) -> list[np.ndarray]:
    """The header's arrays, taken from the front of `buffers` (what is left: raw ones)."""
    return [_unpack(meta, buffers) for meta in header["arrays"]]


# ── the child ───────────────────────────────────────────────────────────────────────────

def _child(memory_bytes: int) -> None:
    """`python -m mlwitness.model.sandbox MEMORY_BYTES`: serve requests until stdin closes."""
    from mlwitness.model.runtime import OnnxModel

    # A terminal's ^C is for the server, which ends its workers (stdin closes, or a kill).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.dup(1)  # stdout is the protocol's alone:
    os.dup2(2, 1)  # anything a library prints goes to stderr
    inbox = sys.stdin.buffer
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status
                    if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + memory_bytes, size + memory_bytes))
    models: dict[str, OnnxModel] = {}
    while True:
        received = _read_frame(inbox)
        if received is None:
            return
        header, buffers = received
        signal.alarm(int(header.get("seconds", 0)) + _BACKSTOP_S)  # parent gone: end
        try:
            reply, arrays = _serve(header, buffers, models, memory_bytes)
        except MlwitnessError as exc:
            reply, arrays = {"error": [exc.status, exc.message]}, []
        except MemoryError:
            reply, arrays = {"error": ["RESOURCE_EXHAUSTED", _memory_message(memory_bytes)]}, []
        except Exception:  # a fault of ours: said, not fatal to the question's worker
            traceback.print_exc()
            reply, arrays = {"error": ["INTERNAL", "the audit worker failed; see the log"]}, []
        signal.alarm(0)
        for part in _encode(reply, arrays):
            view = memoryview(part).cast("B")
            while view:  # a pipe may take less than all of it
                view = view[os.write(channel, view):]


def _serve(header: dict[str, Any], buffers: list[memoryview], models: dict[str, Any],
           memory_bytes: int) -> tuple[dict[str, Any], list[np.ndarray]]:
    from mlwitness.model.runtime import OnnxModel

    op, key = header["op"], header["key"]
    if op == "load":
        for old in header["evict"]:
            models.pop(old, None)
        # onnxruntime's CPU arena keeps what a run took until the session ends; without it
        # memory goes back after each run (a long-lived worker must not hold on to one big
        # run's peak). It decides where buffers live, not what is computed.
        session = SessionConfig.from_environment({"session_options": header["session"]})
        assert session is not None
        try:
            model = OnnxModel(bytes(buffers[0]), replace(session, enable_cpu_mem_arena=False))
        except FailedPrecondition as exc:
            if "out of memory" in exc.message:
                raise TooLarge(_memory_message(memory_bytes)) from None
            raise
        models[key] = model
        return {"ok": {"signature": _signature_json(model.signature),
                       "session": model.session_config.to_environment(),
                       "unavailable": model.unavailable}}, []
    model = models[key]
    arrays = _decode(header, buffers)
    if op == "run_slices":
        try:
            runs = model.run_slices(header["names"], dict(zip(header["feed"], arrays,
                                                              strict=True)), header["slices"])
        except Exception as exc:  # noqa: BLE001 — only running out of memory comes here
            raise TooLarge(_memory_message(memory_bytes)) from exc
        return ({"ok": {"done": [run is not None for run in runs]}},
                [np.asarray(a) for run in runs if run is not None for a in run])
    inputs = [Tensor(m["name"], m["datatype"], tuple(m["shape"]), array)
              for m, array in zip(header["tensors"], arrays, strict=True)]
    try:
        if op == "run_rows":  # a fixed batch size: one run per row, outputs stacked
            parts = [model.run([Tensor(t.name, t.datatype, (1, *t.shape[1:]),
                                       t.array[i:i + 1]) for t in inputs], header["outputs"])
                     for i in range(inputs[0].shape[0] if inputs else 0)]
            tensors = [Tensor(p[0].name, p[0].datatype, (len(parts), *p[0].shape[1:]),
                              np.concatenate([q.array for q in p]))
                       for p in zip(*parts, strict=True)]
        else:
            tensors = model.run(inputs, header["outputs"])
    except MlwitnessError as exc:
        if any(sign in exc.message for sign in MEMORY_SIGNS):
            raise TooLarge(_memory_message(memory_bytes)) from None
        raise
    return ({"ok": {"tensors": [{"name": t.name, "datatype": t.datatype,
                                 "shape": list(t.shape)} for t in tensors]}},
            [t.array for t in tensors])


def _memory_message(memory_bytes: int) -> str:
    return (f"the model needs more memory than an audit run may use "
            f"({memory_bytes} bytes, --audit-memory-bytes); the run was stopped")


def _signature_json(signature: Signature) -> dict[str, Any]:
    return {kind: [[s.name, s.datatype, list(s.shape), list(s.dim_names)] for s in specs]
            for kind, specs in (("inputs", signature.inputs), ("outputs", signature.outputs))}


def _signature(data: dict[str, Any]) -> Signature:
    def specs(items: list[list[Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(n, d, tuple(s), tuple(names)) for n, d, s, names in items)

    return Signature(specs(data["inputs"]), specs(data["outputs"]))


def _read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], list[memoryview]] | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    header = json.loads(stream.read(_LENGTH.unpack(head)[0]))
    return header, [memoryview(stream.read(size)) for size in header["sizes"]]


# ── the parent ──────────────────────────────────────────────────────────────────────────

def _spawn(limits: Limits, home: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # per-thread arenas reserve address space
    # In an empty directory: should a relative file name ever reach onnxruntime, it finds
    # nothing there (the sidecar's own working directory is the ledger's volume).
    return subprocess.Popen([sys.executable, "-m", "mlwitness.model.sandbox",
                             str(limits.memory_bytes)], cwd=home,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@dataclass
class _Worker:
    """A child process and the models loaded in it: signature, session config and the
    providers it lacks, keyed by SHA-256 and session config, least recently used first."""

    process: subprocess.Popen[bytes]
    models: OrderedDict[str, tuple[Signature, SessionConfig, list[str]]] = field(
        default_factory=OrderedDict)
    healthy: bool = True


class Sandboxes:
    """Child processes for audit questions: each question has one to itself while it runs.
    A worker whose question ended normally is kept (at most IDLE of them) with its models
    loaded, so the next replay of the same model is warm; one whose run was stopped, or
    that ran out of memory, is ended."""

    IDLE = 1

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._home = ""  # the workers' (empty) working directory, made on first use

    def open(self, deadline: float | None = None) -> Sandbox:
        """A sandbox for one question (`deadline`: a time.monotonic() value, or None)."""
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.poll() is None:
                    return Sandbox(self, worker, deadline)
                _end(worker.process)
            if not self._home or not os.path.isdir(self._home):
                self._home = tempfile.mkdtemp(prefix="mlwitness-sandbox-")
            home = self._home
        return Sandbox(self, _Worker(_spawn(self.limits, home)), deadline)

    def release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.healthy and not self._closed and len(self._idle) < self.IDLE \
                    and worker.process.poll() is None:
                self._idle.append(worker)
                return
        _end(worker.process)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            _end(worker.process)
        if self._home:
            shutil.rmtree(self._home, ignore_errors=True)


class Sandbox:
    """One question's worker: models are loaded into it and run there, each request
    bounded by the question's deadline and the run timeout."""

    def __init__(self, pool: Sandboxes, worker: _Worker, deadline: float | None) -> None:
        self.pool = pool
        self.worker = worker
        self.limits = pool.limits
        self.deadline = deadline
        self.timed_out = False
        self._aborted: MlwitnessError | None = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.pool.release(self.worker)

    def load(self, sha256: str, onnx: Callable[[], bytes],
             session: SessionConfig | None = None) -> SandboxedModel:
        """The model with this SHA-256 in a session built from `session` (None: the
        default, with `Limits.threads`; threads past MAX_THREADS cut to it), loaded from
        `onnx()` unless the worker has it so."""
        session = _bounded(session or SessionConfig(intra_op_num_threads=self.limits.threads))
        key = f"{sha256}/{session.key()}"
        models = self.worker.models
        if key not in models:
            evict = list(models)[:max(0, len(models) - MAX_MODELS + 1)]
            try:  # the worker drops `evict` before it loads: whether or not the load works
                reply, _ = self.ask({"op": "load", "key": key, "evict": evict,
                                     "session": session.to_environment()}, raw=[onnx()])
            finally:
                for old in evict:
                    models.pop(old, None)
            actual = SessionConfig.from_environment({"session_options": reply["session"]})
            assert actual is not None
            models[key] = (_signature(reply["signature"]), actual, reply["unavailable"])
        models.move_to_end(key)
        signature, actual, unavailable = models[key]
        return SandboxedModel(self, sha256, key, signature, actual, unavailable)

    def ask(self, header: dict[str, Any], raw: Sequence[bytes] = (),
            arrays: Sequence[np.ndarray] = ()) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Send one request, wait (bounded) for its answer."""
        if self._aborted is not None:
            raise self._aborted
        seconds, by_deadline = self._bound()
        parts = _encode({**header, "seconds": math.ceil(seconds)}, arrays, raw)
        process = self.worker.process
        try:
            assert process.stdin is not None
            for part in parts:
                process.stdin.write(part)
            process.stdin.flush()
            received = self._receive(time.monotonic() + seconds)
        except (BrokenPipeError, ConnectionResetError):
            received = None
        if received is None:
            raise self._abort(by_deadline)
        reply, buffers = received
        if "error" in reply:
            status, message = reply["error"]
            if status == "RESOURCE_EXHAUSTED":  # its heap may stay grown: not reused
                self.worker.healthy = False
            raise _error(status, message)
        return reply["ok"], _decode(reply, buffers)

    def _bound(self) -> tuple[float, bool]:
        """(seconds to wait, whether the caller's deadline is what bounds them)."""
        limit = self.limits.run_timeout
        if self.deadline is None:
            return limit, False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RunTimedOut("the caller's deadline passed before the model ran")
        return (left, True) if left < limit else (limit, False)

    def _receive(self, until: float) -> tuple[dict[str, Any], list[memoryview]] | None:
        """The worker's next frame, or None when it ended or `until` passed (then it is
        killed — a run stopped mid-kernel leaves nothing worth keeping — and `timed_out`
        says so)."""
        process = self.worker.process
        assert process.stdout is not None
        fd = process.stdout.fileno()
        buffer = bytearray()
        need = _LENGTH.size
        header: dict[str, Any] | None = None
        while True:
            if header is None and len(buffer) >= need:
                if need == _LENGTH.size:
                    need += _LENGTH.unpack(buffer[:_LENGTH.size])[0]
                    continue
                header = json.loads(bytes(buffer[_LENGTH.size:need]))
                del buffer[:need]
                need = sum(header["sizes"])
            if header is not None and len(buffer) >= need:
                view, buffers, at = memoryview(bytes(buffer)), [], 0
                for size in header["sizes"]:
                    buffers.append(view[at:at + size])
                    at += size
                return header, buffers
            left = until - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.timed_out = True
                _end(process)  # past the bound: stop the run, whatever it is doing
                return None
            chunk = os.read(fd, max(1 << 16, need - len(buffer)))
            if not chunk:
                return None
            buffer += chunk

    def _abort(self, by_deadline: bool) -> MlwitnessError:
        process = self.worker.process
        self.worker.healthy = False
        _end(process)
        if self.timed_out and by_deadline:
            self._aborted = RunTimedOut("the caller's deadline passed while the model ran; "
                                        "the run was stopped")
        elif self.timed_out:
            self._aborted = RunTimedOut(
                f"a model run took longer than {self.limits.run_timeout:g} s "
                "(--audit-run-timeout) and was stopped")
        else:
            self._aborted = ProcessEnded(
                f"the process running the model ended ({_how(process.returncode)}): "
                f"out of its memory (--audit-memory-bytes {self.limits.memory_bytes}) "
                "or a crash in onnxruntime")
        log.warning("audit model run stopped: %s", self._aborted.message)
        return self._aborted


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _bounded(session: SessionConfig) -> SessionConfig:
    return replace(session, intra_op_num_threads=min(session.intra_op_num_threads, MAX_THREADS),
                   inter_op_num_threads=min(session.inter_op_num_threads, MAX_THREADS))


class SandboxedModel:
    """A model loaded in a sandbox: what `OnnxModel` offers the audit code.
    `session_config` is what its session runs with, as onnxruntime reports it."""

    def __init__(self, sandbox: Sandbox, sha256: str, key: str, signature: Signature,
                 session_config: SessionConfig, unavailable: list[str]) -> None:
        self.sandbox = sandbox
        self.sha256 = sha256
        self.key = key
        self.signature = signature
        self.session_config = session_config
        self.unavailable = unavailable

    def run(self, inputs: Sequence[Tensor], outputs: Sequence[str] = (), *,
            op: str = "run") -> list[Tensor]:
        header = {"op": op, "key": self.key, "outputs": list(outputs),
                  "tensors": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                              for t in inputs]}
        reply, arrays = self.sandbox.ask(header, arrays=[t.array for t in inputs])
        return [Tensor(m["name"], m["datatype"], tuple(m["shape"]), array)
                for m, array in zip(reply["tensors"], arrays, strict=True)]

    def run_rows(self, inputs: Sequence[Tensor], outputs: Sequence[str] = ()) -> list[Tensor]:
        """`run` one row at a time (a model with a fixed batch size of 1), the outputs
        stacked: one round trip for all of them."""
        return self.run(inputs, outputs, op="run_rows")

    def run_slices(self, names: Sequence[str], feed: dict[str, np.ndarray],
                   slices: Sequence[tuple[int, int]]) -> list[list[np.ndarray] | None]:
        """`OnnxModel.run_slices` in one round trip, sending only the rows it needs."""
        if not slices:
            return []
        local, at = [], 0
        for lo, hi in slices:
            local.append((at, at + hi - lo))
            at += hi - lo
        rows = np.concatenate([np.arange(lo, hi) for lo, hi in slices])
        header = {"op": "run_slices", "key": self.key, "names": list(names),
                  "feed": list(feed), "slices": local}
        reply, arrays = self.sandbox.ask(header, arrays=[a[rows] for a in feed.values()])
        out: list[list[np.ndarray] | None] = []
        for done in reply["done"]:
            out.append(arrays[:len(names)] if done else None)
            arrays = arrays[len(names):] if done else arrays
        return out


if __name__ == "__main__":
    _child(int(sys.argv[1]))
