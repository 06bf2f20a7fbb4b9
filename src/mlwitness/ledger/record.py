"""One ledger record, its canonical encoding and its place in the hash chain.

    hash = SHA-256(prev_hash ‖ canonical(record))

`canonical` is a fixed-order, length-prefixed binary encoding of every stored field except
`prev_hash` and `hash` themselves. It is the journal's payload too, so the bytes that are
made durable are exactly the bytes that are hashed, and `decode` reads them back. Decoded
tensors (`inputs`, `outputs`) ride along in memory for the DuckDB loader; they are derived
from the request and response bytes and are not part of the encoding.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
HASH_SIZE = 32

_STR_FIELDS = (
    "kind",
    "request_id",
    "model_name",
    "model_version",
    "model_sha256",
    "env_id",
    "peer",
    "metadata",
    "status",
    "message",
    "violations",
    "detail",
)
_BYTES_FIELDS = ("request", "response")
_HEAD = struct.Struct(">BqqqI")  # version, seq, received_us, responded_us, field count
_LEN = struct.Struct(">I")


@dataclass(slots=True)
class Record:
    """A ledger entry. `kind` is "infer" for a ModelInfer call, "audit" for an audit-service
    question, "admin" for a change of guards or baselines. Timestamps are µs since the epoch
    (UTC). `model_sha256` and `env_id` are lowercase hex. `metadata`, `violations` and
    `detail` are JSON text ("" when empty)."""

    kind: str = "infer"
    request_id: str = ""
    received_us: int = 0
    responded_us: int = 0
    model_name: str = ""
    model_version: str = ""
    model_sha256: str = ""
    env_id: str = ""
    peer: str = ""
    metadata: str = ""
    status: str = "OK"
    message: str = ""
    violations: str = ""
    detail: str = ""
    request: bytes = b""
    response: bytes = b""
    seq: int = 0
    prev_hash: bytes = b""
    hash: bytes = b""
    # In memory only: decoded tensors for the columnar copy (lists of codec.Tensor).
    inputs: Any = field(default=None, repr=False, compare=False)
    outputs: Any = field(default=None, repr=False, compare=False)
    parameters: Any = field(default=None, repr=False, compare=False)  # request parameters


def encode(record: Record) -> bytes:
    """The canonical bytes of a record (everything but prev_hash and hash)."""
    parts = [
        _HEAD.pack(
            FORMAT_VERSION,
            record.seq,
            record.received_us,
            record.responded_us,
            len(_STR_FIELDS) + len(_BYTES_FIELDS),
        )
    ]
    for name in _STR_FIELDS:
        data = getattr(record, name).encode()
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    for name in _BYTES_FIELDS:
        data = getattr(record, name)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode(data: bytes | memoryview) -> Record:
    """Inverse of `encode`. Raises ValueError on bytes that are not a canonical record."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise ValueError("record too short")
    version, seq, received, responded, count = _HEAD.unpack_from(view, 0)
    if version != FORMAT_VERSION or count != len(_STR_FIELDS) + len(_BYTES_FIELDS):
        raise ValueError(f"unknown record format {version} with {count} fields")
    record = Record(seq=seq, received_us=received, responded_us=responded)
    offset = _HEAD.size
    for index, name in enumerate(_STR_FIELDS + _BYTES_FIELDS):
        if offset + _LEN.size > len(view):
            raise ValueError(f"record truncated in field {name}")
        (size,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if offset + size > len(view):
            raise ValueError(f"record truncated in field {name}")
        chunk = bytes(view[offset : offset + size])
        offset += size
        setattr(record, name, chunk.decode() if index < len(_STR_FIELDS) else chunk)
    if offset != len(view):
        raise ValueError("trailing bytes after record")
    return record


def with_detail(detail: str, **notes: Any) -> str:
    """A record's `detail` JSON with `notes` added. Several places note things on one
    record (the minimiser, a withheld response, a refusal's digest): each adds, none
    replaces what another wrote."""
    try:
        found = json.loads(detail) if detail else {}
    except ValueError:
        found = {}
    merged = found if isinstance(found, dict) else {}
    merged.update(notes)
    return json.dumps(merged, sort_keys=True)


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()


def genesis_hash(chain_id: str) -> bytes:
    """The `prev_hash` of a chain's first record: distinct for every ledger created."""
    return hashlib.sha256(b"mlwitness-chain-v1:" + chain_id.encode()).digest()
