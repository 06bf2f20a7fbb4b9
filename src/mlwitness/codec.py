"""Open Inference Protocol v2 tensors <-> numpy arrays, raw and typed contents alike.

Raw contents are row-major, little-endian, unpadded; a BYTES element is a 4-byte
little-endian length plus the bytes. Messages are duck-typed (our `mlwitness.protocol.inference`
classes and `tritonclient.grpc.service_pb2` alike); no grpc import. Malformed tensors raise
`InvalidInput` naming the tensor. Floats stay bit-exact on every path (NaN payloads,
signalling NaNs, -0.0, inf): typed `fp32_contents`/`fp64_contents` move as packed wire
bytes, never through Python floats (float32 -> float -> float32 quiets signalling NaNs).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlwitness.errors import InvalidInput, TooLarge

_U32_LE = struct.Struct("<I")

# Limits checked before anything is allocated: a message is at most MAX_TENSORS tensors
# of at most MAX_DIMS dimensions each (numpy 1.x's own limit; ONNX models stay far below
# both), and a tensor may claim no more elements than its message has bytes, even one with
# no elements at all (shape [2**40, 0] is 42 bytes on the wire: unchecked, the ledger
# tried to tabulate 2**40 rows of it).
MAX_TENSORS = 1024
MAX_DIMS = 32
# Messages up to this size parse and decode in a few ms even in the costliest layouts
# (BYTES or typed integer contents, ~0.1 µs an element): less than a hop to a worker
# thread. Larger ones are worth handling off the event loop.
INLINE_BYTES = 1 << 16


@dataclass(frozen=True)
class DatatypeInfo:
    """A datatype row. `dtype` None: numpy cannot hold it (BF16); `size` 0: variable (BYTES);
    `field` None: travels only raw (FP16, BF16)."""

    name: str
    dtype: np.dtype[Any] | None
    size: int
    onnx_type: str
    field: str | None


DATATYPES: dict[str, DatatypeInfo] = {
    info.name: info
    for info in (
        DatatypeInfo("BOOL", np.dtype("?"), 1, "tensor(bool)", "bool_contents"),
        DatatypeInfo("UINT8", np.dtype("<u1"), 1, "tensor(uint8)", "uint_contents"),
        DatatypeInfo("UINT16", np.dtype("<u2"), 2, "tensor(uint16)", "uint_contents"),
        DatatypeInfo("UINT32", np.dtype("<u4"), 4, "tensor(uint32)", "uint_contents"),
        DatatypeInfo("UINT64", np.dtype("<u8"), 8, "tensor(uint64)", "uint64_contents"),
        DatatypeInfo("INT8", np.dtype("<i1"), 1, "tensor(int8)", "int_contents"),
        DatatypeInfo("INT16", np.dtype("<i2"), 2, "tensor(int16)", "int_contents"),
        DatatypeInfo("INT32", np.dtype("<i4"), 4, "tensor(int32)", "int_contents"),
        DatatypeInfo("INT64", np.dtype("<i8"), 8, "tensor(int64)", "int64_contents"),
        DatatypeInfo("FP16", np.dtype("<f2"), 2, "tensor(float16)", None),
        DatatypeInfo("FP32", np.dtype("<f4"), 4, "tensor(float)", "fp32_contents"),
        DatatypeInfo("FP64", np.dtype("<f8"), 8, "tensor(double)", "fp64_contents"),
        DatatypeInfo("BF16", None, 2, "tensor(bfloat16)", None),
        DatatypeInfo("BYTES", np.dtype("O"), 0, "tensor(string)", "bytes_contents"),
    )
}
"""v2 datatype name -> numpy dtype (little-endian), element size, ONNX type, typed field."""

_BY_ONNX = {info.onnx_type: info.name for info in DATATYPES.values()}
# numpy dtype -> its datatype row, for numbers (a dtype of the other byte order is not here)
_BY_DTYPE = {info.dtype: info for info in DATATYPES.values()
             if info.dtype is not None and info.dtype.kind != "O"}
_TYPED_FIELDS = tuple(dict.fromkeys(i.field for i in DATATYPES.values() if i.field))
# Typed fields wider than the datatype: values must be range-checked.
_NARROW = {"INT8", "INT16", "UINT8", "UINT16"}
# Typed fields read as packed wire bytes so floats stay bit-exact.
_FLOAT_FIELDS = {"fp32_contents", "fp64_contents"}


def datatype_from_onnx(type_str: str) -> str:
    """Return the v2 datatype for an ONNX type string as onnxruntime reports it."""
    try:
        return _BY_ONNX[type_str]
    except KeyError:
        known = ", ".join(_BY_ONNX)
        raise InvalidInput(f"ONNX type {type_str!r} has no v2 datatype; known: {known}") from None


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """Return the numpy dtype for a v2 datatype; InvalidInput if unknown or unsupported."""
    dtype = _info(datatype, "numpy_dtype").dtype
    assert dtype is not None  # _info rejects datatypes numpy cannot hold
    return dtype


def _info(datatype: str, label: str) -> DatatypeInfo:
    info = DATATYPES.get(datatype)
    if info is None:
        known = ", ".join(n for n, i in DATATYPES.items() if i.dtype is not None)
        raise InvalidInput(f"{label}: unknown datatype {datatype!r}; expected one of {known}")
    if info.dtype is None:
        why = "is not supported (numpy has no such type); send FP32 or FP16"
        raise InvalidInput(f"{label}: datatype {datatype} {why}")
    return info


@dataclass(frozen=True)
class Tensor:
    """A named tensor; `array` has `shape` and the datatype's numpy dtype (BYTES: an object
    array of `bytes`). Decoded arrays are C-contiguous and aligned but may be read-only
    zero-copy views of the received bytes: fine as onnxruntime inputs; copy to mutate."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray

    def __post_init__(self) -> None:
        info = DATATYPES.get(self.datatype)  # made on every call: no message unless needed
        if info is None or info.dtype is None:
            info = _info(self.datatype, f"tensor {self.name!r}")
        if self.array.dtype != info.dtype or self.array.shape != self.shape:
            raise ValueError(
                f"tensor {self.name!r}: array is {self.array.dtype} {self.array.shape}, "
                f"expected {info.dtype} {self.shape} for {self.datatype}"
            )


