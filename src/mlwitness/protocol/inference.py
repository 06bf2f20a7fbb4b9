"""Open Inference Protocol v2 message classes, loaded into a private descriptor pool.

tritonclient, MLServer and KServe each register `inference.*` in protobuf's default pool;
loading ours into a pool of our own lets mlwitness share a process with any of them.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"

_files = descriptor_pb2.FileDescriptorSet.FromString(
    resources.files("mlwitness.protocol").joinpath("inference.binpb").read_bytes()
)
POOL = descriptor_pool.DescriptorPool()
for _file in _files.file:
    POOL.Add(_file)


def add_file(file_descriptor: Any) -> None:
    """Add another generated file's descriptor (health, reflection, audit) to POOL so that
    server reflection on a port can describe every service it serves."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(file_descriptor.serialized_pb)
    try:
        POOL.FindFileByName(proto.name)
    except KeyError:
        for dependency in file_descriptor.dependencies:
            add_file(dependency)
        POOL.Add(proto)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
InferTensorContents = _message("InferTensorContents")
InferParameter = _message("InferParameter")
