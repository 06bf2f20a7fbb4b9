"""Replay, what-if and sensitivity: re-running recorded calls on the exact model bytes.

A recorded call is replayed by decoding the stored request bytes, loading the stored ONNX
bytes by their hash (never the file on disk), and running them through the same
`OnnxModel` the embedded backend serves with — in a sandbox process (`mlwitness.model.sandbox`),
bounded in memory and time. Outputs are compared byte for byte with the stored response.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlwitness.audit.fidelity import ulps
from mlwitness.audit.results import OutputDiff
from mlwitness.codec import DATATYPES, Tensor, decode_inputs, decode_outputs
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator, numeric_layout
from mlwitness.protocol import inference as pb

MAX_SWEEP_POINTS = 10_000


@dataclass(frozen=True)
class Decoded:
    """A recorded call, decoded: inputs, the outputs requested, and the recorded outputs."""

    inputs: list[Tensor]
    requested: list[str]
    outputs: list[Tensor]


@dataclass(frozen=True)
class Parsed:
    """A recorded call with its request and response bytes parsed, not yet decoded.
    `layout` is what calls must share to be replayed in one run; `raw` says every tensor
    is numeric with raw contents and `rows` rows, so `replay_rows` can read them in bulk."""

    record: Record
    request: Any
    response: Any
    rows: int
    layout: tuple
    raw: bool


def parse_call(record: Record) -> Parsed:
    if record.kind != "infer":
        raise FailedPrecondition(f"record seq {record.seq} is an {record.kind} record, "
                                 "not a model decision")
    if record.status != "OK":
        raise FailedPrecondition(f"record seq {record.seq} was not answered ({record.status}: "
                                 f"{record.message}); there is no decision to replay")
    request = pb.ModelInferRequest.FromString(record.request)
    response = pb.ModelInferResponse.FromString(record.response)
    _check_not_minimised(record, request)
    ins = [(t.name, t.datatype, tuple(t.shape)) for t in request.inputs]
    outs = [(t.name, t.datatype, tuple(t.shape)) for t in response.outputs]
    rows = ins[0][2][0] if ins and ins[0][2] else 0
    in_layout = tuple((name, datatype, shape[1:]) for name, datatype, shape in ins)
    out_layout = tuple((name, datatype, shape[1:]) for name, datatype, shape in outs)
    raw = (_raw_rows(in_layout, ins, request.raw_input_contents, rows)
           and _raw_rows(out_layout, outs, response.raw_output_contents, rows))
    layout = (tuple(o.name for o in request.outputs), in_layout, raw, out_layout if raw else ())
    return Parsed(record, request, response, rows, layout, raw)


def _check_not_minimised(record: Record, request: object) -> None:
    """A model input stored hashed or redacted cannot be fed to the model again."""
    if not record.detail or "minimised" not in record.detail:
        return
    note = json.loads(record.detail).get("minimised")
    if not isinstance(note, dict):
        raise FailedPrecondition(f"record seq {record.seq}: its inputs were not stored "
                                 f"({note}); there is nothing to replay")
    gone = {i.name for i in request.inputs} & {*note.get("redacted", []),  # type: ignore[attr-defined]
                                               *note.get("hashed", [])}
    if gone:
        raise FailedPrecondition(
            f"record seq {record.seq}: model input(s) {', '.join(sorted(gone))} were stored "
            "hashed or redacted (data minimisation), so the decision cannot be replayed")


def _raw_rows(layout: tuple, specs: list[tuple[str, str, tuple[int, ...]]],
              raws: Sequence[bytes], rows: int) -> bool:
    """Every tensor numeric (not BOOL), in raw contents, with `rows` rows and exactly the
    bytes its shape needs; names unique."""
    row_bytes = _row_bytes(layout)
    if row_bytes is None or rows < 1 or len(raws) != len(specs):
        return False
    return all(len(shape) >= 1 and shape[0] == rows and len(data) == rows * size
               for (_, _, shape), data, size in zip(specs, raws, row_bytes, strict=True))


@functools.lru_cache(maxsize=256)
def _row_bytes(layout: tuple) -> tuple[int, ...] | None:
    """Bytes per row of each tensor of a (name, datatype, shape[1:]) layout, or None when
    the layout cannot be read in bulk."""
    if not layout or len({name for name, _, _ in layout}) != len(layout):
        return None
    sizes = []
    for _, datatype, inner in layout:
        info = DATATYPES.get(datatype)
        if info is None or info.dtype is None or info.dtype.kind not in "iuf" or (
                inner and min(inner) < 0):
            return None
        sizes.append(math.prod(inner) * info.size)
    return tuple(sizes)


def decoded(call: Parsed) -> Decoded:
    return Decoded(decode_inputs(call.request), [o.name for o in call.request.outputs],
                   decode_outputs(call.response))


def decode_call(record: Record) -> Decoded:
    return decoded(parse_call(record))


def compare(recorded: Sequence[Tensor], replayed: Sequence[Tensor]) -> list[OutputDiff]:
    by_name = {t.name: t for t in replayed}
    diffs = []
    for old in recorded:
        new = by_name.get(old.name)
        if new is None:
            diffs.append(OutputDiff(old.name, False, math.inf, math.inf, int(old.array.size),
                                    math.inf))
            continue
        same = old.datatype == new.datatype and old.shape == new.shape and (
            # BYTES arrays hold Python objects: compare the values, not their addresses
            old.array.tolist() == new.array.tolist() if old.array.dtype == object
            else old.array.tobytes() == new.array.tobytes())
        if same:
            diffs.append(OutputDiff(old.name, True))
            continue
        if old.array.dtype == object or new.array.dtype == object or old.shape != new.shape:
            differing = int(old.array.size) if old.shape != new.shape else int(
                np.sum(old.array != new.array))
            diffs.append(OutputDiff(old.name, False, math.inf, math.inf, differing, math.inf))
            continue
        a = old.array.astype(np.float64)
        b = new.array.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.abs(a - b)
            both_nan = np.isnan(a) & np.isnan(b)
            delta = np.where(both_nan, 0.0, delta)
            rel = np.where(delta == 0, 0.0, delta / np.maximum(np.abs(a), np.finfo(float).tiny))
        if old.array.dtype == new.array.dtype:
            distance = ulps(old.array, new.array)
            differing, most = int(np.count_nonzero(distance)), float(distance.max(initial=0))
        else:  # another type: a different model, no distance in one type's ulps
            differing, most = int(np.count_nonzero(delta)), math.inf
        diffs.append(OutputDiff(old.name, False, float(np.max(delta, initial=0.0)),
                                float(np.max(rel, initial=0.0)), differing, most))
    return diffs


# ── decisions ───────────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class DecisionRule:
    """How a row's decision is read from the outputs. Defaults: the first integer or text
    output of shape [N] (a label); else the arg-max of the first [N, k] float output;
    else whether the first [N] float output is ≥ 0.5. With `output` and `threshold`:
    whether that output column is ≥ threshold."""

    output: str = ""
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise InvalidInput(f"threshold {self.threshold} is not a finite number")

    def describe(self, outputs: Sequence[Tensor]) -> str:
        return self._pick(outputs)[1]

    def _pick(self, outputs: Sequence[Tensor]) -> tuple[Tensor | None, str, str]:
        if self.output:
            name = self.output.rpartition("_")[0]  # probabilities_1 → probabilities
            tensor = next((t for t in outputs if t.name == self.output), None)
            if tensor is None:  # a column name like probabilities_1
                tensor = next((t for t in outputs if t.name == name), None)
            if tensor is None:
                raise InvalidInput(f"unknown output '{self.output}'; outputs: "
                                   + ", ".join(t.name for t in outputs))
            threshold = 0.5 if self.threshold is None else self.threshold
            return tensor, f"{self.output} >= {threshold:g}", "threshold"
        for t in outputs:
            if t.array.ndim >= 1 and (t.array.dtype == object or t.array.dtype.kind in "biu") \
                    and t.array.reshape(t.array.shape[0], -1).shape[1] == 1:
                return t, t.name, "label"
        for t in outputs:
            if t.array.ndim == 2 and t.array.shape[1] > 1 and t.array.dtype.kind == "f":
                return t, f"argmax({t.name})", "argmax"
        for t in outputs:
            if t.array.ndim >= 1 and t.array.dtype.kind == "f":
                return t, f"{t.name} >= 0.5", "threshold"
        return None, "none", "none"

    def decisions(self, outputs: Sequence[Tensor]) -> list[str]:
        kind, keys = self.keys(outputs)
        return [self.text(kind, v) for v in keys]

    def keys(self, outputs: Sequence[Tensor]) -> tuple[str, np.ndarray]:
        """(kind, one comparable value per row): the label, the arg-max index, or whether
        the output column reaches the threshold. Rows decide alike when their keys are equal."""
        tensor, _, kind = self._pick(outputs)
        if tensor is None:
            return kind, np.zeros(0)
        n = tensor.array.shape[0] if tensor.array.ndim else 1
        matrix = tensor.array.reshape(n, -1)
        if kind == "label":
            return kind, matrix[:, 0]
        if kind == "argmax":
            return kind, np.argmax(matrix, axis=1)
        column = 0
        if self.output and self.output != tensor.name:
            suffix = self.output[len(tensor.name) + 1:]
            if not suffix.isdigit() or int(suffix) >= matrix.shape[1]:
                raise InvalidInput(f"unknown output column '{self.output}'")
            column = int(suffix)
        threshold = 0.5 if self.threshold is None else self.threshold
        return kind, matrix[:, column].astype(np.float64) >= threshold

    @staticmethod
    def text(kind: str, key: object) -> str:
        if kind == "label":
            return _text(key)
        if kind == "argmax":
            return str(int(key))  # type: ignore[call-overload]
        return "1" if key else "0"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.floating | float):
        return repr(float(value))
    return str(value.item() if hasattr(value, "item") else value)


# ── feature addressing ──────────────────────────────────────────────────────────────────

def locate(inputs: Sequence[Tensor], names: Sequence[str], feature: str) -> tuple[int, int, str]:
    """(tensor index, column, display name) of a feature given by name or column index.
    `names` are the record's stored column names, in numeric-layout order."""
    text_inputs = [t.name for t in inputs if t.datatype == "BYTES"]
    if feature in text_inputs:
        raise InvalidInput(f"input '{feature}' is not numeric; only numeric features "
                           "can be changed")
    layout = numeric_layout(inputs)
    if not layout:
        held = ", ".join(f"'{name}'" for name in text_inputs)
        raise InvalidInput("this record has no numeric tabular input to change"
                           + (f" (its text inputs: {held})" if held else ""))
    if feature.lstrip("-").isdigit():
        index = int(feature)
        if not 0 <= index < len(layout):
            raise InvalidInput(f"feature index {index} is out of range 0..{len(layout) - 1}")
    elif feature in names:
        index = list(names).index(feature)
    else:
        raise InvalidInput(f"unknown feature '{feature}'; features: {', '.join(names)}")
    tensor_index, column = layout[index]
    display = names[index] if index < len(names) else str(index)
    return tensor_index, column, display


