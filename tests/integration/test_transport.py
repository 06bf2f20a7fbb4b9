"""Connections and call slots: streams that open and never send their request must not lock
out callers or probes; each connection may hold only so many streams, and lives only so long.

Real sidecars on 127.0.0.1. The idle streams are stream-unary calls on the unary methods'
paths whose request iterator never yields: the server sees a call's headers and then
nothing, as from a client that stalls (or means harm) after opening its streams.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import SidecarFactory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import AFFINE_B, AFFINE_W
from sidecar import RunningSidecar, free_ports
from tritonclient.utils import InferenceServerException

from mlwitness.protocol import audit_pb2, audit_pb2_grpc
from mlwitness.protocol import inference as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
INFER = "/inference.GRPCInferenceService/ModelInfer"
VERIFY = "/mlwitness.audit.v1.AuditService/VerifyLedger"
IDLE_S = 60.0  # an idle stream's own bound, should a test fail before it releases them


class IdleStreams:
    """`count` calls on `method` that send their headers and then nothing, on one channel."""

    def __init__(self, address: str, method: str, count: int) -> None:
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(address)
        call = self.channel.stream_unary(method)
        self.calls = [call.future(self._nothing(), timeout=IDLE_S) for _ in range(count)]

    def _nothing(self) -> Iterator[bytes]:
        self.release.wait(IDLE_S)
        return
        yield b""  # a generator that never yields a message

    def arrived(self) -> None:
        """Return once the server has taken every stream opened so far: a call made after
        them on the same connection is answered (or refused) only after they are taken."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:  # refused for want of a slot: still after them
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self.release.set()
        self.channel.close()


@pytest.fixture
def idle_streams() -> Iterator[Any]:
    opened: list[IdleStreams] = []

    def open_(address: str, method: str, count: int) -> IdleStreams:
        streams = IdleStreams(address, method, count)
        opened.append(streams)
        streams.arrived()
        return streams

    yield open_
    for streams in opened:
        streams.close()


def liveness(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="liveness")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


X = np.arange(12, dtype=np.float32).reshape(3, 4)


def infer(address: str) -> None:
    """One ModelInfer from tritonclient; checks the answer is the model's."""
    tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    with grpcclient.InferenceServerClient(address) as client:
        y = client.infer("affine_fp32", [tensor], client_timeout=10).as_numpy("y")
    np.testing.assert_array_equal(y, X @ AFFINE_W + AFFINE_B)


def infer_status(address: str) -> str:
    """The status of one ModelInfer expected to fail (e.g. "StatusCode.UNAVAILABLE")."""
    try:
        infer(address)
    except InferenceServerException as exc:
        return str(exc.status())
    raise AssertionError("the call succeeded")


@pytest.fixture
def small(make_sidecar: SidecarFactory, affine_model: Path) -> RunningSidecar:
    """A sidecar with 8 call slots per port, its audit port and its health port."""
    audit_port, health_port = free_ports(2)
    return make_sidecar(affine_model, max_concurrent_rpcs=8, audit_port=audit_port,
                        health_port=health_port)


def test_streams_without_a_request_take_no_call_slot(small: RunningSidecar,
                                                     idle_streams: Any) -> None:
    """More idle streams than call slots, on both ports: callers are still answered, and
    health (on the inference port and the health port) still says SERVING."""
    audit = f"127.0.0.1:{small.sidecar.audit_port}"
    idle_streams(small.address, INFER, 20)
    idle_streams(audit, VERIFY, 20)
    infer(small.address)
    with grpc.insecure_channel(audit) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        assert stub.VerifyLedger(audit_pb2.VerifyLedgerRequest(), timeout=10).ok
    assert liveness(small.address) == SERVING
    assert liveness(f"127.0.0.1:{small.sidecar.health_port}") == SERVING


