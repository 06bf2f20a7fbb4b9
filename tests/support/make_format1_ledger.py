"""Make tests/support/format1_ledger.tar.gz: a ledger as mlwitness wrote it before record
format 2 (schema version 1, every record format 1), for the tests that a newer version
opens, serves, verifies, migrates and continues such a ledger.

Run once, against the code of that version (a checkout of the commit before format 2):

    git worktree add /tmp/format1 6c64023   # or: git archive 6c64023 | tar -x -C /tmp/format1
    PYTHONPATH=/tmp/format1/src .venv/bin/python tests/support/make_format1_ledger.py

It runs that version's `mlwitness serve` on the demo credit model (examples/credit) twice:

1. CALLS calls (request ids f1-1 …, a request parameter `applicant` = A-0001 …), one call
   refused for its input, one audit question (GetRecord), then SIGTERM: a clean ledger.
   A copy of it is the archive's `ledger.duckdb`.
2. On the original, TAIL calls more (f1-<CALLS+1> …); once they are answered the journal
   (fdatasync'ed at each commit) is copied: the archive's `ledger.duckdb.journal/`, a
   journal tail of format-1 frames that the copied ledger does not hold yet, as a crash
   of that version would leave it. Then SIGTERM.

The archive also holds `credit.onnx`, the model the records name, and `manifest.json`
(what is in it, and the mlwitness version that wrote it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().with_name("format1_ledger.tar.gz")
CALLS = 5
TAIL = 3


def _credit_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "format1_credit_builder", REPO / "examples" / "credit" / "build_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _serve(model: Path, ledger: Path, log: Path) -> tuple[subprocess.Popen, dict]:
    port, audit_port = _free_ports(2)
    args = [sys.executable, "-m", "mlwitness", "serve", "--model", str(model),
            "--model-name", "credit", "--ledger", str(ledger), "--host", "127.0.0.1",
            "--port", str(port), "--audit-port", str(audit_port), "--metrics-port", "0",
            "--features", "income,debt_ratio,fico,age,years_employed,open_loans"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    with open(log, "ab") as err:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        try:
            ready = json.loads(line)
        except ValueError:
            continue
        if isinstance(ready, dict) and ready.get("event") == "ready":
            return process, ready
    process.kill()
    raise RuntimeError(f"mlwitness serve did not start; see {log}")


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    if process.wait(60) != 0:
        raise RuntimeError(f"mlwitness serve exited with {process.returncode}")


def _call(channel: grpc.Channel, index: int, rows: np.ndarray) -> None:
    from mlwitness.codec import Tensor, encode_inputs
    from mlwitness.protocol import inference as pb

    request = pb.ModelInferRequest(model_name="credit", id=f"f1-{index}")
    x = rows[index - 1 : index].astype(np.float32)
    encode_inputs(request, [Tensor("input", "FP32", (1, 6), x)], raw=True)
    request.parameters["applicant"].string_param = f"A-{index:04d}"
    call = channel.unary_unary(f"/{pb.SERVICE}/ModelInfer")
    call(request.SerializeToString(), timeout=30)


def _bad_call(channel: grpc.Channel) -> None:
    from mlwitness.protocol import inference as pb

    request = pb.ModelInferRequest(model_name="credit", id="f1-bad")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 6])  # no values
    call = channel.unary_unary(f"/{pb.SERVICE}/ModelInfer")
    try:
        call(request.SerializeToString(), timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
    else:
        raise AssertionError("a request without values was answered")


def main() -> None:
    import mlwitness
    from mlwitness.ledger import record
    from mlwitness.protocol import audit_pb2 as apb
    from mlwitness.protocol import audit_pb2_grpc

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if getattr(record, "FORMAT_VERSION", 1) != 1:
        raise SystemExit(f"mlwitness at {mlwitness.__file__} writes record format "
                         f"{record.FORMAT_VERSION}: run this against the version before it")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        builder = _credit_builder()
        model = builder.train_and_export(work / "model", n_rows=500, seed=7).model
        rows = builder.feature_matrix(builder.make_dataset(CALLS + TAIL, 11))
        live, log = work / "live" / "ledger.duckdb", work / "serve.log"
        live.parent.mkdir()

        process, ready = _serve(model, live, log)
        with grpc.insecure_channel(f"127.0.0.1:{ready['port']}") as channel:
            for index in range(1, CALLS + 1):
                _call(channel, index, rows)
            _bad_call(channel)
        with grpc.insecure_channel(f"127.0.0.1:{ready['audit_port']}") as channel:
            audit_pb2_grpc.AuditServiceStub(channel).GetRecord(
                apb.GetRecordRequest(ref=apb.RecordRef(request_id="f1-2")), timeout=30)
        _stop(process)

        packed = work / "packed"
        packed.mkdir()
        shutil.copy2(live, packed / "ledger.duckdb")
        shutil.copy2(model, packed / "credit.onnx")

        process, ready = _serve(model, live, log)
        with grpc.insecure_channel(f"127.0.0.1:{ready['port']}") as channel:
            for index in range(CALLS + 1, CALLS + TAIL + 1):
                _call(channel, index, rows)
        journal = live.with_name(live.name + ".journal")
        shutil.copytree(journal, packed / "ledger.duckdb.journal")
        _stop(process)

        (packed / "manifest.json").write_text(json.dumps({
            "written_by": f"mlwitness {mlwitness.__version__} (record format 1, schema "
                          "version 1)",
            "ledger.duckdb": f"{CALLS} calls f1-1..f1-{CALLS} (parameter applicant A-0001..), "
                             "one refused call f1-bad, one audit question, admin records",
            "ledger.duckdb.journal": f"a tail of {TAIL} calls f1-{CALLS + 1}..f1-"
                                     f"{CALLS + TAIL}, not in ledger.duckdb",
            "credit.onnx": "the model the records name",
        }, indent=2) + "\n")
        with tarfile.open(args.out, "w:gz") as archive:
            for path in sorted(packed.rglob("*")):
                if path.is_file():
                    archive.add(path, arcname=str(path.relative_to(packed)))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) with {mlwitness.__file__}")


if __name__ == "__main__":
    main()