def with_values(inputs: Sequence[Tensor], changes: Sequence[tuple[int, int, np.ndarray | float]],
                rows: Sequence[int] | None) -> list[Tensor]:
    """Copies of `inputs` with column values replaced in the given rows (None: all rows)."""
    out = list(inputs)
    for tensor_index, column, value in changes:
        tensor = out[tensor_index]
        array = np.array(tensor.array, copy=True)
        matrix = array.reshape(array.shape[0], -1)
        if array.dtype.kind == "b":
            raise InvalidInput(f"input '{tensor.name}' is boolean and cannot be overridden")
        _check_fits(tensor.name, array.dtype, value)
        target = slice(None) if rows is None else list(rows)
        matrix[target, column] = value
        out[tensor_index] = replace(tensor, array=array)
    return out


def _check_fits(name: str, dtype: np.dtype, value: np.ndarray | float) -> None:
    """Raise InvalidInput unless every value is representable in the input's dtype: numpy
    would otherwise wrap an integer or turn a float into inf, and the model would be fed
    something other than what the auditor asked about."""
    values = np.asarray(value, dtype=np.float64)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if np.any(values != np.floor(values)):
            raise InvalidInput(f"input '{name}' holds integers; {value} is not one")
        # powers of two are exact in float64, where int64's max (2**63 - 1) is not
        low, high = (-(2.0 ** (info.bits - 1)), 2.0 ** (info.bits - 1)) if dtype.kind == "i" \
            else (0.0, 2.0 ** info.bits)
        if np.any((values < low) | (values >= high)):
            raise InvalidInput(f"input '{name}' is {dtype.name}: {value} is outside "
                               f"[{info.min}, {info.max}]")
    elif dtype.kind == "f" and np.any(np.isfinite(values) & ~np.isfinite(values.astype(dtype))):
        raise InvalidInput(f"input '{name}' is {dtype.name}: {value} is too large for it")