def _server_settings(port: int) -> dict[int, int]:
    """The HTTP/2 SETTINGS a plaintext gRPC server sends on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        empty_settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type 4, stream 0
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + empty_settings)
        buffer = b""
        for _ in range(100):  # frames until the server's first non-ACK SETTINGS frame
            while len(buffer) < 9:
                chunk = sock.recv(4096)
                assert chunk, "the server closed the connection before its SETTINGS"
                buffer += chunk
            length = int.from_bytes(buffer[:3], "big")
            kind, flags = buffer[3], buffer[4]
            while len(buffer) < 9 + length:
                chunk = sock.recv(4096)
                assert chunk, "the server closed the connection inside a frame"
                buffer += chunk
            payload, buffer = buffer[9:9 + length], buffer[9 + length:]
            if kind == 4 and not flags & 1:
                return {key: value for key, value in
                        (struct.unpack(">HI", payload[i:i + 6]) for i in range(0, length, 6))}
    raise AssertionError("no SETTINGS frame from the server")


MAX_CONCURRENT_STREAMS = 0x3


def test_each_connection_may_open_only_so_many_streams(make_sidecar: SidecarFactory,
                                                       affine_model: Path) -> None:
    """The per-connection stream cap is announced in HTTP/2 SETTINGS on both ports (and the
    health port): a client cannot hold more streams than that on one connection."""
    audit_port, health_port = free_ports(2)
    running = make_sidecar(affine_model, max_streams_per_connection=7, audit_port=audit_port,
                           health_port=health_port)
    for port in (running.port, audit_port, health_port):
        assert _server_settings(port).get(MAX_CONCURRENT_STREAMS) == 7, port


def test_an_idle_stream_ends_with_its_connections_age(make_sidecar: SidecarFactory,
                                                      affine_model: Path) -> None:
    """A stream that never sends its request is cut once its connection has lived
    --max-connection-age plus --max-connection-age-grace; callers reconnect."""
    running = make_sidecar(affine_model, max_connection_age=1.0, max_connection_age_grace=1.0)
    streams = IdleStreams(running.address, INFER, 1)
    try:
        (call,) = streams.calls
        with pytest.raises(grpc.RpcError) as ended:
            call.result(timeout=30)  # far beyond age + grace (+ gRPC's 10 % jitter)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        streams.close()
    infer(running.address)


class HeldUpstream:
    """A v2 upstream whose ModelInfer calls wait until `release` is set, then fail
    UNAVAILABLE: calls forwarded to it hold their call slot in the sidecar meanwhile."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = 0
        self._changed = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelInfer": grpc.unary_unary_rpc_method_handler(self._infer),
             "ServerReady": grpc.unary_unary_rpc_method_handler(
                 lambda raw, context: pb.ServerReadyResponse(ready=True).SerializeToString())}),
        ))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _infer(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        with self._changed:
            self.arrived += 1
            self._changed.notify_all()
        self.release.wait(IDLE_S)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released by the test")
        raise AssertionError("abort returned")

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.arrived >= count, timeout=30), \
                f"{self.arrived} of {count} calls reached the upstream"

    def close(self) -> None:
        self.release.set()
        self.server.stop(grace=None)


def test_calls_beyond_the_slots_are_refused_once_their_request_is_in(
        make_sidecar: SidecarFactory, affine_model: Path) -> None:
    """--max-concurrent-rpcs still bounds the calls being worked on: with both slots held
    by calls waiting on the upstream, a third gets RESOURCE_EXHAUSTED (health does not);
    once they finish, calls are taken again."""
    upstream = HeldUpstream()
    try:
        running = make_sidecar(affine_model, upstream=upstream.address, max_concurrent_rpcs=2)
        with futures.ThreadPoolExecutor(max_workers=2) as pool:
            held = [pool.submit(infer_status, running.address) for _ in range(2)]
            upstream.wait_for(2)
            assert infer_status(running.address) == "StatusCode.RESOURCE_EXHAUSTED"
            assert liveness(running.address) == SERVING
            upstream.release.set()
            assert [call.result(timeout=30) for call in held] == ["StatusCode.UNAVAILABLE"] * 2
        assert infer_status(running.address) == "StatusCode.UNAVAILABLE"  # reached upstream
        assert upstream.arrived == 3
    finally:
        upstream.close()
