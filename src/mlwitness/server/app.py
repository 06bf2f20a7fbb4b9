"""Wiring and lifecycle: the one place that creates components and servers.

`Sidecar.start()` opens the ledger (loading any journal tail left by a crash), pins the
model by content, records the environment, and starts the inference server (with health
and reflection). `Sidecar.stop()` drains in-flight calls, flushes and closes the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import math
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from mlwitness.analytics.baseline import Baseline, store_baseline
from mlwitness.analytics.drift import drift_report
from mlwitness.audit.service import AuditLimits, AuditService, store_model_with
from mlwitness.auth import Access, Authenticator
from mlwitness.errors import ConfigError, MlwitnessError, ModelNotSettled
from mlwitness.guards.checks import InlineChecks, guard_record
from mlwitness.guards.file import GuardConfig, load_guards
from mlwitness.inference.backends import Backend
from mlwitness.inference.backends.embedded import EmbeddedBackend
from mlwitness.inference.backends.upstream import UpstreamBackend
from mlwitness.inference.minimise import Minimiser
from mlwitness.inference.service import InferenceService
from mlwitness.ledger import environment, store
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator, features_detail
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.metrics import Metrics
from mlwitness.model.modelfile import ModelFile
from mlwitness.model.runtime import OnnxModel
from mlwitness.model.signature import Signature
from mlwitness.protocol import inference as pb
from mlwitness.settings import Settings
from mlwitness.wire import audit as audit_servicer
from mlwitness.wire import security
from mlwitness.wire import servicer as inference_servicer
from mlwitness.wire.slots import Slots, limited

log = logging.getLogger("mlwitness")

# What onnxruntime says of bytes that are not (yet) a model at all, e.g. a file that a copy
# has truncated or only begun: such bytes are never pinned as the served model.
NOT_A_MODEL = ("INVALID_PROTOBUF", "No graph was found")

HEALTH_INTERVAL_S = 1.0
# A ledger that failed for good (a journal flush failed: only a restart, which reads back
# what is really on disk, goes on) turns the `liveness` service NOT_SERVING this long
# after, so that the orchestrator restarts the sidecar; readiness is NOT_SERVING at once.
# The wait leaves time for in-flight calls to be refused and for the state to be scraped.
# A full disk, which the ledger recovers from by itself once there is room, leaves
# liveness SERVING.
LEDGER_FAILURE_RESTART_S = 30.0


def tabulator_for(settings: Settings, signature: Signature) -> Tabulator:
    """Feature names apply to the model's first 2-D input with that many columns."""
    names = settings.features
    if not names:
        return Tabulator()
    for spec in signature.inputs:
        if len(spec.shape) == 2 and spec.shape[1] in (len(names), -1):
            return Tabulator({spec.name: tuple(names)})
    if len(signature.inputs) == len(names):
        return Tabulator()  # one tensor per feature: tensor names already name them
    raise ValueError(
        f"--features lists {len(names)} names but no 2-D model input has that many columns: "
        + ", ".join(s.describe() for s in signature.inputs)
    )


# A connection with no call open for this long is closed (callers reconnect on their next
# call); a vanished peer is found by a keepalive ping unanswered for PING_TIMEOUT_MS.
IDLE_CONNECTION_MS = 5 * 60 * 1000
PING_INTERVAL_MS = 60 * 1000
PING_TIMEOUT_MS = 20 * 1000
UNLIMITED_MS = 2**31 - 1  # gRPC's INT_MAX: no limit


def _ms(seconds: float) -> int:
    """Seconds as gRPC's int milliseconds (INT_MAX: no limit)."""
    return int(min(seconds * 1000, UNLIMITED_MS))


