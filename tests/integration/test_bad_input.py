"""Bad input is answered, never fatal: a clear status naming the tensor, a ledger row
saying it was refused and why, and the sidecar keeps serving.

Requests are built with tritonclient's generated classes (or by hand, for bytes no client
would send) and sent as exact bytes on a plain gRPC channel.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from sidecar import RunningSidecar, raw_rpc, start_sidecar
from tritonclient.grpc import service_pb2

from mlwitness.ledger.verify import verify
from mlwitness.settings import Settings

Request = service_pb2.ModelInferRequest
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def sidecars(
    tmp_path_factory: pytest.TempPathFactory, model_paths: dict[str, Path]
) -> Iterator[Callable[[str], RunningSidecar]]:
    """One long-lived sidecar per model for the whole module: refusals pile up in the same
    process and ledger, which must keep serving through all of them."""
    running: dict[str, RunningSidecar] = {}
    root = tmp_path_factory.mktemp("bad-input")

    def get(model: str) -> RunningSidecar:
        if model not in running:
            running[model] = start_sidecar(
                Settings(
                    model=model_paths[model],
                    ledger=root / f"{model}.duckdb",
                    port=0,
                    audit_port=0,
                    metrics_port=0,
                )
            )
        return running[model]

    yield get
    for sidecar in running.values():
        sidecar.stop()


def fp32(request: Request, name: str, array: np.ndarray, datatype: str = "FP32") -> Request:
    request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    return request


def affine(**fields: object) -> Request:
    return Request(model_name="affine_fp32", **fields)


X = np.ones((2, 4), np.float32)


def _typed_short() -> Request:
    request = affine()
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    return request


def _typed_wrong_field() -> Request:
    request = affine()
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.int_contents.extend([1, 2, 3, 4])
    return request


def _mixed() -> Request:
    request = fp32(affine(), "x", X)
    request.inputs[0].contents.fp32_contents.extend(X.ravel().tolist())
    return request


def _two_raw_entries() -> Request:
    request = fp32(affine(), "x", X)
    request.raw_input_contents.append(X.tobytes())
    return request


def _all_dtypes_without_flag() -> Request:
    request = Request(model_name="all_dtypes")
    fp32(request, "f64", np.ones((1, 3)), "FP64")
    fp32(request, "i32", np.ones((1, 2), np.int32), "INT32")
    fp32(request, "i64", np.ones(1, np.int64), "INT64")
    return request


def _bool_not_0_or_1() -> Request:
    request = _all_dtypes_without_flag()
    request.inputs.add(name="flag", datatype="BOOL", shape=[1])
    request.raw_input_contents.append(b"\x02")
    return request


def _fp16_typed() -> Request:
    request = Request(model_name="fp16")
    tensor = request.inputs.add(name="h", datatype="FP16", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    return request


def _bytes_bad_length_prefix() -> Request:
    request = Request(model_name="strings")
    request.inputs.add(name="category", datatype="BYTES", shape=[1])
    request.raw_input_contents.append((100).to_bytes(4, "little") + b"red")
    return request


def _bytes_huge_shape() -> Request:
    request = Request(model_name="strings")
    request.inputs.add(name="category", datatype="BYTES", shape=[2**40])
    request.raw_input_contents.append((3).to_bytes(4, "little") + b"red")
    return request


def _bytes_not_utf8() -> Request:
    request = Request(model_name="strings")
    request.inputs.add(name="category", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(
        (3).to_bytes(4, "little") + b"red" + (2).to_bytes(4, "little") + b"\xff\xfe"
    )
    return request


def _shared_dim_two_sizes() -> Request:
    request = Request(model_name="shared_batch")
    fp32(request, "a", np.ones((2, 2), np.float32))
    return fp32(request, "b", np.ones((3, 1), np.float32))


def _requested(*names: str) -> Request:
    request = fp32(affine(), "x", X)
    for name in names:
        request.outputs.add(name=name)
    return request


# case -> (served model, request, status, fragments the message must contain)
CASES: dict[str, tuple[str, Callable[[], Request], grpc.StatusCode, tuple[str, ...]]] = {
    "unknown_model": (
        "affine_fp32",
        lambda: fp32(Request(model_name="nope"), "x", X),
        grpc.StatusCode.NOT_FOUND,
        ("unknown model 'nope'", "serves 'affine_fp32'"),
    ),
    "unknown_version": (
        "affine_fp32",
        lambda: fp32(affine(model_version="7"), "x", X),
        grpc.StatusCode.NOT_FOUND,
        ("no version '7'", "served version: '1'"),
    ),
    "missing_input": (
        "all_dtypes",
        _all_dtypes_without_flag,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("missing input flag (BOOL [-1])",),
    ),
    "extra_input": (
        "affine_fp32",
        lambda: fp32(fp32(affine(), "x", X), "z", X),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("unknown input 'z'", "x (FP32 [-1, 4])"),
    ),
    "misnamed_input": (
        "affine_fp32",
        lambda: fp32(affine(), "X", X),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("unknown input 'X'", "x (FP32 [-1, 4])"),
    ),
    "wrong_datatype": (
        "affine_fp32",
        lambda: fp32(affine(), "x", X.astype(np.float64), "FP64"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x' has datatype FP64", "the model expects FP32"),
    ),
    "unknown_datatype": (
        "affine_fp32",
        lambda: fp32(affine(), "x", X, "FLOAT32"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x'", "unknown datatype 'FLOAT32'"),
    ),
    "raw_data_shorter_than_shape": (
        "affine_fp32",
        lambda: (r := fp32(affine(), "x", X[:1]), r.inputs[0].shape.__setitem__(0, 2), r)[-1],
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x'", "holds 16 bytes, expected 32", "8 FP32 elements"),
    ),
    "typed_data_shorter_than_shape": (
        "affine_fp32",
        _typed_short,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x'", "shape [2, 4] needs 8 values in contents.fp32_contents, got 4"),
    ),
    "huge_shape_small_data": (
        "affine_fp32",
        lambda: (r := fp32(affine(), "x", X), r.inputs[0].shape.__setitem__(0, 2**40), r)[-1],
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x'", "holds 32 bytes, expected"),
    ),
    "bytes_huge_shape_small_data": (
        "strings",
        _bytes_huge_shape,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'category'", "too few for 1099511627776 elements"),
    ),
    # 42 and 40 bytes that decode to no elements: once, the first stopped the ledger's
    # loading for good (2**40 rows to tabulate) and the second took ~2 GiB of memory
    "zero_size_tensor_claiming_2_pow_40_rows": (
        "affine_fp32",
        lambda: fp32(affine(), "x", np.zeros((2**40, 0), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x': shape [1099511627776, 0] is too large for a message of",),
    ),
    "zero_size_tensor_claiming_2_pow_24_rows": (
        "affine_fp32",
        lambda: fp32(affine(), "x", np.zeros((2**24, 0), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x': shape [16777216, 0] is too large for a message of",),
    ),
    "negative_dimension": (
        "affine_fp32",
        lambda: (r := fp32(affine(), "x", X), r.inputs[0].shape.__setitem__(0, -1), r)[-1],
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x'", "negative dimension"),
    ),
    "shape_not_matching_model": (
        "affine_fp32",
        lambda: fp32(affine(), "x", np.ones((2, 3), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x' has shape [2, 3]", "the model expects [-1, 4]"),
    ),
    "rank_not_matching_model": (
        "affine_fp32",
        lambda: fp32(affine(), "x", np.ones(8, np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x' has shape [8]", "expects [-1, 4]"),
    ),
    "batch_not_matching_fixed_shape": (
        "fixed_shape",
        lambda: fp32(Request(model_name="fixed_shape"), "x", np.ones((2, 3), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x' has shape [2, 3]", "the model expects [1, 3]"),
    ),
    "raw_and_typed_mixed": (
        "affine_fp32",
        _mixed,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x' sets typed contents while raw_input_contents is used",),
    ),
    "raw_entries_not_one_per_input": (
        "affine_fp32",
        _two_raw_entries,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("1 inputs but 2 raw_input_contents entries",),
    ),
    "typed_values_in_wrong_field": (
        "affine_fp32",
        _typed_wrong_field,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x'", "FP32 values belong in contents.fp32_contents", "int_contents"),
    ),
    "duplicate_input": (
        "affine_fp32",
        lambda: fp32(fp32(affine(), "x", X), "x", X),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x' appears more than once",),
    ),
    "bool_not_0_or_1": (
        "all_dtypes",
        _bool_not_0_or_1,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'flag'", "BOOL raw contents must be bytes 0 or 1"),
    ),
    "fp16_as_typed_contents": (
        "fp16",
        _fp16_typed,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'h'", "FP16 travels only raw"),
    ),
    "bytes_length_prefix_too_long": (
        "strings",
        _bytes_bad_length_prefix,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'category'", "BYTES element 0 says 100 bytes, 3 remain"),
    ),
    "unknown_requested_output": (
        "affine_fp32",
        lambda: _requested("nope"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("unknown requested output 'nope'", "y (FP32 [-1, 2])", "score (FP32 [-1])"),
    ),
    "output_requested_twice": (
        "affine_fp32",
        lambda: _requested("y", "y"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("requested twice",),
    ),
    "bytes_not_utf8_for_a_string_input": (
        "strings",
        _bytes_not_utf8,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'category'", "BYTES element [1] is not UTF-8", "the model takes strings"),
    ),
    "named_dim_with_two_sizes": (
        "shared_batch",
        _shared_dim_two_sizes,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'b' has shape [3, 1]", "dim 'N' is 2 in input 'a'"),
    ),
    # onnxruntime fails inside the graph: the caller's empty tensor is named, not INTERNAL
    "rows_with_no_columns": (
        "argmax_rows",
        lambda: fp32(Request(model_name="argmax_rows"), "x", np.ones((2, 0), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("input 'x' with shape [2, 0] (no elements)",),
    ),
    # The name is echoed in the message: cut to fit a gRPC status, the same text in the
    # answer and on the ledger (uncut, clients got RESOURCE_EXHAUSTED "Stream removed").
    "model_name_of_20_kb": (
        "affine_fp32",
        lambda: fp32(Request(model_name="m" * 20_000), "x", X),
        grpc.StatusCode.NOT_FOUND,
        ("unknown model 'mmm", "(cut from 20"),
    ),
}


def good_request(model: str) -> Request:
    request = Request(model_name=model)
    if model == "affine_fp32":
        return fp32(request, "x", X)
    if model == "all_dtypes":
        request = _all_dtypes_without_flag()
        request.inputs.add(name="flag", datatype="BOOL", shape=[1])
        request.raw_input_contents.append(b"\x01")
        return request
    if model == "fixed_shape":
        return fp32(request, "x", np.ones((1, 3), np.float32))
    if model == "fp16":
        return fp32(request, "h", np.ones((1, 2), np.float16), "FP16")
    if model == "argmax_rows":
        return fp32(request, "x", np.ones((2, 3), np.float32))
    if model == "shared_batch":
        fp32(request, "a", np.ones((2, 2), np.float32))
        return fp32(request, "b", np.ones((2, 1), np.float32))
    request.inputs.add(name="category", datatype="BYTES", shape=[1])
    request.raw_input_contents.append((3).to_bytes(4, "little") + b"red")
    return request


def assert_still_serving(sidecar: RunningSidecar, model: str) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        answer = raw_rpc(channel, "ModelInfer", good_request(model).SerializeToString())
    assert len(service_pb2.ModelInferResponse.FromString(answer).outputs) >= 1


def refused(sidecar: RunningSidecar, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(sidecar.address) as channel, pytest.raises(grpc.RpcError) as info:
        raw_rpc(channel, "ModelInfer", payload)
    return info.value


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_status_and_a_ledger_row(
    sidecars: Callable[[str], RunningSidecar], case: str
) -> None:
    model, build, code, fragments = CASES[case]
    sidecar = sidecars(model)
    request = build()
    request.id = f"bad-{case}"
    payload = request.SerializeToString()

    error = refused(sidecar, payload)

    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in error.details()
    rows = sidecar.query(
        "SELECT status, message, request, response FROM entries WHERE request_id = ?",
        [f"bad-{case}"],
    )
    assert [(s, m, bytes(q), bytes(r)) for s, m, q, r in rows] == [
        (code.name, error.details(), payload, b"")
    ]
    assert_still_serving(sidecar, model)


def test_malformed_protobuf_is_invalid_argument_and_recorded(
    sidecars: Callable[[str], RunningSidecar],
) -> None:
    sidecar = sidecars("affine_fp32")
    payload = b"\x0a\xff\xff\xff\x0f" + b"garbage"  # field 1 claims a 4 GiB string
    error = refused(sidecar, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in error.details()
    rows = sidecar.query(
        "SELECT request_id, status, message FROM entries WHERE request = ?", [payload]
    )
    assert len(rows) == 1
    request_id, status, message = rows[0]
    assert HEX32.match(request_id)  # the sidecar named the call it could not read
    assert (status, message) == ("INVALID_ARGUMENT", error.details())
    assert_still_serving(sidecar, "affine_fp32")


def test_refusals_are_in_the_records_view_with_their_status(
    sidecars: Callable[[str], RunningSidecar],
) -> None:
    sidecar = sidecars("affine_fp32")
    request = fp32(Request(model_name="nope", id="view-refusal"), "x", X)
    refused(sidecar, request.SerializeToString())
    rows = sidecar.query(
        "SELECT status, model_name, batch_size, outputs FROM records "
        "WHERE request_id = 'view-refusal'"
    )
    assert rows == [("NOT_FOUND", "nope", 2, [])]  # decoded inputs kept, no outputs


def test_oversize_request_is_resource_exhausted_and_recorded_without_its_bytes(
    make_sidecar, affine_model: Path
) -> None:
    sidecar = make_sidecar(affine_model, max_request_bytes=1024)
    big = np.ones((100, 4), np.float32)  # 1,600 bytes of data
    payload = fp32(affine(id="too-big"), "x", big).SerializeToString()
    assert len(payload) > 1024
    error = refused(sidecar, payload)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"request of {len(payload)} bytes exceeds the limit of 1024 bytes" in error.details()
    assert "--max-request-bytes" in error.details()
    rows = sidecar.query("SELECT status, message, request, response FROM entries")
    assert [(s, m, bytes(q), bytes(r)) for s, m, q, r in rows] == [
        ("RESOURCE_EXHAUSTED", error.details(), b"", b"")
    ]
    # Below the limit it serves as usual.
    small = fp32(affine(id="fits"), "x", X).SerializeToString()
    with grpc.insecure_channel(sidecar.address) as channel:
        raw_rpc(channel, "ModelInfer", small)
    assert sidecar.query("SELECT request_id, status FROM records ORDER BY seq")[-1] == (
        "fits",
        "OK",
    )


def test_message_beyond_the_grpc_limit_is_refused_by_grpc_and_the_sidecar_survives(
    make_sidecar, affine_model: Path
) -> None:
    sidecar = make_sidecar(affine_model, max_request_bytes=1024)
    huge = np.ones((1 << 17, 4), np.float32)  # 2 MiB: past gRPC's own receive limit
    error = refused(sidecar, fp32(affine(id="huge"), "x", huge).SerializeToString())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # gRPC refuses it before mlwitness sees it, so there is nothing to record.
    assert sidecar.query("SELECT count(*) FROM entries") == [(0,)]
    assert_still_serving(sidecar, "affine_fp32")
    assert sidecar.query("SELECT count(*) FROM entries") == [(1,)]


# ── what a request would cost, judged before it is decoded ─────────────────────────────


def test_half_a_million_tensors_are_refused_before_decoding_and_recorded_without_bytes(
    sidecars: Callable[[str], RunningSidecar],
) -> None:
    sidecar = sidecars("affine_fp32")
    request = affine(id="many-tensors")
    for i in range(500_000):  # 13 MB: once 3.8 s of decoding on the event loop
        request.inputs.add(name=f"x{i}", datatype="FP32", shape=[1, 1])
        request.raw_input_contents.append(bytes(4))
    payload = request.SerializeToString()
    error = refused(sidecar, payload)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "500000 input tensors in one message, over the limit of 1024"
    rows = sidecar.query("SELECT status, message, octet_length(request), detail FROM entries "
                         "WHERE request_id = 'many-tensors'")
    assert rows == [("RESOURCE_EXHAUSTED", error.details(), 0,
                     f'{{"received_bytes": {len(payload)}}}')]
    assert_still_serving(sidecar, "affine_fp32")


def test_inputs_the_model_does_not_take_are_refused_by_name_before_decoding(
    sidecars: Callable[[str], RunningSidecar],
) -> None:
    sidecar = sidecars("affine_fp32")
    request = affine(id="names-first")
    for name in ("x", "x"):  # the second one's contents would not even decode
        request.inputs.add(name=name, datatype="FP32", shape=[2**40, 4])
        request.raw_input_contents.append(b"")
    error = refused(sidecar, request.SerializeToString())
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x' appears more than once; input names must be unique")


def strings_request(request_id: str, count: int, tail: bytes = b"") -> Request:
    request = Request(model_name="strings", id=request_id)
    request.inputs.add(name="category", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(b"\x00\x00\x00\x00" * count + tail)
    return request


def test_more_strings_than_the_limit_are_refused_naming_the_tensor_and_the_flag(
    make_sidecar, model_paths: dict[str, Path]
) -> None:
    sidecar = make_sidecar(model_paths["strings"], max_string_elements=1000)
    payload = strings_request("too-many-strings", 1001).SerializeToString()
    error = refused(sidecar, payload)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == ("input 'category' brings the request to 1001 BYTES elements, "
                               "over the limit of 1000 (--max-string-elements)")
    with grpc.insecure_channel(sidecar.address) as channel:
        raw_rpc(channel, "ModelInfer", strings_request("fits", 1000).SerializeToString())
    assert sidecar.query("SELECT request_id, status, octet_length(request) = 0 FROM entries "
                         "ORDER BY seq") == [("too-many-strings", "RESOURCE_EXHAUSTED", True),
                                             ("fits", "OK", False)]


def test_other_callers_are_answered_while_a_large_request_is_decoded(
    make_sidecar, model_paths: dict[str, Path]
) -> None:
    """12 MiB of 3 M strings with one trailing byte: slow to decode, then refused. Decoded on
    the event loop, no other call could begin and end between its arrival and its refusal
    (it has no await in between); decoded in a thread, other callers' calls complete in the
    meantime. The ledger's arrival times and chain order show which happened."""
    count = 3_000_000
    sidecar = make_sidecar(model_paths["strings"], max_string_elements=count)
    big = strings_request("big", count, tail=b"!").SerializeToString()
    outcome: dict[str, object] = {}

    def send_big() -> None:
        outcome["error"] = refused(sidecar, big)

    sender = threading.Thread(target=send_big)
    small = 0
    with grpc.insecure_channel(sidecar.address) as channel:
        sender.start()
        deadline = time.monotonic() + 120
        while sender.is_alive() and small < 20_000 and time.monotonic() < deadline:
            raw_rpc(channel, "ModelInfer",
                    strings_request(f"small-{small}", 1).SerializeToString())
            small += 1
    sender.join(60)
    error = outcome["error"]
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 trailing bytes after the 3000000 BYTES elements" in error.details()
    ((big_seq, big_received),) = sidecar.query(
        "SELECT seq, received_us FROM entries WHERE request_id = 'big'")
    during = sidecar.query(
        "SELECT count(*) FROM entries WHERE request_id LIKE 'small-%' AND status = 'OK' "
        "AND received_us > ? AND seq < ?", [big_received, big_seq])
    assert during[0][0] >= 1, f"no call answered while the big one was decoded ({small} sent)"


