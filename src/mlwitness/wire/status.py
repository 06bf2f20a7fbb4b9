"""The one place where errors become gRPC statuses.

Every RPC handler of both services is wrapped by `rpc`: domain errors (MlwitnessError)
abort with their status and message; anything else is logged with its traceback and the
caller gets INTERNAL with a generic message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mlwitness.errors import InvalidInput, MlwitnessError

log = logging.getLogger(__name__)


def code(status: str) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[status]
    except KeyError:
        return grpc.StatusCode.UNKNOWN


def parse(message_class: Any, raw: bytes) -> Any:
    try:
        return message_class.FromString(raw)
    except DecodeError as exc:
        name = message_class.DESCRIPTOR.name
        raise InvalidInput(f"the request is not a valid {name}: {exc}") from exc


def rpc(fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable:
    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except MlwitnessError as exc:
            if _gone(context, exc):  # gRPC has answered (or is answering) the caller
                raise asyncio.CancelledError from None  # itself: an abort would only fail
            await context.abort(code(exc.status), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the mlwitness log")

    return handler


def _gone(context: grpc.aio.ServicerContext, exc: MlwitnessError) -> bool:
    """Whether the call is over for gRPC already: cancelled, or past its deadline (an
    inline model run can end after it, before the loop hears of the cancellation)."""
    if context.cancelled():
        return True
    remaining = context.time_remaining()
    return exc.status == "DEADLINE_EXCEEDED" and remaining is not None and remaining <= 0


def stream_rpc(fn: Callable[..., Any]) -> Callable:
    """`rpc` for server-streaming handlers (async generators)."""

    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(request, context):
                yield item
        except MlwitnessError as exc:
            await context.abort(code(exc.status), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the mlwitness log")

    return handler
