"""How `mlwitness serve` and `mlwitness audit-server` run: start, say so, wait for a
signal, stop."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any


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
