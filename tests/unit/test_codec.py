"""v2 tensor codec: round trips, bit-exactness, tritonclient compatibility, invalid input."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferResult, service_pb2
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import np_to_triton_dtype

from mlwitness import codec
from mlwitness.codec import Tensor
from mlwitness.errors import InvalidInput, TooLarge
from mlwitness.protocol import inference as pb

SUPPORTED = [name for name, info in codec.DATATYPES.items() if info.dtype is not None]
TYPED = [name for name in SUPPORTED if codec.DATATYPES[name].field is not None]
SHAPES = [(), (0, 4), (1000, 4), (2, 3, 1)]
BYTES_POOL = [b"", b"\x00", b"\xff\xfe\x00 not utf-8", "héllo".encode(), b"tail\x00", bytes(256)]


def sample(datatype: str, shape: tuple[int, ...], *, finite: bool = False) -> np.ndarray:
    """Deterministic values covering each type's extremes (and float specials)."""
    n = math.prod(shape)
    rng = np.random.default_rng(n)
    if datatype == "BYTES":
        flat = np.empty(n, dtype=object)
        for i in range(n):
            flat[i] = BYTES_POOL[i % len(BYTES_POOL)]
        return flat.reshape(shape)
    dtype = codec.numpy_dtype(datatype)
    if datatype == "BOOL":
        flat = rng.integers(0, 2, n).astype(bool)
    elif dtype.kind in "iu":
        limits = np.iinfo(dtype)
        flat = rng.integers(limits.min, limits.max, size=n, dtype=dtype, endpoint=True)
        flat[:2] = [limits.min, limits.max][:n]
    else:
        flat = rng.standard_normal(n).astype(dtype)
        if not finite:
            specials = np.array([np.nan, -0.0, np.inf, -np.inf], dtype=dtype)
            flat[: len(specials)] = specials[:n]
    return flat.reshape(shape)


def assert_same(got: Tensor, want: Tensor) -> None:
    assert (got.name, got.datatype, got.shape) == (want.name, want.datatype, want.shape)
    assert got.array.dtype == want.array.dtype and got.array.shape == want.array.shape
    if want.datatype == "BYTES":
        assert all(type(v) is bytes for v in got.array.ravel())
        assert got.array.tolist() == want.array.tolist()
    else:
        assert got.array.tobytes() == want.array.tobytes()


def via_request(tensors: list[Tensor], *, raw: bool) -> list[Tensor]:
    request = pb.ModelInferRequest()
    codec.encode_inputs(request, tensors, raw=raw)
    return codec.decode_inputs(pb.ModelInferRequest.FromString(request.SerializeToString()))


def via_response(tensors: list[Tensor], *, raw: bool) -> list[Tensor]:
    response = pb.ModelInferResponse()
    codec.encode_outputs(response, tensors, raw=raw)
    return codec.decode_outputs(pb.ModelInferResponse.FromString(response.SerializeToString()))


@pytest.mark.parametrize("via", [via_request, via_response], ids=["request", "response"])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", SUPPORTED)
def test_every_datatype_round_trips_bit_for_bit(datatype, shape, raw, via):
    tensor = codec.tensor_from_array("t", sample(datatype, shape))
    assert (tensor.datatype, tensor.shape, tensor.array.shape) == (datatype, shape, shape)
    (got,) = via([tensor], raw=raw)
    assert_same(got, tensor)


def test_several_tensors_round_trip_in_order():
    tensors = [codec.tensor_from_array(f"t{i}", sample(d, (3, 2))) for i, d in enumerate(TYPED)]
    for raw in (True, False):
        for got, want in zip(via_request(tensors, raw=raw), tensors, strict=True):
            assert_same(got, want)


