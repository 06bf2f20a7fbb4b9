"""The evidence bundle's verifier (evidence/bundle_check.py) over the committed test vectors
(vectors/bundle/, made by tests/support/make_evidence_vectors.py): the files are what the
script makes; each vector verifies or fails at the check expected.json names; one flipped
byte anywhere in a bundle fails; the model re-runs bit-identically; hostile files get exit
2 or 1 and a message, never a traceback; and the verifier imports nothing of the producer."""

from __future__ import annotations

import ast
import base64
import json
import time
from pathlib import Path
from typing import Any

import make_evidence_vectors
import numpy as np
import pytest

from mlwitness import cli, codec
from mlwitness.audit import bundle as producer
from mlwitness.evidence import bundle_check as bc
from mlwitness.protocol import inference as pb

VECTORS = Path(__file__).parent / "vectors" / "bundle"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())
KEY = (VECTORS / "verifier.key").read_text().strip()


def outcome(data: bytes) -> tuple[int, str]:
    """(exit code, the check that failed) as `mlwitness evidence verify` would give them."""
    try:
        found = bc.load(data)
    except bc.BundleError:
        return 2, "unreadable"
    try:
        bc.verify(found, [KEY])
    except bc.VerificationError as exc:
        return 1, str(exc).split(":")[0]
    return 0, ""


def test_the_committed_vectors_are_what_the_script_makes(tmp_path: Path) -> None:
    names = make_evidence_vectors.generate(tmp_path)
    committed = sorted(p.name for p in VECTORS.iterdir())
    assert names == committed
    changed = [n for n in names if (tmp_path / n).read_bytes() != (VECTORS / n).read_bytes()]
    assert changed == [], "run tests/support/make_evidence_vectors.py and commit its output"


@pytest.mark.parametrize("vector", EXPECTED["bundles"], ids=lambda v: v["file"])
def test_each_vector_verifies_or_fails_at_the_named_check(vector: dict[str, Any]) -> None:
    assert outcome((VECTORS / vector["file"]).read_bytes()) == (
        vector["exit"], vector["first_failure"])


def test_one_flipped_byte_anywhere_in_a_bundle_fails() -> None:
    """Every byte with its low bit flipped, and every third byte with bit 5 (ASCII case,
    space to NUL) and bit 7 (not UTF-8) flipped: each must fail, by exit 1 or 2."""
    data = (VECTORS / "decision-with-model.evidence").read_bytes()
    assert outcome(data) == (0, "")
    started, passed = time.monotonic(), []
    for at in range(len(data)):
        for mask in (0x01, 0x20, 0x80) if at % 3 == 0 else (0x01,):
            flipped = bytearray(data)
            flipped[at] ^= mask
            if outcome(bytes(flipped))[0] == 0:
                passed.append((at, mask, data[max(0, at - 20):at + 20]))
        assert time.monotonic() - started < 120, "the flip loop is bounded in time too"
    assert passed == []


def test_the_model_reruns_bit_identically_and_a_difference_is_given_in_ulps() -> None:
    found = bc.load((VECTORS / "decision.evidence").read_bytes())
    bc.verify(found, [KEY])
    rerun = bc.rerun(found, (VECTORS / "model.onnx").read_bytes())
    assert rerun.identical and rerun.outputs == ["y: bit-identical"]
    with pytest.raises(bc.VerificationError, match="^model: its SHA-256"):
        bc.rerun(found, b"not the model")
    (y,) = bc.tensors(base64.b64decode(found["record"]["response"]), inputs=False) or []
    near = y.array.copy()
    near.view(np.int32)[0, 1] += 1
    near.view(np.int32)[0, 2] -= 3
    assert bc.compare_output(y, near) == (False, "2 of 3 elements differ, at most 3 ulps")


@pytest.mark.parametrize(("datatype", "raw"), [
    (datatype, raw) for datatype in sorted(bc.DATATYPES) for raw in (True, False)
    if raw or datatype != "FP16"])  # FP16 travels raw only
def test_the_verifier_decodes_what_the_producer_decodes(datatype: str, raw: bool) -> None:
    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        array = np.array([b"", b"caf\xc3\xa9", b"\x00\xff", b"x"], dtype=object).reshape(2, 2)
    elif datatype == "BOOL":
        array = np.array([[True, False], [False, True]])
    else:
        dtype = codec.numpy_dtype(datatype)
        array = (rng.standard_normal((2, 2)) * 100).astype(dtype) if dtype.kind == "f" else \
            rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (2, 2), dtype=dtype,
                         endpoint=True)
        if dtype.kind == "f":
            array.ravel()[:3] = [np.nan, np.inf, -0.0]
    request = pb.ModelInferRequest()
    codec.encode_inputs(request, [codec.Tensor("t", datatype, (2, 2), array)], raw=raw)
    data = request.SerializeToString()
    made = producer.decoded_part(data, inputs=True)
    mine = bc.tensors(data, inputs=True)
    assert made is not None and mine is not None
    assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
             "data": [bc.value_json(v, t.datatype) for v in t.array.ravel().tolist()]}
            for t in mine] == made


