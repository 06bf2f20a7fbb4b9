"""The evidence bundle's verifier: checks one decision offline, from the bundle alone.

Written from the spec (docs/evidence.md, "Evidence bundle") and sharing no code with the
producer (`mlwitness.audit.bundle`, `mlwitness.ledger.record`, `mlwitness.codec`): it
rebuilds a record's hashed bytes, its payload commitment and chain hash itself, decodes the
request and response tensors with its own small Open Inference Protocol v2 decoder, and
re-runs the model with onnxruntime itself. What it does share are the spec's primitives:
SHA-256, base64, Ed25519, the RFC 9162 proof and C2SP note checks of `check.py` (itself
independent of the producer), and the v2 protobuf messages (`mlwitness.protocol`).

`load` turns bytes into the bundle's JSON (BundleError: not a bundle at all); `verify`
runs every check in the order of the spec and raises VerificationError naming the first
that fails; `rerun` runs the model on the recorded inputs and compares the outputs' bits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlwitness.evidence import check
from mlwitness.evidence.check import VerificationError

FORMAT = "mlwitness-evidence/1"
MAX_BUNDLE_BYTES = 256 << 20  # a bundle with a 16 MiB model is about 22 MiB
MAX_ELEMENTS = 1 << 24  # tensor elements one bundle may claim (decoded values are JSON)

PAYLOAD_DOMAIN = b"mlwitness-payload-v2"
CLEAR = ("kind", "request_id", "model_name", "model_version", "model_sha256", "env_id",
         "peer", "metadata", "status")
PAYLOAD_TEXT = ("message", "violations", "detail")
RECORD_KEYS = ("format", "seq", "received_us", "responded_us", *CLEAR, *PAYLOAD_TEXT,
               "request", "response", "prev_hash", "hash", "proof")
TOP_KEYS = ("format", "record", "decoded", "model", "environment", "guards", "baseline",
            "context", "checkpoint")
_HEX = re.compile(r"[0-9a-f]*")
_I64 = (-(1 << 63), (1 << 63) - 1)


class BundleError(ValueError):
    """The file is not a bundle at all: too large, not UTF-8, not JSON."""


# ── reading ────────────────────────────────────────────────────────────────────────────


def load(data: bytes) -> dict[str, Any]:
    """The bundle's JSON object. Duplicate keys, NaN, numbers not in their canonical form
    are refused: one file has one reading."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{len(data)} bytes: larger than any bundle ({MAX_BUNDLE_BYTES})")
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant, parse_float=_canonical_float)
    except UnicodeDecodeError:
        raise BundleError("not UTF-8 text") from None
    except RecursionError:
        raise BundleError("JSON nested too deeply") from None
    except ValueError as exc:
        raise BundleError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BundleError("not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _canonical_float(text: str) -> float:
    """A number with a fraction or exponent, only in its one spelling: the shortest decimal
    that reads back to the same binary64 (docs/evidence.md gives the form). Two spellings
    of one float would let a changed byte pass unnoticed."""
    value = float(text)
    if repr(value) != text:
        raise ValueError(f"number {text[:40]} is not written in its canonical form "
                         f"({repr(value)[:40]})")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ── the report ─────────────────────────────────────────────────────────────────────────


@dataclass
class Report:
    """What was checked (`checked`, in order), and what the bundle says."""

    seq: int = 0
    request_id: str = ""
    tree_size: int = 0
    origin: str = ""
    signed_by: str = ""
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ── the checks ─────────────────────────────────────────────────────────────────────────


def verify(bundle: dict[str, Any], keys: Sequence[str]) -> Report:
    """Every check of the spec, in its order; VerificationError naming the first failure."""
    report = Report()
    _keys(bundle, "bundle", TOP_KEYS)
    if bundle["format"] != FORMAT:
        raise VerificationError(f"format: {bundle['format']!r} is not {FORMAT!r}")
    size, root = _checkpoint(_obj(bundle["checkpoint"], "checkpoint"), keys, report)
    record = _obj(bundle["record"], "record")
    _record(record, "record", size, root)
    report.seq, report.request_id = record["seq"], record["request_id"]
    report.checked.append(f"record: seq {record['seq']} hashes to its chain hash, which is "
                          f"leaf {record['seq'] - 1} of the checkpoint's tree")
    _context(bundle, record, size, root, report)
    _model(_obj(bundle["model"], "model"), record, report)
    _environment(bundle["environment"], record, report)
    _decoded(_obj(bundle["decoded"], "decoded"), record, report)
    return report


def _checkpoint(cp: dict[str, Any], keys: Sequence[str], report: Report
                ) -> tuple[int, bytes]:
    _keys(cp, "checkpoint", ("note", "key_id"))
    note, key_id = _str(cp["note"], "checkpoint.note"), _str(cp["key_id"], "checkpoint.key_id")
    if "\n\n" not in note:
        raise VerificationError("checkpoint: the note is not signed (the ledger had no "
                                "--signing-key): it proves nothing about who issued it")
    try:
        opened = check.open_note(note.encode(), keys)
    except VerificationError as exc:
        raise VerificationError(f"checkpoint: {exc}") from None
    listed = ", ".join(_signature_names(note))
    if key_id != listed:
        raise VerificationError(f"checkpoint.key_id: {key_id!r} is not the note's signers "
                                f"({listed!r})")
    parsed = check.parse_checkpoint(opened.text)
    report.tree_size, report.origin = parsed.size, parsed.origin
    report.signed_by = ", ".join(k.rsplit("+", 1)[0] for k in opened.signed_by)
    report.checked.append(f"checkpoint: size {parsed.size} of {parsed.origin}, signed by "
                          f"{report.signed_by}")
    return parsed.size, parsed.root


def _signature_names(note: str) -> list[str]:
    """name+keyid (8 hex digits) of each signature line (c2sp.org/signed-note)."""
    names = []
    for line in note[note.rindex("\n\n") + 2:].splitlines():
        _, name, sig = line.split(" ")  # open_note has checked the lines' form
        names.append(f"{name}+{base64.b64decode(sig)[:4].hex()}")
    return names


def _record(r: dict[str, Any], where: str, size: int, root: bytes) -> None:
    fmt = _int(r.get("format"), f"{where}.format")
    names = RECORD_KEYS if fmt == 1 else (*RECORD_KEYS[:-3], "salt", *RECORD_KEYS[-3:])
    if fmt not in (1, 2):
        raise VerificationError(f"{where}.format: {fmt} is not a record format (1 or 2)")
    _keys(r, where, names)
    seq = _int(r["seq"], f"{where}.seq")
    received = _int(r["received_us"], f"{where}.received_us")
    responded = _int(r["responded_us"], f"{where}.responded_us")
    clear = b"".join(_lp(_text(r[name], f"{where}.{name}")) for name in CLEAR)
    payload = b"".join([*(_lp(_text(r[name], f"{where}.{name}")) for name in PAYLOAD_TEXT),
                        _lp(_b64(r["request"], f"{where}.request")),
                        _lp(_b64(r["response"], f"{where}.response"))])
    if fmt == 1:
        hashed = struct.pack(">BqqqI", 1, seq, received, responded, 14) + clear + payload
    else:
        salt = _hex(r["salt"], f"{where}.salt", 16)
        commitment = hashlib.sha256(PAYLOAD_DOMAIN + salt + payload).digest()
        hashed = (struct.pack(">BqqqI", 2, seq, received, responded, 10) + clear
                  + _lp(commitment))
    prev_hash = _hex(r["prev_hash"], f"{where}.prev_hash", 32)
    chain_hash = _hex(r["hash"], f"{where}.hash", 32)
    if hashlib.sha256(prev_hash + hashed).digest() != chain_hash:
        raise VerificationError(f"{where}.hash: SHA-256(prev_hash ‖ hashed bytes) is not the "
                                "record's hash: a field of the record differs from what was "
                                "committed")
    proof = _obj(r["proof"], f"{where}.proof")
    _keys(proof, f"{where}.proof", ("leaf_index", "tree_size", "hashes"))
    index = _int(proof["leaf_index"], f"{where}.proof.leaf_index")
    if index != seq - 1:
        raise VerificationError(f"{where}.proof.leaf_index: {index} is not seq - 1 ({seq - 1})")
    if _int(proof["tree_size"], f"{where}.proof.tree_size") != size:
        raise VerificationError(f"{where}.proof.tree_size: {proof['tree_size']} is not the "
                                f"checkpoint's size ({size})")
    hashes = [_hex(h, f"{where}.proof.hashes[{i}]", 32)
              for i, h in enumerate(_list(proof["hashes"], f"{where}.proof.hashes"))]
    try:
        check.verify_inclusion(index, size, check.leaf_hash(chain_hash), hashes, root)
    except VerificationError as exc:
        raise VerificationError(f"{where}.proof: {exc}") from None


def _context(bundle: dict[str, Any], record: dict[str, Any], size: int, root: bytes,
             report: Report) -> None:
    """The admin records that put the cited guard version and baseline on the chain: each
    proven like the record, made before it, and saying what the bundle says they say."""
    context = _list(bundle["context"], "context")
    by_seq: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(context):
        where = f"context[{i}]"
        r = _obj(item, where)
        _record(r, where, size, root)
        if r["seq"] in by_seq or r["seq"] >= record["seq"] or r["kind"] != "admin":
            raise VerificationError(f"{where}: not an admin record made before the record, "
                                    "once")
        by_seq[r["seq"]] = r
    cited = []
    for action, fields in (("guards", ("seq", "sha256", "mode", "config")),
                           ("baseline", ("seq", "sha256"))):
        value = bundle[action]
        if value is None:
            continue
        where = action
        _keys(_obj(value, where), where, fields)
        seq = _int(value["seq"], f"{where}.seq")
        admin = by_seq.get(seq)
        if admin is None:
            raise VerificationError(f"{where}.seq: no context record {seq} proves it")
        detail = _detail(admin["detail"])
        if detail.get("action") != action or not all(
                _same_json(value[k], detail.get(k)) for k in fields if k != "seq"):
            raise VerificationError(f"{where}: not what context record seq {seq} says")
        cited.append(seq)
        report.checked.append(f"{where}: {str(value['sha256'])[:16]}… was put on the chain "
                              f"at seq {seq}, before the record")
    if sorted(cited) != sorted(by_seq):
        raise VerificationError("context: holds a record neither guards nor baseline cites")
    if bundle["guards"] is not None or bundle["baseline"] is not None:
        report.notes.append("guards and baseline: the bundle proves each was put on the "
                            "chain before the record; that no other took its place between "
                            "them takes the ledger (mlwitness audit records)")


def _detail(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _model(model: dict[str, Any], record: dict[str, Any], report: Report) -> None:
    if "onnx" in model:
        _keys(model, "model", ("sha256", "onnx"))
    else:
        _keys(model, "model", ("sha256",))
    sha = _str(model["sha256"], "model.sha256")
    if sha != record["model_sha256"]:
        raise VerificationError("model.sha256: not the record's model_sha256")
    if "onnx" in model:
        onnx = _b64(model["onnx"], "model.onnx")
        if hashlib.sha256(onnx).hexdigest() != sha:
            raise VerificationError("model.onnx: its SHA-256 is not the record's model")
        report.checked.append(f"model: the bundle's ONNX bytes are model {sha[:16]}…")
    elif sha:
        report.checked.append(f"model: {sha[:16]}… (bytes not in the bundle)")


def _environment(env: Any, record: dict[str, Any], report: Report) -> None:
    if not record["env_id"]:
        if env is not None:
            raise VerificationError("environment: given, but the record names none")
        return
    text = _str(env, "environment")
    if hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() != record["env_id"]:
        raise VerificationError("environment: its SHA-256 is not the record's env_id")
    report.checked.append(f"environment: the fingerprint is the record's env_id "
                          f"{record['env_id'][:16]}…")


def environment_json(bundle: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint as an object (after `verify`: its text is the record's env_id's)."""
    value = json.loads(bundle["environment"]) if bundle["environment"] else {}
    return value if isinstance(value, dict) else {}


# ── decoded values, from the bytes ─────────────────────────────────────────────────────


def _decoded(decoded: dict[str, Any], record: dict[str, Any], report: Report) -> None:
    _keys(decoded, "decoded", ("inputs", "outputs"))
    for part, data in (("inputs", record["request"]), ("outputs", record["response"])):
        given = decoded[part]
        if given is None:
            report.notes.append(f"decoded.{part}: not given (the bytes are not a v2 "
                                "message with tensors that decode)")
            continue
        mine = tensors(base64.b64decode(data), inputs=part == "inputs")
        where = f"decoded.{part}"
        items = _list(given, where)
        if mine is None or len(items) != len(mine):
            raise VerificationError(f"{where}: not the tensors of the recorded "
                                    f"{'request' if part == 'inputs' else 'response'}")
        for i, (item, t) in enumerate(zip(items, mine, strict=True)):
            _compare(_obj(item, f"{where}[{i}]"), t, f"{where}[{i}]")
        report.checked.append(f"{where}: {len(mine)} tensors ({', '.join(t.name for t in mine)})"
                              " decode from the recorded bytes to the bundle's values")


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray  # BYTES: an object array of bytes


# datatype: (numpy dtype, typed contents field); FP16 travels raw only
DATATYPES: dict[str, tuple[str, str | None]] = {
    "BOOL": ("?", "bool_contents"), "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"), "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"), "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"), "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"), "FP16": ("<f2", None), "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"), "BYTES": ("O", "bytes_contents"),
}


def tensors(data: bytes, *, inputs: bool) -> list[Tensor] | None:
    """The tensors of a ModelInferRequest (`inputs`) or ModelInferResponse, from their raw
    or typed contents; None if the bytes are not one whose tensors decode."""
    from google.protobuf.message import DecodeError

    from mlwitness.protocol import inference as pb

    try:
        message = (pb.ModelInferRequest if inputs else pb.ModelInferResponse).FromString(data)
    except DecodeError:
        return None
    items = message.inputs if inputs else message.outputs
    raws = message.raw_input_contents if inputs else message.raw_output_contents
    if raws and len(raws) != len(items):
        return None
    out = []
    for i, item in enumerate(items):
        t = _tensor(item, raws[i] if raws else None)
        if t is None:
            return None
        out.append(t)
    return out


def _tensor(item: Any, raw: bytes | None) -> Tensor | None:
    if item.datatype not in DATATYPES or any(d < 0 for d in item.shape):
        return None
    shape = tuple(item.shape)
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        return None
    dtype, typed = DATATYPES[item.datatype]
    if raw is not None:
        if item.HasField("contents") and item.contents.ListFields():
            return None
        values = _raw_values(raw, item.datatype, dtype, count)
    else:
        values = _typed_values(item.contents, item.datatype, dtype, typed, count)
    if values is None:
        return None
    return Tensor(item.name, item.datatype, shape, values.reshape(shape))


def _raw_values(raw: bytes, datatype: str, dtype: str, count: int) -> np.ndarray | None:
    if datatype != "BYTES":
        if len(raw) != count * np.dtype(dtype).itemsize:
            return None
        return np.frombuffer(raw, dtype=dtype).copy()
    items, at = [], 0
    while at < len(raw):  # each element: u32 little-endian length, then its bytes
        if at + 4 > len(raw):
            return None
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            return None
        items.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    if len(items) != count:
        return None
    return _objects(items)


def _typed_values(contents: Any, datatype: str, dtype: str, typed: str | None, count: int
                  ) -> np.ndarray | None:
    used = [f.name for f, _ in contents.ListFields()]
    if count == 0 and not used:
        return np.zeros(0, dtype=dtype) if datatype != "BYTES" else _objects([])
    if typed is None or used != [typed]:
        return None
    values = list(getattr(contents, typed))
    if len(values) != count:
        return None
    if datatype == "BYTES":
        return _objects([bytes(v) for v in values])
    if datatype in ("FP32", "FP64"):  # the wire's bits, not a float's round trip
        return np.array(values, dtype=np.float64).astype(dtype)
    info = np.iinfo(dtype) if datatype != "BOOL" else None
    if info is not None and any(not info.min <= v <= info.max for v in values):
        return None
    return np.array(values, dtype=dtype)


def _objects(items: list[bytes]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def value_json(value: Any, datatype: str) -> Any:
    """An element as the bundle writes it (spec: decoded values)."""
    if datatype == "BYTES":
        return base64.b64encode(value).decode()
    if datatype == "BOOL":
        return bool(value)
    if datatype.startswith("FP"):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return number
    return int(value)


def _compare(item: dict[str, Any], t: Tensor, where: str) -> None:
    _keys(item, where, ("name", "datatype", "shape", "data"))
    if item["name"] != t.name or item["datatype"] != t.datatype:
        raise VerificationError(f"{where}: name or datatype is not the recorded tensor's "
                                f"({t.name} {t.datatype})")
    shape = _list(item["shape"], f"{where}.shape")
    if [_int(d, f"{where}.shape") for d in shape] != list(t.shape):
        raise VerificationError(f"{where}.shape: not the recorded {list(t.shape)}")
    data = _list(item["data"], f"{where}.data")
    flat = t.array.ravel().tolist()
    if len(data) != len(flat):
        raise VerificationError(f"{where}.data: {len(data)} values, the bytes hold {len(flat)}")
    same = _same_float if t.datatype.startswith("FP") else _same_exact
    for i, (given, value) in enumerate(zip(data, flat, strict=True)):
        if not same(given, value_json(value, t.datatype)):
            raise VerificationError(f"{where}.data[{i}]: {given!r} is not the recorded "
                                    f"{value_json(value, t.datatype)!r}")


def _same_exact(given: Any, mine: Any) -> bool:
    return type(given) is type(mine) and given == mine


def _same_float(given: Any, mine: Any) -> bool:
    if isinstance(mine, str) or isinstance(given, str):
        return given == mine
    if isinstance(given, bool) or not isinstance(given, int | float):
        return False
    return struct.pack("<d", float(given)) == struct.pack("<d", mine)  # -0.0 is not 0.0


# ── re-running the model ───────────────────────────────────────────────────────────────


@dataclass
class Rerun:
    identical: bool
    outputs: list[str]  # one line per output
    providers_missing: list[str]


def rerun(bundle: dict[str, Any], onnx: bytes) -> Rerun:
    """Run `onnx` (after `verify`; its SHA-256 must be the record's) on the recorded inputs
    with the recorded session options, and compare each recorded output's bits."""
    import onnxruntime as ort

    record = bundle["record"]
    if hashlib.sha256(onnx).hexdigest() != record["model_sha256"]:
        raise VerificationError("model: its SHA-256 is not the record's model_sha256 "
                                f"({record['model_sha256'][:16]}…)")
    inputs = tensors(base64.b64decode(record["request"]), inputs=True)
    outputs = tensors(base64.b64decode(record["response"]), inputs=False)
    if not inputs or not outputs:
        raise VerificationError("rerun: the record holds no decodable inputs and outputs "
                                "(a refused or erased call)")
    options, providers, missing = session_options(environment_json(bundle), ort)
    try:
        session = ort.InferenceSession(onnx, options, providers=providers)
        feed = {t.name: _feed(t) for t in inputs}
        got = session.run([t.name for t in outputs], feed)
    except Exception as exc:  # onnxruntime's own errors: a model that does not take them
        raise VerificationError(f"rerun: onnxruntime: {str(exc).splitlines()[0][:300]}"
                                ) from None
    lines, identical = [], True
    for t, value in zip(outputs, got, strict=True):
        same, text = compare_output(t, np.asarray(value))
        identical &= same
        lines.append(f"{t.name}: {text}")
    return Rerun(identical, lines, missing)


def _feed(t: Tensor) -> np.ndarray:
    if t.datatype == "BYTES":
        return np.array([v.decode("utf-8", "replace") for v in t.array.ravel()],
                        dtype=object).reshape(t.shape)
    return t.array


def session_options(env: dict[str, Any], ort: Any) -> tuple[Any, list[Any], list[str]]:
    """onnxruntime SessionOptions and providers from the fingerprint's `session_options`
    (docs/ledger.md); defaults where absent. Only the config entries that change numerics
    or select kernels are taken: others may name files to write."""
    options = ort.SessionOptions()
    so = env.get("session_options")
    if not isinstance(so, dict):
        return options, ["CPUExecutionProvider"], []
    for name in ("intra_op_num_threads", "inter_op_num_threads"):
        if isinstance(so.get(name), int) and 0 <= so[name] <= 64:
            setattr(options, name, so[name])
    level = ort.GraphOptimizationLevel.__members__.get(str(so.get("graph_optimization_level")))
    if level is not None:
        options.graph_optimization_level = level
    mode = ort.ExecutionMode.__members__.get(str(so.get("execution_mode")))
    if mode is not None:
        options.execution_mode = mode
    for name in ("enable_cpu_mem_arena", "use_deterministic_compute"):
        if isinstance(so.get(name), bool):
            setattr(options, name, so[name])
    entries = so.get("config_entries")
    for key, value in (entries.items() if isinstance(entries, dict) else ()):
        if key in NUMERIC_ENTRIES and isinstance(value, str):
            options.add_session_config_entry(key, value)
    available = ort.get_available_providers()
    wanted = [p for p in so.get("providers") or [] if isinstance(p, dict)]
    providers = [(p.get("name"), p.get("options") or {}) for p in wanted
                 if p.get("name") in available]
    missing = [str(p.get("name")) for p in wanted if p.get("name") not in available]
    if "CPUExecutionProvider" not in [name for name, _ in providers]:
        providers.append(("CPUExecutionProvider", {}))
    return options, providers, missing


NUMERIC_ENTRIES = frozenset({
    "session.set_denormal_as_zero", "session.disable_prepacking", "session.dynamic_block_base",
    "session.x64quantprecision", "session.qdq_matmulnbits_accuracy_level",
    "session.disable_quant_qdq", "session.enable_quant_qdq_cleanup",
    "session.disable_double_qdq_remover", "session.disable_aot_function_inlining",
    "optimization.enable_gelu_approximation", "optimization.enable_cast_chain_elimination",
    "optimization.disable_specified_optimizers", "optimization.minimal_build_optimizations",
    "mlas.enable_gemm_fastmath_arm64_bfloat16", "mlas.disable_kleidiai", "mlas.use_lut_gemm",
    "mlas.qnbit.force_fp32",
})


def compare_output(recorded: Tensor, got: np.ndarray) -> tuple[bool, str]:
    """(bit-identical, what differs) of one output."""
    if tuple(got.shape) != recorded.shape:
        return False, f"shape {list(got.shape)}, recorded {list(recorded.shape)}"
    if recorded.datatype == "BYTES":
        mine = [v if isinstance(v, bytes) else str(v).encode() for v in got.ravel()]
        same = mine == list(recorded.array.ravel())
        return same, "bit-identical" if same else "differs"
    dtype = np.dtype(DATATYPES[recorded.datatype][0])
    if got.dtype != dtype:
        return False, f"datatype {got.dtype}, recorded {recorded.datatype}"
    a, b = np.ascontiguousarray(recorded.array), np.ascontiguousarray(got)
    if a.tobytes() == b.tobytes():
        return True, "bit-identical"
    if dtype.kind != "f":
        return False, f"{int(np.count_nonzero(a != b))} of {a.size} elements differ"
    ulps = ulp_distance(a, b)
    return False, (f"{int(np.count_nonzero(ulps))} of {a.size} elements differ, at most "
                   f"{int(ulps.max())} ulps")


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per element, how many representable floats lie between a and b (0: same bits)."""
    bits = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    sign = np.int64(1) << (8 * a.dtype.itemsize - 1)

    def ordered(x: np.ndarray) -> np.ndarray:
        i = x.view(bits).astype(np.int64).ravel()
        return np.where(i < 0, -(i & (sign - 1)), i)

    diff = [abs(int(p) - int(q)) for p, q in zip(ordered(a), ordered(b), strict=True)]
    return np.array(diff, dtype=object)


# ── typed fields of the JSON ───────────────────────────────────────────────────────────


def _keys(obj: dict[str, Any], where: str, names: Sequence[str]) -> None:
    if not isinstance(obj, dict):
        raise VerificationError(f"{where}: not a JSON object")
    missing = [n for n in names if n not in obj]
    extra = sorted(set(obj) - set(names))
    if missing or extra:
        raise VerificationError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unknown {', '.join(extra)}"] if extra else [])))


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise VerificationError(f"{where}: not a JSON object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise VerificationError(f"{where}: not a JSON array")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (
            _I64[0] <= value <= _I64[1]):
        raise VerificationError(f"{where}: not a 64-bit integer")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise VerificationError(f"{where}: not a string")
    return value


def _text(value: Any, where: str) -> bytes:
    try:
        return _str(value, where).encode("utf-8")
    except UnicodeEncodeError:
        raise VerificationError(f"{where}: not UTF-8 text") from None


def _hex(value: Any, where: str, size: int) -> bytes:
    text = _str(value, where)
    if len(text) != 2 * size or not _HEX.fullmatch(text):
        raise VerificationError(f"{where}: not {size} bytes in lowercase hex")
    return bytes.fromhex(text)


def _b64(value: Any, where: str) -> bytes:
    text = _str(value, where)
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise VerificationError(f"{where}: not base64") from None
    if base64.b64encode(raw).decode() != text:
        raise VerificationError(f"{where}: not canonical base64")
    return raw


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


__all__ = ["BundleError", "Report", "Rerun", "VerificationError", "load", "rerun", "verify"]
