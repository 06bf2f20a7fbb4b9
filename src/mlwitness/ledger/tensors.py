"""The decoded tensors of a recorded ModelInfer call, read back from its stored bytes.

Used for records whose in-memory tensors are gone: those journaled but not loaded before a
crash, and every record the ledger's table builder process (ledger/tabler.py) tabulates.
Light on purpose (protobuf and numpy, no gRPC or DuckDB): that child process imports it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from google.protobuf.message import DecodeError

from mlwitness.codec import Tensor, decode_inputs, decode_outputs
from mlwitness.errors import MlwitnessError
from mlwitness.ledger.record import Record
from mlwitness.protocol import inference as pb


def parameter_text(parameters: Any) -> dict[str, str]:
    """A v2 parameters map as text, e.g. {"age_band": "26-40", "priority": "3"}."""
    out = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = "" if kind is None else str(getattr(value, kind))
    return out


def decode_record_tensors(record: Record) -> tuple[list[Tensor], list[Tensor], dict[str, str]]:
    """Decoded inputs, outputs and request parameters of a stored ModelInfer record (for
    records journaled but not loaded before a crash). Undecodable parts come back empty."""
    if record.kind != "infer":
        return [], [], {}
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []
    parameters: dict[str, str] = {}
    with contextlib.suppress(DecodeError, MlwitnessError):
        request = pb.ModelInferRequest.FromString(record.request)
        parameters = parameter_text(request.parameters)
        inputs = decode_inputs(request, size=len(record.request))
    if record.status == "OK" and record.response:
        with contextlib.suppress(DecodeError, MlwitnessError):
            outputs = decode_outputs(pb.ModelInferResponse.FromString(record.response),
                                     size=len(record.response))
    return inputs, outputs, parameters
