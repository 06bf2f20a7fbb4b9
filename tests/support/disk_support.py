"""Faults of the disk for the durability tests: a full disk (a small tmpfs, and a file that
fills it) and failing system calls at the journal's seam for them (`Journal(io=...)`)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


class FailingCalls:
    """The `os` module, except that `call` fails with `error` while `failing` is set. A
    failing pwrite first writes half its bytes (a short write, then the error), and a
    failing open fails only to create a file."""

    def __init__(self, call: str, error: int) -> None:
        self.call, self.error = call, error
        self.failing = threading.Event()
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name != self.call:
            return real

        def call(*args: Any) -> Any:
            if not self.failing.is_set() or (name == "open" and not args[1] & os.O_CREAT):
                return real(*args)
            self.failures += 1
            if name == "pwrite":
                fd, data, offset = args
                real(fd, bytes(data[: len(data) // 2]), offset)
            raise OSError(self.error, os.strerror(self.error))

        return call


class SmallDisk:
    """A tmpfs of a few MiB, and a file that fills what it has left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self, leave: int = 0) -> None:
        """Fill the disk but for `leave` bytes."""
        if leave:
            status = os.statvfs(self.root)
            with open(self.filler, "ab") as handle:
                handle.write(bytes(status.f_bavail * status.f_frsize - leave))
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            block = bytes(1 << 16)
            for _ in range(100_000):  # bounded: the disk is a few MiB
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(block) == 1:
                        return
                    block = block[: len(block) // 2]
        finally:
            os.close(fd)
        raise AssertionError("the disk did not fill")

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


def journals_on(calls: Any) -> Any:
    """A stand-in for the `Journal` class whose journals make their system calls through
    `calls` (for a sidecar, which creates its writer and journal itself)."""
    from mlwitness.ledger.journal import Journal

    def journal(*args: Any, **kwargs: Any) -> Journal:
        return Journal(*args, **{**kwargs, "io": calls})

    return journal


@contextlib.contextmanager
def mounted_small_disk(root: Path, size: str, why: str) -> Iterator[SmallDisk]:
    """A tmpfs of `size` mounted at `root` for the test (unmounted after), or the test
    skipped saying `why` it needs one: mounting takes root with CAP_SYS_ADMIN."""
    root.mkdir(exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip(f"no mount command: {why} needs a tmpfs mounted for the test")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              str(root)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"{why} needs a tmpfs mounted for the test, and mount failed "
                    f"(it needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=30)
