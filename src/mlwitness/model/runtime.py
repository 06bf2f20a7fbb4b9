"""An ONNX model in onnxruntime: built from exact bytes, run on codec tensors.

Used by the embedded backend to serve and (in a sandbox process, `mlwitness.model.sandbox`) by
the audit service to replay, so a decision and its replay go through the same code.

Only self-contained ONNX models are built (`mlwitness.model.external_data`): onnxruntime would
read a tensor's external data file from the working directory — the ledger's volume.
What onnxruntime says when it cannot load a model is logged, not passed on: it can name
paths and files; callers get its status code and a fixed description.

A session is built from a `SessionConfig`: the onnxruntime options that can change what a
model computes (threads change the order parallel kernels sum in; the optimisation level
which graph rewrites run; providers and config entries which kernels). The sidecar records
the config of the session that serves (`to_environment`, in the environment fingerprint);
replay and the evidence verifier build theirs from it (`from_environment`), so a decision
and its replay run with the same options. docs/ledger.md documents the JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from mlwitness.codec import Tensor, tensor_from_array
from mlwitness.errors import FailedPrecondition, InvalidInput, MlwitnessError
from mlwitness.model.external_data import NotProtobuf, check_self_contained
from mlwitness.model.signature import Signature

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# Session config entries (onnxruntime_session_options_config_keys.h) that change what a
# model computes or which kernels compute it. Recorded when set, applied again on replay;
# no other entry is ever applied from a ledger (some name files onnxruntime would write).
NUMERIC_CONFIG_KEYS = (
    "session.set_denormal_as_zero",  # flush-to-zero and denormals-are-zero
    "session.disable_prepacking",  # prepacked weights take other GEMM kernels
    "session.dynamic_block_base",  # how a parallel loop is cut: the order partial sums add
    "session.x64quantprecision",  # U8U8 instead of U8S8 quantised GEMM on AVX2/AVX-512
    "session.qdq_matmulnbits_accuracy_level",
    "session.disable_quant_qdq",
    "session.enable_quant_qdq_cleanup",
    "session.disable_double_qdq_remover",
    "session.disable_aot_function_inlining",
    "optimization.enable_gelu_approximation",
    "optimization.enable_cast_chain_elimination",
    "optimization.disable_specified_optimizers",
    "optimization.minimal_build_optimizations",
    "mlas.enable_gemm_fastmath_arm64_bfloat16",
    "mlas.disable_kleidiai",
    "mlas.use_lut_gemm",
    "mlas.qnbit.force_fp32",
)
# How onnxruntime says an allocation failed (its arena, or std::bad_alloc from a kernel).
MEMORY_SIGNS = ("Failed to allocate memory", "bad_alloc", "bad allocation")
# What onnxruntime says of bytes that are not (yet) a model at all, e.g. a file that a copy
# has truncated or only begun.
_NOT_A_MODEL = ("INVALID_PROTOBUF", "No graph was found")
_ORT_CODE = re.compile(r"\[ONNXRuntimeError\] : \d+ : ([A-Z_]+) :")
# (what onnxruntime's text contains, what we say instead): fixed words, never its text.
_LOAD_PROBLEMS = (
    ("No graph was found", "No graph was found in the model"),
    ("protobuf parsing failed", "the bytes are not an ONNX model"),
    ("No Op registered", "an operator this onnxruntime does not implement"),
    ("Could not find an implementation", "an operator this onnxruntime does not implement"),
    ("IR version", "an ONNX IR version this onnxruntime does not support"),
    ("opset", "an opset version this onnxruntime does not support"),
    ("Opset", "an opset version this onnxruntime does not support"),
    ("xternal data", "external data"),
    ("Type Error", "a type mismatch in the graph"),
    ("ShapeInferenceError", "shapes in the graph do not fit together"),
    ("not a graph input", "a node reads a value nothing produces"),
    ("bad_alloc", "out of memory while loading"),
    ("Failed to allocate", "out of memory while loading"),
)


class ModelError(MlwitnessError):
    """onnxruntime failed on input that passed the signature checks."""

    status = "INTERNAL"


class Runnable(Protocol):
    """A model the audit code can run: an `OnnxModel`, or one in a sandbox process."""

    sha256: str
    signature: Signature
    session_config: SessionConfig
    unavailable: list[str]

    def run(self, inputs: Sequence[Tensor], outputs: Sequence[str] = ()) -> list[Tensor]: ...

    def run_slices(self, names: Sequence[str], feed: dict[str, np.ndarray],
                   slices: Sequence[tuple[int, int]]) -> list[list[np.ndarray] | None]: ...


def load_problem(text: str) -> str:
    """onnxruntime's status code and a fixed description of a load failure's text."""
    found = _ORT_CODE.search(text)
    code = found.group(1) if found else "FAIL"
    what = next((say for needle, say in _LOAD_PROBLEMS if needle in text),
                "see the mlwitness log for onnxruntime's words")
    return f"{code} ({what})"


def is_not_a_model(exc: BaseException) -> bool:
    """Whether `OnnxModel`'s failure says the bytes are no model at all (truncated, or a
    copy only begun), not a model that onnxruntime cannot run."""
    return any(sign in str(exc) for sign in _NOT_A_MODEL)


@dataclass(frozen=True)
class SessionConfig:
    """The onnxruntime session options a decision was computed with (see the module's
    docstring). `providers` are (name, options) in priority order; `config_entries` holds
    the `NUMERIC_CONFIG_KEYS` that are set."""

    intra_op_num_threads: int = 1
    inter_op_num_threads: int = 1
    graph_optimization_level: str = "ORT_ENABLE_ALL"
    execution_mode: str = "ORT_SEQUENTIAL"
    enable_cpu_mem_arena: bool = True
    use_deterministic_compute: bool = False
    providers: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ((CPU, ()),)
    config_entries: tuple[tuple[str, str], ...] = ()

    def to_environment(self) -> dict[str, Any]:
        """The environment fingerprint's `session_options` object."""
        return {
            "intra_op_num_threads": self.intra_op_num_threads,
            "inter_op_num_threads": self.inter_op_num_threads,
            "graph_optimization_level": self.graph_optimization_level,
            "execution_mode": self.execution_mode,
            "enable_cpu_mem_arena": self.enable_cpu_mem_arena,
            "use_deterministic_compute": self.use_deterministic_compute,
            "providers": [{"name": name, "options": dict(options)}
                          for name, options in self.providers],
            "config_entries": dict(self.config_entries),
        }

    @classmethod
    def from_environment(cls, env: Mapping[str, Any]) -> SessionConfig | None:
        """The config an environment fingerprint records (None: it records none — it
        predates session options, or its decisions came from an upstream server).
        Raises FailedPrecondition naming what is malformed. Config entries other than
        `NUMERIC_CONFIG_KEYS` are left out."""
        recorded = env.get("session_options")
        if recorded is None:
            return None
        try:
            return cls._parse(recorded)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FailedPrecondition(
                f"the recorded environment's session_options are malformed ({exc!r}); "
                "the decision cannot be re-run with them") from None

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> SessionConfig:
        config = cls(
            intra_op_num_threads=_count(data["intra_op_num_threads"]),
            inter_op_num_threads=_count(data["inter_op_num_threads"]),
            graph_optimization_level=_member(ort.GraphOptimizationLevel,
                                             data["graph_optimization_level"]),
            execution_mode=_member(ort.ExecutionMode, data["execution_mode"]),
            enable_cpu_mem_arena=_flag(data["enable_cpu_mem_arena"]),
            use_deterministic_compute=_flag(data.get("use_deterministic_compute", False)),
            providers=tuple((_text(p["name"]), _pairs(p.get("options", {})))
                            for p in data["providers"]),
            config_entries=tuple((k, v) for k, v in _pairs(data.get("config_entries", {}))
                                 if k in NUMERIC_CONFIG_KEYS),
        )
        if not config.providers:
            raise ValueError("no providers")
        return config

    @classmethod
    def of_session(cls, session: ort.InferenceSession) -> SessionConfig:
        """The config a built session actually runs with, as onnxruntime reports it."""
        options = session.get_session_options()
        provider_options = session.get_provider_options()
        entries = []
        for key in NUMERIC_CONFIG_KEYS:
            try:
                entries.append((key, options.get_session_config_entry(key)))
            except RuntimeError:  # not set
                continue
        return cls(
            intra_op_num_threads=options.intra_op_num_threads,
            inter_op_num_threads=options.inter_op_num_threads,
            graph_optimization_level=options.graph_optimization_level.name,
            execution_mode=options.execution_mode.name,
            enable_cpu_mem_arena=options.enable_cpu_mem_arena,
            use_deterministic_compute=options.use_deterministic_compute,
            providers=tuple((name, _pairs(provider_options.get(name, {})))
                            for name in session.get_providers()),
            config_entries=tuple(entries),
        )

    def options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = self.inter_op_num_threads
        options.graph_optimization_level = _member_of(ort.GraphOptimizationLevel,
                                                      self.graph_optimization_level)
        options.execution_mode = _member_of(ort.ExecutionMode, self.execution_mode)
        options.enable_cpu_mem_arena = self.enable_cpu_mem_arena
        options.use_deterministic_compute = self.use_deterministic_compute
        for key, value in self.config_entries:
            options.add_session_config_entry(key, value)
        return options

    def available_providers(self) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
        """(the providers to ask onnxruntime for, the recorded ones not available here).
        The CPU provider is always last: what cannot run elsewhere runs there."""
        available = set(ort.get_available_providers())
        chosen = [(name, dict(options)) for name, options in self.providers
                  if name in available]
        missing = [name for name, _ in self.providers if name not in available]
        if CPU not in (name for name, _ in chosen):
            chosen.append((CPU, {}))
        return chosen, missing

    def key(self) -> str:
        """A text naming this config, for caches of sessions."""
        return json.dumps(self.to_environment(), sort_keys=True, separators=(",", ":"))


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a thread count")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _pairs(mapping: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((_text(k), _text(v)) for k, v in mapping.items()))


