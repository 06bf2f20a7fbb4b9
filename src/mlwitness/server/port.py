"""One listening gRPC port: the inference port, the audit port (in the sidecar and in
`mlwitness audit-server`) and the plaintext health port for probes are each a `GrpcPort`.

A port carries its service (behind call slots, wire/slots.py), grpc.health.v1 with the
port's readiness (and a `liveness` service where an orchestrator decides restarts), and
reflection; it binds with TLS (mTLS with a client CA) when a certificate is configured.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from mlwitness.errors import ConfigError
from mlwitness.protocol import inference as pb
from mlwitness.settings import Settings
from mlwitness.wire import security
from mlwitness.wire.slots import Slots, limited

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# A connection with no call open for this long is closed (callers reconnect on their next
# call); a vanished peer is found by a keepalive ping unanswered for PING_TIMEOUT_MS.
IDLE_CONNECTION_MS = 5 * 60 * 1000
PING_INTERVAL_MS = 60 * 1000
PING_TIMEOUT_MS = 20 * 1000
UNLIMITED_MS = 2**31 - 1  # gRPC's INT_MAX: no limit


def _ms(seconds: float) -> int:
    """Seconds as gRPC's int milliseconds (INT_MAX: no limit)."""
    return int(min(seconds * 1000, UNLIMITED_MS))


def connection_options(settings: Settings) -> list[tuple[str, Any]]:
    """What one connection may hold, and for how long. gRPC has no bound on the time from a
    call's headers to its request message: a stream that never sends one holds no call
    slot (wire/slots.py) but one of its connection's streams, until the connection's age
    and grace run out, or until its peer stops answering keepalive pings."""
    return [
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
        ("grpc.max_connection_age_ms", _ms(settings.max_connection_age or math.inf)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace)),
        ("grpc.keepalive_time_ms", PING_INTERVAL_MS),
        ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a connection that is silent
        ("grpc.so_reuseport", 0),
    ]


def grpc_server(settings: Settings) -> grpc.aio.Server:
    """A server for the inference or audit port. No `maximum_concurrent_rpcs`: gRPC counts a
    call against it from its headers on, so streams that never send a request would lock
    everyone out, health checks included. Call slots are wire/slots.py's, per service."""
    limit = max(2 * settings.max_request_bytes, settings.max_request_bytes + (1 << 20))
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            *connection_options(settings),
        ],
    )


class GrpcPort:
    """A gRPC server on one port with its health service. `ready` is what its health says
    of the server ("") and its service: None until first set (grpc.health starts "" at
    SERVING), so that the first `set_ready` always speaks."""

    def __init__(self, settings: Settings, server: grpc.aio.Server, services: Iterable[str],
                 *, tls: bool, liveness: bool, reflect: bool) -> None:
        self.settings = settings
        self.server = server
        self.services = tuple(services)
        self.tls = tls
        self.liveness = liveness
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if reflect:
            pb.add_file(health_pb2.DESCRIPTOR)
            pb.add_file(reflection_pb2.DESCRIPTOR)
            names = [*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, server, pool=pb.POOL)
        self.port = 0
        self.ready: bool | None = None

    @classmethod
    def carrying(cls, settings: Settings, service: str, handler: grpc.GenericRpcHandler,
                 *, liveness: bool) -> GrpcPort:
        """The port of one service, its calls limited to --max-concurrent-rpcs slots; TLS
        as configured; health and reflection."""
        server = grpc_server(settings)
        server.add_generic_rpc_handlers(
            (limited(handler, Slots(settings.max_concurrent_rpcs)),))
        return cls(settings, server, [service], tls=True, liveness=liveness, reflect=True)

    @classmethod
    def for_probes(cls, settings: Settings) -> GrpcPort:
        """Plaintext health only, for probes: Kubernetes gRPC probes cannot speak TLS, and
        no caller of the other ports can take what this server has (no slots are shared)."""
        server = grpc.aio.server(options=connection_options(settings))
        return cls(settings, server, (), tls=False, liveness=True, reflect=False)

    async def start(self, port: int) -> int:
        """Listen on --host:`port` (0: any free port) and serve; return the bound port."""
        self.port = self._bind(f"{self.settings.host}:{port}")
        await self.server.start()
        if self.liveness:
            await self.health.set("liveness", SERVING)
        return self.port

    def _bind(self, address: str) -> int:
        s = self.settings
        credentials = (security.server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
                       if self.tls else None)
        try:
            if credentials is None:
                return self.server.add_insecure_port(address)
            return self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc says only "Failed to bind to address …"
            raise ConfigError(f"cannot listen on {address}: the port is in use, or the host "
                              f"is not an address of this machine ({exc})") from None

    async def set_ready(self, ready: bool) -> None:
        """Say SERVING or NOT_SERVING for the server and its service, when that changed."""
        if ready == self.ready:
            return
        for name in ("", *self.services):
            await self.health.set(name, SERVING if ready else NOT_SERVING)
        self.ready = ready

    async def set_alive(self, alive: bool) -> None:
        if self.liveness:
            await self.health.set("liveness", SERVING if alive else NOT_SERVING)

    async def leave(self) -> None:
        """Every service NOT_SERVING from now on, for good: probes and balancers look away
        while the calls in flight drain."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace=grace)


async def stop_ports(ports: Iterable[GrpcPort | None], grace: float) -> None:
    """Health on every port says NOT_SERVING first, then all drain together (up to
    `grace` seconds)."""
    running = [port for port in ports if port is not None]
    for port in running:
        await port.leave()
    await asyncio.gather(*(port.stop(grace) for port in running))
