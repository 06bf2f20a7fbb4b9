"""`mlwitness verify` against the columns auditors read: decoded inputs, outputs and
request parameters, and stored baselines.

The ledger is written by real sidecars, one after another on one file: the affine model
with `--features`, enforced guards (a call refused before the model ran, two refused after
it, their outputs withheld) and a baseline; then the strings model (BYTES inputs and
outputs) with a hashed request parameter and observed guard violations; then again with
the BYTES input itself hashed. Each test tampers with its own copy through DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sidecar import raw_rpc, read_ledger, run_verify, start_sidecar
from tritonclient.utils import InferenceServerException

from mlwitness.analytics.baseline import build_baseline
from mlwitness.codec import Tensor, encode_inputs, encode_outputs, tensor_from_array
from mlwitness.ledger.decoded import DROPPED, WITHHELD
from mlwitness.ledger.record import Record
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


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, model_paths: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("verify-decoded")
    ledger = root / "ledger.duckdb"
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
                        ("hashed", {"hash_inputs": ["category"]})):
        side = start_sidecar(settings(ledger, model_paths["strings"], **more))
        try:
            with grpcclient.InferenceServerClient(side.address) as client:
                strings_call(client, f"{phase}-a", ["red", "green"],
                             customer="Jane Q. Applicant", channel="web")
                strings_call(client, f"{phase}-b", ["magenta"])
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


def test_intact_ledger_verifies_and_says_what_its_bytes_do_not_cover(ledger: Path) -> None:
    code, report = verify_json(ledger)
    assert code == 0, report["problems"]
    (count,) = read_ledger(ledger, "SELECT count(*) FROM entries")[0]
    assert report["decoded_checked"] == report["records"] == count
    assert report["not_covered"] == [{
        "why": WITHHELD, "records": 2,
        "first_seqs": [seq_of(ledger, "withheld-nan"), seq_of(ledger, "withheld-big")]}]
    assert report["decoded_not_covered"] == 2
    assert report["column_names"] == {"x": {"names": FEATURES,
                                            "first_seq": seq_of(ledger, "ok1")}}
    assert (report["models"], report["baselines"]) == (2, 1)
    text = run_verify(ledger).stdout
    assert "2 records: outputs of a call refused after the model ran" in text
    assert "columns of tensor x named f0, f1, f2, f3" in text


def test_withheld_outputs_are_in_the_ledger_but_not_in_its_bytes(ledger: Path) -> None:
    """Why two records are not covered: their outputs were tabulated, no response stored."""
    for request_id in ("withheld-nan", "withheld-big"):
        (response, outputs) = read_ledger(
            ledger, "SELECT response, outputs FROM entries WHERE request_id = ?",
            [request_id])[0]
        assert bytes(response) == b"" and len(outputs) == 1


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


def test_withheld_outputs_stay_not_covered_even_when_changed(ledger: Path) -> None:
    """The limit of what the chain covers today: outputs withheld by a guard are not in
    the bytes, so a change to them is counted as not covered, not caught."""
    seq = seq_of(ledger, "withheld-big")
    tamper(ledger, "UPDATE entries SET outputs = " + each_value("outputs", "0.0") +
           " WHERE seq = ?", [seq])
    code, report = verify_json(ledger)
    assert code == 0 and report["decoded_not_covered"] == 2


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


# ── records whose bytes do not hold what was tabulated ─────────────────────────────────


def test_values_the_bytes_do_not_hold_are_counted_or_caught(tmp_path: Path) -> None:
    """Records as the inference service makes them and the writer stores them from memory:
    a call whose request bytes the minimiser dropped (its parameters kept), one whose
    deadline passed while the model ran (its outputs kept, no response). Those values are
    not covered by the chain. Outputs on any other refused call are caught."""
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
