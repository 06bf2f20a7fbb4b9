"""Start Seldon MLServer (a third-party Open Inference Protocol v2 server) for tests.

MLServer lives in its own virtualenv (``scripts/setup_upstream_venv.sh``, default
``<repo>/.venv-upstream``, overridable with ``MLWITNESS_UPSTREAM_VENV``) and is run as a
subprocess; this module never imports mlserver. It serves one ONNX file through the
small runtime in ``tests/support/upstream/onnx_runtime.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DIR = Path(__file__).resolve().parent / "upstream"
RUNTIME_IMPLEMENTATION = "onnx_runtime.OnnxRuntime"
LOG_TAIL_CHARS = 8000
# Run in the upstream venv's python: ask Linux to SIGTERM us when the test process dies,
# then exec mlserver (same pid). Done there rather than with Popen(preexec_fn=...), which
# forces fork() in a process that has gRPC threads (seen: child abort in grpc's epoll).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


@dataclass(frozen=True)
class UpstreamServer:
    grpc_address: str  # "127.0.0.1:PORT"
    http_address: str
    model_name: str
    log_path: Path
    process: subprocess.Popen[bytes]


def upstream_venv() -> Path | None:
    """The MLServer venv's python, or None when the venv has not been set up."""
    venv = Path(os.environ.get("MLWITNESS_UPSTREAM_VENV") or REPO_ROOT / ".venv-upstream")
    python = venv / "bin" / "python"
    if python.exists() and (venv / "bin" / "mlserver").exists():
        return python
    return None


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as err:
        return f"<no log: {err}>"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_ready(
    process: subprocess.Popen[bytes], address: str, model_name: str, timeout_s: float
) -> str | None:
    """Poll ServerReady + ModelReady; return None when ready, else why not."""
    import tritonclient.grpc as grpcclient

    interval = 0.25
    attempts = max(1, int(timeout_s / interval))
    last_error = "never answered"
    client = grpcclient.InferenceServerClient(address)
    try:
        for _ in range(attempts):
            if process.poll() is not None:
                return f"mlserver exited with code {process.returncode}"
            started = time.monotonic()
            try:
                if client.is_server_ready(client_timeout=1.0) and client.is_model_ready(
                    model_name, client_timeout=1.0
                ):
                    return None
                last_error = "server or model not ready"
            except Exception as err:  # not listening yet / model not registered yet
                last_error = f"{type(err).__name__}: {err}"
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        return f"not ready after {timeout_s:g} s ({attempts} attempts; last: {last_error})"
    finally:
        client.close()


@contextlib.contextmanager
def run_mlserver(
    model_path: Path, model_name: str, workdir: Path, timeout_s: float = 60
) -> Iterator[UpstreamServer]:
    """Run ``mlserver start workdir`` serving ``model_path`` as ``model_name`` on loopback."""
    python = upstream_venv()
    if python is None:
        raise RuntimeError("MLServer venv missing: run scripts/setup_upstream_venv.sh")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port, metrics_port = _free_ports(3)
    settings = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "metrics_endpoint": None,  # no metrics server at all
        "parallel_workers": 0,  # inference in the main process, no worker pool
        "debug": True,
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": model_name,
        "implementation": RUNTIME_IMPLEMENTATION,
        "parameters": {"uri": str(Path(model_path).resolve())},
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    (workdir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_")}
    for key in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(RUNTIME_DIR)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"

    log_path = workdir / "mlserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(python), "-c", _LAUNCHER, str(python.parent / "mlserver"), "start", str(workdir)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        address = f"127.0.0.1:{grpc_port}"
        problem = _wait_ready(process, address, model_name, timeout_s)
        if problem is not None:
            _stop(process)
            raise RuntimeError(
                f"MLServer did not start ({problem}); log {log_path} ends:\n{_log_tail(log_path)}"
            )
        yield UpstreamServer(
            grpc_address=address,
            http_address=f"127.0.0.1:{http_port}",
            model_name=model_name,
            log_path=log_path,
            process=process,
        )
    finally:
        _stop(process)
