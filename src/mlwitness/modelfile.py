"""The served model file, pinned by content.

`ModelFile` knows the SHA-256 of the bytes currently behind the path. In forwarding mode
the upstream may pick up a new file at any time, so `refresh()` (called every
`--model-poll-interval` seconds) notices a change of size, mtime or inode, hashes the new
bytes, stores them in the ledger's model store, and only then makes the new hash current:
a record never names a model whose bytes are not stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class ModelFile:
    def __init__(self, path: Path, on_new_bytes: Callable[[bytes], None]) -> None:
        self.path = Path(path)
        self._on_new_bytes = on_new_bytes
        self._stamp: tuple[int, int, int] | None = None
        self.sha256 = ""
        self.onnx = b""
        self.refresh()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def refresh(self) -> bool:
        """Re-read the file if it changed; return True when the pinned hash changed."""
        try:
            stamp = self._stat()
        except OSError as exc:
            if self._stamp is None:
                raise
            log.warning("model file %s unreadable (%s); keeping %s", self.path, exc, self.sha256)
            return False
        if stamp == self._stamp:
            return False
        onnx = self.path.read_bytes()
        if self._stat() != stamp:  # still being written: try again next time
            return False
        sha = hashlib.sha256(onnx).hexdigest()
        self._stamp = stamp
        if sha == self.sha256:
            return False
        self._on_new_bytes(onnx)
        if self.sha256:
            log.info("model file %s changed: %s → %s", self.path, self.sha256[:12], sha[:12])
        self.sha256, self.onnx = sha, onnx
        return True
