"""Content-addressed storage of models and environments inside the ledger."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import duckdb

from mlwitness.errors import DataLoss, FailedPrecondition
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