# ── the command line, and hostile files ────────────────────────────────────────────────


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["evidence", "verify", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_the_command_says_valid_not_valid_or_unreadable(
        capsys: pytest.CaptureFixture[str]) -> None:
    key = str(VECTORS / "verifier.key")
    code, out, _ = run(capsys, str(VECTORS / "decision.evidence"), "--key", key,
                       "--model", str(VECTORS / "model.onnx"))
    assert code == 0 and "re-run        bit-identical" in out and out.rstrip().splitlines()[
        -1].startswith("VALID: ")
    code, out, _ = run(capsys, str(VECTORS / "decision-with-model.evidence"), "--key", KEY,
                       "--json")
    assert code == 0 and json.loads(out)["rerun"]["identical"]
    code, _, err = run(capsys, str(VECTORS / "tampered-salt.evidence"), "--key", key)
    assert code == 1 and err.startswith("NOT VALID: record.hash: ")
    code, _, err = run(capsys, str(VECTORS / "tampered-not-json.evidence"), "--key", key)
    assert code == 2 and "is not an evidence bundle: not JSON" in err
    code, _, err = run(capsys, str(VECTORS / "no-such.evidence"), "--key", key)
    assert code == 2 and "no-such.evidence" in err
    code, _, err = run(capsys, str(VECTORS / "decision.evidence"), "--key", "not-a-key")
    assert code == 2 and "--key" in err


def _with(path: str, value: Any) -> bytes:
    found = json.loads((VECTORS / "decision.evidence").read_text())
    *parents, last = path.split(".")
    node: Any = found
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return json.dumps(found).encode()


@pytest.mark.parametrize(("path", "value", "failure"), [
    ("record", [], "record: not a JSON object"),
    ("record.seq", "4", "record.seq: not a 64-bit integer"),
    ("record.seq", 1 << 70, "record.seq: not a 64-bit integer"),
    ("record.format", True, "record.format: not a 64-bit integer"),
    ("record.format", 3, "record.format: 3 is not a record format"),
    ("record.request", 42, "record.request: not a string"),
    ("record.request", "not base64!", "record.request: not base64"),
    ("record.salt", "AB" * 16, "record.salt: not 16 bytes in lowercase hex"),
    ("record.kind", "\ud800", "record.kind: not UTF-8 text"),
    ("record.proof.hashes", "00", "record.proof.hashes: not a JSON array"),
    ("record.proof", None, "record.proof: not a JSON object"),
    ("context", None, "context: not a JSON array"),
    ("context", [{}, {}, {}], "context[0].format: not a 64-bit integer"),
    ("checkpoint", "note", "checkpoint: not a JSON object"),
    ("checkpoint.note", "x" * (2 << 20), "checkpoint: the note is not signed"),
    ("decoded.inputs", {"x": 1}, "decoded.inputs: not a JSON array"),
    ("decoded.inputs.0.data", [[0.5]] * 3, "decoded.inputs[0].data[0]"),
    ("guards", [], "guards: not a JSON object"),
    ("guards.seq", 4, "guards.seq: no context record 4 proves it"),
    ("model", {"sha256": None}, "model.sha256: not a string"),
    ("environment", {"a": 1}, "environment: not a string"),
])
def test_wrong_types_are_not_valid_with_a_message(
        capsys: pytest.CaptureFixture[str], path: str, value: Any, failure: str,
        tmp_path: Path) -> None:
    bundle = tmp_path / "hostile.evidence"
    bundle.write_bytes(_with(path, value))
    code, _, err = run(capsys, str(bundle), "--key", KEY)
    assert code == 1 and err.startswith(f"NOT VALID: {failure}"), err


@pytest.mark.parametrize(("data", "message"), [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b"{\"a\": 1, \"a\": 2}", "appears twice"),
    (b"{\"a\": NaN}", "NaN is not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b"", "not JSON"),
])
def test_files_that_are_not_bundles_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes, message: str) -> None:
    bundle = tmp_path / "hostile.evidence"
    bundle.write_bytes(data)
    code, _, err = run(capsys, str(bundle), "--key", KEY)
    assert code == 2 and message in err, err


def test_a_file_past_the_size_limit_is_refused_unread(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setattr(bc, "MAX_BUNDLE_BYTES", 1000)
    code, _, err = run(capsys, str(VECTORS / "decision.evidence"), "--key", KEY)
    assert code == 2 and "larger than 1000 bytes" in err


def test_the_verifier_imports_nothing_of_the_producer() -> None:
    """Only the spec's primitives: check.py, the v2 protobuf messages, hashlib & co."""
    source = Path(bc.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    ours = {name for name in imported if name.startswith("mlwitness")}
    assert ours == {"mlwitness.evidence", "mlwitness.evidence.check", "mlwitness.protocol"}