def test_a_sidecar_that_refused_empty_tensors_with_huge_shapes_loads_and_restarts(
    make_sidecar, affine_model: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.duckdb"
    sidecar = make_sidecar(affine_model, ledger=ledger)
    for rows in (2**40, 2**24):
        payload = fp32(affine(id=f"empty-{rows}"), "x", np.zeros((rows, 0), np.float32))
        assert refused(sidecar, payload.SerializeToString()).code() == \
            grpc.StatusCode.INVALID_ARGUMENT
    with grpc.insecure_channel(sidecar.address) as channel:
        raw_rpc(channel, "ModelInfer", fp32(affine(id="after"), "x", X).SerializeToString())
    expected = [("empty-1099511627776", "INVALID_ARGUMENT", 0),
                ("empty-16777216", "INVALID_ARGUMENT", 0), ("after", "OK", 2)]
    assert sidecar.query("SELECT request_id, status, batch_size FROM records ORDER BY seq"
                         ) == expected
    sidecar.stop()
    again = make_sidecar(affine_model, ledger=ledger)
    with grpc.insecure_channel(again.address) as channel:
        raw_rpc(channel, "ModelInfer", fp32(affine(id="restarted"), "x", X).SerializeToString())
    assert again.query("SELECT request_id, status, batch_size FROM records ORDER BY seq"
                       ) == [*expected, ("restarted", "OK", 2)]
    again.stop()
    report = verify(ledger)
    assert report.ok and report.records == 4
