"""KServe's Python ModelServer serving an ONNX model: a server users compare mlwitness with.

    .venv-kserve/bin/python bench/kserve_server.py --model credit.onnx [--port 0] \\
        [--model-name credit] [--log-level INFO]

Runs in its own venv (`bench/setup_peers.sh` makes `.venv-kserve`, KServe 0.21), never in
the project's: it imports neither mlwitness nor anything of the repository. The model is the
smallest honest KServe custom predictor: a `kserve.Model` whose `predict` takes the v2
`InferRequest`, runs the ONNX file with onnxruntime (one intra-op thread, as the sidecar and
bench/bare_server.py) and answers an `InferResponse` with raw (binary) outputs. It is served
by `ModelServer(...).start([model])` as in KServe's docs, with latency logging off; KServe's
v2 gRPC server (`inference.GRPCInferenceService`, what tritonclient speaks) and its REST
server run on one event loop, as in a KServe pod. Everything else is KServe's default,
including its gRPC interceptors and its INFO log line per gRPC call (`--log-level WARNING`
silences that).

Two changes from a pod, both for a shared benchmark machine: KServe binds `[::]:PORT`
(gRPC) and `0.0.0.0:PORT` (REST); here both bind `--host` (127.0.0.1), and port 0 picks
free ports. KServe logs to stdout/stderr; here all of it goes to stderr so that stdout
carries only `{"event": "ready", "host": ..., "port": ...}` (the gRPC port), printed once
the gRPC server is serving. Exits on SIGTERM/SIGINT (KServe's own signal handling).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX file to serve")
    parser.add_argument("--model-name", default="", help="served name (default: file stem)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port; 0 picks a free one")
    parser.add_argument("--http-port", type=int, default=0, help="REST port; 0 picks a free one")
    parser.add_argument(
        "--log-level", default="INFO", help="KServe's log level (its default INFO logs each call)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # KServe parses sys.argv when imported (kserve.model_server's module-level parser, which
    # would take --model for its --model_name): give it none of ours. Its log level is read
    # from the environment at import too.
    sys.argv = sys.argv[:1]
    os.environ["KSERVE_LOGLEVEL"] = args.log_level
    # stdout is the ready line's alone: everything else written to fd 1 goes to stderr.
    ready_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import grpc
    import kserve
    import numpy as np
    import onnxruntime as ort
    from kserve.protocol.grpc import server as kserve_grpc
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.rest import server as kserve_rest
    from kserve.utils.numpy_codec import from_np_dtype

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str, path: Path) -> None:
            super().__init__(name)
            self.path = path
            self.load()

        def load(self) -> bool:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.ready = True
            return self.ready

        def predict(
            self, payload: InferRequest, headers: dict[str, str] | None = None
        ) -> InferResponse:
            feed = {item.name: item.as_numpy() for item in payload.inputs}
            names = [o.name for o in payload.request_outputs or ()] or self.output_names
            outputs = []
            for name, value in zip(names, self.session.run(names, feed), strict=True):
                value = np.ascontiguousarray(value)
                out = InferOutput(name, list(value.shape), from_np_dtype(value.dtype))
                out.set_data_from_numpy(value, binary_data=True)
                outputs.append(out)
            return InferResponse(payload.id, self.name, outputs, model_version="1")

    class Loopback:
        """KServe's aio server, bound to --host instead of [::], announcing its port."""

        def __init__(self, server: Any) -> None:
            self._server = server
            self._port = 0

        def add_insecure_port(self, address: str) -> int:
            self._port = self._server.add_insecure_port(f"{args.host}:{args.port}")
            return self._port

        async def start(self) -> None:
            await self._server.start()
            print(
                json.dumps({"event": "ready", "host": args.host, "port": self._port}),
                file=ready_out,
                flush=True,
            )

        def __getattr__(self, name: str) -> Any:
            return getattr(self._server, name)

    class LoopbackAio:
        def server(self, *a: Any, **kw: Any) -> Loopback:
            return Loopback(grpc.aio.server(*a, **kw))

    kserve_grpc.aio = LoopbackAio()

    class LoopbackREST(kserve_rest.RESTServer):  # type: ignore[misc]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.config.host = args.host  # uvicorn reads it when it binds

    kserve.model_server.RESTServer = LoopbackREST

    model = OnnxModel(args.model_name or args.model.stem, args.model)
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.port,
        enable_latency_logging=False,
        grace_period=2,
    )
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