FLOAT_BITS = {
    # quiet NaN with payload, signalling NaN, negative NaN, -0.0, +inf, -inf, smallest subnormal
    "FP16": ("<u2", [0x7E01, 0x7C01, 0xFE00, 0x8000, 0x7C00, 0xFC00, 0x0001]),
    "FP32": ("<u4", [0x7FC00001, 0x7F800001, 0xFFBFFFFF, 0x80000000, 0x7F800000, 0xFF800000, 1]),
    "FP64": (
        "<u8",
        [0x7FF8000000000001, 0x7FF0000000000001, 0xFFF7FFFFFFFFFFFF, 1 << 63]
        + [0x7FF0000000000000, 0xFFF0000000000000, 1],
    ),
}


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", list(FLOAT_BITS))
def test_float_nan_payloads_signed_zero_and_inf_survive_exactly(datatype, raw):
    bits_dtype, bits = FLOAT_BITS[datatype]
    array = np.array(bits, dtype=bits_dtype).view(codec.numpy_dtype(datatype))
    tensor = codec.tensor_from_array("f", array)
    for via in (via_request, via_response):
        (got,) = via([tensor], raw=raw)
        assert got.array.view(bits_dtype).tolist() == bits


def test_bytes_keep_empty_strings_nul_bytes_and_non_utf8():
    values = [b"", b"\x00\x00", b"\xc3\x28", b"\xff" * 70000, b"", "日本".encode()]
    array = np.array(values + [None], dtype=object)[:-1].reshape(2, 3)
    tensor = codec.tensor_from_array("s", array)
    for raw in (True, False):
        (got,) = via_response([tensor], raw=raw)
        assert got.array.tolist() == [values[:3], values[3:]]


def test_raw_bytes_use_little_endian_length_prefixes():
    response = pb.ModelInferResponse()
    tensor = codec.tensor_from_array("s", np.array([b"ab", b""], dtype=object))
    codec.encode_outputs(response, [tensor], raw=True)
    assert response.raw_output_contents[0] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_encoding_puts_each_datatype_in_its_own_field(datatype):
    request = pb.ModelInferRequest()
    codec.encode_inputs(request, [codec.tensor_from_array("t", sample(datatype, (4,)))], raw=False)
    contents = request.inputs[0].contents
    fields = [f.name for f, _ in contents.ListFields()]
    assert fields == [codec.DATATYPES[datatype].field]
    assert not request.raw_input_contents


def test_fp16_sends_every_tensor_raw_even_when_typed_requested():
    tensors = [
        codec.tensor_from_array("a", sample("FP32", (2,))),
        codec.tensor_from_array("h", sample("FP16", (2,))),
    ]
    response = pb.ModelInferResponse()
    codec.encode_outputs(response, tensors, raw=False)
    assert len(response.raw_output_contents) == 2
    assert not any(o.HasField("contents") for o in response.outputs)
    for got, want in zip(via_response(tensors, raw=False), tensors, strict=True):
        assert_same(got, want)


def test_decoded_arrays_are_contiguous_aligned_and_shaped():
    tensors = [codec.tensor_from_array(d, sample(d, (5, 3))) for d in SUPPORTED]
    for raw in (True, False):
        for got in via_request(tensors, raw=raw):
            assert got.array.shape == (5, 3)
            assert got.array.flags.c_contiguous and got.array.flags.aligned


def test_decoded_read_only_array_feeds_onnxruntime():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (x,) = via_request([codec.tensor_from_array("x", sample("FP32", (4, 3)))], raw=True)
    assert not x.array.flags.writeable
    (y,) = session.run(None, {"x": x.array})
    assert y.tobytes() == x.array.tobytes()
    assert codec.datatype_from_onnx(session.get_inputs()[0].type) == "FP32"


def test_tensor_from_array_encodes_str_as_utf8_and_normalises_byte_order():
    strings = codec.tensor_from_array("s", np.array([["é", "a"]]))
    assert (strings.datatype, strings.shape) == ("BYTES", (1, 2))
    assert strings.array.tolist() == [["é".encode(), b"a"]]
    mixed = codec.tensor_from_array("m", np.array(["x", b"\xff"], dtype=object))
    assert mixed.array.tolist() == [b"x", b"\xff"]
    big = codec.tensor_from_array("b", np.arange(6, dtype=">f4").reshape(2, 3)[:, ::2])
    assert big.array.dtype == np.dtype("<f4") and big.array.flags.c_contiguous
    assert big.array.tolist() == [[0.0, 2.0], [3.0, 5.0]]


def test_tensor_from_array_rejects_types_without_a_v2_datatype():
    with pytest.raises(InvalidInput, match=r"tensor 'c': numpy dtype complex128 has no v2"):
        codec.tensor_from_array("c", np.zeros(2, dtype=complex))
    with pytest.raises(InvalidInput, match=r"tensor 'o': BYTES element 3 is not bytes or str"):
        codec.tensor_from_array("o", np.array([b"a", 3], dtype=object))


