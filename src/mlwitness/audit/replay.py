"""Replay, what-if and sensitivity: re-running recorded calls on the exact model bytes.

A recorded call is replayed by decoding the stored request bytes, loading the stored ONNX
bytes by their hash (never the file on disk), and running them through the same
`OnnxModel` the embedded backend serves with. Outputs are compared byte for byte with the
stored response.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from mlwitness.codec import Tensor, decode_inputs, decode_outputs
from mlwitness.errors import FailedPrecondition, InvalidInput
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator, numeric_layout
from mlwitness.runtime import OnnxModel
from mlwitness.wire import inference as pb

MAX_SWEEP_POINTS = 10_000


@dataclass(frozen=True)
class Decoded:
    """A recorded call, decoded: inputs, the outputs requested, and the recorded outputs."""

    inputs: list[Tensor]
    requested: list[str]
    outputs: list[Tensor]


def decode_call(record: Record) -> Decoded:
    if record.kind != "infer":
        raise FailedPrecondition(f"record seq {record.seq} is an {record.kind} record, "
                                 "not a model decision")
    if record.status != "OK":
        raise FailedPrecondition(f"record seq {record.seq} was not answered ({record.status}: "
                                 f"{record.message}); there is no decision to replay")
    request = pb.ModelInferRequest.FromString(record.request)
    response = pb.ModelInferResponse.FromString(record.response)
    return Decoded(decode_inputs(request), [o.name for o in request.outputs],
                   decode_outputs(response))


@dataclass
class OutputDiff:
    name: str
    identical: bool
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    elements_differing: int = 0


def compare(recorded: Sequence[Tensor], replayed: Sequence[Tensor]) -> list[OutputDiff]:
    by_name = {t.name: t for t in replayed}
    diffs = []
    for old in recorded:
        new = by_name.get(old.name)
        if new is None:
            diffs.append(OutputDiff(old.name, False, math.inf, math.inf, int(old.array.size)))
            continue
        same = (old.datatype == new.datatype and old.shape == new.shape
                and old.array.tobytes() == new.array.tobytes())
        if same:
            diffs.append(OutputDiff(old.name, True))
            continue
        if old.array.dtype == object or new.array.dtype == object or old.shape != new.shape:
            differing = int(old.array.size) if old.shape != new.shape else int(
                np.sum(old.array != new.array))
            diffs.append(OutputDiff(old.name, False, math.inf, math.inf, differing))
            continue
        a = old.array.astype(np.float64)
        b = new.array.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.abs(a - b)
            both_nan = np.isnan(a) & np.isnan(b)
            delta = np.where(both_nan, 0.0, delta)
            rel = np.where(delta == 0, 0.0, delta / np.maximum(np.abs(a), np.finfo(float).tiny))
        diffs.append(OutputDiff(old.name, False, float(np.max(delta, initial=0.0)),
                                float(np.max(rel, initial=0.0)),
                                int(np.count_nonzero(delta))))
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

    def describe(self, outputs: Sequence[Tensor]) -> str:
        return self._pick(outputs)[1]

    def _pick(self, outputs: Sequence[Tensor]) -> tuple[Tensor | None, str, str]:
        if self.output:
            name, _, col = self.output.partition("_")
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
        tensor, _, kind = self._pick(outputs)
        if tensor is None:
            return []
        n = tensor.array.shape[0] if tensor.array.ndim else 1
        matrix = tensor.array.reshape(n, -1)
        if kind == "label":
            return [_text(v) for v in matrix[:, 0]]
        if kind == "argmax":
            return [str(int(i)) for i in np.argmax(matrix, axis=1)]
        column = 0
        if self.output and self.output != tensor.name:
            suffix = self.output[len(tensor.name) + 1:]
            if not suffix.isdigit() or int(suffix) >= matrix.shape[1]:
                raise InvalidInput(f"unknown output column '{self.output}'")
            column = int(suffix)
        threshold = 0.5 if self.threshold is None else self.threshold
        return ["1" if float(v) >= threshold else "0" for v in matrix[:, column]]


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
    layout = numeric_layout(inputs)
    if not layout:
        raise InvalidInput("this record has no numeric tabular input to change")
    if feature.lstrip("-").isdigit():
        index = int(feature)
        if not 0 <= index < len(layout):
            raise InvalidInput(f"feature index {index} is out of range 0..{len(layout) - 1}")
    elif feature in names:
        index = list(names).index(feature)
    else:
        text_inputs = [t.name for t in inputs if t.datatype == "BYTES"]
        if feature in text_inputs:
            raise InvalidInput(f"input '{feature}' is not numeric; only numeric features "
                               "can be changed")
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
        if array.dtype.kind in "iu" and np.any(np.asarray(value) != np.floor(value)):
            raise InvalidInput(f"input '{tensor.name}' holds integers; {value} is not one")
        if array.dtype.kind == "b":
            raise InvalidInput(f"input '{tensor.name}' is boolean and cannot be overridden")
        target = slice(None) if rows is None else list(rows)
        matrix[target, column] = value
        out[tensor_index] = replace(tensor, array=array)
    return out


# ── the replayer ────────────────────────────────────────────────────────────────────────

@dataclass
class ModelCache:
    """onnxruntime sessions by model SHA-256, least recently used evicted."""

    size: int = 8
    threads: int = 1
    _items: OrderedDict[str, OnnxModel] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, sha256: str, load: callable) -> OnnxModel:  # type: ignore[valid-type]
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return self._items[sha256]
        model = OnnxModel(load(), threads=self.threads)
        if model.sha256 != sha256:
            raise FailedPrecondition(f"model bytes for {sha256} hash to {model.sha256}")
        with self._lock:
            self._items[sha256] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model


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
