"""Make the evidence bundle test vectors (tests/unit/evidence/vectors/bundle/): bundles of
one small ledger made by mlwitness's producer code, the log's verifier key, the model, and
tampered copies, with what a verifier must say of each (`expected.json`).

    .venv/bin/python tests/support/make_evidence_vectors.py [--out DIR]

Everything is fixed — the signing key's seed, the salts, the timestamps, the environment —
so the output is the same bytes on every run (Ed25519 signatures are deterministic), and
tests/unit/evidence/test_bundle_vectors.py checks the committed files are what this makes.

The ledger (chain id "vectors", origin "mlwitness/vectors", checkpoint of size 5):

    seq 1  infer, record format 1: a refused call (FP32 x typed, BYTES band raw)
    seq 2  admin, format 2: a guard version (its config has a float of 17 digits)
    seq 3  admin, format 2: a baseline
    seq 4  infer, format 2: the decision; y = 2·x + 1 by model.onnx; response typed
    seq 5  audit, format 2: a question about it

Bundles: `decision.evidence` (seq 4), `decision-with-model.evidence` (the same, with the
model's bytes), `format1.evidence` (seq 1); then `tampered-*.evidence`, each one change.
A third party's verifier should accept the first three and refuse the rest — at the check
`expected.json` names (the field before the first ":" of our verifier's message).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from mlwitness.audit import bundle as producer
from mlwitness.codec import Tensor, encode_inputs, encode_outputs
from mlwitness.evidence import merkle
from mlwitness.evidence.note import Checkpoint, Signer, sign_checkpoint
from mlwitness.ledger import environment
from mlwitness.ledger.record import FORMAT_V1, Record, chain_hash, encode, genesis_hash
from mlwitness.protocol import inference as pb

OUT = Path(__file__).resolve().parents[1] / "unit" / "evidence" / "vectors" / "bundle"
SEED = bytes(range(32))  # the signing key's Ed25519 seed: public, of course: test vectors
KEY_NAME = "vectors"
ORIGIN = "mlwitness/vectors"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, µs
ENVIRONMENT = {
    "mlwitness": "0.0.0-vectors", "python": "3.11.0", "python_implementation": "CPython",
    "numpy": "2.0.0", "onnxruntime": "1.20.0", "execution_providers": ["CPUExecutionProvider"],
    "machine": "x86_64", "system": "Linux", "byteorder": "little",
    "cpu_features": ["avx", "avx2", "fma", "sse4_2"], "cpu_model": "vectors",
    "session_options": {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
        "enable_cpu_mem_arena": True, "use_deterministic_compute": False,
        "providers": [{"name": "CPUExecutionProvider", "options": {}}],
        "config_entries": {}},
}
GUARDS = {"version": 1, "outputs": {"y": {"min": -0.30000000000000004, "max": 100.0}}}


def model_bytes() -> bytes:
    """y = 2·x + 1 on FP32 [1, 3]: element-wise IEEE arithmetic, the same bits anywhere."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["twice"]),
         helper.make_node("Add", ["twice", "one"], ["y"])],
        "vectors",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, producer_name="mlwitness-vectors",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _salt(seq: int) -> bytes:
    return hashlib.sha256(b"vectors salt %d" % seq).digest()[:16]


def records(model_sha: str, env_id: str) -> list[Record]:
    x1 = np.array([[1.5, -2.0, 0.1]], dtype=np.float32)
    first = pb.ModelInferRequest(model_name="vectors", id="refused-1")
    encode_inputs(first, [Tensor("x", "FP32", (1, 3), x1)], raw=False)
    band = first.inputs.add(name="band", datatype="BYTES", shape=[1])
    band.contents.bytes_contents.append(b"26-40")

    x4 = np.array([[0.5, -1.25, 3.0]], dtype=np.float32)
    request = pb.ModelInferRequest(model_name="vectors", id="decision-4")
    encode_inputs(request, [Tensor("x", "FP32", (1, 3), x4)], raw=True)
    request.parameters["applicant"].string_param = "A-0042"
    response = pb.ModelInferResponse(model_name="vectors", id="decision-4")
    y = (x4 * np.float32(2) + np.float32(1)).astype(np.float32)
    encode_outputs(response, [Tensor("y", "FP32", (1, 3), y)], raw=False)

    guards = json.dumps({"action": "guards", "config": GUARDS, "mode": "enforce",
                         "sha256": hashlib.sha256(json.dumps(GUARDS, sort_keys=True).encode()
                                                  ).hexdigest(),
                         "source": "guards.toml"}, sort_keys=True)
    baseline = json.dumps({"action": "baseline", "sha256": hashlib.sha256(b"baseline").hexdigest(),
                           "source": "baseline.json"}, sort_keys=True)
    made = [
        Record(kind="infer", request_id="refused-1", received_us=T0, responded_us=T0 + 150,
               model_name="vectors", model_version="", model_sha256=model_sha, env_id=env_id,
               peer="ipv4:127.0.0.1:50000", metadata='{"x-caller": "vectors"}',
               status="INVALID_ARGUMENT", message="input 'x': 1.5 is above the guard's max",
               request=first.SerializeToString(), format=FORMAT_V1),
        Record(kind="admin", request_id="guards-2", received_us=T0 + 1000,
               responded_us=T0 + 1000, peer="startup", detail=guards),
        Record(kind="admin", request_id="baseline-3", received_us=T0 + 2000,
               responded_us=T0 + 2000, peer="startup", detail=baseline),
        Record(kind="infer", request_id="decision-4", received_us=T0 + 3000,
               responded_us=T0 + 3210, model_name="vectors", model_version="1",
               model_sha256=model_sha, env_id=env_id, peer="token:caller",
               metadata='{"x-caller": "loan-desk"}', status="OK",
               request=request.SerializeToString(), response=response.SerializeToString(),
               detail='{"note": "caf\\u00e9 \\u2014 UTF-8 text"}'),
        Record(kind="audit", request_id="question-5", received_us=T0 + 4000,
               responded_us=T0 + 4100, peer="token:alice", status="OK",
               detail='{"rpc": "Evidence", "seq": 4}'),
    ]
    prev = genesis_hash("vectors")
    for seq, record in enumerate(made, start=1):
        record.seq, record.prev_hash = seq, prev
        if record.format != FORMAT_V1:
            record.salt = _salt(seq)
        record.hash = prev = chain_hash(prev, encode(record))
    return made