def test_tensor_requires_array_to_match_datatype_and_shape():
    with pytest.raises(ValueError, match=r"tensor 'x': array is float64 \(2,\), expected float32"):
        Tensor("x", "FP32", (2,), np.zeros(2))
    with pytest.raises(ValueError, match=r"expected float32 \(3,\)"):
        Tensor("x", "FP32", (3,), np.zeros(2, dtype=np.float32))


ONNX_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(bool)": "BOOL", "tensor(string)": "BYTES", "tensor(bfloat16)": "BF16",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
}  # fmt: skip


def test_onnx_types_map_to_v2_datatypes():
    assert {t: codec.datatype_from_onnx(t) for t in ONNX_TYPES} == ONNX_TYPES
    assert codec.numpy_dtype("FP32") == np.float32
    assert codec.numpy_dtype("BYTES") == np.dtype(object)
    assert {codec.DATATYPES[d].size for d in ("INT16", "FP16", "BF16")} == {2}
    with pytest.raises(InvalidInput, match=r"ONNX type 'seq\(tensor\(float\)\)' has no v2"):
        codec.datatype_from_onnx("seq(tensor(float))")


def test_bf16_is_known_but_rejected_as_unsupported():
    with pytest.raises(InvalidInput, match="datatype BF16 is not supported"):
        codec.numpy_dtype("BF16")
    with pytest.raises(InvalidInput, match="unknown datatype 'FP8'; expected one of BOOL"):
        codec.numpy_dtype("FP8")


# --- compatibility with the real tritonclient -------------------------------------------


