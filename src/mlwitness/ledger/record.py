"""One ledger record, its encodings and its place in the hash chain.

    hash = SHA-256(prev_hash ‖ hashed(record))

A record is written in one of two formats; the first byte of both of its encodings says
which. Every record a ledger writes is format 2; format 1 is what ledgers written before
it hold, and those records keep verifying and serving as they are.

**Format 1.** The hashed encoding is a fixed-order, length-prefixed binary encoding of
every stored field except `prev_hash` and `hash`, the request and response bytes included.
It is also what the journal stores.

**Format 2.** The payload of a record — what it holds about a person: the request bytes
(its parameters are inside), the response bytes, the guard violations (they quote values),
the status message (it may quote values) and `detail` (it may keep a withheld response or
an HMAC of the request) — is hashed only through a salted commitment to it, so that the
payload can be erased later without breaking the chain, any proof built on it, or the
hashes of later records:

    C = SHA-256("mlwitness-payload-v2" ‖ salt ‖ lp(message) ‖ lp(violations) ‖ lp(detail)
                ‖ lp(request) ‖ lp(response))

with `salt` 16 random bytes of the record's own and lp(x) = u32 length (big-endian) ‖ x.
Without the salt the commitment says nothing about the payload, not even to someone who
can guess it; erasure deletes the salt with the payload. The hashed encoding carries C in
place of the payload fields; the stored encoding (the journal's) carries the salt and the
payload, and the hashed encoding is derived from it, so a journal tail holds everything
needed to rebuild its records. An erased record keeps C (`payload_commitment`) and no
salt or payload. The byte layouts (docs/ledger.md, "Record formats", says the same):

    head(v, n)  = u8 v ‖ i64 seq ‖ i64 received_us ‖ i64 responded_us ‖ u32 n   (big-endian)
    clear       = lp(kind) ‖ lp(request_id) ‖ lp(model_name) ‖ lp(model_version)
                  ‖ lp(model_sha256) ‖ lp(env_id) ‖ lp(peer) ‖ lp(metadata) ‖ lp(status)
    payload     = lp(message) ‖ lp(violations) ‖ lp(detail) ‖ lp(request) ‖ lp(response)

    format 1, hashed and stored   head(1, 14) ‖ clear ‖ payload
    format 2, hashed              head(2, 10) ‖ clear ‖ lp(C)
    format 2, stored              head(2, 15) ‖ clear ‖ lp(salt) ‖ payload

Text fields are UTF-8. Decoded tensors (`inputs`, `outputs`) ride along in memory for the
DuckDB loader; they are derived from the request and response bytes and are in no
encoding.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

FORMAT_V1 = 1
FORMAT_V2 = 2
FORMAT_VERSION = FORMAT_V2  # the format every new record is written in
HASH_SIZE = 32
SALT_SIZE = 16
PAYLOAD_DOMAIN = b"mlwitness-payload-v2"

CLEAR_FIELDS = (
    "kind",
    "request_id",
    "model_name",
    "model_version",
    "model_sha256",
    "env_id",
    "peer",
    "metadata",
    "status",
)
PAYLOAD_TEXT = ("message", "violations", "detail")
PAYLOAD_BYTES = ("request", "response")
PAYLOAD_FIELDS = PAYLOAD_TEXT + PAYLOAD_BYTES
_TEXT_FIELDS = CLEAR_FIELDS + PAYLOAD_TEXT
_V1_COUNT = len(CLEAR_FIELDS) + len(PAYLOAD_FIELDS)  # 14
_V2_HASHED_COUNT = len(CLEAR_FIELDS) + 1  # 10
_V2_STORED_COUNT = len(CLEAR_FIELDS) + 1 + len(PAYLOAD_FIELDS)  # 15
_HEAD = struct.Struct(">BqqqI")  # version, seq, received_us, responded_us, field count
_LEN = struct.Struct(">I")
_SALT_LEN = _LEN.pack(SALT_SIZE)
_HASH_LEN = _LEN.pack(HASH_SIZE)


@dataclass(slots=True)
class Record:
    """A ledger entry. `kind` is "infer" for a ModelInfer call, "audit" for an audit-service
    question, "admin" for a change of guards or baselines, or an erasure. Timestamps are µs
    since the epoch (UTC). `model_sha256` and `env_id` are lowercase hex. `metadata`,
    `violations` and `detail` are JSON text ("" when empty).

    `format` is the record's format (1 or 2; new records are 2), `salt` its 16 random bytes
    (format 2; set by the writer as it chains the record), `payload_commitment` the stored
    commitment C of an erased record (b"" while the payload is kept: C is then computed
    from it) and `erased_by` the seq of the admin record that erased it (0: not erased)."""

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
    format: int = FORMAT_VERSION
    salt: bytes = b""
    payload_commitment: bytes = b""
    erased_by: int = 0
    # In memory only: decoded tensors for the columnar copy (lists of codec.Tensor).
    inputs: Any = field(default=None, repr=False, compare=False)
    outputs: Any = field(default=None, repr=False, compare=False)
    parameters: Any = field(default=None, repr=False, compare=False)  # request parameters

    @property
    def erased(self) -> bool:
        return bool(self.payload_commitment)


def _lp(parts: list[bytes], data: bytes) -> None:
    parts.append(_LEN.pack(len(data)))
    parts.append(data)


def _clear(record: Record) -> list[bytes]:
    parts: list[bytes] = []
    for name in CLEAR_FIELDS:
        _lp(parts, getattr(record, name).encode())
    return parts


def _payload(record: Record) -> list[bytes]:
    parts: list[bytes] = []
    _lp(parts, record.message.encode())
    _lp(parts, record.violations.encode())
    _lp(parts, record.detail.encode())
    _lp(parts, record.request)
    _lp(parts, record.response)
    return parts


def _head(record: Record, version: int, count: int) -> bytes:
    return _HEAD.pack(version, record.seq, record.received_us, record.responded_us, count)


def encodings(record: Record) -> tuple[bytes, bytes]:
    """(stored, hashed): the bytes the journal keeps of a record and the bytes its chain
    hash covers. The commit path runs this for every record, so it is written out field
    by field: each is encoded once for both encodings, with no loop or call per field
    (a loop over the fields cost a third more; `python bench/bench_record.py`)."""
    if record.format == FORMAT_V1:
        data = encode_v1(record)
        return data, data
    if record.format != FORMAT_V2:
        raise ValueError(f"unknown record format {record.format}")
    salt = record.salt
    if len(salt) != SALT_SIZE:
        raise ValueError(f"record seq {record.seq} (format 2) has no {SALT_SIZE}-byte salt")
    n = _LEN.pack
    kind, request_id = record.kind.encode(), record.request_id.encode()
    model_name, model_version = record.model_name.encode(), record.model_version.encode()
    model_sha256, env_id = record.model_sha256.encode(), record.env_id.encode()
    peer, metadata, status = record.peer.encode(), record.metadata.encode(), record.status.encode()
    message, violations = record.message.encode(), record.violations.encode()
    detail, request, response = record.detail.encode(), record.request, record.response
    clear = b"".join((
        n(len(kind)), kind, n(len(request_id)), request_id, n(len(model_name)), model_name,
        n(len(model_version)), model_version, n(len(model_sha256)), model_sha256,
        n(len(env_id)), env_id, n(len(peer)), peer, n(len(metadata)), metadata,
        n(len(status)), status))
    payload = b"".join((
        n(len(message)), message, n(len(violations)), violations, n(len(detail)), detail,
        n(len(request)), request, n(len(response)), response))
    seq, received, responded = record.seq, record.received_us, record.responded_us
    stored = b"".join((_HEAD.pack(FORMAT_V2, seq, received, responded, _V2_STORED_COUNT),
                       clear, _SALT_LEN, salt, payload))
    digest = hashlib.sha256(PAYLOAD_DOMAIN + salt + payload).digest()
    hashed = b"".join((_HEAD.pack(FORMAT_V2, seq, received, responded, _V2_HASHED_COUNT),
                       clear, _HASH_LEN, digest))
    return stored, hashed


def encode(record: Record) -> bytes:
    """The bytes a record's chain hash covers (its hashed encoding, by its format)."""
    if record.format == FORMAT_V2 and record.payload_commitment:
        return hashed_v2(record, record.payload_commitment)
    return encodings(record)[1]


