"""An ONNX model in onnxruntime: built from exact bytes, run on codec tensors.

Used by the embedded backend to serve and (in a sandbox process, `mlwitness.model.sandbox`) by
the audit service to replay, so a decision and its replay go through the same code.

Only self-contained ONNX models are built (`mlwitness.model.external_data`): onnxruntime would
read a tensor's external data file from the working directory — the ledger's volume.
What onnxruntime says when it cannot load a model is logged, not passed on: it can name
paths and files; callers get its status code and a fixed description.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnxruntime as ort

from mlwitness.codec import Tensor, tensor_from_array
from mlwitness.errors import FailedPrecondition, InvalidInput, MlwitnessError
from mlwitness.model.external_data import NotProtobuf, check_self_contained
from mlwitness.model.signature import Signature

log = logging.getLogger(__name__)

PROVIDERS = ["CPUExecutionProvider"]
# How onnxruntime says an allocation failed (its arena, or std::bad_alloc from a kernel).
MEMORY_SIGNS = ("Failed to allocate memory", "bad_alloc", "bad allocation")
# What onnxruntime says of bytes that are not (yet) a model at all, e.g. a file that a copy
# has truncated or only begun.
_NOT_A_MODEL = ("INVALID_PROTOBUF", "No graph was found")
_ORT_CODE = re.compile(r"\[ONNXRuntimeError\] : \d+ : ([A-Z_]+) :")
# (what onnxruntime's text contains, what we say instead): fixed words, never its text.
_LOAD_PROBLEMS = (
    ("No graph was found", "No graph was found in the model"),
    ("protobuf parsing failed", "the bytes are not an ONNX model"),
    ("No Op registered", "an operator this onnxruntime does not implement"),
    ("Could not find an implementation", "an operator this onnxruntime does not implement"),
    ("IR version", "an ONNX IR version this onnxruntime does not support"),
    ("opset", "an opset version this onnxruntime does not support"),
    ("Opset", "an opset version this onnxruntime does not support"),
    ("xternal data", "external data"),
    ("Type Error", "a type mismatch in the graph"),
    ("ShapeInferenceError", "shapes in the graph do not fit together"),
    ("not a graph input", "a node reads a value nothing produces"),
    ("bad_alloc", "out of memory while loading"),
    ("Failed to allocate", "out of memory while loading"),
)


class ModelError(MlwitnessError):
    """onnxruntime failed on input that passed the signature checks."""

    status = "INTERNAL"


class Runnable(Protocol):
    """A model the audit code can run: an `OnnxModel`, or one in a sandbox process."""

    sha256: str
    signature: Signature

    def run(self, inputs: Sequence[Tensor], outputs: Sequence[str] = ()) -> list[Tensor]: ...

    def run_slices(self, names: Sequence[str], feed: dict[str, np.ndarray],
                   slices: Sequence[tuple[int, int]]) -> list[list[np.ndarray] | None]: ...


def load_problem(text: str) -> str:
    """onnxruntime's status code and a fixed description of a load failure's text."""
    found = _ORT_CODE.search(text)
    code = found.group(1) if found else "FAIL"
    what = next((say for needle, say in _LOAD_PROBLEMS if needle in text),
                "see the mlwitness log for onnxruntime's words")
    return f"{code} ({what})"


def is_not_a_model(exc: BaseException) -> bool:
    """Whether `OnnxModel`'s failure says the bytes are no model at all (truncated, or a
    copy only begun), not a model that onnxruntime cannot run."""
    return any(sign in str(exc) for sign in _NOT_A_MODEL)


class OnnxModel:
    def __init__(self, onnx: bytes, *, threads: int = 1, arena: bool = True) -> None:
        self.onnx = onnx
        self.sha256 = hashlib.sha256(onnx).hexdigest()
        try:
            check_self_contained(onnx)  # before onnxruntime opens any file it names
        except NotProtobuf as exc:
            raise FailedPrecondition(f"onnxruntime cannot load model {self.sha256}: "
                                     f"{exc.message}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # onnxruntime's CPU arena keeps what a run took until the session ends; without it
        # memory goes back after each run (a long-lived audit worker must not hold on to
        # one big run's peak).
        options.enable_cpu_mem_arena = arena
        options.add_session_config_entry("session.load_model_format", "ONNX")  # not ORT's
        try:
            self.session = ort.InferenceSession(onnx, sess_options=options, providers=PROVIDERS)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            log.warning("onnxruntime cannot load model %s: %s", self.sha256, exc)
            raise FailedPrecondition(f"onnxruntime cannot load model {self.sha256}: "
                                     f"{load_problem(str(exc))}") from None
        self.signature = Signature.from_session(self.session)
        self.providers = list(self.session.get_providers())

    def run(self, inputs: Sequence[Tensor], outputs: Sequence[str] = ()) -> list[Tensor]:
        """Run the model; return the requested outputs (all, in model order, when empty)."""
        names = list(outputs) or [s.name for s in self.signature.outputs]
        feed = {t.name: _to_ort(t) for t in inputs}
        try:
            results = self.session.run(names, feed)
        except Exception as exc:
            text = str(exc)
            if "INVALID_ARGUMENT" in text or "Invalid" in type(exc).__name__:
                raise InvalidInput(f"the model rejected the input: {_short(text)}") from exc
            empty = next((t for t in inputs if 0 in t.array.shape), None)
            if empty is not None:  # the caller's empty tensor, not a fault of the model
                raise InvalidInput(
                    f"the model cannot run on input '{empty.name}' with shape "
                    f"{list(empty.array.shape)} (no elements): {_short(text)}") from exc
            raise ModelError(f"the model failed: {_short(text)}") from exc
        return [tensor_from_array(name, np.asarray(value)) for name, value in zip(names, results,
                                                                                  strict=True)]

    def run_slices(self, names: Sequence[str], feed: dict[str, np.ndarray],
                   slices: Sequence[tuple[int, int]]) -> list[list[np.ndarray] | None]:
        """onnxruntime's run on rows [lo, hi) of plain arrays, for each slice on its own:
        the outputs, or None where onnxruntime failed (traffic replay runs calls alone this
        way, and asks `run` why only when one fails). Running out of memory is raised."""
        out: list[list[np.ndarray] | None] = []
        for lo, hi in slices:
            try:
                out.append(list(self.session.run(list(names), {k: v[lo:hi]
                                                              for k, v in feed.items()})))
            except Exception as exc:  # noqa: BLE001 — onnxruntime's own, untyped
                if any(sign in str(exc) for sign in MEMORY_SIGNS):
                    raise
                out.append(None)
        return out


def _to_ort(tensor: Tensor) -> np.ndarray:
    if tensor.datatype != "BYTES":
        return tensor.array
    # onnxruntime wants str for tensor(string); tensor(string) holds text only
    flat = tensor.array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    try:
        out[:] = [value.decode("utf-8") for value in flat]
    except UnicodeDecodeError:
        for index, value in np.ndenumerate(tensor.array):  # find it, to name it
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input '{tensor.name}': BYTES element {list(index)} is not UTF-8 text "
                    f"({exc.reason} at byte {exc.start}); the model takes strings"
                ) from exc
        raise
    return out.reshape(tensor.array.shape)


def _short(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= 400 else text[:400] + "…"
