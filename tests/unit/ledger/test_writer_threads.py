"""What the ledger writer's threads see of each other: the chain head read while a write is
under way, DuckDB writes and cursors asked for while the ledger closes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlwitness.errors import LedgerUnavailable
from mlwitness.ledger.record import Record
from mlwitness.ledger.writer import LedgerWriter, WriterOptions


def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {within_s} s"
        time.sleep(0.01)


def opened(path: Path) -> LedgerWriter:
    writer = LedgerWriter(path, WriterOptions(load_interval_s=3600))
    writer.open()
    return writer


def test_head_is_a_durable_records_seq_and_hash_while_a_write_hands_over(
    tmp_path: Path,
) -> None:
    writer = opened(tmp_path / "ledger.duckdb")
    try:
        writer.append_blocking(Record(request_id="r0"))
        # Holding the loader's condition stops the next write at its hand-over to the
        # loader: written and flushed, its head moved, not yet acknowledged.
        with writer._loader.cond:
            appender = threading.Thread(target=writer.append_blocking,
                                        args=(Record(request_id="r1"),))
            appender.start()
            wait_until(lambda: writer._chain.head_seq == 2)
            seen = writer.head
        appender.join(10)
        writer.sync(timeout=10)
        stored = writer.cursor().execute("SELECT seq, hash FROM entries").fetchall()
    finally:
        writer.close()
    assert seen in {(seq, bytes(digest)) for seq, digest in stored}


def test_a_duckdb_write_handed_over_while_the_ledger_closes_is_refused_at_once(
    tmp_path: Path,
) -> None:
    # A thread that outlived its cancelled task (a model-file poll storing the model) can
    # hand a write over after the loader has ended; nobody would run it.
    writer = opened(tmp_path / "ledger.duckdb")
    outcome: list[BaseException] = []
    close_journal = writer._chain.journal.close

    def late_write(**kwargs: Any) -> None:  # close() is past its loader here
        try:
            writer.write(lambda con: None, timeout=5)
        except Exception as exc:
            outcome.append(exc)
        close_journal(**kwargs)

    writer._chain.journal.close = late_write  # type: ignore[method-assign]
    writer.close()
    assert [type(exc) for exc in outcome] == [LedgerUnavailable]
    assert "shutting down" in str(outcome[0])


def test_a_cursor_asked_for_after_close_is_refused_as_unavailable(tmp_path: Path) -> None:
    writer = opened(tmp_path / "ledger.duckdb")
    writer.close()
    with pytest.raises(LedgerUnavailable, match="not open"):
        writer.cursor()


class WatchedLock:
    """A lock that tells when a thread begins waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = threading.Event()

    def __enter__(self) -> WatchedLock:
        self.waiting.set()
        self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_cursor_asked_for_while_duckdb_is_opened_again_is_refused_as_unavailable(
    tmp_path: Path,
) -> None:
    writer = opened(tmp_path / "ledger.duckdb")
    watched = writer._db.read_lock = WatchedLock()  # type: ignore[assignment]
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            writer.cursor().close()
        except Exception as exc:
            outcome.append(exc)

    try:
        with watched.lock:
            reader = threading.Thread(target=ask)
            reader.start()
            assert watched.waiting.wait(10)
            writer._db.read_root = None  # as reopen() leaves it while DuckDB is opened again
        reader.join(10)
    finally:
        writer.close()
    assert [type(exc) for exc in outcome] == [LedgerUnavailable]
