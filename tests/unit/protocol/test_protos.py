"""protos/ is the source of truth: generated code is not stale, and our protocol is
wire-compatible with the one tritonclient ships (an independent copy of the same spec)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import service_pb2

from mlwitness.protocol import inference as pb

REPO = Path(__file__).resolve().parents[3]


def test_generated_protocol_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def _fields(descriptor) -> dict[str, tuple]:
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else None,
        )
        for f in descriptor.fields
    }


OUR_MESSAGES = sorted(
    m.full_name for m in pb.POOL.FindFileContainingSymbol(pb.SERVICE).message_types_by_name.values()
)


@pytest.mark.parametrize("name", OUR_MESSAGES)
def test_every_message_matches_tritonclients_field_numbers_and_types(name: str) -> None:
    ours = pb.POOL.FindMessageTypeByName(name)
    theirs = service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(name)
    ours_fields, theirs_fields = _fields(ours), _fields(theirs)
    for field, spec in ours_fields.items():
        assert theirs_fields.get(field) == spec, f"{name}.{field}"
    # Nested messages and map entries too (e.g. InferInputTensor, ParametersEntry).
    for nested in ours.nested_types:
        assert _fields(nested) == {
            k: v
            for k, v in _fields(theirs.nested_types_by_name[nested.name]).items()
            if k in _fields(nested)
        }


def test_service_methods_match_tritonclients_signatures() -> None:
    ours = pb.POOL.FindServiceByName(pb.SERVICE)
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {m.name for m in ours.methods} >= {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }
    for method in ours.methods:
        triton = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == triton.input_type.full_name
        assert method.output_type.full_name == triton.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (
            triton.client_streaming,
            triton.server_streaming,
        )
