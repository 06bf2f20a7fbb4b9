"""Settings: one object, built once at start-up, validated, passed down.

Every setting is declared once, as a field of `Settings` made by `setting()`: its name,
type (the annotation), default, help, the commands that take it and the check its value
must pass. From that declaration come its command-line flag (`--port`), its environment
twin (`MLWITNESS_PORT`), its TOML key in a `--config` file (`port`), its validation, and
the configuration page of the docs (`python -m mlwitness.cli.docs` writes
docs/configuration.md; a test fails when it is stale). Precedence: flag > environment >
file > default.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

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


SERVE = ("serve",)
BOTH = ("serve", "audit-server")  # the standalone audit-server takes these too
AUDIT_ONLY = ("audit-server",)

T = TypeVar("T")


def setting(default: T, help: str, *, commands: tuple[str, ...] = SERVE,
            choices: tuple[str, ...] | None = None, check: str | None = None,
            shown: str | None = None) -> T:
    """A field of `Settings`, declared with everything derived from it. `check` names the
    test its value must pass (`_CHECKS`); `shown` is how help and docs show a default that
    its value alone does not explain: "the file's stem" for none, "64 MiB" for 67108864."""
    metadata = {"help": help, "commands": commands, "choices": choices, "check": check,
                "shown": shown}
    if isinstance(default, list):  # mutable: each Settings gets its own copy
        return field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    model: Path | None = setting(
        None, "ONNX model file. Embedded mode runs it; forwarding mode pins its SHA-256 on "
        "each record (the file the upstream serves).")
    model_name: str | None = setting(
        None, "Model name served and recorded.", shown="the file's stem")
    model_version: str = setting(
        "1", "Model version served; requests may also leave it empty.")
    upstream: str | None = setting(
        None, "Forward to this upstream v2 gRPC server (host:port) instead of running the "
        "model in-process.")
    upstream_timeout: float = setting(
        30.0, "Deadline in seconds for forwarded calls when the caller sets none.",
        check="seconds>0")
    model_poll_interval: float = setting(
        1.0, "Forwarding mode: seconds between checks of the model file for a new version.",
        check="seconds>0")
    ledger: Path = setting(
        Path("mlwitness.duckdb"), "DuckDB ledger file (its journal lives beside it in "
        "`LEDGER.journal/`).", commands=BOTH)
    audit_trail: Path | None = setting(
        None, "Ledger file where the standalone audit-server appends its own audit trail.",
        commands=AUDIT_ONLY, shown="`LEDGER.audit-trail.duckdb`")
    durability: str = setting(
        "fsync", "`fsync`: answer only after the record is flushed to disk. `write`: answer "
        "after the record is written to the OS (survives a crash of mlwitness, not of the "
        "machine).", choices=("fsync", "write"))
    host: str = setting(
        "127.0.0.1", "Address the inference and audit ports listen on (`0.0.0.0` in a pod).",
        commands=BOTH)
    port: int = setting(
        8701, "Inference port (Open Inference Protocol v2, gRPC; 0: any free port, printed "
        "in the ready line).", check="port")
    audit_port: int = setting(
        8702, "Audit service port (0 disables it).", commands=BOTH, check="port")
    metrics_port: int = setting(
        9090, "Prometheus metrics port (0 disables it).", check="port")
    health_port: int = setting(
        0, "Plaintext port serving only `grpc.health.v1` (0: off), for Kubernetes probes: it "
        "speaks no TLS, and no caller of the other ports can take its slots. Service \"\" is "
        "readiness, \"liveness\" is SERVING while the process runs and its ledger can still "
        "be mended without a restart.", check="port")
    features: list[str] = setting(
        [], "Comma-separated names of the columns of the model's tabular input, e.g. "
        "income,debt_ratio,fico.")
    guards: Path | None = setting(
        None, "Guard file (TOML or JSON) checked on every call; reloaded when it changes. "
        "See `mlwitness guards suggest`.", check="file")
    guard_mode: str = setting(
        "observe", "`observe`: serve and record violations. `enforce`: refuse calls that "
        "break an input or output guard (INVALID_ARGUMENT).", choices=("observe", "enforce"))
    baseline: Path | None = setting(
        None, "Baseline JSON (`mlwitness baseline`): stored in the ledger; drift metrics and "
        "`audit drift` compare against it.", check="file")
    drift_interval: float = setting(
        60.0, "Seconds between drift recomputations for the metrics (needs --baseline; 0 "
        "turns it off).", check="seconds>=0")
    drift_window: float = setting(
        3600.0, "Seconds of recent traffic the periodic drift metrics cover.",
        check="seconds>0")
    quality_label: str = setting(
        "", "Outcome value (e.g. defaulted) whose coverage and latest quality figures the "
        "metrics show, recomputed every --quality-interval ('' turns them off).")
    quality_decision: str = setting(
        "", "The model's positive decision for the quality metrics, COLUMN OP VALUE (e.g. "
        "label=0; '' means --quality-score >= 0.5).")
    quality_score: str = setting(
        "", "Output with the model's score for the positive outcome, for the quality "
        "metrics ('' means probabilities_1).")
    quality_interval: float = setting(
        300.0, "Seconds between quality recomputations for the metrics (needs "
        "--quality-label; 0 turns it off).", check="seconds>=0")
    quality_window: float = setting(
        90 * 86400.0, "Seconds of decisions (by decision time) the quality metrics cover: "
        "outcomes arrive late, so longer than the drift window.", check="seconds>0")
    tls_cert: Path | None = setting(
        None, "TLS certificate (PEM) for the inference and audit ports.", commands=BOTH,
        check="file")
    tls_key: Path | None = setting(
        None, "TLS private key (PEM) for --tls-cert.", commands=BOTH, check="file")
    tls_client_ca: Path | None = setting(
        None, "CA (PEM) that signs client certificates: both ports then require mTLS and the "
        "certificate subject is recorded as the caller.", commands=BOTH, check="file")
    audit_access: Path | None = setting(
        None, "Access file (TOML: token hashes and certificate subjects with roles "
        "auditor/admin) the audit port requires. Without it the audit port is open to "
        "whoever can reach it (with mTLS: to every certificate the CA signed, as auditor, "
        "never admin), and a warning at start says so.", commands=BOTH, check="file")
    inference_access: Path | None = setting(
        None, "Access file the inference port requires (role caller or above); off by "
        "default.", check="file")
    upstream_ca: Path | None = setting(
        None, "CA (PEM) to verify the upstream server: forward over TLS.", check="file")
    upstream_cert: Path | None = setting(
        None, "Client certificate (PEM) for mTLS to the upstream.", check="file")
    upstream_key: Path | None = setting(
        None, "Client key (PEM) for --upstream-cert.", check="file")
    hash_key: Path | None = setting(
        None, "Secret key file (at least 16 bytes, else refused at start-up) for "
        "--hash-inputs, which needs it: values are stored as HMAC-SHA-256 under this key, so "
        "guessable values (names, account numbers) cannot be recovered by trying "
        "candidates. With --hash-inputs or --redact-inputs the record also keeps "
        "`received_hmac_sha256`, the HMAC of the request as received (the proof of the "
        "original); without a key it keeps no such proof. Keep it off the ledger's volume.",
        check="file")
    redact_inputs: list[str] = setting(
        [], "Comma-separated input tensors or request parameters stored redacted (emptied) "
        "instead of as sent; such records cannot be replayed if the model uses them. A "
        "column name of a tensor is refused: name the tensor.")
    hash_inputs: list[str] = setting(
        [], "Comma-separated input tensors or request parameters stored as the HMAC-SHA-256 "
        "(under --hash-key) of each value instead of the value. Without --hash-key start-up "
        "is refused.")
    hash_inputs_unkeyed: bool = setting(
        False, "Switch: let --hash-inputs run without --hash-key, storing a plain SHA-256 of "
        "each value. Weak: whoever can read the ledger recovers a guessable value (a name, "
        "an account number) by hashing candidates. Not with --hash-key.")
    record_metadata: list[str] = setting(
        ["x-request-id", "x-caller", "traceparent", "user-agent"],
        "Comma-separated gRPC metadata keys stored with each record.")
    max_request_bytes: int = setting(
        64 << 20, "Largest ModelInfer request accepted; larger ones are refused with "
        "RESOURCE_EXHAUSTED (and recorded, without their bytes).", check="count",
        shown="64 MiB")
    max_string_elements: int = setting(
        1 << 20, "Most BYTES (string) elements one ModelInfer request may carry over all "
        "its inputs; more are refused with RESOURCE_EXHAUSTED (and recorded, without their "
        "bytes). Each costs about 0.25 KB of memory while it is decoded, run and answered, "
        "against 4 bytes on the wire.", check="count")
    max_concurrent_rpcs: int = setting(
        1024, "Calls worked on at once, per port, counted from when a call's request has "
        "arrived; beyond it callers get RESOURCE_EXHAUSTED. Health checks never count.",
        commands=BOTH, check="c_int")
    max_streams_per_connection: int = setting(
        100, "Calls one connection may have open at once (HTTP/2 MAX_CONCURRENT_STREAMS); a "
        "client's further calls wait on its side.", commands=BOTH, check="c_int")
    max_connection_age: float = setting(
        1800.0, "Seconds a connection may live before the server asks the client to "
        "reconnect (callers do so transparently; 0: no limit).", commands=BOTH,
        check="seconds>=0")
    max_connection_age_grace: float = setting(
        300.0, "Seconds calls still open on a connection that reached --max-connection-age "
        "get to finish before it is closed (0: none). Raise it for long ReplayRange "
        "streams.", commands=BOTH, check="seconds>=0")
    ort_threads: int = setting(
        1, "onnxruntime intra-op threads of the serving session (embedded mode; recorded in "
        "the environment). Replay runs each decision with the threads it was recorded with; "
        "this applies to records whose environment names none.", commands=BOTH,
        check="count")
    max_candidate_bytes: int = setting(
        16 << 20, "Largest candidate model an auditor may upload (candidate_onnx); larger "
        "ones are refused with RESOURCE_EXHAUSTED naming this limit. The models mlwitness "
        "serves are kilobytes to a few MiB, and a candidate is kept in the ledger's model "
        "store, for good, only once it has run.", commands=BOTH, check="count",
        shown="16 MiB")
    audit_memory_bytes: int = setting(
        512 << 20, "Memory the worker process running one audit question's models (replay, "
        "what-if, sensitivity, traffic replay) may take beyond its own start-up size, for "
        "every model it holds (up to 4 recently used); a model that needs more fails with "
        "RESOURCE_EXHAUSTED, the sidecar untouched. Keep the sidecar's own memory plus this "
        "(and ~70 MB for the idle worker) inside the container's limit (1 GiB in deploy/).",
        commands=BOTH, check="count", shown="512 MiB")
    audit_run_timeout: float = setting(
        60.0, "Seconds one model run of an audit question may take (a sweep's points, or a "
        "traffic replay's chunk of rows, count as one); the caller's deadline bounds it too. "
        "The run is then stopped and the question fails with DEADLINE_EXCEEDED.",
        commands=BOTH, check="seconds>0")
    load_interval: float = setting(
        1.0, "Seconds between loads of journaled records into DuckDB (audit queries always "
        "see every acknowledged record).", check="seconds>0")
    duckdb_threads: int = setting(
        1, "DuckDB worker threads for the ledger (loads and audit queries). 1 keeps DuckDB "
        "from taking CPU from inference; raise it on a pod with spare cores for faster "
        "audit queries.", check="count")
    duckdb_memory_bytes: int = setting(
        64 << 20, "Memory DuckDB may hold for the ledger (SET memory_limit): its cache of the "
        "ledger's blocks and its working memory for loads and audit queries. Without a cap "
        "DuckDB kept every block it had read or written, and the sidecar grew with its "
        "ledger; past the cap it evicts cached blocks and spills sorts and joins to "
        "`LEDGER.tmp/`. Aggregates that cannot spill (quantiles, DISTINCT) over millions of "
        "rows need more (a quantile by group over 3M rows failed at 48 MiB with DuckDB's "
        "Out of Memory Error, ran at 64). Every 10 s, while no reader holds a cursor, the "
        "sidecar has DuckDB give back the blocks it keeps cached (its limit is lowered to "
        "16 MiB for a moment), so that serving does not hold the whole cap. DuckDB's own "
        "default is 80 per cent of the machine's memory.",
        check="count", shown="64 MiB")
    table_builder: str = setting(
        "process", "Where the rows DuckDB loads are built from recorded calls. `process`: a "
        "low-priority child process reads the records back from the journal and decodes "
        "them, off the serving process's GIL. `thread`: the loader thread builds them from "
        "the records the serving process keeps until their load: no child process, about "
        "45 MiB less memory (PSS; 195 against 238 MiB over 10 minutes at 8 callers), for "
        "CPU on the serving process (on 2 cores at 8 callers, 0.84-1.02x the calls a second "
        "embedded and 0.85-0.90x forwarding, p99 about 3 ms higher). See "
        "docs/benchmarks.md.", choices=("process", "thread"))
    max_backlog: int = setting(
        200_000, "Records acknowledged but not yet in DuckDB before new calls wait (then "
        "fail with UNAVAILABLE after 5 s): backpressure, never dropping.", check="count")
    checkpoint_interval: float = setting(
        10.0, "Seconds between checkpoints while records arrive: the Merkle tree head of "
        "every record loaded so far (a C2SP tlog-checkpoint), stored in the ledger and "
        "published to --checkpoint-dir; one more is issued at shutdown. 0 turns the tree "
        "and checkpoints off.", check="seconds>=0")
    signing_key: Path | None = setting(
        None, "Signer key file (`mlwitness keygen`) that signs each checkpoint (Ed25519, a "
        "C2SP signed note). Without it checkpoints are unsigned: they fix the tree, not who "
        "issued it. Keep it off the ledger's volume, readable by the sidecar only.",
        check="file")
    checkpoint_dir: Path | None = setting(
        None, "Directory the checkpoints are published to, outside the ledger: `latest`, "
        "`checkpoints/<size>` and the tree's tiles (c2sp.org/tlog-tiles). Use storage the "
        "ledger's operator cannot rewrite (another volume, an NFS share, a bucket mount); it "
        "must exist. Publishing never holds up serving; failures show in `mlwitness audit "
        "status`, the log and the metrics.")
    checkpoint_origin: str | None = setting(
        None, "The log's name on its checkpoints (their origin line): one per ledger.",
        shown="`mlwitness/<chain id>`")
    archive: str | None = setting(
        None, "Object storage the ledger is shipped to in sealed Parquet segments: "
        "`s3://bucket/prefix` (endpoint, region and credentials from the standard AWS "
        "environment: AWS_ENDPOINT_URL, AWS_REGION, keys or a web identity) or "
        "`file:///absolute/dir` (an existing directory, e.g. a mounted volume). Shipping "
        "never holds up serving; lag and failures show in the metrics and `mlwitness audit "
        "status`. For `audit-server`: serve the audit API over every chain under it instead "
        "of --ledger.", commands=BOTH)
    archive_interval: float = setting(
        60.0, "Seconds between segments while records arrive (--archive); for `audit-server "
        "--archive`, seconds between looks for newly archived segments.", commands=BOTH,
        check="seconds>0")
    archive_records: int = setting(
        100_000, "Records that seal a segment at once, without waiting for "
        "--archive-interval; also the most one segment holds.", check="count")
    archive_object_lock_days: int = setting(
        0, "Days every archived object is locked for (S3 Object Lock, COMPLIANCE mode: not "
        "even the bucket's owner can delete or overwrite it before then). Needs a bucket "
        "created with Object Lock; refused at start-up on a store that cannot lock. 0: no "
        "lock.", check="days>=0")
    local_retention: float = setting(
        0.0, "Days a record stays in the local ledger once the archive holds it: older "
        "records, whose segment was read back from --archive and matched, are deleted "
        "locally (the chain head, checkpoints and models stay; `verify` reports the archived "
        "prefix). 0: keep everything (the default).", check="days>=0")
    archive_cache: Path | None = setting(
        None, "Directory where `audit-server --archive` keeps the segments and models it "
        "fetched (they never change once archived, so a restart fetches only what is "
        "new).", commands=AUDIT_ONLY, shown="a temporary directory")
    drain_timeout: float = setting(
        20.0, "Seconds SIGTERM waits for in-flight calls.", commands=BOTH,
        check="seconds>=0")
    log_level: str = setting(
        "info", "Logging level.", commands=BOTH,
        choices=("debug", "info", "warning", "error"))

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.model.stem if self.model else "model"

    def validate(self) -> Settings:
        """Every check of `serve`: the model, each setting's own check, and how they fit
        together."""
        if self.model is None:
            raise ConfigError("--model is required: the ONNX file to serve or to pin")
        if not Path(self.model).is_file():
            raise ConfigError(f"model file {self.model} does not exist")
        _check_each(self, [spec for spec in SPECS if "serve" in spec.commands])
        ports = [p for p in (self.port, self.audit_port, self.metrics_port, self.health_port)
                 if p]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"ports must differ: {ports}")
        overlap = set(self.redact_inputs) & set(self.hash_inputs)
        if overlap:
            raise ConfigError(f"inputs both redacted and hashed: {', '.join(sorted(overlap))}")
        self._check_hashing()
        self._check_checkpoints()
        self._check_archive()
        if self.upstream is not None:
            _check_target(self.upstream)
        return self

    def validate_limits(self) -> Settings:
        """The checks of the standalone audit-server's settings: ports, limits and
        timeouts. (Its files are read when it starts, and a missing one named then.)"""
        _check_each(self, [spec for spec in SPECS if "audit-server" in spec.commands
                           and spec.check != "file"])
        return self

    def _check_archive(self) -> None:
        if self.archive is None:
            given = [f for f, v in (("--local-retention", self.local_retention),
                                    ("--archive-object-lock-days",
                                     self.archive_object_lock_days)) if v]
            if given:
                raise ConfigError(f"{', '.join(given)} need --archive: records are deleted "
                                  "locally, and locked, only once archived")
            return
        check_archive_url(self.archive)

    def _check_checkpoints(self) -> None:
        if self.checkpoint_interval == 0:
            given = [f for f, v in (("--signing-key", self.signing_key),
                                    ("--checkpoint-dir", self.checkpoint_dir),
                                    ("--checkpoint-origin", self.checkpoint_origin)) if v]
            if given:
                raise ConfigError(f"{', '.join(given)} need checkpoints, and "
                                  "--checkpoint-interval 0 turns them off")
        if self.checkpoint_origin is not None and (
                not self.checkpoint_origin.strip() or self.checkpoint_origin != " ".join(
                    self.checkpoint_origin.split()) or not self.checkpoint_origin.isprintable()):
            raise ConfigError("--checkpoint-origin must be one line of printable text, "
                              f"without leading, trailing or repeated spaces, got "
                              f"{self.checkpoint_origin!r:.80}")

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


def check_archive_url(url: str) -> str:
    """The form of an --archive URL (the store itself is opened, and reached, at start)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("s3", "file") or not rest.strip("/"):
        raise ConfigError(f"--archive must be s3://bucket/prefix or file:///absolute/dir, "
                          f"got {url!r:.200}")
    return url


