"""A bare Open Inference Protocol v2 server: the baseline the sidecar is measured against.

    python bench/bare_server.py --model credit.onnx [--port 0] [--model-name credit]

grpc.aio, onnxruntime in-process (one intra-op thread, like the sidecar's default), no
ledger, no guards, no health service. It does what any minimal Python v2 server must do per
call and nothing more: parse the ModelInferRequest, view each input's raw bytes as a numpy
array, run the session, put the outputs back as raw contents (or typed, if the caller sent
typed contents) and serialize the response. Handlers take and return bytes through a
generic handler, as `mlwitness.wire.servicer` does, so both servers pay the same protobuf
costs. Implements ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and
ModelInfer; prints `{"event": "ready", "host": ..., "port": ...}` on stdout when serving and
exits 0 on SIGTERM/SIGINT.

This is a benchmark baseline, not a product: its error handling is deliberately thin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from mlwitness.protocol import inference as pb

# v2 datatype <-> numpy dtype and the typed-contents field, for the types the demo needs.
DTYPES = {
    "BOOL": (np.dtype("?"), "bool_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
}
ONNX_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
V2_OF_NUMPY = {dtype: name for name, (dtype, _) in DTYPES.items()}


class BareServer:
    def __init__(self, onnx_path: Path, model_name: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.model_name = model_name
        self.output_names = [o.name for o in self.session.get_outputs()]

    async def ModelInfer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = pb.ModelInferRequest.FromString(raw)
        if request.model_name != self.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
        use_raw = bool(request.raw_input_contents)
        feed = {}
        for index, item in enumerate(request.inputs):
            dtype, field = DTYPES[item.datatype]
            if use_raw:
                array = np.frombuffer(request.raw_input_contents[index], dtype=dtype)
            else:
                array = np.asarray(getattr(item.contents, field), dtype=dtype)
            feed[item.name] = array.reshape(tuple(item.shape))
        names = [o.name for o in request.outputs] or self.output_names
        try:
            results = self.session.run(names, feed)
        except Exception as exc:  # onnxruntime's own error types
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:400])
        response = pb.ModelInferResponse(
            model_name=self.model_name, model_version="1", id=request.id
        )
        for name, value in zip(names, results, strict=True):
            value = np.ascontiguousarray(value)
            datatype = V2_OF_NUMPY[value.dtype.newbyteorder("<")]
            out = response.outputs.add(name=name, datatype=datatype, shape=value.shape)
            if use_raw:
                response.raw_output_contents.append(value.tobytes())
            else:
                getattr(out.contents, DTYPES[datatype][1]).extend(value.ravel().tolist())
        return response.SerializeToString()

    async def ServerLive(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def ServerReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=True).SerializeToString()

    async def ModelReady(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = pb.ModelReadyRequest.FromString(raw)
        return pb.ModelReadyResponse(ready=request.name == self.model_name).SerializeToString()

    async def ServerMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerMetadataResponse(name="bare", version="0").SerializeToString()

    async def ModelMetadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        response = pb.ModelMetadataResponse(
            name=self.model_name, versions=["1"], platform="onnx_onnxv1"
        )
        for args, target in (
            (self.session.get_inputs(), response.inputs),
            (self.session.get_outputs(), response.outputs),
        ):
            for arg in args:
                shape = [d if isinstance(d, int) else -1 for d in arg.shape]
                target.add(name=arg.name, datatype=ONNX_TO_V2.get(arg.type, "BYTES"), shape=shape)
        return response.SerializeToString()


RPCS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


async def serve(args: argparse.Namespace) -> None:
    server_impl = BareServer(args.model, args.model_name or args.model.stem)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                pb.SERVICE,
                {
                    name: grpc.unary_unary_rpc_method_handler(getattr(server_impl, name))
                    for name in RPCS
                },
            ),
        )
    )
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "ready", "host": args.host, "port": port}), flush=True)
    await stop.wait()
    await server.stop(grace=2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX file to serve")
    parser.add_argument("--model-name", default="", help="served name (default: file stem)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
