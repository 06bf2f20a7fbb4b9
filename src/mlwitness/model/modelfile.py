"""The served model file, pinned by content.

`ModelFile` knows the SHA-256 of the bytes currently behind the path. In forwarding mode
the upstream may pick up a new file at any time, so `refresh()` (called every
`--model-poll-interval` seconds) notices a change of size, mtime or inode, waits until the
file has stayed the same for one more poll (a copy in progress — `cp`, `kubectl cp` — is
not pinned half-written), hashes the new bytes, stores them in the ledger's model store,
and only then makes the new hash current: a record never names a model whose bytes are
not stored. A store that fails is tried again at the next poll.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from mlwitness.errors import ConfigError

log = logging.getLogger(__name__)

START_ATTEMPTS = 50  # reads of a file that changes while read, 0.1 s apart, at start-up
START_WAIT_S = 0.1


class ModelFile:
    def __init__(self, path: Path, on_new_bytes: Callable[[bytes], None]) -> None:
        self.path = Path(path)
        self._on_new_bytes = on_new_bytes
        self._stamp: tuple[int, int, int] | None = None  # of the pinned bytes
        self._seen: tuple[int, int, int] | None = None  # a change seen, not yet settled
        self.sha256 = ""
        self.onnx = b""
        for _ in range(START_ATTEMPTS):  # at start-up the file must be read whole
            if self.refresh():
                return
            time.sleep(START_WAIT_S)
        raise ConfigError(f"model file {self.path} kept changing while it was read; "
                          "is it still being written?")

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def refresh(self) -> bool:
        """Re-read the file if it changed and has settled; return True when the pinned
        hash changed (or, at start-up, when the file was first pinned)."""
        try:
            stamp = self._stat()
        except OSError as exc:
            if self._stamp is None:
                raise
            log.warning("model file %s unreadable (%s); keeping %s", self.path, exc, self.sha256)
            return False
        if stamp == self._stamp:
            self._seen = None
            return False
        if self._stamp is not None and stamp != self._seen:
            self._seen = stamp  # changed since the last poll: wait until it stays put
            return False
        onnx = self.path.read_bytes()
        if self._stat() != stamp:  # still being written: try again next time
            return False
        sha = hashlib.sha256(onnx).hexdigest()
        if sha != self.sha256:
            self._on_new_bytes(onnx)  # raises: the stamp stays old, so the next poll retries
            if self.sha256:
                log.info("model file %s changed: %s → %s", self.path, self.sha256[:12],
                         sha[:12])
        first = self._stamp is None
        self._stamp, self._seen = stamp, None
        if sha == self.sha256 and not first:
            return False
        self.sha256, self.onnx = sha, onnx
        return True