def connection_options(settings: Settings) -> list[tuple[str, Any]]:
    """What one connection may hold, and for how long. gRPC has no bound on the time from a
    call's headers to its request message: a stream that never sends one holds no call
    slot (wire/slots.py) but one of its connection's streams, until the connection's age
    and grace run out, or until its peer stops answering keepalive pings."""
    return [
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
        ("grpc.max_connection_age_ms", _ms(settings.max_connection_age or math.inf)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace)),
        ("grpc.keepalive_time_ms", PING_INTERVAL_MS),
        ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a connection that is silent
        ("grpc.so_reuseport", 0),
    ]


def grpc_server(settings: Settings) -> grpc.aio.Server:
    """A server for the inference or audit port. No `maximum_concurrent_rpcs`: gRPC counts a
    call against it from its headers on, so streams that never send a request would lock
    everyone out, health checks included. Call slots are wire/slots.py's, per service."""
    limit = max(2 * settings.max_request_bytes, settings.max_request_bytes + (1 << 20))
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            *connection_options(settings),
        ],
    )


def add_health_and_reflection(server: grpc.aio.Server, services: list[str]) -> Any:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    pb.add_file(health_pb2.DESCRIPTOR)
    pb.add_file(reflection_pb2.DESCRIPTOR)
    names = [*services, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server, pool=pb.POOL)
    return servicer


def _known_columns(tabulator: Tabulator, signature: Signature) -> set[str]:
    """Column names the ledger will give this model's inputs and outputs."""
    return _columns_of(tabulator, signature.inputs) | _columns_of(tabulator, signature.outputs)


def _columns_of(tabulator: Tabulator, specs: Any) -> set[str]:
    names: set[str] = set()
    for spec in specs:
        names.update(tabulator.columns_of(spec.name, spec.shape))
    return names


def _check_minimised_names(names: list[str], tabulator: Tabulator,
                           signature: Signature) -> None:
    """Minimisation rewrites whole input tensors (and request parameters). A name that is
    only a *column* of a tensor (a --features name) would silently store that column in
    clear: refuse it, naming the tensor to minimise instead."""
    tensors = {spec.name for spec in signature.inputs}
    for name in names:
        if name in tensors:
            continue
        owner = next((spec.name for spec in signature.inputs
                      if name in _columns_of(tabulator, [spec])), None)
        if owner is not None:
            raise ConfigError(
                f"--redact-inputs/--hash-inputs {name!r} is a column of input tensor "
                f"{owner!r}, not a tensor: minimisation applies to whole input tensors and "
                f"request parameters. Name the tensor ({owner!r}: all of its columns), or "
                "send the value as a request parameter")


def _warn_unknown(what: str, columns: list[str], known: set[str]) -> None:
    """Guards or baseline columns that match no model column would silently never fire
    (request parameters are the legitimate exception: they are not known in advance)."""
    unknown = sorted(set(columns) - known)
    if unknown:
        log.warning("%s names columns the model has none of: %s (known: %s). They apply only "
                    "to request parameters of that name; check --features.", what,
                    ", ".join(unknown), ", ".join(sorted(known)))


