"""Settings: one object, built once at start-up, validated, passed down.

Every setting has a command-line flag and an `MLWITNESS_*` environment twin, and may be
given in a TOML config file (`--config`). Precedence: flag > environment > file > default.
`SPECS` is the single list of settings; the CLI and the README's configuration table are
both derived from (and tested against) it.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlwitness.errors import ConfigError


def _csv(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


MIN_KEY_BYTES = 16  # 128 bits: no guessing the key instead of the values


def check_key(key: bytes, source: str = "--hash-key") -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{source} holds {len(key)} bytes; a hash key needs at least "
                          f"{MIN_KEY_BYTES} (e.g. head -c 32 /dev/urandom > hash.key)")
    return key


@dataclass(frozen=True)
class Spec:
    name: str
    type: Callable[[Any], Any]
    help: str
    choices: tuple[str, ...] | None = None
    flag_type: str = "value"  # "value" or "bool"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "MLWITNESS_" + self.name.upper()

    @property
    def default(self) -> Any:
        """The default, as declared on the Settings dataclass (the one place it lives)."""
        for f in fields(Settings):
            if f.name == self.name:
                return f.default_factory() if f.default_factory is not MISSING else f.default
        raise KeyError(self.name)


SPECS: tuple[Spec, ...] = (
    Spec("model", Path, "ONNX model file. Embedded mode runs it; forwarding mode pins "
         "its SHA-256 on each record (the file the upstream serves)."),
    Spec("model_name", str, "Model name served and recorded (default: the file's stem)."),
    Spec("model_version", str, "Model version served; requests may also leave it empty."),
    Spec("upstream", str, "Forward to this upstream v2 gRPC server (host:port) "
         "instead of running the model in-process."),
    Spec("upstream_timeout", float, "Deadline in seconds for forwarded calls when the "
         "caller sets none."),
    Spec("model_poll_interval", float, "Forwarding mode: seconds between checks of the "
         "model file for a new version."),
    Spec("ledger", Path, "DuckDB ledger file (its journal lives "
         "beside it in LEDGER.journal/)."),
    Spec("audit_trail", Path, "Standalone audit-server only: ledger file where its own "
         "audit trail is appended (default: LEDGER.audit-trail.duckdb)."),
    Spec("durability", str, "fsync: answer only after the record is flushed to "
         "disk. write: answer after the record is written to the OS (survives a crash of "
         "mlwitness, not of the machine).", choices=("fsync", "write")),
    Spec("host", str, "Address the inference and audit ports listen on "
         "(0.0.0.0 in a pod)."),
    Spec("port", int, "Inference port (Open Inference Protocol v2, gRPC; 0: any free port, "
         "printed in the ready line)."),
    Spec("audit_port", int, "Audit service port (0 disables it)."),
    Spec("health_port", int, "Plaintext port serving only grpc.health.v1 (0: off), for "
         "Kubernetes probes when the other ports use TLS. Service \"\" is readiness, "
         "\"liveness\" is SERVING while the process runs and its ledger can still be mended "
         "without a restart."),
    Spec("metrics_port", int, "Prometheus metrics port (0 disables it)."),
    Spec("features", _csv, "Comma-separated names of the columns of the model's tabular "
         "input, e.g. income,debt_ratio,fico."),
    Spec("guards", Path, "Guard file (TOML or JSON) checked on every call; reloaded when "
         "it changes. See `mlwitness guards suggest`."),
    Spec("guard_mode", str, "observe: serve and record violations. enforce: refuse calls "
         "that break an input or output guard (INVALID_ARGUMENT).",
         choices=("observe", "enforce")),
    Spec("baseline", Path, "Baseline JSON (`mlwitness baseline`): stored in the ledger; drift "
         "metrics and `audit drift` compare against it."),
    Spec("drift_interval", float, "Seconds between drift recomputations for the metrics "
         "(needs --baseline; 0 turns it off)."),
    Spec("drift_window", float, "Seconds of recent traffic the periodic drift metrics cover."),
    Spec("tls_cert", Path, "TLS certificate (PEM) for the inference and audit ports."),
    Spec("tls_key", Path, "TLS private key (PEM) for --tls-cert."),
    Spec("tls_client_ca", Path, "CA (PEM) that signs client certificates: both ports then "
         "require mTLS and the certificate subject is recorded as the caller."),
    Spec("audit_access", Path, "Access file (TOML: token hashes and certificate subjects "
         "with roles auditor/admin) the audit port requires. Without it the audit port is "
         "open to whoever can reach it."),
    Spec("inference_access", Path, "Access file the inference port requires (role caller "
         "or above); off by default."),
    Spec("upstream_ca", Path, "CA (PEM) to verify the upstream server: forward over TLS."),
    Spec("upstream_cert", Path, "Client certificate (PEM) for mTLS to the upstream."),
    Spec("upstream_key", Path, "Client key (PEM) for --upstream-cert."),
    Spec("hash_key", Path, "Secret key file (at least 16 bytes) for --hash-inputs, which "
         "needs it: values are stored as HMAC-SHA-256 under this key, so low-entropy values "
         "(names, account numbers) cannot be recovered by guessing. With --hash-inputs or "
         "--redact-inputs the record also keeps the HMAC of the request as received (the "
         "proof of the original); without a key it keeps none. Keep it outside the "
         "ledger's volume."),
    Spec("redact_inputs", _csv, "Comma-separated inputs or request parameters stored "
         "redacted (replaced by nothing) instead of as sent; such records cannot be "
         "replayed if the model uses them."),
    Spec("hash_inputs", _csv, "Comma-separated inputs or request parameters stored as the "
         "HMAC-SHA-256 (under --hash-key) of each value instead of the value."),
    Spec("hash_inputs_unkeyed", _bool, "Let --hash-inputs run without --hash-key, storing a "
         "plain SHA-256 of each value. Weak: whoever can read the ledger recovers a "
         "guessable value (a name, an account number) by hashing candidates.",
         flag_type="bool"),
    Spec("record_metadata", _csv, "Comma-separated gRPC metadata keys stored with each record."),
    Spec("max_request_bytes", int, "Largest ModelInfer request accepted; larger "
         "ones are refused with RESOURCE_EXHAUSTED (and recorded, without their bytes)."),
    Spec("max_string_elements", int, "Most BYTES (string) elements one ModelInfer request "
         "may carry over all its inputs; more are refused with RESOURCE_EXHAUSTED (and "
         "recorded, without their bytes). Each costs about 0.25 KB of memory while it is "
         "decoded, run and answered, against 4 bytes on the wire."),
    Spec("max_concurrent_rpcs", int, "Calls worked on at once, per port, counted from "
         "when a call's request has arrived; beyond it callers get RESOURCE_EXHAUSTED. "
         "Health checks never count."),
    Spec("max_streams_per_connection", int, "Calls one connection may have open at once "
         "(HTTP/2 MAX_CONCURRENT_STREAMS); a client's further calls wait on its side."),
    Spec("max_connection_age", float, "Seconds a connection may live before the server "
         "asks the client to reconnect (callers do so transparently; 0: no limit)."),
    Spec("max_connection_age_grace", float, "Seconds calls still open on a connection that "
         "reached --max-connection-age get to finish before it is closed (0: none)."),
    Spec("ort_threads", int, "onnxruntime intra-op threads (embedded mode)."),
    Spec("max_candidate_bytes", int, "Largest candidate model an auditor may upload "
         "(candidate_onnx); larger ones are refused with RESOURCE_EXHAUSTED. A candidate "
         "is kept in the ledger's model store only once it has run."),
    Spec("audit_memory_bytes", int, "Memory the process running one audit question's "
         "models (replay, what-if, sensitivity, traffic replay) may take beyond its own "
         "start-up size; a model that needs more fails with RESOURCE_EXHAUSTED, the "
         "sidecar untouched."),
    Spec("audit_run_timeout", float, "Seconds one model run of an audit question may take "
         "(a sweep's points, or a traffic replay's chunk of rows, count as one); the "
         "caller's deadline bounds it too. The run is then stopped and the question fails "
         "with DEADLINE_EXCEEDED."),
    Spec("load_interval", float, "Seconds between loads of journaled records into "
         "DuckDB (audit queries always see every acknowledged record)."),
    Spec("duckdb_threads", int, "DuckDB worker threads for the ledger (loads and audit "
         "queries). 1 keeps DuckDB from taking CPU from inference; raise it on a pod with "
         "spare cores for faster audit queries."),
    Spec("max_backlog", int, "Records acknowledged but not yet in DuckDB before new "
         "calls wait (then fail with UNAVAILABLE after 5 s): backpressure, never dropping."),
    Spec("drain_timeout", float, "Seconds SIGTERM waits for in-flight calls."),
    Spec("log_level", str, "Logging level.", choices=("debug", "info", "warning", "error")),
)

_BY_NAME = {spec.name: spec for spec in SPECS}
AUDIT_SERVER_ONLY = ("audit_trail",)
# Settings the standalone audit-server takes.
AUDIT_SERVER = ("ledger", "audit_trail", "host", "audit_port", "ort_threads", "drain_timeout",
                "log_level", "tls_cert", "tls_key", "tls_client_ca", "audit_access",
                "max_concurrent_rpcs", "max_streams_per_connection", "max_connection_age",
                "max_connection_age_grace", "max_candidate_bytes", "audit_memory_bytes",
                "audit_run_timeout")


@dataclass(frozen=True)
class Settings:
    model: Path | None = None
    model_name: str | None = None
    model_version: str = "1"
    upstream: str | None = None
    upstream_timeout: float = 30.0
    model_poll_interval: float = 1.0
    ledger: Path = Path("mlwitness.duckdb")
    audit_trail: Path | None = None
    durability: str = "fsync"
    host: str = "127.0.0.1"
    port: int = 8701
    audit_port: int = 8702
    metrics_port: int = 9090
    health_port: int = 0
    features: list[str] = field(default_factory=list)
    guards: Path | None = None
    guard_mode: str = "observe"
    baseline: Path | None = None
    drift_interval: float = 60.0
    drift_window: float = 3600.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    audit_access: Path | None = None
    inference_access: Path | None = None
    upstream_ca: Path | None = None
    upstream_cert: Path | None = None
    upstream_key: Path | None = None
    hash_key: Path | None = None
    redact_inputs: list[str] = field(default_factory=list)
    hash_inputs: list[str] = field(default_factory=list)
    hash_inputs_unkeyed: bool = False
    record_metadata: list[str] = field(
        default_factory=lambda: ["x-request-id", "x-caller", "traceparent", "user-agent"]
    )
    max_request_bytes: int = 64 << 20
    max_string_elements: int = 1 << 20
    max_concurrent_rpcs: int = 1024
    max_streams_per_connection: int = 100
    max_connection_age: float = 1800.0
    max_connection_age_grace: float = 300.0
    ort_threads: int = 1
    max_candidate_bytes: int = 16 << 20
    audit_memory_bytes: int = 512 << 20
    audit_run_timeout: float = 60.0
    load_interval: float = 1.0
    duckdb_threads: int = 1
    max_backlog: int = 200_000
    drain_timeout: float = 20.0
    log_level: str = "info"

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.model.stem if self.model else "model"

    def validate(self) -> Settings:
        if self.model is None:
            raise ConfigError("--model is required: the ONNX file to serve or to pin")
        if not Path(self.model).is_file():
            raise ConfigError(f"model file {self.model} does not exist")
        for name in ("port", "audit_port", "metrics_port", "health_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:  # gRPC would bind some other port without a word
                raise ConfigError(f"--{name.replace('_', '-')} must be a TCP port, 0-65535 "
                                  f"(0: {'any free port' if name == 'port' else 'off'}), "
                                  f"got {value}")
        ports = [p for p in (self.port, self.audit_port, self.metrics_port, self.health_port)
                 if p]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"ports must differ: {ports}")
        # 0 or less: a busy loop, or every call timed out
        for name in ("upstream_timeout", "model_poll_interval", "load_interval",
                     "drift_window", "audit_run_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of "
                                  f"seconds, got {value}")
        for name in ("drain_timeout", "drift_interval"):  # 0 is meaningful: none / off
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more seconds, "
                                  f"got {value}")
        for name in ("max_request_bytes", "max_string_elements", "ort_threads", "duckdb_threads",
                     "max_backlog", "max_candidate_bytes", "audit_memory_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("guards", "baseline", "tls_cert", "tls_key", "tls_client_ca",
                     "audit_access", "inference_access", "upstream_ca", "upstream_cert",
                     "upstream_key", "hash_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"--{name} file {path} does not exist")
        overlap = set(self.redact_inputs) & set(self.hash_inputs)
        if overlap:
            raise ConfigError(f"inputs both redacted and hashed: {', '.join(sorted(overlap))}")
        self._check_hashing()
        if self.upstream is not None:
            _check_target(self.upstream)
        return self.validate_limits()

    def validate_limits(self) -> Settings:
        """The call and connection limits (the standalone audit-server checks only these)."""
        for name in ("max_concurrent_rpcs", "max_streams_per_connection"):
            value = getattr(self, name)
            if not 0 < value < 2**31:  # gRPC takes a C int
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole "
                                  f"number, got {value}")
        for name in ("max_connection_age", "max_connection_age_grace"):  # 0: no limit / none
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more seconds, "
                                  f"got {value}")
        return self

    def _check_hashing(self) -> None:
        """--hash-inputs is keyed (a key of MIN_KEY_BYTES or more) unless the weak, unkeyed
        form is asked for by name."""
        if self.hash_key is not None:
            if self.hash_inputs_unkeyed:
                raise ConfigError("give --hash-key or --hash-inputs-unkeyed, not both")
            check_key(Path(self.hash_key).read_bytes(), f"--hash-key file {self.hash_key}")
        elif self.hash_inputs and not self.hash_inputs_unkeyed:
            raise ConfigError("--hash-inputs needs --hash-key (a secret file of at least 16 "
                              "bytes): a plain SHA-256 of a name or an account number is "
                              "reversed by hashing candidates. --hash-inputs-unkeyed accepts "
                              "that, explicitly")


_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


def _check_target(target: str) -> None:
    """--upstream: host:port, [v6]:port, or a gRPC target with its own scheme. A URL
    (http://…) or a trailing path would be accepted by gRPC and then never resolve."""
    if target.startswith(_SCHEMES):
        return
    if "://" in target or "/" in target:
        raise ConfigError(f"--upstream must be host:port (gRPC, no http:// and no path), "
                          f"got {target!r}")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"--upstream must be host:port with a port 1-65535, got {target!r}")