# ── the replayer ────────────────────────────────────────────────────────────────────────

def row_dicts(tensors: Sequence[Tensor], names: Sequence[str] = ()) -> list[dict[str, object]]:
    """Rows of named values, as the ledger's SQL columns show them."""
    rows = Tabulator().rows(tensors)
    num_names = list(names) if len(names) == len(rows.num_names) else list(rows.num_names)
    result = []
    for i in range(rows.n):
        row: dict[str, object] = {n: float(v) for n, v in zip(num_names, rows.num_values[i],
                                                             strict=True)}
        row.update({n: v for n, v in zip(rows.text_names, rows.text_values[i], strict=True)})
        result.append(row)
    return result


def sweep_values(start: float, stop: float, steps: int, scale: str,
                 values: Sequence[float]) -> np.ndarray:
    if values:
        points = np.asarray(values, dtype=np.float64)
    else:
        if steps == 0:
            steps = 20
        if not 2 <= steps <= MAX_SWEEP_POINTS:
            raise InvalidInput(f"steps must be between 2 and {MAX_SWEEP_POINTS}, got {steps}")
        if not (math.isfinite(start) and math.isfinite(stop)) or start == stop:
            raise InvalidInput(f"the range {start}..{stop} is empty or not finite")
        scale = scale or "linear"
        if scale == "linear":
            points = np.linspace(start, stop, steps)
        elif scale == "log":
            if start <= 0 or stop <= 0:
                raise InvalidInput("a log sweep needs a positive start and stop")
            points = np.geomspace(start, stop, steps)
        else:
            raise InvalidInput(f"scale must be linear or log, got {scale!r}")
    if points.size > MAX_SWEEP_POINTS or points.size == 0:
        raise InvalidInput(f"between 1 and {MAX_SWEEP_POINTS} points, got {points.size}")
    if not np.all(np.isfinite(points)):
        raise InvalidInput("sweep values must be finite numbers")
    return points


def row_of(tensor: Tensor, row: int, repeat: int) -> Tensor:
    """Row `row` of a tensor, repeated `repeat` times along the batch dimension."""
    array = np.repeat(tensor.array[row:row + 1], repeat, axis=0)
    return Tensor(tensor.name, tensor.datatype, array.shape, array)
