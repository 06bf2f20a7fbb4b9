"""Forwarding backend: the caller's exact request bytes go to an upstream v2 gRPC server
(Triton, KServe, MLServer…); its answer — or its error, with its own status code and
message — comes back unchanged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mlwitness.codec import INLINE_BYTES, Tensor, decode_outputs
from mlwitness.errors import UpstreamError
from mlwitness.inference.backends import Call, Inference
from mlwitness.protocol import inference as pb

log = logging.getLogger(__name__)

_METHOD = "/inference.GRPCInferenceService/"
RECONNECT_MS = (500, 1000, 2000)  # initial, minimum (also a connect's time limit), maximum


def _id_field(request_id: str) -> bytes:
    """Protobuf encoding of ModelInferResponse.id (field 3). Appended to a serialized
    message it overrides any earlier value (last one wins), leaving the upstream's bytes
    untouched before it."""
    data = request_id.encode()
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x1a" + bytes(varint) + data


class UpstreamBackend:
    mode = "forwarding"

    def __init__(self, target: str, *, default_timeout: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target = target
        self.default_timeout = default_timeout
        options = [("grpc.max_receive_message_length", -1),
                   ("grpc.max_send_message_length", -1),
                   # gRPC's defaults back off up to 120 s between reconnects and give a
                   # connect 20 s: an upstream back after an outage (or a Triton still
                   # loading at start) was seen 12-54 s late, and a black-holed one held
                   # calls ~20 s. Reconnect within 2 s; a connect attempt gets 1 s.
                   ("grpc.initial_reconnect_backoff_ms", RECONNECT_MS[0]),
                   ("grpc.min_reconnect_backoff_ms", RECONNECT_MS[1]),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_MS[2])]
        self._channel = (grpc.aio.insecure_channel(target, options=options) if credentials is None
                         else grpc.aio.secure_channel(target, credentials, options=options))
        self._calls = {
            name: self._channel.unary_unary(_METHOD + name)  # bytes in, bytes out
            for name in ("ModelInfer", "ModelMetadata", "ServerReady")
        }

    async def _call(self, name: str, raw: bytes, timeout: float | None, metadata=()) -> bytes:
        try:
            return await self._calls[name](
                raw, timeout=timeout or self.default_timeout, metadata=metadata or None
            )
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(exc.code().name, exc.details() or "") from exc

    def admit(self, request: Any) -> None:
        """Nothing: the upstream judges the names (the sizes are checked for all modes)."""

    def check(self, request: Any, inputs: list[Tensor]) -> None:
        """Nothing: the upstream judges the request (and its errors are passed back)."""

    async def infer(self, call: Call) -> Inference:
        response = await self._call("ModelInfer", call.raw, call.timeout, call.metadata)
        if not call.request.id:
            response += _id_field(call.request_id)
        if not call.decode_outputs:
            return Inference(response, None)
        if len(response) > INLINE_BYTES:  # a large answer is read off the event loop
            return Inference(response, await asyncio.to_thread(_outputs, response))
        return Inference(response, _outputs(response))

    async def ready(self) -> bool:
        """Whether the upstream says it is ready; False for any failure to say so (an
        error, or an answer that is not a ServerReadyResponse)."""
        try:
            raw = await self._call("ServerReady", b"", 2.0)
            return bool(pb.ServerReadyResponse.FromString(raw).ready)
        except UpstreamError:
            return False
        except DecodeError:
            log.warning("upstream %s answered ServerReady with bytes that are not a "
                        "ServerReadyResponse; treating it as not ready", self.target)
            return False

    async def model_metadata(self, raw: bytes, timeout: float | None) -> bytes | None:
        return await self._call("ModelMetadata", raw, timeout)  # errors pass unchanged

    async def close(self) -> None:
        await self._channel.close()


def _outputs(response: bytes) -> list[Tensor]:
    try:
        return decode_outputs(pb.ModelInferResponse.FromString(response), size=len(response))
    except Exception:  # an odd upstream answer still reaches the caller; bytes are kept
        return []
