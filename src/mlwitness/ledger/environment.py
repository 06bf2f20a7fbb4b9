"""The runtime environment's fingerprint: what could make the same model decide differently.

Stored once per distinct environment (`environments` table, keyed by the SHA-256 of its
canonical JSON) and referenced by every record's `env_id`; replay compares it with the
environment it runs in. Besides the versions it holds the onnxruntime session options the
decisions were computed with (`session_options`, `mlwitness.model.runtime.SessionConfig`)
and the CPU features that select onnxruntime's kernels (`cpu_features`): a tree ensemble
summed on two threads, or a GEMM on AVX-512 instead of AVX2, rounds differently.
docs/ledger.md documents every key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

from mlwitness.model.runtime import SessionConfig

# /proc/cpuinfo flags that select MLAS kernels (x86-64: SSE to AVX-512 and AMX; aarch64:
# NEON dot products, SVE, i8mm, bf16). Other flags do not change what onnxruntime computes.
KERNEL_FLAGS = frozenset({
    "sse3", "pni", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f",
    "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    "asimd", "asimddp", "asimdhp", "fphp", "sve", "sve2", "i8mm", "bf16", "sme",
})
# Keys whose difference cannot change a result: onnxruntime's arena decides where buffers
# live, not what is computed (the audit worker runs without it to return memory after each
# run), and the CPU's name says nothing its features do not.
INERT = frozenset({"session_options.enable_cpu_mem_arena", "cpu_model"})


def fingerprint(session: SessionConfig | None = None) -> dict[str, Any]:
    """This process's environment; with the session options `session` when the model ran
    here (None: no model session, or decisions made by an upstream server)."""
    import numpy
    import onnxruntime

    from mlwitness import __version__

    flags, model = cpu()
    env: dict[str, Any] = {
        "mlwitness": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "execution_providers": ([name for name, _ in session.providers] if session
                                else ["CPUExecutionProvider"]),
        "machine": platform.machine(),
        "system": platform.system(),
        "byteorder": sys.byteorder,
        "cpu_features": flags,
        "cpu_model": model,
    }
    if session is not None:
        env["session_options"] = session.to_environment()
    return env


@functools.cache
def cpu() -> tuple[list[str], str]:
    """(the kernel-selecting CPU flags, sorted; the CPU's model name) from /proc/cpuinfo
    (Linux); elsewhere ([], what `platform` says)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return [], platform.processor()
    flags, model = cpuinfo(text)
    return flags, model or platform.processor()


def cpuinfo(text: str) -> tuple[list[str], str]:
    """The kernel-selecting flags (x86 `flags`, aarch64 `Features`) and the model name
    (x86 `model name`; aarch64 `Hardware`, or implementer and part) of the first
    processor /proc/cpuinfo lists."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough
                break
            continue
        fields.setdefault(key.strip().lower(), value.strip())
    flags = (fields.get("flags") or fields.get("features") or "").split()
    model = fields.get("model name") or fields.get("hardware") or " ".join(
        f"{k} {fields[k]}" for k in ("cpu implementer", "cpu part") if k in fields)
    return sorted(KERNEL_FLAGS.intersection(flags)), model


def canonical(env: dict[str, Any]) -> str:
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def env_id(env: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(env).encode()).hexdigest()


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """{key: [recorded, current]} for every value that differs, nested objects by dotted
    key (`session_options.intra_op_num_threads`; an object one side lacks compares each of
    its keys with None). For `cpu_features` the two sides are the flags only one side has.
    Keys in `INERT` are left out."""
    out: dict[str, list[Any]] = {}
    _walk(recorded, current, "", out)
    return {k: v for k, v in out.items() if k not in INERT}


def _walk(recorded: dict[str, Any], current: dict[str, Any], prefix: str,
          out: dict[str, list[Any]]) -> None:
    for k in sorted(set(recorded) | set(current)):
        old, new, key = recorded.get(k), current.get(k), prefix + k
        if old == new:
            continue
        if isinstance(old, dict | None) and isinstance(new, dict | None):
            _walk(old or {}, new or {}, key + ".", out)
        elif key == "cpu_features" and isinstance(old, list) and isinstance(new, list):
            out[key] = [sorted(set(old) - set(new)), sorted(set(new) - set(old))]
        else:
            out[key] = [old, new]


def text(value: Any) -> str:
    """A fingerprint value as an answer shows it: text as it is, None as "(none)", flag
    lists space-separated, anything else as JSON."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value) or "(none)"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
