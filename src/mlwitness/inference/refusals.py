"""Calls refused before they are read (no or unknown credentials, a role too low), tallied.

One chained record per refused call let a single client without a token add ~1,000 records
(~1.1 KiB each) a second to the ledger. Instead, per interval (INTERVAL_S) and per
(caller, status, message):

* the first refusal is recorded at once, as before: its caller's answer waits for the
  record, so a refusal from a new caller is on the ledger as soon as anyone is told of it;
* the others are answered at once and only counted; one record holds their tally when the
  interval ends (or at shutdown): how many, their bytes in total, the first and last time,
  and a digest of what they sent (the bytes themselves are never kept).

What a refused call sent is proven by a digest of it (`proof`): with data minimisation
and a hash key, its HMAC under that key (Minimiser.proof), since an unkeyed digest of a
request would give back values the ledger withholds to whoever tries candidates against
it; without minimisation, its SHA-256 (`sha256_proof`); with minimisation but no key,
nothing. The audit port tallies its refused questions the same way, per RPC too.

Memory is bounded: at most MAX_KEYS tallies an interval; refusals beyond them are tallied
together per status under the caller OTHER_CALLERS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mlwitness.ledger.record import Record, with_detail

log = logging.getLogger(__name__)

INTERVAL_S = 10.0
MAX_KEYS = 256
OTHER_CALLERS = "(other callers)"

Key = tuple[str, str, str, tuple[tuple[str, str], ...]]  # caller, status, message, about
KEYED_PROOF = "received_hmac_sha256"  # Minimiser.proof's


def sha256_proof(received: bytes) -> dict[str, str]:
    """The digest a refusal keeps of what was sent when nothing in it is to be withheld
    (no data minimisation): its SHA-256."""
    return {"received_sha256": hashlib.sha256(received).hexdigest()}


@dataclass
class Tally:
    """The refusals of one key after its first in the interval."""

    calls: int = 0
    received_bytes: int = 0
    first_us: int = 0
    last_us: int = 0
    # SHA-256 over the digests of the requests (their proofs), in the order they were
    # tallied: whoever kept the requests (and the key) can show they are the ones counted.
    digest: Any = field(default_factory=hashlib.sha256)
    proven: str = ""  # the kind of proof digested ("" when none was kept)

    def add(self, received_us: int, size: int, proof: dict[str, str]) -> None:
        if not self.calls:
            self.first_us = received_us
        self.calls += 1
        self.received_bytes += size
        self.last_us = received_us
        for kind, digest in proof.items():
            self.proven = kind
            self.digest.update(bytes.fromhex(digest))


class Refusals:
    """The tallies of the current interval. `write` appends a record to the ledger;
    `blank` makes a record carrying the served model's name, version, hash and environment."""

    def __init__(self, write: Callable[[Record], Awaitable[None]],
                 blank: Callable[[], Record], *, interval_s: float | None = None,
                 max_keys: int = MAX_KEYS) -> None:
        self.write = write
        self.blank = blank
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        self.max_keys = max_keys
        self._tallies: dict[Key, Tally] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task] = set()

    def tally(self, record: Record, size: int, proof: dict[str, str], **about: str) -> bool:
        """Count a refusal (`record`: its caller, status, message and time; `proof`: the
        digest kept of what was sent, see the module's doc; `about`: more that tells
        refusals apart, e.g. the RPC, noted on their records). True when it was tallied for
        the interval's record; False when it is the first of its key in the interval, to
        be recorded now: its `detail` is then filled in."""
        noted = tuple(sorted(about.items()))
        key = (record.peer, record.status, record.message, noted)
        if key not in self._tallies and len(self._tallies) >= self.max_keys:
            key = (OTHER_CALLERS, record.status, "", noted)
        tally = self._tallies.get(key)
        if tally is not None:
            tally.add(record.received_us, size, proof)
            return True
        self._tallies[key] = Tally()
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.interval_s, self._end_interval)
        record.detail = with_detail(record.detail, refused_calls=1, received_bytes=size,
                                    **proof, **about)
        return False

    def _end_interval(self) -> None:
        self._timer = None
        tallies, self._tallies = self._tallies, {}
        records = [self._record(key, tally) for key, tally in tallies.items() if tally.calls]
        if records:
            task = asyncio.get_running_loop().create_task(self._write_all(records))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    def _record(self, key: Key, tally: Tally) -> Record:
        caller, status, message, about = key
        record = self.blank()
        record.peer, record.status = caller, status
        record.message = message or (f"refused calls from more than {self.max_keys} "
                                     "callers in one interval, tallied together")
        record.received_us, record.responded_us = tally.first_us, tally.last_us
        proven: dict[str, Any] = {}
        if tally.proven:
            proven["received_digest"] = tally.digest.hexdigest()
            if tally.proven == KEYED_PROOF:
                proven["keyed"] = True
        record.detail = with_detail(
            record.detail, refused_calls=tally.calls, received_bytes=tally.received_bytes,
            first_received_us=tally.first_us, last_received_us=tally.last_us,
            interval_s=self.interval_s, **proven, **dict(about))
        return record

    async def _write_all(self, records: list[Record]) -> None:
        outcomes = await asyncio.gather(*(self.write(r) for r in records),
                                        return_exceptions=True)
        for record, outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("the tally of %s %s refusals from %s could not be recorded: %s",
                          json.loads(record.detail)["refused_calls"], record.status,
                          record.peer, outcome)

    async def close(self) -> None:
        """End the interval now and wait until its tallies are on the ledger (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
        self._end_interval()
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)
