"""Hypothesis strategies for ModelInferRequest bytes aimed at the demo credit model (one
input `input` FP32 [N, 6]; outputs `label`, `probabilities`).

Two kinds: `plans()` describes a request field by field (names, datatypes, shapes, raw and
typed contents, parameters, requested outputs, model name/version, id), near-valid more
often than not so that examples reach decoding, the model, the guards and the ledger's
tabulation; `build(module, plan)` serializes it with either set of generated classes
(`mlwitness.protocol.inference`, or `tritonclient.grpc.service_pb2` as an independent
reference). `mutated(seeds)` damages valid serialized requests on the wire: fields
repeated, dropped or shuffled, bits flipped, bytes cut, inserted or spliced in.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from mlwitness.codec import DATATYPES, MAX_DIMS

MODEL = "credit"
VERSION = "1"
INPUT = "input"
WIDTH = 6
OUTPUTS = ("label", "probabilities")
# Guards the fuzzed sidecars observe: every answered call is judged, rates included.
GUARDS = """
version = 1

[features.income]
min = 0.0
max = 500000.0

[features.age_band]
allowed = ["18-25", "26-40", "41-60", "61+"]

[outputs.probabilities_1]
min = 0.0
max = 1.0

[[rates]]
name = "approval_rate"
output = "label"
equals = "1"
min = 0.25
max = 0.55
window = 50
min_samples = 10
"""

I32 = st.integers(-(2**31), 2**31 - 1)
U32 = st.integers(0, 2**32 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
U64 = st.integers(0, 2**64 - 1)
F32 = st.floats(width=32)  # NaN, ±inf, -0.0, subnormals included
F64 = st.floats()

# Typed contents fields and what fits in each on the wire.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": I32,
    "int64_contents": I64,
    "uint_contents": U32,
    "uint64_contents": U64,
    "fp32_contents": F32,
    "fp64_contents": F64,
    "bytes_contents": st.binary(max_size=24),
}
PARAMETER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_param": st.booleans(),
    "int64_param": I64,
    "string_param": st.text(max_size=40),
    "double_param": F64,
    "uint64_param": U64,
    "": st.none(),  # an entry whose value sets no kind at all
}
SMALL = 64  # contents are generated for tensors of at most this many elements


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, drawn with these relative weights."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def huge_text(low: int = 1_000, high: int = 70_000) -> st.SearchStrategy[str]:
    # codec="utf-8": no lone surrogates, which protobuf strings cannot hold
    return st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(low, high))


def texts(*valid: str, weight: int = 6) -> st.SearchStrategy[str]:
    """Name-like text: a valid value (`weight` in 11), else empty, unicode, control, huge."""
    fixed = ["", " ", "\x00", "名前", "🙂", "a" * 300, "' OR 1=1 --", "\u202e", "%s%n"]
    return weighted((weight, st.sampled_from(valid or [""])), (2, st.sampled_from(fixed)),
                    (2, st.text(max_size=30)), (1, huge_text()))


@dataclass
class TensorPlan:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None = None  # its raw_input_contents entry (None: none)
    typed: dict[str, list[Any]] = field(default_factory=dict)
    parameters: dict[str, tuple[str, Any]] = field(default_factory=dict)
    valid: bool = False


@dataclass
class RequestPlan:
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, tuple[str, Any]]
    inputs: list[TensorPlan]
    outputs: list[tuple[str, dict[str, tuple[str, Any]]]]
    extra_raw: list[bytes] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Whether the request is one the model must answer (OK)."""
        names = [name for name, _ in self.outputs]
        tensor = self.inputs[0] if len(self.inputs) == 1 else None
        return (self.model_name == MODEL and self.model_version in ("", VERSION)
                and tensor is not None and tensor.valid and not self.extra_raw
                and set(names) <= set(OUTPUTS) and len(set(names)) == len(names))


def parameters(max_size: int = 4) -> st.SearchStrategy[dict[str, tuple[str, Any]]]:
    entry = st.sampled_from(sorted(PARAMETER_VALUES)).flatmap(
        lambda kind: st.tuples(st.just(kind), PARAMETER_VALUES[kind]))
    keys = weighted((3, st.sampled_from(["age_band", "priority", "income", "trace"])),
                    (2, st.text(max_size=20)), (1, huge_text(1_000, 5_000)))
    small = st.dictionaries(keys, entry, max_size=max_size)
    many = st.builds(lambda n, kind: {f"p{i}": (kind, _param_value(kind, i)) for i in range(n)},
                     st.integers(200, 3_000), st.sampled_from(sorted(PARAMETER_VALUES)))
    return weighted((12, small), (1, many))


