"""The servers users compare mlwitness with, as benchmark subprocesses: KServe and MLServer.

Each lives in its own virtualenv (`bench/setup_peers.sh`): KServe's Python ModelServer in
`.venv-kserve` (override: MLWITNESS_KSERVE_VENV) running bench/kserve_server.py, Seldon
MLServer in `.venv-upstream` (override: MLWITNESS_UPSTREAM_VENV, the venv the forwarding
tests use) serving the ONNX file through the runtime in tests/support/upstream/onnx_runtime.py.
Nothing here imports kserve or mlserver.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KSERVE_SERVER = REPO / "bench" / "kserve_server.py"
MLSERVER_RUNTIME_DIR = REPO / "tests" / "support" / "upstream"
MLSERVER_RUNTIME = "onnx_runtime.OnnxRuntime"
# Runs in the peer venv's python: Linux SIGTERMs the server when the benchmark dies, then
# the server is exec'ed in the same pid (not Popen(preexec_fn=...), which forks a process
# that has gRPC threads).
LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


@dataclass(frozen=True)
class Launch:
    """How to start a peer: argv, environment, and the gRPC port when it prints no ready
    line (MLServer: the benchmark polls ServerReady/ModelReady there instead)."""

    argv: list[str]
    env: dict[str, str] | None = None
    port: int | None = None


def venv_python(env_var: str, default: str) -> Path:
    venv = Path(os.environ.get(env_var) or REPO / default)
    return venv / "bin" / "python"


def kserve_python() -> Path:
    return venv_python("MLWITNESS_KSERVE_VENV", ".venv-kserve")


def mlserver_python() -> Path:
    return venv_python("MLWITNESS_UPSTREAM_VENV", ".venv-upstream")


def missing(kind: str) -> str:
    """Why the peer cannot run here ("" when it can)."""
    python = kserve_python() if kind == "kserve" else mlserver_python()
    if not python.exists():
        return f"{kind}: no venv at {python.parents[1]} (run bench/setup_peers.sh)"
    return ""


def version(kind: str) -> str:
    python = kserve_python() if kind == "kserve" else mlserver_python()
    package = "kserve" if kind == "kserve" else "mlserver"
    try:
        out = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def kserve(model: Path, name: str) -> Launch:
    python = str(kserve_python())
    return Launch(
        [python, "-c", LAUNCHER, python, str(KSERVE_SERVER), "--model", str(model),
         "--model-name", name, "--port", "0"]
    )


def mlserver(model: Path, name: str, workdir: Path) -> Launch:
    """`mlserver start` on a model repository of one model, in the main process
    (parallel_workers 0), access logs off (debug false: MLServer's default logs every call),
    its metrics on as by default; every port on 127.0.0.1."""
    python = mlserver_python()
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port, metrics_port = free_ports(3)
    settings = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "debug": False,
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": name,
        "implementation": MLSERVER_RUNTIME,
        "parameters": {"uri": str(model.resolve())},
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    (workdir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_")}
    for key in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(MLSERVER_RUNTIME_DIR)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return Launch(
        [str(python), "-c", LAUNCHER, str(python.parent / "mlserver"), "start", str(workdir)],
        env,
        grpc_port,
    )
