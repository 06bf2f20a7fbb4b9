"""Data minimisation: inputs and request parameters stored hashed or redacted.

Some inputs are personal data the ledger should not keep as sent — a name or an account
number. For those listed in `--hash-inputs` each value is stored as HMAC-SHA-256 (hex) of
its bytes under `--hash-key`; for those in `--redact-inputs` it is stored as an empty value.
Outputs are stored as sent. The stored request is then re-encoded (same inputs, in order,
with those tensors as BYTES of the same shape) and the record's `detail` notes what was
changed. A request whose inputs cannot be decoded (so no value can be picked out of them)
is kept without any input, its parameters minimised; one that is not a ModelInferRequest
at all is not kept.

Nothing unkeyed that is derived from a minimised value may be stored: everything else of
the request is kept in clear, so a plain SHA-256 of the value — or of the whole request
as received — is reversed by trying candidates (10^6 account numbers × 4 age bands take
seconds). So:

* hashing needs a key of at least MIN_KEY_BYTES; plain SHA-256 only with the explicit,
  documented-as-weak `--hash-inputs-unkeyed`;
* the proof of the original (so whoever holds it can show it is the one recorded) is
  `received_hmac_sha256`, HMAC-SHA-256 of the exact bytes received under the same key —
  and with no key there is no proof at all (`--redact-inputs` alone keeps none, and so
  does unkeyed hashing).

Consequence for replay: a record whose minimised input the model actually uses cannot be
replayed (the value is gone); hashed values can still be compared for equality.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

import numpy as np

from mlwitness.codec import Tensor, decode_inputs, encode_inputs
from mlwitness.errors import ConfigError, MlwitnessError
from mlwitness.ledger.record import Record, with_detail
from mlwitness.ledger.rows import Tabulator
from mlwitness.protocol import inference as pb
from mlwitness.settings import MIN_KEY_BYTES, check_key

INPUTS_DROPPED = "inputs dropped: undecodable"  # the note on a request kept without inputs


class Minimiser:
    def __init__(self, redact: Iterable[str], hashed: Iterable[str],
                 key: bytes | None = None, tabulator: Tabulator | None = None, *,
                 unkeyed: bool = False) -> None:
        self.redact = frozenset(redact)
        self.hashed = frozenset(hashed)
        self.names = self.redact | self.hashed
        if key is not None:
            check_key(key)
        elif self.hashed and not unkeyed:
            raise ConfigError("--hash-inputs needs --hash-key: a plain SHA-256 of a name or "
                              "an account number is reversed by hashing candidates "
                              "(--hash-inputs-unkeyed accepts that, explicitly)")
        self.key = key  # HMAC key: without it, hashes of guessable values can be reversed
        self.tabulator = tabulator or Tabulator()  # names the SQL columns of a tensor

    def proof(self, received: bytes) -> dict[str, str]:
        """What a record may keep of the exact bytes received, so that whoever holds them
        can prove they are what was recorded: their HMAC under the hash key, or nothing.
        (An unkeyed digest would give back the minimised values to whoever tries
        candidates against it, the rest of the request being stored in clear.)"""
        if self.key is None:
            return {}
        return {"received_hmac_sha256": hmac.new(self.key, received,
                                                 hashlib.sha256).hexdigest()}

    def stored_parameter(self, name: str, value: str) -> str | None:
        """A request parameter's value as the records store it (what an erasure selects
        by): its HMAC (or SHA-256) for a parameter named in --hash-inputs, None for one in
        --redact-inputs (no record keeps it), else the value itself."""
        if name in self.redact:
            return None
        if name in self.hashed:
            return self._value(name, value.encode()).decode()
        return value

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
            record.detail = with_detail(record.detail, minimised="request dropped: undecodable",
                                        **self.proof(record.request))
            record.request = b""
            return
        touched = sorted(self.names & ({i.name for i in request.inputs}
                                       | set(request.parameters)))
        if not touched:
            return
        received = self.proof(record.request)
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
                except MlwitnessError:  # cannot pick the values out: keep no inputs
                    self._without_inputs(record, request, received)
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
        record.detail = with_detail(record.detail, minimised={
            "redacted": sorted(self.redact & set(touched)),
            "hashed": sorted(self.hashed & set(touched)), "columns": sorted(columns),
            **({"keyed": True} if self.key else {})}, **received)

    @staticmethod
    def _without_inputs(record: Record, request: Any, received: dict[str, str]) -> None:
        """Keep a request whose inputs cannot be decoded (so no value can be picked out of
        them) without any input: its other fields, the parameters minimised already, stay
        in the hashed bytes the record's `parameters` column is read from."""
        del request.inputs[:]
        del request.raw_input_contents[:]
        record.request = request.SerializeToString()
        record.detail = with_detail(record.detail, minimised=INPUTS_DROPPED, **received)


__all__ = ["MIN_KEY_BYTES", "Minimiser", "check_key"]