def add_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None,
                  helps: Mapping[str, str] | None = None) -> None:
    """Add a flag for each setting (or the named ones; `helps` replaces some help texts).
    Defaults stay None so that environment and file values can be told apart from flags
    that were not given."""
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML file of settings (keys as in the table; env: "
                        "MLWITNESS_CONFIG).")
    for spec in SPECS:
        if names is not None and spec.name not in names:
            continue
        default = ",".join(spec.default) if isinstance(spec.default, list) else spec.default
        text = f"{(helps or {}).get(spec.name, spec.help)} [env {spec.env}; default {default}]"
        if spec.flag_type == "bool":  # a switch: given means true
            parser.add_argument(spec.flag, dest=spec.name, default=None,
                                action="store_const", const=True, help=text)
            continue
        parser.add_argument(
            spec.flag,
            dest=spec.name,
            default=None,
            choices=spec.choices,
            help=text,
        )


def build(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, environment and config file; not yet validated."""
    env = os.environ if env is None else env
    given = vars(args) if args is not None else {}
    config_path = given.get("config") or env.get("MLWITNESS_CONFIG")
    file_values: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, "rb") as handle:
                file_values = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from exc
        unknown = sorted(set(file_values) - set(_BY_NAME))
        if unknown:
            raise ConfigError(f"unknown settings in {config_path}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = given.get(spec.name)
        source = spec.flag
        if raw is None and spec.env in env:
            raw, source = env[spec.env], spec.env
        if raw is None and spec.name in file_values:
            raw, source = file_values[spec.name], f"{config_path}:{spec.name}"
        if raw is None:
            continue
        try:
            value = spec.type(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        if spec.choices and value not in spec.choices:
            raise ConfigError(f"{source}: must be one of {', '.join(spec.choices)}")
        values[spec.name] = value
    return Settings(**values)
