"""Which inference records a question is about: the WHERE clause shared by the record list,
replays of a range, and the drift, bias and violation windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Filters:
    """Which inference records. `caller` is a substring of the identity mlwitness
    established (the network peer, `token:NAME`, `mtls:SUBJECT`); `metadata` a substring
    of the recorded gRPC metadata, which the caller declares itself (`x-caller`): the two
    are never mixed, so a caller cannot pass for another by the metadata it sends."""

    since_us: int = 0
    until_us: int = 0
    model: str = ""
    status: str = ""
    caller: str = ""
    metadata: str = ""

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = ["kind = 'infer'"]
        params: list[Any] = []
        if self.since_us:
            clauses.append("received_us >= ?")
            params.append(self.since_us)
        if self.until_us:
            clauses.append("received_us < ?")
            params.append(self.until_us)
        if self.model:
            clauses.append("(model_name = ? OR starts_with(model_sha256, ?))")
            params += [self.model, self.model.lower()]
        if self.status:
            clauses.append("status = ?")
            params.append(self.status.upper())
        if self.caller:
            clauses.append("contains(peer, ?)")
            params.append(self.caller)
        if self.metadata:
            clauses.append("contains(metadata, ?)")
            params.append(self.metadata)
        return " AND ".join(clauses), params
