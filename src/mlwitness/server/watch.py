"""The sidecar's watcher: health refreshed, and edited files picked up without a restart.

Every second (or --model-poll-interval, if shorter) it refreshes health, reloads an edited
guard file or access file, and, when forwarding, polls the model file (model/modelfile.py).
Each step runs on its own: one failing must not starve the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from mlwitness.auth import Access, Authenticator
from mlwitness.errors import MlwitnessError, ModelNotSettled
from mlwitness.guards.checks import InlineChecks
from mlwitness.guards.file import GuardConfig, load_guards
from mlwitness.model.modelfile import ModelFile
from mlwitness.settings import Settings

log = logging.getLogger("mlwitness")

HEALTH_INTERVAL_S = 1.0

Step = Callable[[], Awaitable[None]]


def fingerprint(path: Any) -> str | None:
    """A file's content fingerprint (content, not mtime: a same-size edit within one clock
    tick must still be noticed). Files watched here are small."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class Watched:
    """A file whose edits are noticed by content. An unreadable file is no edit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = fingerprint(path)

    def changed(self) -> bool:
        """True once for each new content."""
        now = fingerprint(self.path)
        if now is None or now == self.seen:
            return False
        self.seen = now
        return True


class AccessFile:
    """The tokens of one port (`kind`: audit or inference) behind its `Authenticator`,
    read again when the file is edited (token rotation). No file: access control off."""

    def __init__(self, kind: str, path: Path | None, role: str) -> None:
        self.kind = kind
        self.file = Watched(path) if path else None  # before reading: no edit goes unseen
        self.auth = Authenticator(Access.load(path) if path else None, required_role=role)

    def reload(self) -> None:
        if self.file is None or not self.file.changed():
            return
        try:
            self.auth.access = Access.load(self.file.path)
        except MlwitnessError as exc:
            log.error("%s access file %s not reloaded: %s", self.kind, self.file.path,
                      exc.message)
            return
        log.info("%s access file %s reloaded", self.kind, self.file.path)


RecordGuards = Callable[[GuardConfig], Awaitable[None]]


class GuardFile:
    """The guard file behind the inline checks: an edit that parses and changes the guard
    set replaces the checks' and is recorded; one that does not parse keeps the old set."""

    def __init__(self, path: Path, checks: InlineChecks, record: RecordGuards) -> None:
        self.file = Watched(path)
        self.checks = checks
        self.record = record

    async def reload(self) -> None:
        if not self.file.changed():
            return
        path = self.file.path
        try:
            config = await asyncio.to_thread(load_guards, path)
        except MlwitnessError as exc:
            log.error("guard file %s not reloaded, keeping %s: %s", path,
                      self.checks.sha256[:12], exc.message)
            return
        if config.sha256 != self.checks.sha256:
            self.checks.replace(config)
            await self.record(config)
            log.info("guards reloaded from %s: %s", path, config.sha256[:12])


class Watcher:
    def __init__(self, settings: Settings, refresh_health: Step, *,
                 access: Sequence[AccessFile], guards: GuardFile | None,
                 model_file: ModelFile | None) -> None:
        """`model_file` is polled when forwarding: the upstream serves whatever the file
        holds, so the sidecar pins each new version; an embedded model is the bytes loaded."""
        self.settings = settings
        self.refresh_health = refresh_health
        self.access = access
        self.guards = guards
        self.model_file = model_file
        self._next_poll = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_poll = loop.time()
        steps = (("health", self.refresh_health), ("guard file reload", self._reload_guards),
                 ("access file reload", self._reload_access),
                 ("model file poll", self._poll_model))
        interval = min(HEALTH_INTERVAL_S, self.settings.model_poll_interval)
        while True:
            for what, step in steps:  # each on its own: one failing must not starve the rest
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s failed", what)
            await asyncio.sleep(interval)

    async def _reload_guards(self) -> None:
        if self.guards is not None:
            await self.guards.reload()

    async def _reload_access(self) -> None:
        for access in self.access:
            access.reload()

    async def _poll_model(self) -> None:
        loop = asyncio.get_running_loop()
        if self.model_file is None or loop.time() < self._next_poll:
            return
        self._next_poll = loop.time() + self.settings.model_poll_interval
        try:
            await asyncio.to_thread(self.model_file.refresh)
        except ModelNotSettled as exc:
            log.warning("%s", exc.message)
