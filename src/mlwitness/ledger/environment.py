"""The runtime environment's fingerprint: what could make the same model decide differently.

Stored once per distinct environment (`environments` table, keyed by the SHA-256 of its
canonical JSON) and referenced by every record's `env_id`; replay compares it with the
environment it runs in.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from typing import Any


def fingerprint(providers: list[str] | None = None) -> dict[str, Any]:
    import numpy
    import onnxruntime

    from mlwitness import __version__

    return {
        "mlwitness": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "execution_providers": providers or ["CPUExecutionProvider"],
        "machine": platform.machine(),
        "system": platform.system(),
        "byteorder": sys.byteorder,
    }


def canonical(env: dict[str, Any]) -> str:
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def env_id(env: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(env).encode()).hexdigest()


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """{key: [recorded, current]} for every key whose value differs."""
    keys = sorted(set(recorded) | set(current))
    return {
        k: [recorded.get(k), current.get(k)] for k in keys if recorded.get(k) != current.get(k)
    }
