"""Call slots: how many calls a port works on at once (--max-concurrent-rpcs).

gRPC's own cap (`maximum_concurrent_rpcs`) counts a call from its headers on, before its
request has arrived, and counts every service of the server alike. Streams that open and
never send a request would hold every slot, health checks included: callers and probes
would get RESOURCE_EXHAUSTED from a client that sent nothing. Here a call takes a slot only
once its request is in hand (gRPC runs a unary handler only then), and only calls of the
port's own service take one: health and reflection never wait for a slot. What a single
connection can hold is bounded by gRPC itself (`grpc.max_concurrent_streams`, see
server/port.py).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mlwitness.errors import Overloaded
from mlwitness.wire.status import rpc, stream_rpc


class Slots:
    """A count of calls in progress with a ceiling. The event loop is the only user: no
    lock is needed between the check and the increment."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0

    def take(self) -> None:
        if self.busy >= self.limit:
            raise Overloaded(f"all {self.limit} call slots of this port are in use "
                             "(--max-concurrent-rpcs); try again shortly")
        self.busy += 1

    def give_back(self) -> None:
        self.busy -= 1


def limited(handler: grpc.GenericRpcHandler, slots: Slots) -> grpc.GenericRpcHandler:
    """`handler`'s methods, each call holding one of `slots` while its handler runs."""
    return _Limited(handler, slots)


class _Limited(grpc.GenericRpcHandler):
    def __init__(self, handler: grpc.GenericRpcHandler, slots: Slots) -> None:
        self.handler = handler
        self.slots = slots
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # by method: built once

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        known = self._wrapped.get(details.method)
        if known is not None:
            return known
        method = self.handler.service(details)
        if method is None:
            return None
        wrapped = self._wrap(method)
        self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, method: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        codec = {"request_deserializer": method.request_deserializer,
                 "response_serializer": method.response_serializer}
        if method.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                rpc(self._unary(method.unary_unary)), **codec)
        if method.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                stream_rpc(self._streaming(method.unary_stream)), **codec)
        raise TypeError("only unary-request methods take call slots")  # none other served

    def _unary(self, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        slots = self.slots

        @functools.wraps(behaviour)
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            slots.take()
            try:
                return await behaviour(request, context)
            finally:
                slots.give_back()

        return handler

    def _streaming(self, behaviour: Callable[..., AsyncIterator[Any]]
                   ) -> Callable[..., AsyncIterator[Any]]:
        slots = self.slots

        @functools.wraps(behaviour)
        async def handler(request: Any, context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[Any]:
            slots.take()
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                slots.give_back()

        return handler