def encode_v1(record: Record) -> bytes:
    """A format-1 record's encoding (hashed and stored alike)."""
    return b"".join([_head(record, FORMAT_V1, _V1_COUNT), *_clear(record), *_payload(record)])


def hashed_v2(record: Record, commitment: bytes) -> bytes:
    """The hashed encoding of a format-2 record whose payload commitment is `commitment`."""
    if len(commitment) != HASH_SIZE:
        raise ValueError(f"a payload commitment is {HASH_SIZE} bytes, not {len(commitment)}")
    return b"".join([_head(record, FORMAT_V2, _V2_HASHED_COUNT), *_clear(record),
                     _LEN.pack(HASH_SIZE), commitment])


def commitment(record: Record) -> bytes:
    """The payload commitment C of a format-2 record: stored once it is erased, else
    computed from its salt and payload. ValueError for a record that has neither."""
    if record.payload_commitment:
        return record.payload_commitment
    if len(record.salt) != SALT_SIZE:
        raise ValueError(f"record seq {record.seq} has neither a salt nor a stored commitment")
    return hashlib.sha256(PAYLOAD_DOMAIN + record.salt + b"".join(_payload(record))).digest()


def decode(data: bytes | memoryview) -> Record:
    """A record from its stored encoding (format 1, or format 2 with its salt and payload).
    Raises ValueError on bytes that are not one."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise ValueError("record too short")
    version, seq, received, responded, count = _HEAD.unpack_from(view, 0)
    names: tuple[str, ...]
    if version == FORMAT_V1 and count == _V1_COUNT:
        names = CLEAR_FIELDS + PAYLOAD_FIELDS
    elif version == FORMAT_V2 and count == _V2_STORED_COUNT:
        names = (*CLEAR_FIELDS, "salt", *PAYLOAD_FIELDS)
    else:
        raise ValueError(f"unknown record format {version} with {count} fields")
    record = Record(seq=seq, received_us=received, responded_us=responded, format=version)
    offset = _HEAD.size
    for name in names:
        if offset + _LEN.size > len(view):
            raise ValueError(f"record truncated in field {name}")
        (size,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if offset + size > len(view):
            raise ValueError(f"record truncated in field {name}")
        chunk = bytes(view[offset : offset + size])
        offset += size
        setattr(record, name, chunk.decode() if name in _TEXT_FIELDS else chunk)
    if offset != len(view):
        raise ValueError("trailing bytes after record")
    if version == FORMAT_V2 and len(record.salt) != SALT_SIZE:
        raise ValueError(f"record seq {seq} has a {len(record.salt)}-byte salt, not "
                         f"{SALT_SIZE}")
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
