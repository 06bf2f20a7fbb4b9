"""Minimal Seldon MLServer runtime serving one ONNX file with onnxruntime (CPU).

Runs inside the MLServer virtualenv (.venv-upstream), never in the project's venv:
tests/support/upstream_server.py puts this folder on the server's PYTHONPATH and names
``onnx_runtime.OnnxRuntime`` as the model-settings ``implementation``.

Request inputs are decoded with MLServer's NumpyCodec exactly as sent (datatype and
shape); anything the graph cannot take is rejected with ``InferenceError``, which
MLServer maps to gRPC INVALID_ARGUMENT.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.codecs.numpy import to_datatype
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, ResponseOutput
from mlserver.utils import get_model_uri

# onnxruntime type string -> v2 datatype
_V2_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _dims(shape: list) -> list[int]:
    """ONNX shape (ints, symbolic names or None) -> v2 metadata shape (-1 = dynamic)."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _metadata(args: list) -> list[MetadataTensor]:
    return [
        MetadataTensor(name=a.name, datatype=_V2_DATATYPE.get(a.type, a.type), shape=_dims(a.shape))
        for a in args
    ]


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._inputs = {a.name: a for a in self._session.get_inputs()}
        self._output_names = [a.name for a in self._session.get_outputs()]
        self.inputs = _metadata(self._session.get_inputs())
        self.outputs = _metadata(self._session.get_outputs())
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds: dict[str, np.ndarray] = {}
        for request_input in payload.inputs:
            arg = self._inputs.get(request_input.name)
            if arg is None:
                raise InferenceError(
                    f"model '{self.name}' has no input '{request_input.name}'"
                    f" (inputs: {sorted(self._inputs)})"
                )
            expected = _V2_DATATYPE.get(arg.type, arg.type)
            if request_input.datatype != expected:
                raise InferenceError(
                    f"input '{arg.name}': datatype {request_input.datatype}, expected {expected}"
                )
            dims, shape = _dims(arg.shape), list(request_input.shape)
            if len(shape) != len(dims) or any(
                d not in (-1, s) for d, s in zip(dims, shape, strict=True)
            ):
                raise InferenceError(f"input '{arg.name}': shape {shape}, expected {dims}")
            try:
                feeds[arg.name] = NumpyCodec.decode_input(request_input)
            except ValueError as err:  # e.g. element count does not match the shape
                raise InferenceError(f"input '{arg.name}': {err}") from err
        missing = sorted(set(self._inputs) - set(feeds))
        if missing:
            raise InferenceError(f"model '{self.name}': missing inputs {missing}")

        names = [o.name for o in payload.outputs or []] or self._output_names
        unknown = [n for n in names if n not in self._output_names]
        if unknown:
            raise InferenceError(
                f"model '{self.name}' has no output(s) {unknown} (outputs: {self._output_names})"
            )
        try:
            results = self._session.run(names, feeds)
        except Exception as err:  # onnxruntime's own validation (e.g. inconsistent dims)
            raise InferenceError(f"onnxruntime: {err}") from err

        # Not NumpyCodec.encode_output: it turns NaN into None (which MLServer's gRPC layer
        # then fails to serialise) and reshapes [N] to [N, 1].
        outputs = [
            ResponseOutput(
                name=name,
                datatype=to_datatype(np.asarray(value).dtype),
                shape=list(np.shape(value)),
                data=np.asarray(value).flatten().tolist(),
            )
            for name, value in zip(names, results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