def _stamp(path: Any) -> str | None:
    """A file's content fingerprint (content, not mtime: a same-size edit within one clock
    tick must still be noticed). Files watched here are small."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class Sidecar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.validate()
        self.ledger: LedgerWriter | None = None
        self.backend: Backend | None = None
        self.model_file: ModelFile | None = None
        self.server: grpc.aio.Server | None = None
        self.audit_server: grpc.aio.Server | None = None
        self.health: Any = None
        self.audit_health: Any = None
        self.service: InferenceService | None = None
        self.audit_service: AuditService | None = None
        self._audit_ready = True  # start_audit_server starts it SERVING
        self.port = 0
        self.audit_port = 0
        self.metrics: Metrics | None = None
        self.metrics_port = 0
        self.health_server: grpc.aio.Server | None = None
        self.probe_health: Any = None
        self.health_port = 0
        self.checks: InlineChecks | None = None
        self.baseline: Baseline | None = None
        self.audit_auth = Authenticator(_access(settings.audit_access), required_role="auditor")
        self.inference_auth = Authenticator(None, required_role="caller")
        self._access_stamps: dict[str, str | None] = {
            "audit": _stamp(settings.audit_access) if settings.audit_access else None,
            "inference": _stamp(settings.inference_access) if settings.inference_access
            else None}
        self._guards_stamp: str | None = None
        self.ready = False
        self.alive = True  # the `liveness` service's status
        self._tasks: list[asyncio.Task] = []

    # ── start ──────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        s = self.settings
        first = s.model.read_bytes()  # type: ignore[union-attr]
        model = await asyncio.to_thread(OnnxModel, first, threads=s.ort_threads)
        self.ledger = LedgerWriter(
            s.ledger,
            WriterOptions(
                durability=s.durability,
                load_interval_s=s.load_interval,
                max_unloaded=s.max_backlog,
                duckdb_threads=s.duckdb_threads,
                table_process=True,
            ),
            tabulator=tabulator_for(s, model.signature),
            decoder=decode_record_tensors,
        )
        await asyncio.to_thread(self.ledger.open)
        await self._announce_features()
        loop = asyncio.get_running_loop()
        def on_change() -> None:  # from a writer thread, on failure or recovery: flip health now
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._update_health()))

        self.ledger.on_failure = self.ledger.on_recovery = on_change
        env = environment.fingerprint(model.providers)
        env_id = self.ledger.write(lambda con: store.put_environment(con, env))
        self.model_file = ModelFile(s.model, self._store_model)  # type: ignore[arg-type]
        if self.model_file.sha256 != model.sha256:  # the file changed while we loaded it
            model = await asyncio.to_thread(OnnxModel, self.model_file.onnx, threads=s.ort_threads)
        if s.upstream:
            self.backend = UpstreamBackend(
                s.upstream, default_timeout=s.upstream_timeout,
                credentials=security.channel_credentials(s.upstream_ca, s.upstream_cert,
                                                         s.upstream_key))
            current_sha = self._current_sha
        else:
            self.backend = EmbeddedBackend(model, s.served_name, s.model_version)
            pinned = model.sha256
            current_sha = lambda: pinned  # noqa: E731  (embedded: the bytes we loaded)
        _check_minimised_names(s.redact_inputs + s.hash_inputs, self.ledger.tabulator,
                               model.signature)
        if s.metrics_port:
            self.metrics = Metrics(s.served_name)
            self.metrics.watch_ledger(self.ledger)
        if s.baseline:
            await self._store_baseline(s.baseline)
        if s.guards:
            config = load_guards(s.guards)
            tabulator = self.ledger.tabulator
            self.checks = InlineChecks(
                config, s.guard_mode, tabulator, self.metrics,
                columns=(_columns_of(tabulator, model.signature.inputs),
                         _columns_of(tabulator, model.signature.outputs)))
            self._guards_stamp = _stamp(s.guards)
            await self.record_guards(config, source=str(s.guards), caller="startup")
        self.service = service = InferenceService(
            backend=self.backend,
            ledger=self.ledger,
            model_name=s.served_name,
            model_version=s.model_version,
            model_sha256=current_sha,
            env_id=env_id,
            max_request_bytes=s.max_request_bytes,
            max_string_elements=s.max_string_elements,
            observe=self.metrics.observe if self.metrics else None,
            checks=self.checks,
            minimiser=Minimiser(s.redact_inputs, s.hash_inputs,
                                key=s.hash_key.read_bytes() if s.hash_key else None,
                                tabulator=self.ledger.tabulator,
                                unkeyed=s.hash_inputs_unkeyed)
            if s.redact_inputs or s.hash_inputs else None,
        )
        self.inference_auth = Authenticator(_access(s.inference_access), required_role="caller")
        servicer = inference_servicer.InferenceServicer(
            service, self.backend, model.signature, s.record_metadata, lambda: self.ready,
            auth=self.inference_auth, mtls=bool(s.tls_client_ca),
        )
        self.server = grpc_server(s)
        self.server.add_generic_rpc_handlers(
            (limited(inference_servicer.handler(servicer), Slots(s.max_concurrent_rpcs)),))
        self.health = add_health_and_reflection(self.server, [pb.SERVICE])
        self.port = bind(self.server, s.host, s.port, s)
        await self.server.start()
        await self.health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        await self._start_audit()
        await self._start_health_port()
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(s.host, s.metrics_port)
        await self._update_health()
        self._tasks.append(asyncio.create_task(self._watch()))
        self._tasks.append(asyncio.create_task(self._drift_metrics()))
        log.info(
            "serving model %s (sha256 %s, %s) on %s:%d, ledger %s",
            s.served_name, model.sha256[:12], self.backend.mode, s.host, self.port, s.ledger,
        )

    async def _start_health_port(self) -> None:
        """Plaintext health only, for probes: Kubernetes gRPC probes cannot speak TLS, and
        no caller of the other ports can take what this server has (no slots are shared)."""
        s = self.settings
        if not s.health_port:
            return
        server = grpc.aio.server(options=connection_options(s))
        self.probe_health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.probe_health, server)
        self.health_port = server.add_insecure_port(f"{s.host}:{s.health_port}")
        await server.start()
        await self.probe_health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        self.health_server = server

    async def _start_audit(self) -> None:
        s = self.settings
        if not s.audit_port:
            return
        assert self.ledger is not None
        ledger = self.ledger
        reader = LedgerReader(ledger.cursor, ledger.sync)
        service = AuditService(reader, trail=ledger.append_blocking,
                               store_model=store_model_with(ledger.write),
                               threads=s.ort_threads, checks=self.checks,
                               limits=AuditLimits.of(s))
        self.audit_service = service
        self.audit_server, self.audit_health, self.audit_port = await start_audit_server(
            service, s.ledger, s.host, s.audit_port, s, self.audit_auth)

    async def record_guards(self, config: GuardConfig, *, source: str, caller: str) -> None:
        """Put a guard version on the ledger (an "admin" record in the chain)."""
        assert self.ledger is not None
        await self.ledger.append(guard_record(config, mode=self.settings.guard_mode,
                                              source=source, caller=caller))

    async def _announce_features(self) -> None:
        """Put the column names --features gives on the chain (an "admin" record) when they
        differ from the last ones announced, before any call uses them: they are not in a
        call's bytes, and verify derives the records after it with them."""
        assert self.ledger is not None
        names = {tensor: tuple(n) for tensor, n in self.ledger.tabulator.feature_names.items()}
        if names == (self.ledger.announced_features or {}):
            return
        now = time.time_ns() // 1000
        await self.ledger.append(Record(
            kind="admin", request_id=uuid.uuid4().hex, received_us=now, responded_us=now,
            peer="startup", detail=features_detail(names)))

    async def _store_baseline(self, path: Any) -> None:
        """Keep the baseline in the ledger (content-addressed) and say so in the chain."""
        assert self.ledger is not None
        try:
            baseline = Baseline.from_json(Path(path).read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--baseline {path} is not a baseline file: {exc}") from exc
        self.baseline = baseline
        assert self.model_file is not None
        _warn_unknown("baseline", [c for c in baseline.columns if c != baseline.label],
                      _known_columns(
            self.ledger.tabulator, OnnxModel(self.model_file.onnx).signature))
        sha = self.ledger.write(lambda con: store_baseline(con, baseline, Path(path).name))
        now = time.time_ns() // 1000
        await self.ledger.append(Record(
            kind="admin", request_id=uuid.uuid4().hex, received_us=now, responded_us=now,
            peer="startup", detail=json.dumps({"action": "baseline", "sha256": sha,
                                               "source": str(path)}, sort_keys=True)))

    async def _drift_metrics(self) -> None:
        """Recompute drift of recent traffic vs the baseline for the drift gauges."""
        s = self.settings
        if self.metrics is None or self.baseline is None or s.drift_interval <= 0:
            return
        assert self.ledger is not None
        ledger, baseline, metrics = self.ledger, self.baseline, self.metrics
        while True:
            await asyncio.sleep(s.drift_interval)
            now = time.time_ns() // 1000

            def compute(until: int) -> Any:
                ledger.sync()
                cursor = ledger.cursor()
                try:
                    return drift_report(cursor, baseline, until_us=until,
                                        since_us=until - int(s.drift_window * 1e6))
                finally:
                    cursor.close()

            try:
                report = await asyncio.to_thread(compute, now)
            except Exception:
                log.exception("periodic drift computation failed")
                continue
            metrics.show_drift(report.features)

    def _reload_access(self) -> None:
        """Pick up edited access files (token rotation) without a restart."""
        for kind, auth, path in (("audit", self.audit_auth, self.settings.audit_access),
                                 ("inference", self.inference_auth,
                                  self.settings.inference_access)):
            if path is None:
                continue
            stamp = _stamp(path)
            if stamp is None or stamp == self._access_stamps.get(kind):
                continue
            self._access_stamps[kind] = stamp
            try:
                auth.access = Access.load(path)
            except MlwitnessError as exc:
                log.error("%s access file %s not reloaded: %s", kind, path, exc.message)
                continue
            log.info("%s access file %s reloaded", kind, path)

    async def _reload_guards(self) -> None:
        s = self.settings
        if self.checks is None or s.guards is None:
            return
        stamp = _stamp(s.guards)
        if stamp is None or stamp == self._guards_stamp:
            return
        self._guards_stamp = stamp
        try:
            config = await asyncio.to_thread(load_guards, s.guards)
        except MlwitnessError as exc:
            log.error("guard file %s not reloaded, keeping %s: %s", s.guards,
                      self.checks.sha256[:12], exc.message)
            return
        if config.sha256 != self.checks.sha256:
            self.checks.replace(config)
            await self.record_guards(config, source=str(s.guards), caller="file reload")
            log.info("guards reloaded from %s: %s", s.guards, config.sha256[:12])

    def _store_model(self, onnx: bytes) -> None:
        s = self.settings
        try:
            signature = OnnxModel(onnx).signature.to_dict()
        except Exception as exc:  # the upstream's business; we still pin the bytes
            if not onnx or any(sign in str(exc) for sign in NOT_A_MODEL):  # a copy going on
                raise ModelNotSettled(f"model file {s.model} is not a whole ONNX model yet "
                                      f"({len(onnx)} bytes onnxruntime cannot parse); keeping "
                                      "the pinned model and trying again at the next poll"
                                      ) from None
            signature = {"inputs": [], "outputs": [], "error": str(exc)}
        assert self.ledger is not None
        self.ledger.write(
            lambda con: store.put_model(con, onnx, s.served_name, s.model_version, signature)
        )

    def _current_sha(self) -> str:
        assert self.model_file is not None
        return self.model_file.sha256

    async def _update_health(self) -> None:
        """Inference readiness: model, ledger and (forwarding) upstream. The audit port
        needs the ledger only: auditors are served while the model server is down."""
        assert self.ledger is not None and self.backend is not None
        ledger_ok = self.ledger.healthy
        ready = ledger_ok and await self.backend.ready()
        if ready != self.ready or self._tasks == []:
            status = (health_pb2.HealthCheckResponse.SERVING if ready
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            for name in ("", pb.SERVICE):
                await self.health.set(name, status)
            if self.probe_health is not None:
                await self.probe_health.set("", status)
        if self.audit_health is not None and ledger_ok != self._audit_ready:
            status = (health_pb2.HealthCheckResponse.SERVING if ledger_ok
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            for name in ("", audit_servicer.SERVICE):
                await self.audit_health.set(name, status)
            self._audit_ready = ledger_ok
        self.ready = ready
        await self._update_liveness()

    async def _update_liveness(self) -> None:
        """`liveness` turns NOT_SERVING LEDGER_FAILURE_RESTART_S after the ledger failed for
        good, so that a restart recovers it."""
        assert self.ledger is not None
        since = self.ledger.unrecoverable_since
        alive = since is None or time.monotonic() - since < LEDGER_FAILURE_RESTART_S
        if alive == self.alive:
            return
        self.alive = alive
        log.error("the ledger failed %.0f s ago and cannot recover in this process: liveness "
                  "is NOT_SERVING now, for the orchestrator to restart mlwitness",
                  LEDGER_FAILURE_RESTART_S)
        for servicer in (self.health, self.probe_health):
            if servicer is not None:
                await servicer.set("liveness", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _watch(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        async def poll_model() -> None:
            nonlocal next_poll
            if s.upstream and loop.time() >= next_poll:
                assert self.model_file is not None
                next_poll = loop.time() + s.model_poll_interval
                try:
                    await asyncio.to_thread(self.model_file.refresh)
                except ModelNotSettled as exc:
                    log.warning("%s", exc.message)

        async def reload_access() -> None:
            self._reload_access()

        steps = (("health", self._update_health), ("guard file reload", self._reload_guards),
                 ("access file reload", reload_access), ("model file poll", poll_model))
        while True:
            for what, step in steps:  # each on its own: one failing must not starve the rest
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s failed", what)
            await asyncio.sleep(min(HEALTH_INTERVAL_S, s.model_poll_interval))

    # ── stop ───────────────────────────────────────────────────────────────────────────

    async def stop(self) -> None:
        """Drain in-flight calls (up to --drain-timeout), then flush and close the ledger."""
        if self.service is not None:
            loop = asyncio.get_running_loop()
            self.service.drain_deadline = loop.time() + self.settings.drain_timeout
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.audit_health is not None:
            await self.audit_health.enter_graceful_shutdown()
        if self.probe_health is not None:
            await self.probe_health.enter_graceful_shutdown()
        servers = [srv for srv in (self.server, self.audit_server, self.health_server)
                   if srv is not None]
        await asyncio.gather(*(srv.stop(grace=self.settings.drain_timeout) for srv in servers))
        if self.service is not None:  # no call is left: the refusals tallied go in now
            await self.service.close()
        if self.audit_service is not None:
            await self.audit_service.close_refusals()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.audit_service is not None:
            self.audit_service.close()  # its idle sandbox workers
        if self.backend is not None:
            await self.backend.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)

    def addresses(self) -> dict[str, Any]:
        return {"event": "ready", "host": self.settings.host, "port": self.port,
                "audit_port": self.audit_port, "metrics_port": self.metrics_port,
                "health_port": self.health_port}


def _access(path: Any) -> Access | None:
    return Access.load(path) if path else None


def bind(server: grpc.aio.Server, host: str, port: int, settings: Settings) -> int:
    """Listen with TLS (mTLS with a client CA) when a certificate is configured."""
    credentials = security.server_credentials(settings.tls_cert, settings.tls_key,
                                              settings.tls_client_ca)
    address = f"{host}:{port}"
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc says only "Failed to bind to address …"
        raise ConfigError(f"cannot listen on {address}: the port is in use, or the host is "
                          f"not an address of this machine ({exc})") from None


async def start_audit_server(service: AuditService, ledger_path: Any, host: str, port: int,
                             settings: Settings, auth: Authenticator
                             ) -> tuple[grpc.aio.Server, Any, int]:
    server = grpc_server(settings)
    servicer = audit_servicer.AuditServicer(service, ledger_path, auth,
                                            mtls=bool(settings.tls_client_ca))
    server.add_generic_rpc_handlers(
        (limited(audit_servicer.handler(servicer), Slots(settings.max_concurrent_rpcs)),))
    from mlwitness.protocol import audit_pb2

    pb.add_file(audit_pb2.DESCRIPTOR)
    health_servicer = add_health_and_reflection(server, [audit_servicer.SERVICE])
    bound = bind(server, host, port, settings)
    await server.start()
    for name in ("", audit_servicer.SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if not auth.enabled:
        _warn_open_audit(f"{host}:{bound}", mtls=bool(settings.tls_client_ca))
    return server, health_servicer, bound


def _warn_open_audit(address: str, *, mtls: bool) -> None:
    """The audit port without --audit-access: say at start who may do what there."""
    if mtls:
        log.warning("audit port %s has no --audit-access: any client certificate that "
                    "--tls-client-ca signed may read every record (request and response "
                    "bytes), replay, ask what-if, drift, bias and verify (role auditor). "
                    "Changing guards needs an admin identity in an --audit-access file.",
                    address)
    else:
        log.warning("audit port %s has no --audit-access: anyone who can reach it may read "
                    "every record (request and response bytes), replay, ask what-if, drift, "
                    "bias and verify, and change the guards. Give it an access file "
                    "(`mlwitness token add`) or keep it off the network (--audit-port 0).",
                    address)


async def serve_audit(settings: Settings) -> None:
    """`mlwitness audit-server`: the audit API over a ledger file opened read-only. Its own
    audit trail goes to a separate ledger (--audit-trail) since it may not write this one."""
    import duckdb

    from mlwitness.ledger import journal, schema

    settings.validate_limits()
    path = settings.ledger
    # The file's tables under this version's views, with nothing stored in the file (a
    # redefined view, a macro standing in for a built-in) in the way of what is read.
    con = schema.connect_reader(path)
    pending = sum(1 for _ in journal.read(journal.journal_dir(path)))
    if pending:
        log.warning("%s has %d journal records not yet loaded into DuckDB; they are not "
                    "visible here (start `mlwitness serve` on it once, or run `mlwitness "
                    "verify`, which covers them)", path, pending)
    cursor_lock = threading.Lock()

    def cursor() -> duckdb.DuckDBPyConnection:
        with cursor_lock:
            return con.cursor()

    trail_path = settings.audit_trail or path.with_name(path.name + ".audit-trail.duckdb")
    trail = LedgerWriter(trail_path)
    await asyncio.to_thread(trail.open)
    env = environment.fingerprint()
    trail.write(lambda con: store.put_environment(con, env))
    service = AuditService(LedgerReader(cursor), trail=trail.append_blocking,
                           store_model=store_model_with(trail.write), threads=settings.ort_threads,
                           limits=AuditLimits.of(settings))
    auth = Authenticator(_access(settings.audit_access), required_role="auditor")
    server, health_servicer, port = await start_audit_server(
        service, path, settings.host, settings.audit_port, settings, auth)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "ready", "host": settings.host, "audit_port": port,
                      "ledger": str(path), "audit_trail": str(trail_path)}), flush=True)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=settings.drain_timeout)
    await service.close_refusals()
    service.close()
    await asyncio.to_thread(trail.close)
    con.close()


async def serve(settings: Settings) -> None:
    """Run the sidecar until SIGTERM or SIGINT, then drain and exit."""
    sidecar = Sidecar(settings)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Start-up's objects (modules, the model, the servers) live as long as the process:
    # keep them out of the collector's full passes, which otherwise stall every call for
    # 20-35 ms about every two seconds under load (measured; ~5-10 ms after freezing).
    gc.collect()
    gc.freeze()
    print(json.dumps(sidecar.addresses()), flush=True)
    await stop.wait()
    log.info("shutting down: draining in-flight calls")
    await sidecar.stop()
    log.info("stopped; ledger flushed")
