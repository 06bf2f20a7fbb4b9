"""A bare proxy hop: the baseline the sidecar's forwarding mode is measured against.

    python bench/bare_proxy.py --upstream 127.0.0.1:PORT [--port 0]

grpc.aio, one generic handler for every unary method of `inference.GRPCInferenceService`:
the caller's request bytes go to the upstream unchanged, the upstream's answer bytes come
back unchanged, and an upstream error comes back with its own status code, message and
trailing metadata. The caller's metadata goes along (without the `:`/`grpc-` headers and
`user-agent`, which the channel sets itself), and so does its deadline. Nothing is parsed,
checked or recorded. This is what `mlwitness serve --upstream` does per call, less
everything mlwitness adds: the difference between the two is what the witness costs in
front of Triton, KServe or MLServer.

The channel has the same options as the sidecar's upstream channel. Response headers are
not relayed (the sidecar does not relay them either). Prints `{"event": "ready", "host":
..., "port": ..., "upstream": ...}` on stdout when serving and exits 0 on SIGTERM/SIGINT.
A benchmark baseline, not a product.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable

import grpc

PREFIX = "/inference.GRPCInferenceService/"
# As the sidecar's upstream channel (mlwitness.inference.backends.upstream), so both hops
# differ only in what runs between receiving and forwarding.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _forwardable(metadata: object) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (key, value)
        for key, value in (metadata or ())  # type: ignore[attr-defined]
        if not key.startswith((":", "grpc-")) and key != "user-agent"
    )


class Hop(grpc.GenericRpcHandler):
    """Hands every method of the service to the upstream, bytes in and bytes out."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if not method.startswith(PREFIX):
            return None
        handler = self.handlers.get(method)
        if handler is None:
            handler = grpc.unary_unary_rpc_method_handler(self._forward(method))
            self.handlers[method] = handler
        return handler

    def _forward(
        self, method: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        call = self.channel.unary_unary(method)  # no serializers: bytes pass as they are

        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = _forwardable(context.invocation_metadata())
            try:
                return await call(
                    raw, timeout=context.time_remaining(), metadata=metadata or None
                )
            except grpc.aio.AioRpcError as exc:
                trailing = _forwardable(exc.trailing_metadata())
                await context.abort(exc.code(), exc.details() or "", trailing)
                raise  # abort raises; this only tells type checkers so

        return forward


async def serve(args: argparse.Namespace) -> None:
    channel = grpc.aio.insecure_channel(args.upstream, options=CHANNEL_OPTIONS)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((Hop(channel),))
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        json.dumps({"event": "ready", "host": args.host, "port": port, "upstream": args.upstream}),
        flush=True,
    )
    await stop.wait()
    await server.stop(grace=2.0)
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="host:port of the upstream v2 server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
