"""Model backends: where a decision is computed. Both implement `Backend`.

* `embedded.EmbeddedBackend` runs the ONNX model in-process with onnxruntime.
* `upstream.UpstreamBackend` forwards the caller's exact request bytes to a v2 gRPC server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mlwitness.codec import Tensor


@dataclass
class Inference:
    response: bytes  # the exact ModelInferResponse bytes the caller will receive
    # Decoded outputs; None when the call did not ask for them (`Call.decode_outputs`)
    outputs: list[Tensor] | None


@dataclass(frozen=True)
class Call:
    """One ModelInfer call as the backends see it."""

    request: Any  # parsed ModelInferRequest
    raw: bytes  # the bytes as received
    inputs: list[Tensor] | None  # decoded inputs (None if they could not be decoded)
    request_id: str  # the caller's id, or the one mlwitness assigned
    timeout: float | None  # seconds left of the caller's deadline
    metadata: tuple[tuple[str, str], ...]  # caller metadata to pass on
    checked: bool = False  # `Backend.check` already passed it
    # Whether the caller reads the decoded outputs (guards do). A backend whose answer
    # comes as bytes (forwarding) decodes them only then; the table builder decodes them
    # from the record's bytes anyway.
    decode_outputs: bool = True


class Backend(Protocol):
    """Contract: `infer` returns the response bytes to send, whose `id` is the call's
    request id; failures raise MlwitnessError subclasses (UpstreamError keeps an upstream
    server's own status code). `metadata`/`ready` answer the protocol's metadata RPCs."""

    mode: str  # "embedded" or "forwarding"

    async def infer(self, call: Call) -> Inference: ...

    def admit(self, request: Any) -> None:
        """Refuse (InvalidInput), from the parsed message alone and before its tensors are
        decoded, a request whose inputs cannot be the model's by their names: decoding
        thousands of tensors the model does not take would cost every caller."""
        ...

    def check(self, request: Any, inputs: list[Tensor]) -> None:
        """Refuse a request the model cannot take (InvalidInput), before guards judge it:
        a malformed call is answered as malformed, not as a guard breach."""
        ...

    async def ready(self) -> bool: ...

    async def model_metadata(self, raw: bytes, timeout: float | None) -> bytes | None:
        """The upstream's ModelMetadataResponse bytes, or None to answer locally."""
        ...

    async def close(self) -> None: ...
