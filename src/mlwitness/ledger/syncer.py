"""The journal's syncer: a small child process that runs fdatasync for the event loop.

An event loop that fdatasyncs its own group commits stops serving while the disk flushes:
at 8 concurrent callers a third of the loop's time went there, with calls ready to be read
and answers ready to be sent. A thread could flush instead, but a Python thread needs the
GIL back to say it is done, and winning it from a busy loop cost more than the flush saved
(the commit thread tried before, see bench/HISTORY.md). A child process needs no GIL: the
loop sends it the batch's last seq over a socket, goes on serving, and learns the batch is
on disk when the answer makes the socket readable (`loop.add_reader`). Meanwhile the next
calls gather into the next batch, which is written and flushed once this one is done
(pipelined group commit, ledger/chain.py).

fdatasync flushes the file, not the descriptor: the child flushes the journal segment the
loop wrote through its own copy of the segment's descriptor, sent with SCM_RIGHTS whenever
the journal starts a new segment. The child is a few lines of the standard library (run
with -I -S: no site packages, no mlwitness import), so it costs little memory.

    request  = u64 seq (with the segment's descriptor attached when it changed)
    answer   = u64 seq ‖ i32 errno (0: flushed)

A failed fdatasync is answered with its errno, and the chain fails as for an inline one. A
child that dies or stops answering leaves the chain to flush inline from then on
(`SyncerGone`): an inline fdatasync covers every byte written before it, whoever wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

_REQUEST = struct.Struct("<Q")
_ANSWER = struct.Struct("<Qi")

# The child's program. It flushes whatever segment it was last given, for each request, in
# order, and answers each one; it ends when the parent closes its end.
PROGRAM = """
import os, socket, struct, sys
conn = socket.socket(fileno=int(sys.argv[1]))
request, answer = struct.Struct("<Q"), struct.Struct("<Qi")
fd = -1
while True:
    data, fds, _, _ = socket.recv_fds(conn, request.size, 1)
    if not data:
        break
    if fds:
        if fd >= 0:
            os.close(fd)
        fd = fds[0]
    try:
        FDATASYNC(fd)
        error = 0
    except OSError as exc:
        error = exc.errno or 5
    conn.sendall(answer.pack(request.unpack(data)[0], error))
"""


class SyncerGone(OSError):
    """The syncer process is gone or broke its protocol: flush inline from now on."""


class Syncer:
    """The parent's end: `request` a flush of the current segment through seq N, and
    `answer` (when the socket is readable) says which seq was flushed and how."""

    def __init__(self, fdatasync: str = "os.fdatasync") -> None:
        """`fdatasync` is the expression the child flushes with (a test makes it fail)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        program = PROGRAM.replace("FDATASYNC", fdatasync)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", program, str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            child.close()
        self.socket = parent
        self._sent: int | None = None  # the generation of the segment the child holds
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def fileno(self) -> int:
        return self.socket.fileno()

    def request(self, seq: int, fd: int, generation: int) -> None:
        """Ask for a flush through `seq` of the segment open as `fd`, the journal's
        `generation`th (its descriptor goes along when the child holds another one; a
        descriptor's number may be reused by the next segment, a generation is not).
        Raises SyncerGone."""
        data = _REQUEST.pack(seq)
        try:
            if generation != self._sent:
                socket.send_fds(self.socket, [data], [fd])
                self._sent = generation
            else:
                self.socket.send(data)
        except OSError as exc:
            raise SyncerGone(exc.errno, f"the journal's syncer is gone ({exc})") from exc

    def answer(self) -> tuple[int, int]:
        """(seq, errno) of the flush the child finished; raises SyncerGone."""
        try:
            data = self.socket.recv(_ANSWER.size)
        except BlockingIOError:  # nothing to read yet (a spurious wake-up)
            raise
        except OSError as exc:
            raise SyncerGone(exc.errno, f"the journal's syncer is gone ({exc})") from exc
        if len(data) != _ANSWER.size:
            raise SyncerGone(0, "the journal's syncer ended")
        seq, error = _ANSWER.unpack(data)
        return seq, error

    def watch(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Call `callback` on `loop` whenever an answer can be read."""
        self.socket.setblocking(False)
        loop.add_reader(self.socket.fileno(), callback)
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop it answers on (None before `watch`)."""
        return self._loop

    def close(self) -> None:
        """End the child (it flushes nothing more) and wait for it."""
        if self.closed:
            return
        self.closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            fd = self.socket.fileno()
            if _running_loop() is loop:
                loop.remove_reader(fd)
            else:  # the loop's own thread removes it (a closed socket's is dropped anyway)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(loop.remove_reader, fd)
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.socket.close()


def available(io: object) -> bool:
    """Whether a journal writing through `io` may be flushed by a syncer: only the real
    file calls (a test's faulty ones must fail in-process, where it injects them)."""
    return io is os


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