def tensor_from_array(name: str, array: np.ndarray) -> Tensor:
    """Wrap an array, choosing the datatype from its dtype; numbers become little-endian and
    C-contiguous. Object/str/bytes arrays become BYTES, str encoded UTF-8 (numpy's `S` type
    has already dropped trailing NULs)."""
    array = np.asarray(array)
    info = _BY_DTYPE.get(array.dtype)  # the usual case: already a v2 dtype, little-endian
    if info is not None:
        out = array.astype(info.dtype, order="C", copy=False)  # keeps 0-d arrays 0-d
        return Tensor(name, info.name, tuple(out.shape), out)
    if array.dtype.kind in "OUS":
        values = (_as_bytes(name, v) for v in array.ravel().tolist())
        flat = np.fromiter(values, dtype=object, count=array.size)
        return Tensor(name, "BYTES", tuple(array.shape), flat.reshape(array.shape))
    for info in DATATYPES.values():
        dt = info.dtype
        if dt is not None and dt.kind == array.dtype.kind and dt.itemsize == array.dtype.itemsize:
            out = array.astype(dt, order="C", copy=False)  # keeps 0-d arrays 0-d
            return Tensor(name, info.name, tuple(out.shape), out)
    raise InvalidInput(f"tensor {name!r}: numpy dtype {array.dtype} has no v2 datatype")


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidInput(f"tensor {name!r}: BYTES element {value!r} is not bytes or str")


def decode_inputs(request: Any, *, size: int | None = None,
                  max_strings: int | None = None) -> list[Tensor]:
    """Decode every input of a ModelInferRequest (raw or typed contents).

    `size` is the byte size of the message as received (default: its serialized size), the
    bound on the elements any tensor may claim; `max_strings` caps the BYTES elements over
    all inputs (None: no cap). See `check_sizes` for what is refused before decoding."""
    size = request.ByteSize() if size is None else size
    check_sizes(request, size=size, max_strings=max_strings)
    return _decode(request.inputs, request.raw_input_contents, "input", "raw_input_contents",
                   size)


def decode_outputs(response: Any, *, size: int | None = None) -> list[Tensor]:
    """Decode every output of a ModelInferResponse (raw or typed contents); `size` as for
    `decode_inputs`."""
    size = response.ByteSize() if size is None else size
    _check_count(response.outputs, "output")
    return _decode(response.outputs, response.raw_output_contents, "output",
                   "raw_output_contents", size)


def check_sizes(request: Any, *, size: int, max_strings: int | None = None) -> None:
    """Refuse (TooLarge) a ModelInferRequest whose tensors would cost too much to decode,
    from the parsed message alone: more than MAX_TENSORS inputs, or more than
    `max_strings` BYTES elements over all inputs. A BYTES tensor claiming more elements
    than its `size`-byte message could carry (each takes at least 2 bytes on the wire)
    is not counted: decoding refuses it as malformed before allocating anything."""
    _check_count(request.inputs, "input")
    if max_strings is None:
        return
    strings = 0
    for item in request.inputs[:]:  # a slice: iterating protobuf's container costs more
        if item.datatype != "BYTES" or len(item.shape) > MAX_DIMS:
            continue
        if any(d < 0 for d in item.shape):
            continue  # refused as malformed when decoded
        count = math.prod(item.shape)
        if 2 * count > size:
            continue
        strings += count
        if strings > max_strings:
            raise TooLarge(f"input {item.name!r} brings the request to {strings} BYTES "
                           f"elements, over the limit of {max_strings} "
                           "(--max-string-elements)")