def triton_request_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise a request exactly as tritonclient.grpc.InferenceServerClient.infer does."""
    inputs = []
    for name, array in arrays.items():
        datatype = "BF16" if array.dtype == ml_dtypes.bfloat16 else np_to_triton_dtype(array.dtype)
        inputs.append(InferInput(name, list(array.shape), datatype).set_data_from_numpy(array))
    request = _get_inference_request(
        model_name="m", inputs=inputs, model_version="", request_id="r1", outputs=None,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
        parameters=None,
    )  # fmt: skip
    return request.SerializeToString()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", SUPPORTED)
def test_tritonclient_request_decodes_to_the_same_arrays(datatype, shape):
    array = sample(datatype, shape)
    data = triton_request_bytes({"x": array, "k": np.array([7], dtype=np.int64)})
    x, k = codec.decode_inputs(pb.ModelInferRequest.FromString(data))
    assert (x.name, x.datatype, x.shape, k.name) == ("x", datatype, shape, "k")
    assert_same(x, codec.tensor_from_array("x", array))
    assert k.array.tolist() == [7]


def test_decode_accepts_tritonclient_message_objects_directly():
    array = sample("FP32", (2, 3))
    request = service_pb2.ModelInferRequest.FromString(triton_request_bytes({"x": array}))
    (x,) = codec.decode_inputs(request)
    assert x.array.tobytes() == array.tobytes()
    response = service_pb2.ModelInferResponse()
    codec.encode_outputs(response, [x], raw=False)
    assert codec.decode_outputs(response)[0].array.tobytes() == array.tobytes()


def test_tritonclient_str_inputs_arrive_as_utf8_bytes():
    (s,) = codec.decode_inputs(
        pb.ModelInferRequest.FromString(triton_request_bytes({"s": np.array(["é", ""], object)}))
    )
    assert s.array.tolist() == ["é".encode(), b""]


def test_tritonclient_bf16_input_is_rejected_naming_the_tensor():
    data = triton_request_bytes({"b": np.array([1.5, -2], dtype=ml_dtypes.bfloat16)})
    with pytest.raises(InvalidInput, match="input 'b': datatype BF16 is not supported"):
        codec.decode_inputs(pb.ModelInferRequest.FromString(data))


def test_tritonclient_input_without_data_shows_as_missing_raw_entry():
    request = service_pb2.ModelInferRequest.FromString(
        triton_request_bytes({"a": sample("FP32", (2,))})
    )
    request.inputs.add(name="b", datatype="FP32", shape=[2])  # InferInput never given data
    with pytest.raises(InvalidInput, match="2 inputs but 1 raw_input_contents entries"):
        codec.decode_inputs(request)


def triton_as_numpy(response: object, name: str) -> np.ndarray:
    data = response.SerializeToString()  # type: ignore[attr-defined]
    return InferResult(service_pb2.ModelInferResponse.FromString(data)).as_numpy(name)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", SUPPORTED)
def test_tritonclient_reads_our_raw_outputs(datatype, shape):
    tensors = [
        codec.tensor_from_array("k", np.arange(3)),
        codec.tensor_from_array("y", sample(datatype, shape)),
    ]
    response = pb.ModelInferResponse()
    codec.encode_outputs(response, tensors, raw=True)
    got = triton_as_numpy(response, "y")
    assert got.shape == shape
    if datatype == "BYTES":
        assert got.tolist() == tensors[1].array.tolist()
    else:
        assert got.dtype == tensors[1].array.dtype and got.tobytes() == tensors[1].array.tobytes()
    assert triton_as_numpy(response, "k").tolist() == [0, 1, 2]


def test_tritonclient_reads_fp16_outputs_because_they_always_go_raw():
    tensors = [
        codec.tensor_from_array("h", sample("FP16", (3, 2))),
        codec.tensor_from_array("s", sample("BYTES", (2,))),
    ]
    response = pb.ModelInferResponse()
    codec.encode_outputs(response, tensors, raw=False)
    assert triton_as_numpy(response, "h").tobytes() == tensors[0].array.tobytes()
    assert triton_as_numpy(response, "s").tolist() == tensors[1].array.tolist()


@pytest.mark.parametrize("datatype", TYPED)
def test_tritonclient_parses_our_typed_outputs_to_the_same_values(datatype):
    want = sample(datatype, (3, 4), finite=True)
    response = pb.ModelInferResponse()
    codec.encode_outputs(response, [codec.tensor_from_array("y", want)], raw=False)
    parsed = service_pb2.ModelInferResponse.FromString(response.SerializeToString())
    (output,) = parsed.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", datatype, [3, 4])
    values = list(getattr(output.contents, codec.DATATYPES[datatype].field))
    assert values == want.ravel().tolist()


def test_tritonclient_as_numpy_cannot_read_typed_outputs():
    """Pins a tritonclient limitation: InferResult.as_numpy reads typed contents only for
    BYTES (a typed numeric output becomes np.empty(0).reshape(shape) and fails), and on
    numpy 2 not even those (`np.array(..., copy=False)`). Serve tritonclient raw outputs."""
    response = pb.ModelInferResponse()
    tensors = [codec.tensor_from_array(d, sample(d, (2,))) for d in ("FP32", "BYTES")]
    codec.encode_outputs(response, tensors, raw=False)
    with pytest.raises(ValueError, match="cannot reshape array of size 0"):
        triton_as_numpy(response, "FP32")
    if int(np.__version__.split(".")[0]) >= 2:
        with pytest.raises(ValueError, match="Unable to avoid copy"):
            triton_as_numpy(response, "BYTES")


# --- invalid input ------------------------------------------------------------------------


def request_with(*inputs: tuple[str, str, list[int]], raw: list[bytes] | None = None):
    request = pb.ModelInferRequest()
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw or [])
    return request


def rejects(request, pattern: str) -> None:
    with pytest.raises(InvalidInput, match=pattern):
        codec.decode_inputs(request)


def test_rejects_typed_contents_mixed_with_raw_contents():
    request = request_with(("a", "FP32", [1]), ("b", "FP32", [1]), raw=[bytes(4), bytes(4)])
    request.inputs[1].contents.fp32_contents.append(1.0)
    rejects(request, "input 'b' sets typed contents while raw_input_contents is used")


def test_rejects_raw_entry_count_different_from_input_count():
    request = request_with(("a", "FP32", [1]), ("b", "FP32", [1]), raw=[bytes(4)])
    rejects(request, "2 inputs but 1 raw_input_contents entries; need one per input")


def test_rejects_unknown_datatype_naming_the_tensor():
    rejects(request_with(("x", "FP8", [1]), raw=[b"\x00"]), "input 'x': unknown datatype 'FP8'")


def test_rejects_bf16_datatype_naming_the_tensor():
    rejects(request_with(("x", "BF16", [1]), raw=[bytes(2)]), "input 'x': datatype BF16 is not")


def test_rejects_negative_dimensions():
    rejects(request_with(("x", "FP32", [-1, 3]), raw=[bytes(12)]),
            r"input 'x': shape \[-1, 3\] has a negative dimension")  # fmt: skip


def test_rejects_raw_length_not_matching_shape():
    request = request_with(("x", "FP32", [2, 3]), raw=[bytes(20)])
    rejects(request, r"input 'x': raw_input_contents holds 20 bytes, expected 24 \(6 FP32 elem")


def test_rejects_typed_values_in_the_wrong_field():
    request = request_with(("x", "FP32", [2]))
    request.inputs[0].contents.int_contents.extend([1, 2])
    rejects(request, "input 'x': FP32 values belong in contents.fp32_contents, got int_contents")


def test_rejects_typed_value_count_not_matching_shape():
    request = request_with(("x", "FP32", [2, 3]))
    request.inputs[0].contents.fp32_contents.extend([1.0] * 5)
    rejects(request, r"input 'x': shape \[2, 3\] needs 6 values in contents.fp32_contents, got 5")


def test_rejects_typed_fp16_since_it_travels_only_raw():
    rejects(request_with(("h", "FP16", [2])), "input 'h': FP16 travels only raw")
    request = request_with(("h", "FP16", [1]))
    request.inputs[0].contents.fp32_contents.append(1.0)
    rejects(request, "input 'h': FP16 travels only raw")


@pytest.mark.parametrize(
    ("datatype", "value", "message"),
    [
        ("INT8", 300, r"value 300 is out of range for INT8 \[-128, 127\]"),
        ("INT8", -129, r"value -129 is out of range for INT8"),
        ("INT16", -40000, r"value -40000 is out of range for INT16 \[-32768, 32767\]"),
        ("UINT8", 256, r"value 256 is out of range for UINT8 \[0, 255\]"),
        ("UINT16", 70000, r"value 70000 is out of range for UINT16 \[0, 65535\]"),
    ],
)
def test_rejects_typed_values_out_of_range_for_narrow_ints(datatype, value, message):
    request = request_with(("n", datatype, [2]))
    getattr(request.inputs[0].contents, codec.DATATYPES[datatype].field).extend([1, value])
    rejects(request, f"input 'n': {message}")


@pytest.mark.parametrize(
    ("shape", "raw", "message"),
    [
        ([1], b"\x01\x00", "BYTES raw contents hold 2 bytes, too few for 1 elements"),
        ([2**40], bytes(8), "BYTES raw contents hold 8 bytes, too few for 1099511627776 elem"),
        ([1], b"\x0a\x00\x00\x00abc", "BYTES element 0 says 10 bytes, 3 remain"),
        ([2], b"\x01\x00\x00\x00abcd", "BYTES raw contents hold 1 elements, expected 2"),
        ([1], b"\x01\x00\x00\x00abc", "2 trailing bytes after the 1 BYTES elements"),
        ([3], b"\x01\x00\x00\x00a\x09\x00\x00\x00bc\x00\x00\x00\x00",
         "BYTES element 1 says 9 bytes, 6 remain"),
        ([3], b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x01\x00",
         "BYTES raw contents hold 2 elements, expected 3"),
        ([0], b"\x00\x00\x00\x00", "4 trailing bytes after the 0 BYTES elements"),
    ],
)
def test_rejects_malformed_raw_bytes(shape, raw, message):
    rejects(request_with(("s", "BYTES", shape), raw=[raw]), f"input 's': {message}")


def test_rejects_duplicate_input_names():
    request = request_with(("x", "INT32", [1]), ("x", "INT32", [1]), raw=[bytes(4), bytes(4)])
    rejects(request, "input 'x' appears more than once; input names must be unique")


def test_rejects_raw_bool_bytes_other_than_zero_and_one():
    rejects(request_with(("b", "BOOL", [2]), raw=[b"\x01\x02"]), "input 'b': BOOL raw contents")


def test_rejects_zero_size_shape_too_large_for_numpy():
    rejects(request_with(("z", "FP32", [0, 2**62]), raw=[b""]),
            r"input 'z': shape \[0, 4611686018427387904\] is too large")  # fmt: skip


def test_rejects_typed_float_contents_carrying_unknown_fields():
    request = request_with(("x", "FP32", [1]))
    request.inputs[0].contents.fp32_contents.append(1.0)
    request.inputs[0].contents.MergeFromString(b"\xa0\x06\x01")  # field 100, varint 1
    rejects(request, "input 'x': contents carry fields unknown to the v2 protocol")


def test_output_errors_name_the_output_and_raw_output_contents():
    response = pb.ModelInferResponse()
    response.outputs.add(name="y", datatype="INT64", shape=[3])
    response.raw_output_contents.append(bytes(16))
    with pytest.raises(
        InvalidInput, match="output 'y': raw_output_contents holds 16 bytes, expected 24"
    ):
        codec.decode_outputs(response)


# --- sizes judged before anything is allocated ---------------------------------------------


@pytest.mark.parametrize("shape", [[2**40, 0], [2**24, 0], [0, 2**40], [2**20, 2**20, 0]],
                         ids=str)
def test_rejects_an_empty_tensor_claiming_more_rows_than_its_message_has_bytes(shape):
    request = request_with(("x", "FP32", shape), raw=[b""])
    with pytest.raises(InvalidInput, match=r"input 'x': shape \[.*\] is too large for a "
                                           r"message of 5000 bytes"):
        codec.decode_inputs(request, size=5000)
    rejects(request, "is too large for a message of")  # size: the message's own


def test_an_empty_tensor_within_its_message_size_decodes():
    request = request_with(("x", "FP32", [1000, 0]), raw=[b""])
    (tensor,) = codec.decode_inputs(request, size=1000)
    assert tensor.shape == (1000, 0) and tensor.array.size == 0


def test_rejects_more_tensors_than_the_limit_before_decoding_any():
    many = [(f"x{i}", "FP32", [1]) for i in range(codec.MAX_TENSORS + 1)]
    request = request_with(*many, raw=[bytes(4)] * len(many))
    message = f"{codec.MAX_TENSORS + 1} input tensors in one message, over the limit of " \
              f"{codec.MAX_TENSORS}"
    with pytest.raises(TooLarge, match=message):
        codec.check_sizes(request, size=request.ByteSize())
    with pytest.raises(TooLarge, match=message):
        codec.decode_inputs(request)
    response = pb.ModelInferResponse()
    for name, datatype, shape in many:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
    with pytest.raises(TooLarge, match="output tensors in one message"):
        codec.decode_outputs(response)
    assert len(codec.decode_inputs(request_with(*many[:-1], raw=[bytes(4)] * (len(many) - 1)))
               ) == codec.MAX_TENSORS


def test_rejects_string_elements_over_the_cap_naming_the_tensor_that_crosses_it():
    three = b"\x00\x00\x00\x00" * 3
    request = request_with(("a", "BYTES", [3]), ("b", "BYTES", [1, 3]), raw=[three, three])
    with pytest.raises(TooLarge, match="input 'b' brings the request to 6 BYTES elements, "
                                       "over the limit of 5"):
        codec.decode_inputs(request, max_strings=5)
    assert [t.shape for t in codec.decode_inputs(request, max_strings=6)] == [(3,), (1, 3)]
    typed = request_with(("t", "BYTES", [4]))
    typed.inputs[0].contents.bytes_contents.extend([b""] * 4)
    with pytest.raises(TooLarge, match="input 't' brings the request to 4 BYTES"):
        codec.check_sizes(typed, size=typed.ByteSize(), max_strings=3)


def test_a_string_count_the_message_cannot_carry_is_refused_as_malformed_not_counted():
    request = request_with(("s", "BYTES", [2**40]), raw=[bytes(8)])
    with pytest.raises(InvalidInput, match="too few for 1099511627776 elements"):
        codec.decode_inputs(request, max_strings=10)


def test_rejects_more_dimensions_than_numpy_supports():
    rejects(request_with(("x", "FP32", [1] * (codec.MAX_DIMS + 1)), raw=[bytes(4)]),
            f"input 'x': shape has {codec.MAX_DIMS + 1} dimensions; at most {codec.MAX_DIMS}")