def _seconds(value: Any, positive: bool) -> bool:
    return math.isfinite(value) and (value > 0 if positive else value >= 0)


# check name → (passes?, what the value must be). 0 or fewer seconds where that is not
# meaningful would be a busy loop or every call timed out; gRPC would bind some other port
# without a word; it takes a C int for its call limits.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "port": (lambda v: 0 <= v <= 65535, "a TCP port, 0-65535"),
    "seconds>0": (lambda v: _seconds(v, True), "a positive number of seconds"),
    "seconds>=0": (lambda v: _seconds(v, False), "0 or more seconds"),
    "count": (lambda v: v > 0, "positive"),
    "days>=0": (lambda v: math.isfinite(v) and 0 <= v <= 36_600, "0 to 36600 days"),
    "c_int": (lambda v: 0 < v < 2**31, "a positive whole number"),
    "file": (lambda v: v is None or Path(v).is_file(), "an existing file"),
}


def _check_each(settings: Settings, specs: list[Spec]) -> None:
    for spec in specs:
        if spec.check is None:
            continue
        value = getattr(settings, spec.name)
        passes, must_be = _CHECKS[spec.check]
        if passes(value):
            continue
        if spec.check == "file":
            raise ConfigError(f"{spec.flag} file {value} does not exist")
        if spec.check == "port":
            must_be += f" (0: {'any free port' if spec.name == 'port' else 'off'})"
        raise ConfigError(f"{spec.flag} must be {must_be}, got {value}")


