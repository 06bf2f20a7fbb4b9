"""Content-addressed storage of models and environments inside the ledger."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import duckdb

from mlwitness.errors import DataLoss, FailedPrecondition, InvalidInput
from mlwitness.ledger import environment


@dataclass(frozen=True)
class StoredModel:
    sha256: str
    name: str
    version: str
    onnx: bytes
    signature: dict[str, Any]


def put_model(
    con: duckdb.DuckDBPyConnection, onnx: bytes, name: str, version: str, signature: dict
) -> str:
    """Store model bytes once under their SHA-256; return the hex digest."""
    sha = hashlib.sha256(onnx).hexdigest()
    con.execute(
        "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [sha, name, version, onnx, json.dumps(signature, sort_keys=True), _now_us()],
    )
    return sha


def get_model(con: duckdb.DuckDBPyConnection, sha256: str) -> StoredModel:
    """Load stored model bytes, checking them against their hash."""
    rows = con.execute(
        "SELECT name, version, onnx, signature FROM models WHERE sha256 = ?", [sha256]
    ).fetchall()
    if not rows:
        raise FailedPrecondition(f"model {sha256} is not in the ledger's model store")
    row = rows[0]
    onnx = bytes(row[2])
    if hashlib.sha256(onnx).hexdigest() != sha256:
        raise DataLoss(f"stored bytes of model {sha256} no longer match their SHA-256")
    return StoredModel(sha256, row[0], row[1], onnx, json.loads(row[3]))


MIN_PREFIX = 6  # hex digits of a model hash an auditor may abbreviate it to


def resolve_model(con: duckdb.DuckDBPyConnection, text: str) -> str:
    """The full SHA-256 of the stored model that `text` names: the hash in any case, or a
    prefix of at least MIN_PREFIX hex digits (as `audit list --model` takes and `audit show`
    prints). Raises InvalidInput for text that is not such a hash or prefix, or a prefix
    shared by several models; FailedPrecondition when no stored model matches."""
    sha = text.strip().lower()
    if not (MIN_PREFIX <= len(sha) <= 64) or any(c not in "0123456789abcdef" for c in sha):
        raise InvalidInput(f"{text[:80]!r} is not a model SHA-256 (64 hex digits) or a "
                           f"prefix of at least {MIN_PREFIX}")
    if len(sha) == 64:
        return sha
    found = [r[0] for r in con.execute(
        "SELECT sha256 FROM models WHERE starts_with(sha256, ?) ORDER BY sha256 LIMIT 6", [sha]
    ).fetchall()]
    if not found:
        raise FailedPrecondition(f"no model in the ledger's model store has a SHA-256 "
                                 f"starting {sha}")
    if len(found) > 1:
        raise InvalidInput(f"{sha} is the start of several stored models' SHA-256 "
                           f"({', '.join(f[:16] for f in found[:5])}...); give more digits")
    return str(found[0])


def put_environment(con: duckdb.DuckDBPyConnection, env: dict[str, Any]) -> str:
    env_id = environment.env_id(env)
    con.execute(
        "INSERT INTO environments VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [env_id, environment.canonical(env), _now_us()],
    )
    return env_id


def get_environment(con: duckdb.DuckDBPyConnection, env_id: str) -> dict[str, Any]:
    rows = con.execute(
        "SELECT fingerprint FROM environments WHERE env_id = ?", [env_id]
    ).fetchall()
    if not rows:
        raise FailedPrecondition(f"environment {env_id} is not in the ledger")
    return json.loads(rows[0][0])


def _now_us() -> int:
    return time.time_ns() // 1000
