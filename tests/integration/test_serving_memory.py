"""The serving process's memory: what `mlwitness serve` imports at start (every module it
loads stays for good, so what only some settings or audit questions need is imported when
they do), and allocators that give back what it frees."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from mlwitness.server.lifecycle import return_freed_memory

# pyarrow.parquet and its filesystems (S3, GCS, Azure, HDFS: ~12 MiB of the sidecar's
# memory) are for the archive alone; cryptography (~8 MiB) for a signing key or a check of
# signed notes (bench/bench_memory.py)
ON_DEMAND = ("pyarrow.parquet", "pyarrow.fs", "pyarrow._s3fs", "cryptography")


def test_serve_leaves_what_the_archive_and_signing_need_until_they_are_used() -> None:
    code = ("import sys; import mlwitness.cli, mlwitness.server.sidecar; "
            f"print(sorted(m for m in sys.modules if m.startswith({ON_DEMAND!r})))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_serve_uses_the_system_pool_for_arrow_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    previous = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        return_freed_memory()
        assert pa.default_memory_pool().backend_name == "mimalloc"  # the operator's choice
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        return_freed_memory()
        assert pa.default_memory_pool().backend_name == "system"
    finally:
        pa.set_memory_pool(previous)
