"""In-process onnxruntime backend (the default when no --upstream is given)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mlwitness.codec import Tensor, encode_outputs
from mlwitness.errors import InvalidInput
from mlwitness.inference.backends import Call, Inference
from mlwitness.model.runtime import OnnxModel
from mlwitness.protocol import inference as pb

# A run expected to take longer than INLINE_SECONDS, or with more than INLINE_ELEMENTS
# input elements, goes to a worker thread so that it does not hold up the event loop (and
# with it every other call, health checks and a graceful stop); small, cheap ones run
# inline, which is faster. The expectation is a moving average of the model's measured
# seconds per input element, so a model that is costly per element (small input, heavy
# graph) stops running inline after its first slow call. The first call, whose cost is not
# known yet, runs in a thread too.
INLINE_ELEMENTS = 1 << 16
INLINE_SECONDS = 0.001
_COST_WEIGHT = 0.2  # weight of the newest measurement in the moving average


class EmbeddedBackend:
    mode = "embedded"

    def __init__(self, model: OnnxModel, name: str, version: str) -> None:
        self.model = model
        self.name = name
        self.version = version
        self.seconds_per_element = 0.0  # moving average over runs

    def _run_timed(self, call: Call, requested: list[str], size: int) -> list:
        started = time.perf_counter()
        outputs = self.model.run(call.inputs, requested)  # type: ignore[arg-type]
        cost = (time.perf_counter() - started) / max(size, 1)
        self.seconds_per_element += _COST_WEIGHT * (cost - self.seconds_per_element)
        return outputs

    # The request's repeated fields are read as slices: iterating protobuf's containers
    # themselves costs a few µs each, on every call.

    def admit(self, request: Any) -> None:
        # A generator: check_names stops at the first bad name of however many
        self.model.signature.check_names(item.name for item in request.inputs)

    def check(self, request: Any, inputs: list[Tensor]) -> None:
        self.model.signature.check_inputs(inputs)
        self.model.signature.check_outputs([o.name for o in request.outputs[:]])

    async def infer(self, call: Call) -> Inference:
        if call.inputs is None:
            raise InvalidInput("the request's input tensors could not be decoded")
        if not call.checked:
            self.check(call.request, call.inputs)
        requested = [o.name for o in call.request.outputs[:]]
        size = sum(t.array.size for t in call.inputs)
        cost = size * self.seconds_per_element  # 0 before the first run: cost unknown
        if size > INLINE_ELEMENTS or cost == 0 or cost > INLINE_SECONDS:
            # the answer is encoded there too: encoding a large one (1 M strings) takes
            # about as long as the run
            return await asyncio.to_thread(self._answer, call, requested, size)
        return self._answer(call, requested, size)

    def _answer(self, call: Call, requested: list[str], size: int) -> Inference:
        outputs = self._run_timed(call, requested, size)
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
