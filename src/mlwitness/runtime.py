"""An ONNX model in onnxruntime: built from exact bytes, run on codec tensors.

Used by the embedded backend to serve and by the audit service to replay, so a decision
and its replay go through the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from mlwitness.codec import Tensor, tensor_from_array
from mlwitness.errors import FailedPrecondition, InvalidInput, MlwitnessError
from mlwitness.signature import Signature

PROVIDERS = ["CPUExecutionProvider"]


class ModelError(MlwitnessError):
    """onnxruntime failed on input that passed the signature checks."""

    status = "INTERNAL"


class OnnxModel:
    def __init__(self, onnx: bytes, *, threads: int = 1) -> None:
        self.onnx = onnx
        self.sha256 = hashlib.sha256(onnx).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(onnx, sess_options=options, providers=PROVIDERS)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise FailedPrecondition(f"onnxruntime cannot load model {self.sha256}: {exc}") from exc
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