def _check_count(items: Any, kind: str) -> None:
    if len(items) > MAX_TENSORS:
        raise TooLarge(f"{len(items)} {kind} tensors in one message, over the limit of "
                       f"{MAX_TENSORS}")


def encode_inputs(request: Any, tensors: Sequence[Tensor], *, raw: bool) -> None:
    """Append tensors to a ModelInferRequest's inputs (see `encode_outputs` for `raw`)."""
    _encode(request.inputs, request.raw_input_contents, tensors, raw)


def encode_outputs(response: Any, tensors: Sequence[Tensor], *, raw: bool) -> None:
    """Append tensors to a ModelInferResponse's outputs.

    raw=True writes `raw_output_contents`; raw=False writes typed `contents`. FP16 has no
    typed field, and the spec forbids mixing raw and typed in one message, so when any
    tensor must go raw every tensor goes raw. Call on a message with no outputs yet.
    """
    _encode(response.outputs, response.raw_output_contents, tensors, raw)


def _decode(items: Any, raws: Sequence[bytes], kind: str, raw_field: str,
            size: int) -> list[Tensor]:
    if raws and len(raws) != len(items):
        n, got = len(items), len(raws)
        raise InvalidInput(f"{n} {kind}s but {got} {raw_field} entries; need one per {kind}")
    tensors: list[Tensor] = []
    seen: set[str] = set()
    for index, item in enumerate(items[:]):  # a slice: iterating the container costs more
        label = f"{kind} {item.name!r}"
        if raws and item.HasField("contents") and _set_fields(item.contents):
            raise InvalidInput(
                f"{label} sets typed contents while {raw_field} is used; "
                "send every tensor raw or every tensor typed, not both"
            )
        if item.name in seen:
            raise InvalidInput(f"{label} appears more than once; {kind} names must be unique")
        seen.add(item.name)
        info = _info(item.datatype, label)
        if len(item.shape) > MAX_DIMS:
            raise InvalidInput(f"{label}: shape has {len(item.shape)} dimensions; at most "
                               f"{MAX_DIMS} are supported")
        shape = tuple(item.shape[:])  # int64 dims: Python ints already
        if any(d < 0 for d in shape):
            raise InvalidInput(f"{label}: shape {list(shape)} has a negative dimension")
        count = math.prod(shape)
        if count == 0 and math.prod(d for d in shape if d) > size:
            raise InvalidInput(
                f"{label}: shape {list(shape)} is too large for a message of {size} bytes "
                "(even with no elements, a tensor's other dimensions may not claim more "
                "elements than the message has bytes)"
            )
        if raws:
            flat = _from_raw(raws[index], info, count, label, raw_field)
        else:
            flat = _from_typed(item.contents, info, count, shape, label)
        try:
            array = flat.reshape(shape)
        except ValueError as exc:
            raise InvalidInput(f"{label}: shape {list(shape)} is too large ({exc})") from None
        tensors.append(Tensor(item.name, info.name, shape, array))
    return tensors


def _from_raw(data: bytes, info: DatatypeInfo, count: int, label: str, field: str) -> np.ndarray:
    if info.name == "BYTES":
        return _split_bytes(bytes(data), count, label)
    expected = count * info.size
    if len(data) != expected:
        raise InvalidInput(
            f"{label}: {field} holds {len(data)} bytes, expected {expected} "
            f"({count} {info.name} elements of {info.size} bytes)"
        )
    flat = _view(data, info.dtype)
    if info.name == "BOOL" and count and int(flat.view(np.uint8).max()) > 1:
        raise InvalidInput(f"{label}: BOOL raw contents must be bytes 0 or 1")
    return flat


def _view(data: bytes, dtype: np.dtype[Any] | None) -> np.ndarray:
    flat = np.frombuffer(data, dtype=dtype)
    return flat if flat.flags.aligned else flat.copy()