@dataclass(frozen=True)
class Spec:
    """One setting as the flag, environment, file and docs see it, read off its field."""

    name: str
    type: Callable[[Any], Any]  # parses a flag, environment or file value
    help: str
    default: Any
    commands: tuple[str, ...]
    choices: tuple[str, ...] | None = None
    check: str | None = None
    shown: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "MLWITNESS_" + self.name.upper()

    @property
    def switch(self) -> bool:
        """A flag that takes no value: given means true."""
        return self.type is _bool

    @property
    def default_value(self) -> str:
        """The default as a value would be given ("" when there is none)."""
        if isinstance(self.default, list):
            return ",".join(self.default)
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return "" if self.default is None else str(self.default)

    @property
    def default_text(self) -> str:
        """The default as help shows it: the value, and what `shown` says of it."""
        if self.shown is None:
            return self.default_value
        return f"{self.default_value} ({self.shown})" if self.default_value else self.shown


def _parser_for(hint: Any) -> Callable[[Any], Any]:
    """How a value given as text (or a TOML value) becomes the field's type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint is bool:
        return _bool
    if typing.get_origin(hint) is list:
        return _csv
    if hint in (str, int, float, Path):
        return typing.cast(Callable[[Any], Any], hint)
    raise TypeError(f"no parser for settings of type {hint}")


def _specs() -> tuple[Spec, ...]:
    hints = typing.get_type_hints(Settings)
    specs = []
    for f in fields(Settings):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        specs.append(Spec(f.name, _parser_for(hints[f.name]), f.metadata["help"], default,
                          f.metadata["commands"], f.metadata["choices"], f.metadata["check"],
                          f.metadata["shown"]))
    return tuple(specs)


SPECS: tuple[Spec, ...] = _specs()
_BY_NAME = {spec.name: spec for spec in SPECS}
# What the standalone audit-server takes, and what only it takes (derived: the fields say).
AUDIT_SERVER = tuple(s.name for s in SPECS if "audit-server" in s.commands)
AUDIT_SERVER_ONLY = tuple(s.name for s in SPECS if "serve" not in s.commands)

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
                        help="TOML file of settings (keys are the setting names, e.g. "
                        "durability = \"write\"; env MLWITNESS_CONFIG).")
    for spec in SPECS:
        if names is not None and spec.name not in names:
            continue
        default = f"; default {spec.default_text}" if spec.default_text else ""
        text = f"{(helps or {}).get(spec.name, spec.help)} [env {spec.env}{default}]"
        if spec.switch:  # given means true
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
