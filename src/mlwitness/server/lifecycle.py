"""How `mlwitness serve` and `mlwitness audit-server` run: start, say so, wait for a
signal, stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa

from mlwitness.ledger.tabler import ALLOCATORS

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


async def run_until_signal(start: Callable[[], Awaitable[dict[str, Any]]],
                           stop: Callable[[], Awaitable[None]], *, freeze: bool = False) -> None:
    """Run `start`, print the JSON "ready" line it returns (the bound ports: deployments and
    tests read it), wait for SIGTERM or SIGINT, then run `stop` (which drains)."""
    ready = await start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if freeze:
        # Start-up's objects (modules, the model, the servers) live as long as the process:
        # keep them out of the collector's full passes, which otherwise stall every call
        # for 20-35 ms about every two seconds under load (measured; ~5-10 ms after
        # freezing).
        gc.collect()
        gc.freeze()
    print(json.dumps(ready), flush=True)
    await stopping.wait()
    await stop()


def return_freed_memory() -> None:
    """Have the serving process's allocators give back what it frees, unless the
    environment chose for them. glibc makes an arena per thread (up to 8 per core: the
    gRPC, onnxruntime, DuckDB and loader threads), each keeping what was freed in it, and
    pyarrow's default pool (mimalloc) keeps its segments. Call it before the servers start
    their threads. The same choices as the table builder's (tabler.ALLOCATORS)."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            if os.confstr("CS_GNU_LIBC_VERSION"):  # glibc's parameter numbers
                ctypes.CDLL(None).mallopt(M_ARENA_MAX, int(ALLOCATORS["MALLOC_ARENA_MAX"]))
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pools = {"system": pa.system_memory_pool, "jemalloc": pa.jemalloc_memory_pool,
                 "mimalloc": pa.mimalloc_memory_pool}
        pa.set_memory_pool(pools[ALLOCATORS["ARROW_DEFAULT_MEMORY_POOL"]]())
