"""Data minimisation: inputs and request parameters stored hashed or redacted.

Some inputs are personal data the ledger should not keep as sent — a name or an account
number. For those listed in `--hash-inputs` each value is stored as the SHA-256 (hex) of
its bytes (HMAC-SHA-256 under `--hash-key` when given: a plain hash of a name or an
account number can be reversed by guessing candidates); for those in `--redact-inputs` it
is stored as an empty value. Outputs are stored as sent. The stored
request is then re-encoded (same inputs, in order, with those tensors as BYTES of the same
shape), the record's `detail` notes what was changed and the SHA-256 of the request as
received — so whoever holds the original can still prove it is the one recorded.

Consequence for replay: a record whose minimised input the model actually uses cannot be
replayed (the value is gone); hashed values can still be compared for equality.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable

import numpy as np

from mlwitness.codec import Tensor, decode_inputs, encode_inputs
from mlwitness.errors import MlwitnessError
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.wire import inference as pb


class Minimiser:
    def __init__(self, redact: Iterable[str], hashed: Iterable[str],
                 key: bytes | None = None, tabulator: Tabulator | None = None) -> None:
        self.redact = frozenset(redact)
        self.hashed = frozenset(hashed)
        self.names = self.redact | self.hashed
        self.key = key  # HMAC key: without it, hashes of guessable values can be reversed
        self.tabulator = tabulator or Tabulator()  # names the SQL columns of a tensor

    def _value(self, name: str, data: bytes) -> bytes:
        if name in self.redact:
            return b""
        if self.key is not None:
            return hmac.new(self.key, data, hashlib.sha256).hexdigest().encode()
        return hashlib.sha256(data).hexdigest().encode()

    def _tensor(self, tensor: Tensor) -> Tensor:
        out = np.empty(tensor.array.shape, dtype=object)
        for index, value in np.ndenumerate(tensor.array):
            data = value if isinstance(value, bytes) else np.asarray(value).tobytes()
            out[index] = self._value(tensor.name, data)
        return Tensor(tensor.name, "BYTES", tensor.shape, out)

    def apply(self, record: Record) -> None:
        """Rewrite the record's stored request, decoded inputs and parameters in place."""
        if not self.names or not record.request:
            return
        try:
            request = pb.ModelInferRequest.FromString(record.request)
        except Exception:  # undecodable: nothing can be picked out, so keep nothing
            record.detail = json.dumps({"minimised": "request dropped: undecodable",
                                        "received_sha256": _sha(record.request)})
            record.request = b""
            return
        touched = sorted(self.names & ({i.name for i in request.inputs}
                                       | set(request.parameters)))
        if not touched:
            return
        received = _sha(record.request)
        for key in self.names & set(request.parameters):
            text = request.parameters[key].WhichOneof("parameter_choice")
            value = str(getattr(request.parameters[key], text)) if text else ""
            request.parameters[key].string_param = self._value(key, value.encode()).decode()
        if record.parameters:
            record.parameters = {k: (self._value(k, v.encode()).decode() if k in self.names
                                     else v) for k, v in record.parameters.items()}
        if self.names & {i.name for i in request.inputs}:
            inputs = record.inputs
            if inputs is None:
                try:
                    inputs = decode_inputs(request)
                except MlwitnessError:  # cannot pick the value out: keep no request bytes
                    record.detail = json.dumps({"minimised": "request dropped: undecodable "
                                                "inputs", "received_sha256": received})
                    record.request = b""
                    return
            inputs = [self._tensor(t) if t.name in self.names else t for t in inputs]
            raw = bool(request.raw_input_contents)
            del request.inputs[:]
            del request.raw_input_contents[:]
            encode_inputs(request, inputs, raw=raw)
            record.inputs = inputs
        record.request = request.SerializeToString()
        columns = set(self.names & set(request.parameters))
        for tensor in record.inputs or ():
            if tensor.name in self.names:
                columns.update(self.tabulator.columns_of(tensor.name, tensor.array.shape))
        record.detail = json.dumps({"minimised": {"redacted": sorted(self.redact & set(touched)),
                                                  "hashed": sorted(self.hashed & set(touched)),
                                                  "columns": sorted(columns),
                                                  **({"keyed": True} if self.key else {})},
                                    "received_sha256": received}, sort_keys=True)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["Minimiser"]