class _Leaves:
    """The tree's perfect subtrees, from the leaf hashes in memory."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = list(leaves)

    def subtree_hashes(self, nodes: Sequence[merkle.Node]) -> list[bytes]:
        return [merkle.root_from_hashes(
            self.leaves[n.index << n.level:(n.index + 1) << n.level]) for n in nodes]


def bundles(onnx_bytes: bytes) -> tuple[dict[str, dict[str, Any]], str]:
    """({name: bundle}, verifier key) of the three valid bundles."""
    env_text = environment.canonical(ENVIRONMENT)
    env_id = environment.env_id(ENVIRONMENT)
    model_sha = hashlib.sha256(onnx_bytes).hexdigest()
    made = records(model_sha, env_id)
    leaves = _Leaves([merkle.leaf_hash(r.hash) for r in made])
    size = len(made)
    root = merkle.root_from_hashes(leaves.leaves)
    signer = Signer(KEY_NAME, SEED)
    note = sign_checkpoint(Checkpoint(ORIGIN, size, root), [signer]).decode()
    key_id = f"{KEY_NAME}+{signer.key_id:08x}"

    def part(record: Record) -> dict[str, Any]:
        return producer.record_part(
            record, tuple(merkle.inclusion_proof(record.seq - 1, size, leaves)), size)

    def bundle(record: Record, cited: Sequence[Record], with_model: bool) -> dict[str, Any]:
        guards = next((r for r in cited if '"guards"' in r.detail), None)
        baseline = next((r for r in cited if '"baseline"' in r.detail), None)
        model: dict[str, Any] = {"sha256": record.model_sha256}
        if with_model:
            model["onnx"] = base64.b64encode(onnx_bytes).decode()
        return {
            "format": producer.FORMAT, "record": part(record),
            "decoded": producer.decoded(record),
            "model": model, "environment": env_text,
            "guards": producer.guards_part(guards), "baseline": producer.baseline_part(baseline),
            "context": [part(r) for r in cited],
            "checkpoint": {"note": note, "key_id": key_id},
        }

    valid = {
        "decision.evidence": bundle(made[3], made[1:3], with_model=False),
        "decision-with-model.evidence": bundle(made[3], made[1:3], with_model=True),
        "format1.evidence": bundle(made[0], [], with_model=False),
    }
    return valid, signer.verifier_key()


Change = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Change:
    def change(b: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = b
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value(node[int(last) if last.isdigit()
                                                                 else last]) \
            if callable(value) else value
    return change


def _flip_b64(text: str, at: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _flip_hex(text: str) -> str:
    return ("0" if text[0] != "0" else "1") + text[1:]


def _resign(size_delta: int) -> Change:
    """A checkpoint of another size, signed by another key of the same name."""
    def change(b: dict[str, Any]) -> None:
        text = b["checkpoint"]["note"].split("\n\n")[0] + "\n"
        origin, size, root = text.splitlines()
        other = Signer(KEY_NAME, bytes(31) + b"\x01")
        b["checkpoint"]["note"] = sign_checkpoint(
            Checkpoint(origin, int(size) + size_delta, base64.b64decode(root)), [other]).decode()
    return change


# (file, base bundle, change, first failing check)
TAMPERED: list[tuple[str, str, Change, str]] = [
    ("tampered-request-id", "decision.evidence", _set("record.request_id", "decision-5"),
     "record.hash"),
    ("tampered-received-us", "decision.evidence", _set("record.received_us", lambda v: v + 1),
     "record.hash"),
    ("tampered-request-byte", "decision.evidence",
     _set("record.request", lambda v: _flip_b64(v, 20)), "record.hash"),
    ("tampered-response-byte", "decision.evidence",
     _set("record.response", lambda v: _flip_b64(v, 10)), "record.hash"),
    ("tampered-salt", "decision.evidence", _set("record.salt", _flip_hex), "record.hash"),
    ("tampered-prev-hash", "decision.evidence", _set("record.prev_hash", _flip_hex),
     "record.hash"),
    ("tampered-format1-message", "format1.evidence",
     _set("record.message", lambda v: v.replace("1.5", "1.6")), "record.hash"),
    ("tampered-proof-hash", "decision.evidence", _set("record.proof.hashes.0", _flip_hex),
     "record.proof"),
    ("tampered-leaf-index", "decision.evidence", _set("record.proof.leaf_index", 2),
     "record.proof.leaf_index"),
    ("tampered-checkpoint-signature", "decision.evidence",
     _set("checkpoint.note", lambda v: v[:-6] + ("A" if v[-6] != "A" else "B") + v[-5:]),
     "checkpoint"),
    ("tampered-checkpoint-other-key", "decision.evidence", _resign(0), "checkpoint"),
    ("tampered-checkpoint-unsigned", "decision.evidence",
     _set("checkpoint.note", lambda v: v.split("\n\n")[0] + "\n"), "checkpoint"),
    ("tampered-key-id", "decision.evidence", _set("checkpoint.key_id", "vectors+00000000"),
     "checkpoint.key_id"),
    ("tampered-decoded-input", "decision.evidence",
     _set("decoded.inputs.0.data.1", -1.5), "decoded.inputs[0].data[1]"),
    ("tampered-decoded-output", "decision.evidence",
     _set("decoded.outputs.0.data.0", 2.0000002384185791), "decoded.outputs[0].data[0]"),
    ("tampered-decoded-shape", "decision.evidence", _set("decoded.inputs.0.shape", [3, 1]),
     "decoded.inputs[0].shape"),
    ("tampered-environment", "decision.evidence",
     _set("environment", lambda v: v.replace('"intra_op_num_threads":1',
                                            '"intra_op_num_threads":2')), "environment"),
    ("tampered-model-sha256", "decision.evidence", _set("model.sha256", _flip_hex),
     "model.sha256"),
    ("tampered-model-bytes", "decision-with-model.evidence",
     _set("model.onnx", lambda v: _flip_b64(v, 30)), "model.onnx"),
    ("tampered-guards-config", "decision.evidence",
     _set("guards.config.outputs.y.max", 1000.0), "guards"),
    ("tampered-context-detail", "decision.evidence",
     _set("context.0.detail", lambda v: v.replace("enforce", "observe")), "context[0].hash"),
    ("tampered-baseline-sha256", "decision.evidence", _set("baseline.sha256", _flip_hex),
     "baseline"),
    ("tampered-unknown-key", "decision.evidence", _set("note", "trust me"), "bundle"),
    ("tampered-format", "decision.evidence", _set("format", "mlwitness-evidence/2"), "format"),
]


def generate(out: Path) -> list[str]:
    """Write every vector into `out`; the names written."""
    out.mkdir(parents=True, exist_ok=True)
    onnx_bytes = model_bytes()
    valid, vkey = bundles(onnx_bytes)
    files: dict[str, bytes] = {"verifier.key": (vkey + "\n").encode(), "model.onnx": onnx_bytes}
    expected: list[dict[str, Any]] = []
    for name, found in valid.items():
        files[name] = producer.dumps(found)
        expected.append({"file": name, "valid": True, "exit": 0, "first_failure": ""})
    for stem, base, change, failure in TAMPERED:
        changed = copy.deepcopy(valid[base])
        change(changed)
        files[f"{stem}.evidence"] = producer.dumps(changed)
        expected.append({"file": f"{stem}.evidence", "valid": False, "exit": 1,
                         "first_failure": failure})
    # not a bundle at all: the verifier cannot read it (exit 2)
    files["tampered-not-json.evidence"] = files["decision.evidence"][:-40]
    expected.append({"file": "tampered-not-json.evidence", "valid": False, "exit": 2,
                     "first_failure": "unreadable"})
    files["tampered-float-spelling.evidence"] = files["decision.evidence"].replace(
        b"100.0", b"100.00", 1)
    expected.append({"file": "tampered-float-spelling.evidence", "valid": False, "exit": 2,
                     "first_failure": "unreadable"})
    files["expected.json"] = (json.dumps(
        {"verifier_key": "verifier.key", "model": "model.onnx", "bundles": expected},
        indent=1) + "\n").encode()
    for name, data in files.items():
        (out / name).write_bytes(data)
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    args = parser.parse_args(argv)
    names = generate(args.out)
    print(f"wrote {len(names)} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
