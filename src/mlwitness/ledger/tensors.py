"""The decoded tensors of a recorded ModelInfer call, read back from its stored bytes.

Used for records whose in-memory tensors are gone: those journaled but not loaded before a
crash, and every record the ledger's table builder process (ledger/tabler.py) tabulates.
Light on purpose (protobuf and numpy, no gRPC or DuckDB): that child process imports it.

A call that fails after the model ran (an output guard refused it, the caller's deadline
passed, the caller left while its record awaited the commit) sends no response, so its
record stores none; the response it would have had is kept in its `detail` instead
(`withheld_response`, base64), so that its outputs too are read back from hashed bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import Any

from google.protobuf.message import DecodeError

from mlwitness.codec import Tensor, decode_inputs, decode_outputs
from mlwitness.errors import MlwitnessError
from mlwitness.ledger.record import Record, with_detail
from mlwitness.protocol import inference as pb


def parameter_text(parameters: Any) -> dict[str, str]:
    """A v2 parameters map as text, e.g. {"age_band": "26-40", "priority": "3"}."""
    out = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = "" if kind is None else str(getattr(value, kind))
    return out


WITHHELD_RESPONSE = "withheld_response"  # the `detail` key


def withhold(record: Record, response: bytes) -> None:
    """Keep the response a failed call would have had in its record's `detail`, not as
    its response: it was not sent."""
    record.detail = with_detail(record.detail,
                                **{WITHHELD_RESPONSE: base64.b64encode(response).decode()})


def withheld_response(record: Record) -> bytes | None:
    """The response a failed call's record keeps in `detail` (b"" when it is not valid
    base64), or None when it keeps none (older ledgers, calls refused before the model
    ran)."""
    if WITHHELD_RESPONSE not in record.detail:  # cheap: most records have none
        return None
    try:
        detail = json.loads(record.detail)
    except ValueError:
        return None
    kept = detail.get(WITHHELD_RESPONSE) if isinstance(detail, dict) else None
    if not isinstance(kept, str):
        return None
    try:
        return base64.b64decode(kept, validate=True)
    except (binascii.Error, ValueError):
        return b""


def decode_record_tensors(record: Record) -> tuple[list[Tensor], list[Tensor], dict[str, str]]:
    """Decoded inputs, outputs and request parameters of a stored ModelInfer record: of
    its request, and of its response or, for a failed call, the response withheld.
    Undecodable parts come back empty."""
    if record.kind != "infer":
        return [], [], {}
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []
    parameters: dict[str, str] = {}
    with contextlib.suppress(DecodeError, MlwitnessError):
        request = pb.ModelInferRequest.FromString(record.request)
        parameters = parameter_text(request.parameters)
        inputs = decode_inputs(request, size=len(record.request))
    response = record.response if record.status == "OK" else withheld_response(record)
    if response:
        with contextlib.suppress(DecodeError, MlwitnessError):
            outputs = decode_outputs(pb.ModelInferResponse.FromString(response),
                                     size=len(response))
    return inputs, outputs, parameters
