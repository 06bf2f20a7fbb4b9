"""`mlwitness verify` against the columns auditors read: decoded inputs, outputs and
request parameters, and stored baselines.

The ledger is written by real sidecars, one after another on one file: the affine model
with `--features`, enforced guards (a call refused before the model ran, two refused after
it, their responses withheld) and a baseline; then the strings model (BYTES inputs and
outputs) with a hashed request parameter and observed guard violations; then again with
the BYTES input itself hashed (and a request whose inputs cannot be decoded, kept without
them); then the slow model, a call whose deadline passed during an inline run; then the
affine model again under other `--features` names. Every decoded column is then a function
of hashed bytes. Each test tampers with its own copy through DuckDB.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import SLOW_IO, SlowModel
from sidecar import raw_rpc, read_ledger, run_verify, start_sidecar
from tritonclient.utils import InferenceServerException

from mlwitness.analytics.baseline import build_baseline
from mlwitness.codec import (
    Tensor,
    decode_outputs,
    encode_inputs,
    encode_outputs,
    tensor_from_array,
)
from mlwitness.inference.backends.embedded import INLINE_ELEMENTS
from mlwitness.ledger.decoded import DROPPED, WITHHELD
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.verify import verify
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.protocol import inference as pb
from mlwitness.settings import Settings

FEATURES = ["f0", "f1", "f2", "f3"]
GUARDS = """version = 1
[features.f0]
max = 1000.0
[outputs.score]
max = 100.0
"""
COLOR_GUARDS = """version = 1
[features.category]
allowed = ["red", "green", "blue"]
"""


def settings(ledger: Path, model: Path, **more: Any) -> Settings:
    return Settings(model=model, ledger=ledger, port=0, audit_port=0, metrics_port=0,
                    durability="write", **more)


def affine_call(client: Any, request_id: str, x: list[list[float]], model: str = "affine_fp32",
                **parameters: Any) -> str:
    """One call; the status the caller got."""
    array = np.array(x, dtype=np.float32)
    tensor = grpcclient.InferInput("x", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    try:
        client.infer(model, [tensor], request_id=request_id, parameters=parameters or None)
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode.")
    return "OK"


def strings_call(client: Any, request_id: str, colors: list[str], **parameters: Any) -> str:
    tensor = grpcclient.InferInput("category", [len(colors)], "BYTES")
    tensor.set_data_from_numpy(np.array([c.encode() for c in colors], dtype=object))
    client.infer("strings", [tensor], request_id=request_id, parameters=parameters or None)
    return "OK"


RENAMED = ["g0", "g1", "g2", "g3"]


def undecodable_strings(request_id: str, **parameters: str) -> bytes:
    """A strings call whose BYTES input cannot be decoded (its length prefix claims more
    bytes than follow), with request parameters."""
    request = pb.ModelInferRequest(model_name="strings", id=request_id)
    request.inputs.add(name="category", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\x05\x00\x00\x00re")
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    return request.SerializeToString()


def late_inline_call(side: Any, slow: SlowModel) -> str:
    """A call whose deadline passes while the model runs inline, on the event loop (the
    backend takes a run of this size for cheap); the status the caller got."""
    side.sidecar.backend.seconds_per_element = 1e-12  # inline, however long it runs
    x = np.ones((INLINE_ELEMENTS // SLOW_IO, SLOW_IO), np.float32)
    runs_for = len(x) * slow.seconds_per_row
    assert runs_for > 0.2, "the slow model is too fast here to outlast a deadline"
    with grpcclient.InferenceServerClient(side.address) as client:
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            client.infer("slow", [tensor], request_id="late", client_timeout=runs_for / 4)
        except InferenceServerException as exc:
            return str(exc.status()).removeprefix("StatusCode.")
    return "OK"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, model_paths: dict[str, Path],
             slow_model: SlowModel) -> Path:
    root = tmp_path_factory.mktemp("verify-decoded")
    ledger = root / "ledger.duckdb"
    key = root / "hash.key"
    key.write_bytes(b"k" * 32)
    guards, colors = root / "guards.toml", root / "colors.toml"
    guards.write_text(GUARDS)
    colors.write_text(COLOR_GUARDS)
    train = root / "train.csv"
    rng = np.random.default_rng(3)
    train.write_text("f0,f1,f2,f3\n" + "".join(
        ",".join(f"{v:.3f}" for v in row) + "\n" for row in rng.uniform(0, 10, (60, 4))))
    baseline = root / "affine-baseline.json"
    baseline.write_text(build_baseline(train, model=model_paths["affine_fp32"],
                                       features=FEATURES).to_json())

    side = start_sidecar(settings(ledger, model_paths["affine_fp32"], features=FEATURES,
                                  guards=guards, guard_mode="enforce", baseline=baseline))
    try:
        with grpcclient.InferenceServerClient(side.address) as client:
            got = [
                affine_call(client, "ok1", [[1, 2, 3, 4]], channel="web", tier=3),
                affine_call(client, "batch3", [[1, 1, 1, 1], [2, 0, 2, 0], [0.5, 8, 0, 1]]),
                affine_call(client, "neg-zero", [[-0.0, 0.5, 0.25, 0.125]]),
                affine_call(client, "refused-input", [[5000, 0, 0, 0]]),
                affine_call(client, "withheld-nan", [[1, float("nan"), 0, 0]]),
                affine_call(client, "withheld-big", [[100, 100, 100, 100]]),
                affine_call(client, "unknown-model", [[1, 2, 3, 4]], model="nope"),
            ]
        assert got == ["OK", "OK", "OK", "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                       "INVALID_ARGUMENT", "NOT_FOUND"]
        bad = pb.ModelInferRequest(model_name="affine_fp32", id="short-raw")
        tensor = bad.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        assert tensor is not None
        bad.raw_input_contents.append(b"\0" * 10)  # 16 bytes needed
        with grpc.insecure_channel(side.address) as channel, pytest.raises(grpc.RpcError):
            raw_rpc(channel, "ModelInfer", bad.SerializeToString())
    finally:
        side.stop()

    for phase, more in (("colors", {"hash_inputs": ["customer"], "guards": colors}),
                        ("hashed", {"hash_inputs": ["category", "customer"]})):
        side = start_sidecar(settings(ledger, model_paths["strings"], hash_key=key, **more))
        try:
            with grpcclient.InferenceServerClient(side.address) as client:
                strings_call(client, f"{phase}-a", ["red", "green"],
                             customer="Jane Q. Applicant", channel="web")
                strings_call(client, f"{phase}-b", ["magenta"])
            if phase == "hashed":
                with grpc.insecure_channel(side.address) as channel:
                    with pytest.raises(grpc.RpcError) as info:
                        raw_rpc(channel, "ModelInfer", undecodable_strings(
                            "inputs-dropped", customer="Jane Q. Applicant", channel="web"))
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            side.stop()

    side = start_sidecar(settings(ledger, slow_model.path))
    try:
        assert late_inline_call(side, slow_model) == "DEADLINE_EXCEEDED"
    finally:
        side.stop()

    side = start_sidecar(settings(ledger, model_paths["affine_fp32"], features=RENAMED))
    try:
        with grpcclient.InferenceServerClient(side.address) as client:
            assert affine_call(client, "renamed", [[1, 2, 3, 4], [5, 6, 7, 8]]) == "OK"
    finally:
        side.stop()
    return ledger


@pytest.fixture
def ledger(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(pristine, copy)
    return copy


def seq_of(path: Path, request_id: str) -> int:
    (seq,) = read_ledger(path, "SELECT seq FROM entries WHERE request_id = ?", [request_id])[0]
    return int(seq)


def tamper(path: Path, sql: str, params: list[Any] | None = None) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(sql, params or [])
    finally:
        con.close()


def verify_json(path: Path) -> tuple[int, dict[str, Any]]:
    result = run_verify(path, "--json")
    return result.returncode, json.loads(result.stdout)


def each_value(column: str, expression: str) -> str:
    """SQL for `column` with every value of every row map replaced by `expression` of
    `e.key` and `e.value`."""
    return (f"list_transform({column}, lambda r: map_from_entries(list_transform("
            f"map_entries(r), lambda e: {{'key': e.key, 'value': {expression}}})))")


# ── an intact ledger ──────────────────────────────────────────────────────────────────


def test_intact_ledger_verifies_every_decoded_column_from_hashed_bytes(ledger: Path) -> None:
    code, report = verify_json(ledger)
    assert code == 0, report["problems"]
    (count,) = read_ledger(ledger, "SELECT count(*) FROM entries")[0]
    assert report["decoded_checked"] == report["records"] == count
    assert report["not_covered"] == [] and report["decoded_not_covered"] == 0
    assert report["column_names"] == {}  # announced on the chain, not learned from data
    assert (report["models"], report["baselines"]) == (3, 1)
    assert "0 not covered by the chain" in run_verify(ledger).stdout


def withheld(ledger: Path, request_id: str) -> tuple[bytes, Any, list]:
    """(response stored, the response kept as withheld, decoded outputs) of a record."""
    response, detail, outputs = read_ledger(
        ledger, "SELECT response, detail, outputs FROM entries WHERE request_id = ?",
        [request_id])[0]
    kept = base64.b64decode(json.loads(detail)["withheld_response"])
    return bytes(response), pb.ModelInferResponse.FromString(kept), outputs


@pytest.mark.parametrize("request_id", ["withheld-nan", "withheld-big", "late"])
def test_a_call_that_failed_after_the_model_ran_keeps_its_response_as_withheld(
        ledger: Path, request_id: str) -> None:
    """No response was sent, so none is stored; the one the call would have had is kept in
    `detail`, and its outputs are what the decoded columns hold."""
    response, kept, outputs = withheld(ledger, request_id)
    assert response == b""
    assert kept.id == request_id
    tensors = decode_outputs(kept)
    assert len(outputs) == tensors[0].array.shape[0] > 0
    expected = np.concatenate([t.array.reshape(len(outputs), -1) for t in tensors], axis=1)
    stored = np.array([list(row.values()) for row in outputs], np.float32)
    assert np.array_equal(stored, expected, equal_nan=True)


def test_a_request_whose_inputs_cannot_be_decoded_is_kept_without_them(ledger: Path) -> None:
    request, detail, parameters, inputs = read_ledger(
        ledger, "SELECT request, detail, parameters, inputs_text FROM entries "
        "WHERE request_id = 'inputs-dropped'")[0]
    kept = pb.ModelInferRequest.FromString(bytes(request))
    assert (kept.id, len(kept.inputs), len(kept.raw_input_contents)) == ("inputs-dropped", 0, 0)
    assert kept.parameters["channel"].string_param == "web"
    hashed = kept.parameters["customer"].string_param
    assert len(hashed) == 64 and "Jane" not in bytes(request).decode(errors="replace")
    assert parameters == {"channel": "web", "customer": hashed}
    assert json.loads(detail)["minimised"] == "inputs dropped: undecodable"
    assert inputs == []


def test_features_names_are_announced_on_the_chain_when_they_change(ledger: Path) -> None:
    announced = [json.loads(detail) for (detail,) in read_ledger(
        ledger, "SELECT detail FROM entries WHERE kind = 'admin' AND detail->>'action' = "
        "'features' ORDER BY seq")]
    assert [(a["tensor"], a["names"]) for a in announced] == [
        ("x", FEATURES), ("", []), ("x", RENAMED)]  # the strings model names none
    (inputs,) = read_ledger(ledger, "SELECT inputs FROM entries WHERE request_id = 'renamed'")[0]
    assert [list(row) for row in inputs] == [RENAMED, RENAMED]


# ── tampered decoded columns ──────────────────────────────────────────────────────────

# (request id of the record changed, SQL SET clause)
CHANGES: dict[str, tuple[str, str]] = {
    "input_value": ("ok1", "inputs = " + each_value("inputs", "e.value + 1")),
    "input_row_removed": ("batch3", "inputs = inputs[2:]"),
    "inputs_emptied": ("batch3", "inputs = []"),
    "inputs_null": ("ok1", "inputs = NULL"),
    "input_key_renamed": ("batch3", "inputs = list_transform(inputs, lambda r: "
                          "map_from_entries(list_transform(map_entries(r), lambda e: "
                          "{'key': replace(e.key, 'f1', 'f9'), 'value': e.value})))"),
    "negative_zero_made_zero": ("neg-zero", "inputs = " + each_value("inputs", "e.value + 0.0")),
    "nan_made_a_number": ("withheld-nan", "inputs = " + each_value(
        "inputs", "CASE WHEN isnan(e.value) THEN 0.0 ELSE e.value END")),
    "output_value": ("batch3", "outputs = " + each_value("outputs", "e.value * 2")),
    "outputs_of_a_call_refused_before_the_model": (
        "refused-input", "outputs = [MAP {'y_0': 1.0, 'y_1': 2.0, 'score': 3.0}]"),
    "inputs_of_an_undecodable_call": ("short-raw", "inputs = [MAP {'f0': 1.0}]"),
    "parameter": ("ok1", "parameters = MAP {'channel': 'branch', 'tier': '3'}"),
    "parameter_added": ("batch3", "parameters = MAP {'channel': 'web'}"),
    "text_input": ("colors-a", "inputs_text = " + each_value("inputs_text", "'blue'")),
    "text_output": ("colors-b", "outputs_text = " + each_value("outputs_text", "'red'")),
    "hashed_text_input": ("hashed-b", "inputs_text = " + each_value("inputs_text", "'x'")),
    "withheld_output": ("withheld-big", "outputs = " + each_value("outputs", "0.0")),
    "output_withheld_after_the_deadline": ("late", "outputs = " + each_value(
        "outputs", "e.value + 1")),
    "parameter_of_a_request_kept_without_inputs": (
        "inputs-dropped", "parameters = MAP {'channel': 'branch', 'customer': 'x'}"),
    "input_key_under_other_features": ("renamed", "inputs = list_transform(inputs, "
                                       "lambda r: map_from_entries(list_transform("
                                       "map_entries(r), lambda e: {'key': replace(e.key, "
                                       "'g', 'f'), 'value': e.value})))"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_decoded_column_fails_naming_its_seq(ledger: Path, change: str) -> None:
    request_id, assignment = CHANGES[change]
    seq = seq_of(ledger, request_id)
    tamper(ledger, f"UPDATE entries SET {assignment} WHERE seq = ?", [seq])
    code, report = verify_json(ledger)
    assert code == 1, report
    assert report["first_bad_seq"] == seq
    (problem,) = report["problems"]
    assert problem["seq"] == seq
    assert "differ from what its hashed bytes give" in problem["what"]
    column = assignment.split(" = ")[0]
    assert problem["what"].startswith(f"decoded {column}")


def test_many_changed_records_are_counted_after_the_first_listed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="write"), decoder=decode_record_tensors)
    writer.open()
    try:
        for i in range(30):
            request = pb.ModelInferRequest(model_name="m", id=f"r{i}")
            encode_inputs(request, [tensor_from_array("x", np.array([float(i)]))], raw=True)
            writer.append_blocking(Record(request_id=f"r{i}", model_name="m",
                                          request=request.SerializeToString()))
    finally:
        writer.close()
    assert verify(path).ok
    tamper(path, "UPDATE entries SET inputs = " + each_value("inputs", "e.value + 1"))
    code, report = verify_json(path)
    assert code == 1
    assert [p["seq"] for p in report["problems"]] == list(range(1, 22))
    assert report["problems"][-1]["what"].startswith(
        "10 more records whose decoded columns differ from their hashed bytes, from seq 21")


# ── baselines ─────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("change", "words"), [
    ("UPDATE baselines SET json = replace(json, '\"f0\"', '\"f00\"')",
     "stored JSON does not match its SHA-256"),
    ("UPDATE baselines SET name = 'approved.json'", "stored as 'approved.json'"),
    ("UPDATE baselines SET created_us = created_us + 3600000000",
     "stored time is after record seq"),
    ("INSERT INTO baselines SELECT sha256(json || ' '), 'newer.json', json || ' ', "
     "created_us + 1 FROM baselines", "was announced by no record"),
])
def test_changed_baseline_fails(ledger: Path, change: str, words: str) -> None:
    tamper(ledger, change)
    code, report = verify_json(ledger)
    assert code == 1
    assert any(words in p["what"] for p in report["problems"]), report["problems"]


# ── older ledgers: records whose bytes do not hold what was tabulated ────────────────


def test_values_the_bytes_do_not_hold_are_counted_or_caught(tmp_path: Path) -> None:
    """Records as an older inference service made them, and its writer stored them from
    memory: a call whose request bytes the minimiser dropped (its parameters kept), one
    whose deadline passed while the model ran (its outputs kept, no response withheld).
    Those values are not covered by the chain. Outputs on any other refused call are
    caught."""
    x = tensor_from_array("x", np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32))
    y = [tensor_from_array("score", np.array([7.5], dtype=np.float32))]
    request = pb.ModelInferRequest(model_name="m", id="r")
    encode_inputs(request, [x], raw=True)
    response = pb.ModelInferResponse(model_name="m", id="r")
    encode_outputs(response, y, raw=True)

    def call(request_id: str, **fields: Any) -> Record:
        return Record(request_id=request_id, model_name="m", model_version="1", **fields)

    dropped = call("dropped", request=b"", response=response.SerializeToString(),
                   outputs=y, parameters={"customer": hashlib.sha256(b"Jane").hexdigest()},
                   detail=json.dumps({"minimised": "request dropped: undecodable inputs",
                                      "received_sha256": "0" * 64}))
    late = call("late", status="DEADLINE_EXCEEDED", request=request.SerializeToString(),
                inputs=[x], outputs=y)
    failed = call("failed", status="INTERNAL", request=request.SerializeToString(),
                  inputs=[x], outputs=y)
    writer = LedgerWriter(tmp_path / "ledger.duckdb", WriterOptions(durability="write"),
                          decoder=decode_record_tensors)
    writer.open()
    try:
        for record in (call("ok", request=request.SerializeToString(),
                            response=response.SerializeToString(), inputs=[x], outputs=y),
                       dropped, late, failed):
            writer.append_blocking(record)
    finally:
        writer.close()
    report = verify(tmp_path / "ledger.duckdb")
    assert report.decoded_checked == 4
    assert report.not_covered == [
        {"why": DROPPED, "records": 1, "first_seqs": [2]},
        {"why": WITHHELD, "records": 1, "first_seqs": [3]},
    ]
    assert [(p.seq, p.what.split(" differ")[0]) for p in report.problems] == [
        (4, "decoded outputs, outputs_text")]


def test_decoder_failure_is_compared_as_nothing_decoded(tmp_path: Path) -> None:
    """Bytes the decoder cannot read give no decoded values; stored ones are then caught."""
    writer = LedgerWriter(tmp_path / "ledger.duckdb", WriterOptions(durability="write"))
    writer.open()
    try:
        writer.append_blocking(Record(request_id="junk", request=b"\xff\xff\xff",
                                      inputs=[Tensor("x", "FP64", (1,), np.array([1.0]))]))
    finally:
        writer.close()
    report = verify(tmp_path / "ledger.duckdb")
    assert [p.seq for p in report.problems] == [1]
    assert report.problems[0].what.startswith("decoded inputs")


# ── column names announced before a crash ─────────────────────────────────────────────

CRASH_UNDER_NAMES = """
import json, os, sys
from pathlib import Path
import numpy as np
from mlwitness.codec import encode_inputs, tensor_from_array
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.protocol import inference as pb

