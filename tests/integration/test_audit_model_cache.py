"""An audit worker keeps the models a question loaded for the next one; what the server
believes the worker holds must stay what it holds, whatever a question loaded or failed to.

Real things only: candidate models built with `onnx.helper` that take the credit model's
input, a sidecar on a copy of the recorded ledger, the generated audit stub as the auditor.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from audit_support import AuditedSidecar, AuditLedger, ref, sidecar_on_copy
from onnx import TensorProto, helper, numpy_helper

from mlwitness.protocol import audit_pb2 as apb


def summing(salt: float) -> bytes:
    """A harmless candidate on the credit input (`input` FP32 [N, 6]); `salt` makes its
    bytes unique."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
         helper.make_node("Add", ["total", "salt"], ["y"])],
        "summing", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(salt, np.float32), "salt")])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


@pytest.fixture
def side(tmp_path_factory: pytest.TempPathFactory, audit_ledger: AuditLedger):
    with sidecar_on_copy(tmp_path_factory, audit_ledger) as running:
        yield running


def test_a_candidate_that_fails_to_load_leaves_the_workers_models_usable(
        side: AuditedSidecar, audit_ledger: AuditLedger) -> None:
    """Found by fuzzing Replay with damaged candidates: loading a candidate into a full
    worker evicts its oldest model first; when the load then failed, the server still
    counted the evicted model as loaded, and the next question on it was INTERNAL (the
    worker: KeyError)."""
    side.stub.Replay(apb.ReplayRequest(ref=ref("a16")), timeout=60)  # the recorded model
    for salt in (1.0, 2.0, 3.0):  # the worker now holds as many models as it keeps
        side.stub.Replay(apb.ReplayRequest(ref=ref("a16"), candidate_onnx=summing(salt)),
                         timeout=60)
    broken = Path(audit_ledger.models.v1).read_bytes().replace(b"intercepts", b"interbepts")
    with pytest.raises(grpc.RpcError) as failed:
        side.stub.Replay(apb.ReplayRequest(ref=ref("a16"), candidate_onnx=broken), timeout=60)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    answer = side.stub.Replay(apb.ReplayRequest(ref=ref("a16")), timeout=60)
    assert answer.bit_identical
