"""grpc.health.v1, server reflection and unserved Triton RPCs, as probes and grpcurl see them."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
from conftest import SidecarFactory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sidecar import RunningSidecar, closed_port, raw_rpc
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "inference.GRPCInferenceService"


def check(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(address: str, want: int, within_s: float) -> float:
    started = time.monotonic()
    for _ in range(int(within_s / 0.05) + 1):
        if check(address) == want:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"health did not become {want} within {within_s} s")


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_is_serving_when_model_and_ledger_are_ready(
    sidecar: RunningSidecar, service: str
) -> None:
    assert check(sidecar.address, service) == SERVING


def test_health_of_an_unknown_service_is_not_found(sidecar: RunningSidecar) -> None:
    with pytest.raises(grpc.RpcError) as info:
        check(sidecar.address, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_the_current_status(sidecar: RunningSidecar) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
        first = next(stream)
        stream.cancel()
    assert first.status == SERVING


def test_forwarding_sidecar_is_not_serving_while_its_upstream_is_down(
    make_sidecar: SidecarFactory, affine_model: Path
) -> None:
    sidecar = make_sidecar(affine_model, upstream=f"127.0.0.1:{closed_port()}")
    assert check(sidecar.address) == NOT_SERVING
    assert check(sidecar.address, SERVICE) == NOT_SERVING
    with grpcclient.InferenceServerClient(sidecar.address) as client:
        assert client.is_server_live() is True  # alive, but not ready
        assert client.is_server_ready() is False


def test_forwarding_sidecar_health_follows_its_upstream(
    make_sidecar: SidecarFactory, affine_model: Path, tmp_path: Path
) -> None:
    upstream = make_sidecar(affine_model, ledger=tmp_path / "upstream.duckdb")
    front = make_sidecar(affine_model, ledger=tmp_path / "front.duckdb", upstream=upstream.address)
    assert check(front.address) == SERVING
    with grpcclient.InferenceServerClient(front.address) as client:
        assert client.is_server_ready() is True
    upstream.stop()
    took = wait_for(front.address, NOT_SERVING, within_s=5)
    assert took < 3  # health is re-checked every second


def test_reflection_lists_the_served_services(sidecar: RunningSidecar) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        # grpcurl needs the message types too: the whole protocol file is served.
        infer = database.FindFileContainingSymbol("inference.ModelInferRequest")
        assert infer.package == "inference"
        methods = {
            m.name for s in infer.service if s.name == "GRPCInferenceService" for m in s.method
        }
        assert {
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
        } <= methods


def test_reflection_answers_a_raw_list_services_request(sidecar: RunningSidecar) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert SERVICE in names


@pytest.mark.parametrize(
    "method",
    [
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "SystemSharedMemoryStatus",
        "TraceSetting",
        "LogSettings",
    ],
)
def test_unserved_triton_rpcs_answer_unimplemented(sidecar: RunningSidecar, method: str) -> None:
    with grpc.insecure_channel(sidecar.address) as channel, pytest.raises(grpc.RpcError) as info:
        raw_rpc(channel, method, b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tritonclient_model_config_gets_unimplemented(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("affine_fp32")
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    # …and the sidecar carries on.
    assert client.is_model_ready("affine_fp32") is True


def test_streaming_infer_answers_unimplemented(sidecar: RunningSidecar) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([service_pb2.ModelInferRequest(model_name="affine_fp32")]), timeout=5))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unknown_model_in_model_ready_is_not_found(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.is_model_ready("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in info.value.message()