names = {"x": tuple(sys.argv[2].split(","))}
writer = LedgerWriter(Path(sys.argv[1]), WriterOptions(load_interval_s=3600),
                      tabulator=Tabulator(names), decoder=decode_record_tensors)
writer.open()
writer.append_blocking(Record(kind="admin", request_id="names", detail=json.dumps(
    {"action": "features", "tensor": "x", "names": list(names["x"])})))
request = pb.ModelInferRequest(model_name="affine_fp32", id="before-crash")
encode_inputs(request, [tensor_from_array("x", np.ones((1, 4), np.float32))], raw=True)
writer.append_blocking(Record(request_id="before-crash", model_name="affine_fp32",
                              request=request.SerializeToString()))
os._exit(0)  # a crash: both records are in the journal only
"""


def test_a_journal_tail_is_tabulated_with_the_names_announced_before_it(
        tmp_path: Path) -> None:
    """A sidecar crashes; the next start, under other --features names, loads the journal
    tail with the names the chain says were in force, not its own."""
    path = tmp_path / "ledger.duckdb"
    subprocess.run([sys.executable, "-c", CRASH_UNDER_NAMES, str(path), ",".join(FEATURES)],
                   check=True, timeout=60)
    writer = LedgerWriter(path, WriterOptions(durability="write"),
                          tabulator=Tabulator({"x": tuple(RENAMED)}),
                          decoder=decode_record_tensors)
    writer.open()
    writer.close()
    (inputs,) = read_ledger(path, "SELECT inputs FROM entries WHERE request_id = "
                                  "'before-crash'")[0]
    assert [list(row) for row in inputs] == [FEATURES]
    assert writer.announced_features == {"x": tuple(FEATURES)}
    report = verify(path)
    assert report.ok and report.column_names == {}, report.problems