def _param_value(kind: str, i: int) -> Any:
    return {"bool_param": bool(i % 2), "int64_param": -i, "string_param": "v" * (i % 50),
            "double_param": i / 7, "uint64_param": i, "": None}[kind]


def shapes() -> st.SearchStrategy[list[int]]:
    """Valid [N, 6] shapes most often; else zero, negative, huge, many dims, overflow."""
    dims = weighted((4, st.integers(0, 8)), (2, I64), (1, st.sampled_from(
        [-1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)])))
    return weighted(
        (20, st.builds(lambda n: [n, WIDTH], st.integers(1, 5))),
        (3, st.lists(dims, max_size=4)),
        (1, st.lists(st.integers(0, 3), min_size=MAX_DIMS - 1, max_size=MAX_DIMS + 8)),
        (1, st.sampled_from([[0, WIDTH], [2**62, 2**62, 0], [2**40, 0], [0, 2**63 - 1],
                             [2**32, 2**32], [3, 2**62, 4], [-1, WIDTH], [WIDTH, -(2**63)]])),
    )


def datatypes() -> st.SearchStrategy[str]:
    others = [*DATATYPES, "", "fp32", "FP8", "STRING", "FP32 ", "BYTES\x00", "INT128"]
    return weighted((20, st.just("FP32")), (3, st.sampled_from(others)),
                    (1, st.text(max_size=10)))


def _count(shape: list[int]) -> int | None:
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        return None
    return math.prod(shape)


def bytes_elements(count: int) -> st.SearchStrategy[bytes]:
    """BYTES raw contents for `count` elements: honest length prefixes, or lying ones."""
    elements = st.lists(st.binary(max_size=12), min_size=count, max_size=count)

    def encode(items: list[bytes], lie: int | None, at: int, tail: bytes) -> bytes:
        parts = [struct.pack("<I", len(v)) + v for v in items]
        if lie is not None and parts:
            index = at % len(parts)
            parts[index] = struct.pack("<I", lie) + items[index]
        return b"".join(parts) + tail

    lies = weighted((3, st.none()), (1, U32), (1, st.integers(0, 16)))
    return st.builds(encode, elements, lies, st.integers(0, SMALL),
                     weighted((4, st.just(b"")), (1, st.binary(max_size=6))))


@st.composite
def contents(draw: st.DrawFn, datatype: str, shape: list[int]
             ) -> tuple[bytes | None, dict[str, list[Any]], bool]:
    """(raw entry, typed contents, whether they match datatype and shape exactly)."""
    info = DATATYPES.get(datatype)
    count = _count(shape)
    fits = info is not None and count is not None and count <= SMALL
    kind = draw(weighted((12, st.just("raw")), (6, st.just("typed")), (1, st.sampled_from(
        ["both", "neither", "raw_any", "typed_any"]))))
    raw: bytes | None = None
    typed: dict[str, list[Any]] = {}
    exact = False
    if kind in ("raw", "both") and fits:
        assert info is not None and count is not None
        if info.name == "BYTES":
            raw = draw(bytes_elements(count))
        elif info.name == "FP32":
            values = draw(st.lists(F32, min_size=count, max_size=count))
            raw = np.asarray(values, "<f4").tobytes()
        elif info.name == "BOOL":
            raw = bytes(draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)))
        else:
            raw = draw(st.binary(min_size=count * info.size, max_size=count * info.size))
        exact = kind == "raw"
    if kind in ("typed", "both") and fits and info is not None and info.field:
        assert count is not None
        typed[info.field] = draw(st.lists(FIELD_VALUES[info.field], min_size=count,
                                          max_size=count))
        exact = kind == "typed"
    if kind == "raw_any":
        raw = draw(st.binary(max_size=100))
    if kind == "typed_any" or (kind == "both" and not typed):
        name = draw(st.sampled_from(sorted(FIELD_VALUES)))
        typed[name] = draw(st.lists(FIELD_VALUES[name], max_size=10))
    return raw, typed, exact


@st.composite
def tensors(draw: st.DrawFn) -> TensorPlan:
    name = draw(texts(INPUT, weight=30))
    datatype = draw(datatypes())
    shape = draw(shapes())
    raw, typed, exact = draw(contents(datatype, shape))
    params = draw(weighted((4, st.just({})), (1, parameters(2))))
    valid = (name == INPUT and datatype == "FP32" and len(shape) == 2 and shape[1] == WIDTH
             and shape[0] >= 1 and exact)
    return TensorPlan(name, datatype, shape, raw, typed, params, valid)