def _member(enum: Any, name: object) -> str:
    _member_of(enum, _text(name))
    return str(name)


def _member_of(enum: Any, name: str) -> Any:
    members = enum.__members__
    if name not in members:
        raise ValueError(f"{name!r} is not one of {', '.join(members)}")
    return members[name]


class OnnxModel:
    """A model in an onnxruntime session built from `session`. `session_config` is what
    onnxruntime reports the session runs with; `unavailable` the providers `session`
    names that this onnxruntime lacks (the CPU provider ran in their place)."""

    def __init__(self, onnx: bytes, session: SessionConfig | None = None) -> None:
        session = session or SessionConfig()
        self.onnx = onnx
        self.sha256 = hashlib.sha256(onnx).hexdigest()
        try:
            check_self_contained(onnx)  # before onnxruntime opens any file it names
        except NotProtobuf as exc:
            raise FailedPrecondition(f"onnxruntime cannot load model {self.sha256}: "
                                     f"{exc.message}") from None
        options = session.options()
        options.log_severity_level = 3
        options.add_session_config_entry("session.load_model_format", "ONNX")  # not ORT's
        providers, self.unavailable = session.available_providers()
        try:
            with warnings.catch_warnings():  # onnxruntime warns of what `unavailable` says
                warnings.simplefilter("ignore")
                self.session = ort.InferenceSession(onnx, sess_options=options,
                                                    providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            log.warning("onnxruntime cannot load model %s: %s", self.sha256, exc)
            raise FailedPrecondition(f"onnxruntime cannot load model {self.sha256}: "
                                     f"{load_problem(str(exc))}") from None
        self.signature = Signature.from_session(self.session)
        self.providers = list(self.session.get_providers())
        self.session_config = SessionConfig.of_session(self.session)

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

    def run_slices(self, names: Sequence[str], feed: dict[str, np.ndarray],
                   slices: Sequence[tuple[int, int]]) -> list[list[np.ndarray] | None]:
        """onnxruntime's run on rows [lo, hi) of plain arrays, for each slice on its own:
        the outputs, or None where onnxruntime failed (traffic replay runs calls alone this
        way, and asks `run` why only when one fails). Running out of memory is raised."""
        out: list[list[np.ndarray] | None] = []
        for lo, hi in slices:
            try:
                out.append(list(self.session.run(list(names), {k: v[lo:hi]
                                                              for k, v in feed.items()})))
            except Exception as exc:  # noqa: BLE001 — onnxruntime's own, untyped
                if any(sign in str(exc) for sign in MEMORY_SIGNS):
                    raise
                out.append(None)
        return out


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
