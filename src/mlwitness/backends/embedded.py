"""In-process onnxruntime backend (the default when no --upstream is given)."""

from __future__ import annotations

import asyncio

from mlwitness.backends import Call, Inference
from mlwitness.codec import encode_outputs
from mlwitness.errors import InvalidInput
from mlwitness.runtime import OnnxModel
from mlwitness.wire import inference as pb

# Inputs larger than this many elements run in a worker thread so that a big batch does
# not hold up the event loop; small ones run inline, which is faster.
INLINE_ELEMENTS = 1 << 16


class EmbeddedBackend:
    mode = "embedded"

    def __init__(self, model: OnnxModel, name: str, version: str) -> None:
        self.model = model
        self.name = name
        self.version = version

    async def infer(self, call: Call) -> Inference:
        if call.inputs is None:
            raise InvalidInput("the request's input tensors could not be decoded")
        signature = self.model.signature
        signature.check_inputs(call.inputs)
        requested = [o.name for o in call.request.outputs]
        signature.check_outputs(requested)
        size = sum(t.array.size for t in call.inputs)
        if size > INLINE_ELEMENTS:
            outputs = await asyncio.to_thread(self.model.run, call.inputs, requested)
        else:
            outputs = self.model.run(call.inputs, requested)
        response = pb.ModelInferResponse(
            model_name=self.name, model_version=self.version, id=call.request_id
        )
        encode_outputs(response, outputs, raw=bool(call.request.raw_input_contents))
        return Inference(response.SerializeToString(), outputs)

    async def ready(self) -> bool:
        return True

    async def model_metadata(self, raw: bytes, timeout: float | None) -> bytes | None:
        return None

    async def close(self) -> None:
        return None