def _split_bytes(data: bytes, count: int, label: str) -> np.ndarray:
    """The elements of BYTES raw contents: each a 4-byte little-endian length, then that
    many bytes. The loop is kept tight (it runs on the event loop, ~0.1 µs an element);
    the checks that name the bad element run only once the fast path has failed."""
    if 4 * count > len(data):  # checked before allocating: the shape is the sender's claim
        raise InvalidInput(
            f"{label}: BYTES raw contents hold {len(data)} bytes, too few for {count} elements "
            "(each needs a 4-byte length prefix)"
        )
    size = len(data)
    unpack = _U32_LE.unpack_from
    items: list[bytes] = []
    append = items.append
    pos = 0
    try:
        for _ in range(count):
            start = pos + 4
            pos = start + unpack(data, pos)[0]
            if pos > size:
                break
            append(data[start:pos])
    except struct.error:  # fewer than 4 bytes left for a length prefix
        pass
    if len(items) < count:
        i = len(items)
        at = sum(4 + len(item) for item in items)
        if at + 4 > size:
            raise InvalidInput(f"{label}: BYTES raw contents hold {i} elements, expected {count}")
        (length,) = unpack(data, at)
        raise InvalidInput(f"{label}: BYTES element {i} says {length} bytes, "
                           f"{size - at - 4} remain")
    if pos != size:
        raise InvalidInput(f"{label}: {size - pos} trailing bytes after the {count} BYTES "
                           "elements")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def _set_fields(contents: Any) -> list[str]:
    return [f for f in _TYPED_FIELDS if len(getattr(contents, f))]


def _from_typed(
    contents: Any, info: DatatypeInfo, count: int, shape: tuple[int, ...], label: str
) -> np.ndarray:
    present = _set_fields(contents)
    if info.field is None:
        if count or present:
            raise InvalidInput(f"{label}: {info.name} travels only raw, not as typed contents")
        return np.empty(0, dtype=info.dtype)
    wrong = [f for f in present if f != info.field]
    if wrong:
        raise InvalidInput(
            f"{label}: {info.name} values belong in contents.{info.field}, got {', '.join(wrong)}"
        )
    values = getattr(contents, info.field)
    if len(values) != count:
        raise InvalidInput(
            f"{label}: shape {list(shape)} needs {count} values in contents.{info.field}, "
            f"got {len(values)}"
        )
    if not count:
        return np.empty(0, dtype=info.dtype)
    if info.field in _FLOAT_FIELDS:
        return _view(_packed_payload(contents, info.field, label), info.dtype)
    if info.name == "BYTES":
        return np.fromiter(values, dtype=object, count=count)
    wide = np.fromiter(values, dtype=np.int64 if info.name != "UINT64" else np.uint64)
    if info.name in _NARROW:
        limits = np.iinfo(info.dtype)
        low, high = int(wide.min()), int(wide.max())
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise InvalidInput(
                f"{label}: value {bad} is out of range for {info.name} [{limits.min}, {limits.max}]"
            )
    return wide.astype(info.dtype)


def _encode(items: Any, raws: Any, tensors: Sequence[Tensor], raw: bool) -> None:
    raw = raw or any(DATATYPES[t.datatype].field is None for t in tensors)
    for tensor in tensors:
        item = items.add()
        item.name = tensor.name
        item.datatype = tensor.datatype
        item.shape.extend(tensor.shape)
        info = DATATYPES[tensor.datatype]
        if raw:
            raws.append(_to_raw(tensor, info))
        elif tensor.array.size:
            _to_typed(item.contents, tensor, info)


def _to_raw(tensor: Tensor, info: DatatypeInfo) -> bytes:
    if info.name != "BYTES":
        return tensor.array.tobytes(order="C")
    return b"".join(struct.pack("<I", len(v)) + v for v in _bytes_elements(tensor))


def _bytes_elements(tensor: Tensor) -> Iterable[bytes]:
    for value in tensor.array.ravel(order="C").tolist():
        if not isinstance(value, bytes):
            raise ValueError(f"tensor {tensor.name!r}: BYTES element {value!r} is not bytes")
        yield value


def _to_typed(contents: Any, tensor: Tensor, info: DatatypeInfo) -> None:
    field = info.field
    assert field is not None  # raw-only types were routed to _to_raw
    if field in _FLOAT_FIELDS:
        payload = tensor.array.tobytes(order="C")
        number = contents.DESCRIPTOR.fields_by_name[field].number
        contents.MergeFromString(_varint(number << 3 | 2) + _varint(len(payload)) + payload)
    elif info.name == "BYTES":
        getattr(contents, field).extend(_bytes_elements(tensor))
    else:
        getattr(contents, field).extend(tensor.array.ravel(order="C").tolist())


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _packed_payload(contents: Any, field: str, label: str) -> bytes:
    """A float field's little-endian element bytes, from its packed wire form. Only `field`
    is set (caller checked) and proto3 packs it: the wire form is tag, length, payload."""
    number = contents.DESCRIPTOR.fields_by_name[field].number
    data = contents.SerializeToString()
    key, pos = _read_varint(data, 0)
    length, pos = _read_varint(data, pos)
    if key != number << 3 | 2 or pos + length != len(data):
        raise InvalidInput(f"{label}: contents carry fields unknown to the v2 protocol")
    return data[pos:]