def _many_inputs(n: int) -> list[TensorPlan]:
    return [TensorPlan(INPUT if i == 0 else f"in{i}", "FP32", [1, WIDTH],
                       raw=bytes(4 * WIDTH)) for i in range(n)]


def _big_input(rows: int) -> list[TensorPlan]:
    """One valid input of `rows` rows: over 64 KiB, decoded off the event loop."""
    data = np.arange(rows * WIDTH, dtype="<f4").tobytes()
    return [TensorPlan(INPUT, "FP32", [rows, WIDTH], raw=data, valid=True)]


def plans() -> st.SearchStrategy[RequestPlan]:
    inputs = weighted(
        (8, st.lists(tensors(), min_size=1, max_size=1)),
        (3, st.lists(tensors(), max_size=4)),
        (1, st.sampled_from([1023, 1024, 1025, 3000]).map(_many_inputs)),
        (1, st.sampled_from([2_800, 20_000]).map(_big_input)),
    )
    output_params = weighted((6, st.just({})), (1, parameters(2)))
    outputs = weighted(
        (6, st.lists(st.sampled_from(OUTPUTS), unique=True).map(lambda names: [
            (name, {}) for name in names])),
        (2, st.lists(st.tuples(texts(*OUTPUTS, weight=4), output_params), max_size=3)))
    extra = weighted((6, st.just([])), (1, st.lists(st.binary(max_size=40), max_size=2)))
    return st.builds(RequestPlan, texts(MODEL, weight=60),
                     weighted((15, st.sampled_from(["", VERSION])), (1, texts("2"))),
                     weighted((3, st.text(max_size=36)), (1, huge_text())), parameters(),
                     inputs, outputs, extra)


def _set_parameters(target: Any, values: dict[str, tuple[str, Any]]) -> None:
    for key, (kind, value) in values.items():
        entry = target[key]  # created by access: a value with no kind set stays so
        if kind:
            setattr(entry, kind, value)


def build(module: Any, plan: RequestPlan) -> bytes:
    """The plan serialized with `module`'s ModelInferRequest."""
    request = module.ModelInferRequest(model_name=plan.model_name,
                                       model_version=plan.model_version, id=plan.id)
    _set_parameters(request.parameters, plan.parameters)
    raws = []
    for tensor in plan.inputs:
        item = request.inputs.add(name=tensor.name, datatype=tensor.datatype,
                                  shape=tensor.shape)
        _set_parameters(item.parameters, tensor.parameters)
        for name, values in tensor.typed.items():
            getattr(item.contents, name).extend(values)
        if tensor.raw is not None:
            raws.append(tensor.raw)
    request.raw_input_contents.extend(raws + plan.extra_raw)
    for name, params in plan.outputs:
        output = request.outputs.add(name=name)
        _set_parameters(output.parameters, params)
    return request.SerializeToString()


# ── damage on the wire ─────────────────────────────────────────────────────────────────


def wire_fields(data: bytes) -> list[bytes]:
    """A serialized message split into its top-level fields (tag and value), in order."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire} at {start}")
        fields.append(data[start:pos])
    return fields


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid request damaged: first whole fields (repeated, dropped, shuffled, taken from
    another request), then bytes (bits flipped, cut, inserted, deleted, overwritten)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))  # not derived from a request at all
    seed = draw(st.sampled_from(seeds))
    fields = wire_fields(seed)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["repeat", "drop", "swap", "graft"]))
        i = draw(st.integers(0, len(fields) - 1)) if fields else 0
        if op == "repeat" and fields:
            fields.insert(i, fields[i])
        elif op == "drop" and fields:
            fields.pop(i)
        elif op == "swap" and len(fields) > 1:
            j = draw(st.integers(0, len(fields) - 1))
            fields[i], fields[j] = fields[j], fields[i]
        elif op == "graft":
            donor = wire_fields(draw(st.sampled_from(seeds)))
            if donor:
                fields.insert(i, draw(st.sampled_from(donor)))
    data = bytearray(b"".join(fields))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "overwrite", "varint"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
        elif op == "varint":  # a length or tag turned huge: 10 bytes of continuation
            data[at:at] = b"\xff" * draw(st.integers(1, 10))
    return bytes(data)
