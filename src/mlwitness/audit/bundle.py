"""The evidence bundle of one decision: everything a third party needs to check it offline.

One JSON document, format "mlwitness-evidence/1" (docs/evidence.md, "Evidence bundle",
gives every field and how to check it): the record's fields as its hashed bytes take them,
its salt, `prev_hash` and `hash`; the inputs and outputs decoded from its request and
response bytes; the model's SHA-256 (and its ONNX bytes on request); the environment
fingerprint; the guard version and baseline in force, with the admin records that put them
on the chain; an inclusion proof of every record it holds in the latest checkpoint, and
that checkpoint's signed note.

This is the producer. The verifier (`mlwitness.evidence.bundle_check`) is written from the
spec and shares nothing with this module, so that each checks the other.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np

from mlwitness import codec
from mlwitness.errors import FailedPrecondition, MlwitnessError, TooLarge
from mlwitness.ledger import checkpoints, environment
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import CLEAR_FIELDS, FORMAT_V1, PAYLOAD_TEXT, Record
from mlwitness.protocol import inference as pb

FORMAT = "mlwitness-evidence/1"
_ACTIONS = ("guards", "baseline")  # admin records whose latest before a decision it cites


def build(reader: LedgerReader, seq: int, *, with_model: bool, max_model_bytes: int
          ) -> dict[str, Any]:
    """The bundle of record `seq` (already found, not erased), proven in the latest
    checkpoint. FailedPrecondition when no checkpoint covers it yet; TooLarge when
    `with_model` and the model exceeds `max_model_bytes`."""
    record = reader.get(seq=seq, rows=False).record
    con = reader.stored_cursor()
    try:
        latest = checkpoints.latest(con)
        if latest is None or latest.size < seq:
            have = f"the latest is of size {latest.size}" if latest else "there is none yet"
            raise FailedPrecondition(
                f"no checkpoint covers record seq {seq} yet ({have}): a bundle proves a "
                "record in a signed checkpoint; ask again after the next one "
                "(--checkpoint-interval)")
        cited = {action: _latest_admin(reader, con, action, seq) for action in _ACTIONS}
        proven = [record, *(r for r in cited.values() if r is not None)]
        proofs = [checkpoints.prove_record(con, r.seq, latest.size).inclusion for r in proven]
    finally:
        con.close()
    signatures = checkpoints.read_note(latest.note)[1]
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "record": record_part(record, proofs[0].hashes, latest.size),
        "decoded": decoded(record),
        "model": _model(reader, record.model_sha256, with_model, max_model_bytes),
        "environment": _environment(reader, record.env_id),
        "guards": guards_part(cited["guards"]),
        "baseline": baseline_part(cited["baseline"]),
        "context": [record_part(r, p.hashes, latest.size)
                    for r, p in zip(proven[1:], proofs[1:], strict=True)],
        "checkpoint": {"note": latest.note, "key_id": checkpoints.key_names(signatures)},
    }
    return bundle


def dumps(bundle: dict[str, Any]) -> bytes:
    """The bundle's bytes: JSON, keys in a fixed order, ASCII only, one trailing newline."""
    return (json.dumps(bundle, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()


def record_part(record: Record, hashes: tuple[bytes, ...], tree_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"format": record.format, "seq": record.seq,
                           "received_us": record.received_us,
                           "responded_us": record.responded_us}
    for name in (*CLEAR_FIELDS, *PAYLOAD_TEXT):
        out[name] = getattr(record, name)
    out["request"] = base64.b64encode(record.request).decode()
    out["response"] = base64.b64encode(record.response).decode()
    if record.format != FORMAT_V1:
        out["salt"] = record.salt.hex()
    out["prev_hash"] = record.prev_hash.hex()
    out["hash"] = record.hash.hex()
    out["proof"] = {"leaf_index": record.seq - 1, "tree_size": tree_size,
                    "hashes": [h.hex() for h in hashes]}
    return out


def _latest_admin(reader: LedgerReader, con: Any, action: str, before: int
                  ) -> Record | None:
    """The newest admin record before seq `before` whose action is `action` (the guard
    version or baseline in force when that record was made), None if none."""
    rows = con.execute(
        "SELECT seq, detail FROM entries WHERE kind = 'admin' AND seq < ? "
        "AND erased_by IS NULL AND detail LIKE ? ORDER BY seq DESC LIMIT 16",
        [before, f'%"action": "{action}"%']).fetchall()
    for seq, detail in rows:  # LIKE narrows; the parsed detail decides
        if _detail(detail).get("action") == action:
            return reader.get(seq=int(seq), rows=False).record
    return None


def _detail(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def guards_part(record: Record | None) -> dict[str, Any] | None:
    if record is None:
        return None
    detail = _detail(record.detail)
    return {"seq": record.seq, "sha256": detail.get("sha256", ""),
            "mode": detail.get("mode", ""), "config": detail.get("config", {})}


def baseline_part(record: Record | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"seq": record.seq, "sha256": _detail(record.detail).get("sha256", "")}


def _environment(reader: LedgerReader, env_id: str) -> str | None:
    """The fingerprint's canonical JSON, whose SHA-256 is the record's env_id."""
    if not env_id:
        return None
    return environment.canonical(reader.environment(env_id))


def _model(reader: LedgerReader, sha256: str, with_model: bool, limit: int
           ) -> dict[str, Any]:
    out: dict[str, Any] = {"sha256": sha256}
    if not with_model or not sha256:
        return out
    onnx = reader.model(sha256).onnx
    if len(onnx) > limit:
        raise TooLarge(f"model {sha256[:12]}… is {len(onnx)} bytes, over the limit of "
                       f"{limit} bytes for a bundle (--max-candidate-bytes): leave out "
                       "--with-model and hand the model over beside the bundle (the bundle "
                       "names its SHA-256)")
    out["onnx"] = base64.b64encode(onnx).decode()
    return out


def decoded(record: Record) -> dict[str, Any]:
    """The decoded tensors of a decision (an infer record); of any other record, none: its
    bytes are not v2 messages."""
    if record.kind != "infer":
        return {"inputs": None, "outputs": None}
    return {"inputs": decoded_part(record.request, inputs=True),
            "outputs": decoded_part(record.response, inputs=False)}


def decoded_part(data: bytes, *, inputs: bool) -> list[dict[str, Any]] | None:
    """Each tensor of the request (or response) bytes by name, as JSON values; None when
    the bytes are not a v2 message whose tensors decode (a refused call's)."""
    if not data:
        return None if inputs else []
    try:
        if inputs:
            tensors = codec.decode_inputs(pb.ModelInferRequest.FromString(data))
        else:
            tensors = codec.decode_outputs(pb.ModelInferResponse.FromString(data))
    except (MlwitnessError, ValueError, TypeError):
        return None
    except Exception as exc:  # protobuf's DecodeError
        if type(exc).__name__ != "DecodeError":
            raise
        return None
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
             "data": [_value(v, t.datatype) for v in np.asarray(t.array).ravel().tolist()]}
            for t in tensors]


def _value(value: Any, datatype: str) -> Any:
    """One element as JSON: BOOL true/false, integers as integers, floats as the shortest
    decimal that reads back to the same float64 (FP16 and FP32 widen exactly), NaN and the
    infinities as "NaN", "Infinity", "-Infinity", BYTES as base64."""
    if datatype == "BYTES":
        return base64.b64encode(value).decode()
    if datatype == "BOOL":
        return bool(value)
    if datatype.startswith("FP"):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return number
    return int(value)
