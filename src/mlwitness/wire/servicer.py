"""gRPC servicer of the Open Inference Protocol: decode, call the service, encode.

Handlers take and return raw bytes (no generated stubs in between), so the ledger stores
exactly the bytes received and sent. RPCs not listed here answer UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

import grpc

from mlwitness import __version__
from mlwitness.auth import Authenticator
from mlwitness.errors import MlwitnessError
from mlwitness.inference.backends import Backend
from mlwitness.inference.service import Caller, InferenceService
from mlwitness.model.signature import Signature
from mlwitness.protocol import inference as pb
from mlwitness.wire.security import identify
from mlwitness.wire.status import parse, rpc

PLATFORM = "onnx_onnxv1"


class InferenceServicer:
    def __init__(
        self,
        service: InferenceService,
        backend: Backend,
        signature: Signature,
        record_metadata: list[str],
        is_ready: Any,
        auth: Authenticator | None = None,
        mtls: bool = False,
    ) -> None:
        self.service = service
        self.backend = backend
        self.signature = signature
        self.record_metadata = [k.lower() for k in record_metadata]
        self.is_ready = is_ready
        self.auth = auth or Authenticator(None, required_role="caller")
        self.mtls = mtls

    def _caller(self, context: grpc.aio.ServicerContext, rpc: str) -> Caller:
        """Who calls (raises Unauthenticated / PermissionDenied when access is required)."""
        metadata = context.invocation_metadata() or ()
        chosen = tuple(
            (k, v) for k, v in metadata
            if k in self.record_metadata and k != "authorization" and isinstance(v, str)
        )
        forward = tuple(
            (k, v) for k, v in metadata
            if not k.startswith((":", "grpc-")) and k not in ("user-agent", "authorization")
        )
        name, _ = identify(self.auth, context, rpc, mtls=self.mtls)
        network = context.peer() or ""
        if name != network:  # an identity: keep the network address beside it
            chosen = (*chosen, ("peer", network))
        return Caller(name, chosen, forward)

    async def ModelInfer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            caller = self._caller(context, "ModelInfer")
        except MlwitnessError as exc:  # refused before inference: still on the record
            who = getattr(exc, "caller", "") or context.peer() or ""
            await self.service.refuse(raw, Caller(who), exc)
            raise
        return await self.service.infer(raw, caller, context.time_remaining())

    async def ServerLive(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parse(pb.ServerLiveRequest, raw)
        self._caller(context, "ServerLive")
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def ServerReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parse(pb.ServerReadyRequest, raw)
        self._caller(context, "ServerReady")
        return pb.ServerReadyResponse(ready=self.is_ready()).SerializeToString()

    async def ModelReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse(pb.ModelReadyRequest, raw)
        self._caller(context, "ModelReady")
        self.service.check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.is_ready()).SerializeToString()

    async def ServerMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parse(pb.ServerMetadataRequest, raw)
        self._caller(context, "ServerMetadata")
        return pb.ServerMetadataResponse(
            name="mlwitness", version=__version__, extensions=["mlwitness_ledger"]
        ).SerializeToString()

    async def ModelMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse(pb.ModelMetadataRequest, raw)
        self._caller(context, "ModelMetadata")
        self.service.check_model(request.name, request.version)
        forwarded = await self.backend.model_metadata(raw, context.time_remaining())
        if forwarded is not None:
            return forwarded
        response = pb.ModelMetadataResponse(
            name=self.service.model_name,
            versions=[self.service.model_version],
            platform=PLATFORM,
        )
        for specs, target in ((self.signature.inputs, response.inputs),
                              (self.signature.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
        return response.SerializeToString()


RPCS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer")


def handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        pb.SERVICE,
        {name: grpc.unary_unary_rpc_method_handler(rpc(getattr(servicer, name)))
         for name in RPCS},
    )
