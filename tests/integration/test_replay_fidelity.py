"""Replay fidelity: a decision is re-run with the onnxruntime session options it was made
with, and a difference that remains is measured in ulps and put down to the environment
fields that differ.

The demo GBT (credit v2) on a batch of 512 rows rounds differently on 2 intra-op threads
than on 1 (onnxruntime's tree ensemble adds per-thread partial sums). A sidecar serving it
with `--ort-threads 2` records that batch; a standalone `mlwitness audit-server` (default
1 thread) replays it. Copies of the record point at edited environments (new rows, chain
rehashed) to see what replay does when the recorded options are missing or name a
provider this onnxruntime lacks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import onnxruntime as ort
import pytest
from audit_support import (
    AuditServerProcess,
    audit_server,
    credit_models,
    read_only,
    ref,
    start_audited_sidecar,
    stub_for,
)
from sidecar import rewrite_record

from mlwitness.audit.fidelity import ROUNDING_ULPS
from mlwitness.ledger import store
from mlwitness.protocol import audit_pb2 as apb
from mlwitness.protocol import audit_pb2_grpc

ROWS = 512
# Request ids of the same batch, recorded four times; all but the first then point at an
# edited environment.
AS_RECORDED, NO_OPTIONS, ONE_THREAD, NO_SUCH_PROVIDER = "as-recorded", "old", "one", "ep"


def run_threads(onnx: bytes, x: np.ndarray, threads: int) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"input": x})[0]


def edit_environment(path: Path, request_id: str, edit: Any) -> None:
    """Point the record at a new environment row: its recorded one, edited."""
    con = duckdb.connect(str(path))
    try:
        seq, env_id = con.execute("SELECT seq, env_id FROM entries WHERE request_id = ?",
                                  [request_id]).fetchone()  # type: ignore[misc]
        env = store.get_environment(con, env_id)
        new_id = store.put_environment(con, edit(env))
    finally:
        con.close()
    rewrite_record(path, seq, env_id=new_id)


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    models = credit_models(tmp_path_factory)
    x = np.ascontiguousarray(models.rows(ROWS, seed=3), dtype=np.float32)
    path = tmp_path_factory.mktemp("fidelity") / "ledger.duckdb"
    side = start_audited_sidecar(models.v2, path, ort_threads=2)
    try:
        served = {rid: side.infer(x, rid) for rid in (AS_RECORDED, NO_OPTIONS, ONE_THREAD,
                                                       NO_SUCH_PROVIDER)}
    finally:
        side.stop()

    def without_options(env: dict[str, Any]) -> dict[str, Any]:  # as recorded before them
        return {k: v for k, v in env.items()
                if k not in ("session_options", "cpu_features", "cpu_model")}

    def one_thread(env: dict[str, Any]) -> dict[str, Any]:
        return {**env, "session_options": {**env["session_options"],
                                           "intra_op_num_threads": 1}}

    def no_such_provider(env: dict[str, Any]) -> dict[str, Any]:
        providers = [{"name": "NoSuchExecutionProvider", "options": {"device_id": "0"}},
                     *env["session_options"]["providers"]]
        return {**env, "session_options": {**env["session_options"], "providers": providers}}

    edit_environment(path, NO_OPTIONS, without_options)
    edit_environment(path, ONE_THREAD, one_thread)
    edit_environment(path, NO_SUCH_PROVIDER, no_such_provider)
    onnx = models.v2.read_bytes()
    with audit_server(path) as server:  # --ort-threads 1, the default
        channel, stub = stub_for(server.address)
        try:
            yield {"path": path, "server": server, "stub": stub, "served": served,
                   "one": run_threads(onnx, x, 1), "two": run_threads(onnx, x, 2)}
        finally:
            channel.close()


def replay(fidelity: dict[str, Any], request_id: str) -> apb.ReplayResponse:
    stub: audit_pb2_grpc.AuditServiceStub = fidelity["stub"]
    return stub.Replay(apb.ReplayRequest(ref=ref(request_id)), timeout=60)


def differences(r: apb.ReplayResponse) -> dict[str, tuple[str, str]]:
    return {d.key: (d.recorded, d.current) for d in r.environment_differences}


def needs_threads_to_differ(fidelity: dict[str, Any]) -> None:
    if fidelity["one"].tobytes() == fidelity["two"].tobytes():
        pytest.skip("on this machine 1 and 2 onnxruntime threads give the same bits")


def test_the_environment_records_the_session_options_and_cpu_features(
        fidelity: dict[str, Any]) -> None:
    (text,) = read_only(fidelity["path"], "SELECT e.fingerprint FROM entries r JOIN "
                        "environments e USING (env_id) WHERE r.request_id = ?",
                        [AS_RECORDED])[0]
    env = json.loads(text)
    assert env["session_options"] == {
        "intra_op_num_threads": 2, "inter_op_num_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
        "enable_cpu_mem_arena": True, "use_deterministic_compute": False,
        "providers": [{"name": "CPUExecutionProvider", "options": env["session_options"][
            "providers"][0]["options"]}],
        "config_entries": {}}
    assert isinstance(env["cpu_features"], list) and isinstance(env["cpu_model"], str)
    assert fidelity["served"][AS_RECORDED]["probabilities"].tobytes() == \
        fidelity["two"].tobytes()  # served on 2 threads


def test_replay_runs_with_the_recorded_threads_and_is_bit_identical(
        fidelity: dict[str, Any]) -> None:
    r = replay(fidelity, AS_RECORDED)
    assert r.bit_identical, r.verdict
    assert r.verdict == "bit-identical"
    assert [(d.name, d.identical, d.max_ulps) for d in r.outputs] == [
        ("label", True, 0), ("probabilities", True, 0)]
    assert differences(r) == {}  # the replay's session ran with the recorded options


def test_without_recorded_options_the_difference_is_named_in_ulps(
        fidelity: dict[str, Any]) -> None:
    needs_threads_to_differ(fidelity)
    r = replay(fidelity, NO_OPTIONS)
    assert not r.bit_identical
    label, probabilities = r.outputs
    assert (label.identical, label.max_ulps) == (True, 0)
    assert 1 <= probabilities.max_ulps <= ROUNDING_ULPS
    expected = int(np.count_nonzero(fidelity["one"].view(np.uint32)
                                    != fidelity["two"].view(np.uint32)))
    assert probabilities.elements_differing == expected
    assert differences(r)["session_options.intra_op_num_threads"] == ("(none)", "1")
    assert r.verdict.startswith(f"differs by ≤ {probabilities.max_ulps:g} ulps in "
                                f"{expected} of {2 * ROWS} elements of probabilities "
                                "(rounding: a kernel or threading difference; "
                                "session options not recorded (replayed with "
                                "intra_op_num_threads 1"), r.verdict


def test_recorded_options_are_honoured_even_when_they_are_not_what_served(
        fidelity: dict[str, Any]) -> None:
    needs_threads_to_differ(fidelity)
    r = replay(fidelity, ONE_THREAD)  # says 1 thread; the outputs came from 2
    assert not r.bit_identical
    assert 1 <= r.outputs[1].max_ulps <= ROUNDING_ULPS
    assert differences(r) == {}  # it ran as the environment says
    assert r.verdict.endswith("(rounding: a kernel or threading difference; "
                              "no recorded environment field differs)"), r.verdict


def test_a_recorded_provider_missing_here_is_said_and_cpu_runs_in_its_place(
        fidelity: dict[str, Any]) -> None:
    r = replay(fidelity, NO_SUCH_PROVIDER)
    assert r.bit_identical  # 2 threads on the CPU provider, as served
    recorded, current = differences(r)["session_options.providers"]
    assert [p["name"] for p in json.loads(recorded)] == ["NoSuchExecutionProvider",
                                                         "CPUExecutionProvider"]
    assert [p["name"] for p in json.loads(current)] == ["CPUExecutionProvider"]
    assert r.verdict.startswith("bit-identical (recorded provider NoSuchExecutionProvider "
                                "not available here: ran on the CPU provider"), r.verdict


def test_traffic_replay_uses_each_records_options_and_reports_max_ulps(
        fidelity: dict[str, Any]) -> None:
    needs_threads_to_differ(fidelity)
    stub: audit_pb2_grpc.AuditServiceStub = fidelity["stub"]
    events = list(stub.ReplayRange(apb.ReplayRangeRequest(), timeout=120))
    summary = events[-1].summary
    assert (summary.records, summary.identical, summary.changed, summary.failed) == (4, 2, 2, 0)
    single = replay(fidelity, NO_OPTIONS).outputs[1].max_ulps
    assert summary.max_ulps == single
    assert summary.decisions_changed == 0


def test_the_cli_prints_the_ulps_and_the_verdict(fidelity: dict[str, Any]) -> None:
    from audit_support import run_cli

    server: AuditServerProcess = fidelity["server"]
    done = run_cli(server.address, "replay", AS_RECORDED)
    assert done.returncode == 0, done.stderr
    assert "max ulps" in done.stdout
    assert "verdict: bit-identical" in done.stdout
