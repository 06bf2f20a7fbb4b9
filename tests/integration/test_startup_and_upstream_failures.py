"""What a platform team gets wrong on day one, and upstreams that misbehave.

Start-up misconfiguration (ports, intervals, --upstream, access files, TLS material, the
ledger file) must stop `mlwitness serve` with exit 2 and one line naming the problem,
never a traceback or a sidecar listening somewhere else. Upstreams that accept TCP but
never speak, or answer ServerReady with garbage, must not hang calls or crash the sidecar.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import SidecarFactory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_support import make_pki
from sidecar import free_ports, raw_rpc, read_ledger
from tritonclient.grpc import service_pb2

from mlwitness import settings as settings_mod
from mlwitness.errors import ConfigError


def serve(model: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`mlwitness serve` as a user runs it; expected to refuse before serving."""
    return subprocess.run(
        [sys.executable, "-m", "mlwitness", "serve", "--model", str(model), "--ledger",
         str(tmp_path / "ledger.duckdb"), "--audit-port", "0", "--metrics-port", "0", *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def assert_refused(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and '"event": "ready"' not in result.stdout


# ── settings ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("env", "words"), [
    ({"MLWITNESS_PORT": "70000"}, "--port must be a TCP port, 0-65535"),
    ({"MLWITNESS_AUDIT_PORT": "-5"}, "--audit-port must be a TCP port"),
    ({"MLWITNESS_MODEL_POLL_INTERVAL": "0"}, "--model-poll-interval must be a positive"),
    ({"MLWITNESS_LOAD_INTERVAL": "-1"}, "--load-interval must be a positive"),
    ({"MLWITNESS_UPSTREAM_TIMEOUT": "nan"}, "--upstream-timeout must be a positive"),
    ({"MLWITNESS_DRAIN_TIMEOUT": "-2"}, "--drain-timeout must be 0 or more"),
    ({"MLWITNESS_UPSTREAM": "http://127.0.0.1:8001"}, "no http:// and no path"),
    ({"MLWITNESS_UPSTREAM": "127.0.0.1:8001/"}, "no http:// and no path"),
    ({"MLWITNESS_UPSTREAM": "localhost:abc"}, "port 1-65535"),
])  # fmt: skip
def test_out_of_range_settings_are_refused_naming_the_flag(
    affine_model: Path, env: dict[str, str], words: str
) -> None:
    settings = settings_mod.build(None, env={"MLWITNESS_MODEL": str(affine_model), **env})
    with pytest.raises(ConfigError) as caught:
        settings.validate()
    assert words in caught.value.message


@pytest.mark.parametrize("target", ["127.0.0.1:8001", "[::1]:8001", "dns:///triton:8001",
                                    "unix:/run/triton.sock", "triton.models.svc:8001"])
def test_valid_upstream_targets_are_accepted(affine_model: Path, target: str) -> None:
    settings_mod.build(None, env={"MLWITNESS_MODEL": str(affine_model),
                                  "MLWITNESS_UPSTREAM": target}).validate()


def test_a_port_in_use_and_a_ledger_that_is_not_duckdb_are_one_line_errors(
    affine_model: Path, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_refused(serve(affine_model, tmp_path, "--port", str(port)),
                       f"cannot listen on 127.0.0.1:{port}: the port is in use")
    (tmp_path / "ledger.duckdb").write_text("not a ledger\n")
    assert_refused(serve(affine_model, tmp_path, "--port", "0"),
                   "mlwitness: ledger: IO Error")


@pytest.mark.parametrize("flag", ["--audit-port", "--health-port"])
def test_every_port_in_use_is_the_same_one_line_error(
    affine_model: Path, tmp_path: Path, flag: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_refused(serve(affine_model, tmp_path, "--port", "0", flag, str(port)),
                       f"cannot listen on 127.0.0.1:{port}: the port is in use")


@pytest.mark.parametrize(("text", "words"), [
    ('[tokens]\nname = "alice"\nrole = "auditor"\nsha256 = "' + "0" * 64 + '"\n',
     "tokens must be [[tokens]] tables (double brackets)"),
    ('[[tokens]]\nname = "alice"\nrole = "auditor"\nsha256 = 5\n',
     "tokens[0]: name and sha256 must be strings"),
])  # fmt: skip
def test_a_malformed_access_file_is_refused_saying_what_is_wrong(
    affine_model: Path, tmp_path: Path, text: str, words: str
) -> None:
    access = tmp_path / "access.toml"
    access.write_text(text)
    assert_refused(serve(affine_model, tmp_path, "--port", "0", "--audit-access", str(access)),
                   words)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_material_that_does_not_fit_is_named_not_reported_as_a_bind_failure(
    affine_model: Path, tmp_path: Path, pki  # type: ignore[no-untyped-def]
) -> None:
    other = pki.rogue_ca.issue("other", "other", server=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem\n")
    cert, key = str(pki.server.cert), str(pki.server.key)
    for args, words in (
        (["--tls-cert", cert, "--tls-key", str(other.key)], "KEY_VALUES_MISMATCH"),
        (["--tls-cert", cert, "--tls-key", str(garbage)], "not a PEM certificate and its"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(garbage)],
         "--tls-client-ca"),
        (["--upstream", "127.0.0.1:1", "--upstream-ca", str(garbage)], "--upstream-ca"),
    ):
        assert_refused(serve(affine_model, tmp_path, "--port", "0", *args), words)


# ── upstreams that misbehave ───────────────────────────────────────────────────────────


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung upstream, or a
    firewall that lets the handshake through)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the 0.2 s accept timeout
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for sock in held:
        sock.close()
    listener.close()


def infer_request(request_id: str) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="affine_fp32", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(bytes(16))
    return request.SerializeToString()


def health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_a_black_holed_upstream_fails_calls_unavailable_in_seconds_not_at_the_deadline(
    make_sidecar: SidecarFactory, affine_model: Path, black_hole: int
) -> None:
    """gRPC's default 20 s connect timeout held such calls until the caller's deadline
    (or ~20 s). A connect attempt now gets 1 s."""
    sidecar = make_sidecar(affine_model, upstream=f"127.0.0.1:{black_hole}")
    started = time.monotonic()
    with grpc.insecure_channel(sidecar.address) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        raw_rpc(channel, "ModelInfer", infer_request("hole"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5
    assert health(sidecar.address) == "NOT_SERVING"
    assert sidecar.query("SELECT status FROM entries WHERE request_id = 'hole'") == [
        ("UNAVAILABLE",)]


@contextlib.contextmanager
def upstream(handler: grpc.GenericRpcHandler) -> Iterator[int]:
    """A plain gRPC server on 127.0.0.1 answering every method with `handler`; its port."""
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


class _Garbage(grpc.GenericRpcHandler):
    """A "v2 server" whose every answer is bytes no protobuf parser accepts."""

    def service(self, handler_call_details):  # type: ignore[no-untyped-def]
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"\xff\xff\xff")


def test_garbage_from_upstream_server_ready_is_not_ready_and_not_a_crash(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    with upstream(_Garbage()) as port:
        sidecar = make_sidecar(affine_model, upstream=f"127.0.0.1:{port}")
        assert health(sidecar.address) == "NOT_SERVING"
        with grpc.insecure_channel(sidecar.address) as channel:  # still answers calls
            assert raw_rpc(channel, "ModelInfer", infer_request("g1"), timeout=10)


def test_the_audit_port_stays_serving_while_only_the_upstream_is_down(
    make_sidecar: SidecarFactory, affine_model: Path, black_hole: int
) -> None:
    (audit_port,) = free_ports(1)
    sidecar = make_sidecar(affine_model, upstream=f"127.0.0.1:{black_hole}",
                           audit_port=audit_port)
    assert health(sidecar.address) == "NOT_SERVING"
    assert health(f"127.0.0.1:{audit_port}") == "SERVING"  # auditors are still served


class _Hung(grpc.GenericRpcHandler):
    """An upstream that takes calls and answers none until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Semaphore(0)

    def service(self, handler_call_details):  # type: ignore[no-untyped-def]
        def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
            if handler_call_details.method.endswith("ServerReady"):
                return service_pb2.ServerReadyResponse(ready=True).SerializeToString()
            self.arrived.release()
            self.release.wait(30)
            context.abort(grpc.StatusCode.UNAVAILABLE, "released")
            return b""
        return grpc.unary_unary_rpc_method_handler(hang)


def test_calls_cut_off_by_the_drain_are_recorded_as_the_caller_saw_them(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    """SIGTERM with calls still waiting on the upstream: after --drain-timeout gRPC tells
    those callers UNAVAILABLE; their records said CANCELLED 'the caller cancelled'."""
    hung = _Hung()
    got: dict[str, grpc.StatusCode] = {}

    def call(request_id: str) -> None:
        with grpc.insecure_channel(sidecar.address) as channel:
            try:
                raw_rpc(channel, "ModelInfer", infer_request(request_id), timeout=30)
            except grpc.RpcError as exc:
                got[request_id] = exc.code()

    callers = [threading.Thread(target=call, args=(f"h{i}",)) for i in range(2)]
    with upstream(hung) as port:
        sidecar = make_sidecar(affine_model, upstream=f"127.0.0.1:{port}", drain_timeout=1.0)
        try:
            for caller in callers:
                caller.start()
            for _ in callers:
                assert hung.arrived.acquire(timeout=10)
            sidecar.stop()
            for caller in callers:
                caller.join(30)
        finally:
            hung.release.set()
    assert got == {"h0": grpc.StatusCode.UNAVAILABLE, "h1": grpc.StatusCode.UNAVAILABLE}
    rows = read_ledger(sidecar.ledger_path, "SELECT request_id, status, message FROM entries "
                       "WHERE kind = 'infer' ORDER BY request_id")
    assert [r[:2] for r in rows] == [("h0", "UNAVAILABLE"), ("h1", "UNAVAILABLE")]
    assert all(r[2].startswith("Cancelling all calls: the sidecar shut down") for r in rows)


def test_a_caller_that_gives_up_during_the_drain_is_recorded_as_cancelled(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    hung = _Hung()
    with upstream(hung) as port:
        sidecar = make_sidecar(affine_model, upstream=f"127.0.0.1:{port}", drain_timeout=8.0)
        channel = grpc.insecure_channel(sidecar.address)
        try:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer").future(
                infer_request("c0"), timeout=30)
            assert hung.arrived.acquire(timeout=10)
            stopper = threading.Thread(target=sidecar.stop)
            stopper.start()
            time.sleep(0.5)  # well inside the 8 s drain
            assert call.cancel()
            stopper.join(30)
            assert not stopper.is_alive()
        finally:
            channel.close()
            hung.release.set()
    assert read_ledger(sidecar.ledger_path, "SELECT request_id, status FROM entries "
                       "WHERE kind = 'infer'") == [("c0", "CANCELLED")]
