"""The sidecar: the one place that creates its components and ports, in order.

`Sidecar.start()` opens the ledger (loading any journal tail left by a crash), pins the
model by content, records the environment, and starts the inference port (with health and
reflection), the audit port, the plaintext health port and the metrics endpoint.
Checkpoints are issued and published in their own thread (server/checkpointing.py); with
--archive, the shipper uploads sealed segments of the ledger in its own thread, and local
retention deletes what the archive holds (server/archiving.py).
`Sidecar.stop()` drains in-flight calls, flushes and closes the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlwitness.analytics.baseline import Baseline
from mlwitness.analytics.drift import FeatureDrift, drift_report
from mlwitness.analytics.outcomes import QualityQuery, fetch, quality_answer
from mlwitness.audit.evidence import live_status
from mlwitness.audit.service import AuditLimits, AuditService, store_model_with
from mlwitness.guards.checks import InlineChecks
from mlwitness.guards.file import load_guards
from mlwitness.inference.backends import Backend
from mlwitness.inference.backends.embedded import EmbeddedBackend
from mlwitness.inference.backends.upstream import UpstreamBackend
from mlwitness.inference.minimise import Minimiser
from mlwitness.inference.service import InferenceService
from mlwitness.ledger import environment, store
from mlwitness.ledger.checkpoints import Checkpointer, load_signer
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.tensors import decode_record_tensors
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.metrics import Metrics, refresh_drift, refresh_quality
from mlwitness.model.modelfile import ModelFile
from mlwitness.model.runtime import OnnxModel, SessionConfig
from mlwitness.protocol import inference as pb
from mlwitness.server.admin import (
    announce_features,
    model_store,
    record_guards,
    store_baseline_file,
)
from mlwitness.server.archiving import Archiving, open_archive
from mlwitness.server.audit_server import start_audit_port
from mlwitness.server.checkpointing import start_checkpoints
from mlwitness.server.columns import check_minimised_names, columns_of, tabulator_for
from mlwitness.server.lifecycle import run_until_signal
from mlwitness.server.port import GrpcPort, stop_ports
from mlwitness.server.watch import AccessFile, GuardFile, Watcher
from mlwitness.settings import Settings
from mlwitness.wire import security
from mlwitness.wire import servicer as inference_servicer

log = logging.getLogger("mlwitness")

# A ledger that failed for good (a journal flush failed: only a restart, which reads back
# what is really on disk, goes on) turns the `liveness` service NOT_SERVING this long
# after, so that the orchestrator restarts the sidecar; readiness is NOT_SERVING at once.
# The wait leaves time for in-flight calls to be refused and for the state to be scraped.
# A full disk, which the ledger recovers from by itself once there is room, leaves
# liveness SERVING.
LEDGER_FAILURE_RESTART_S = 30.0
# At shutdown the last checkpoint's publishing gets this long; what is left is published by
# the next start.
PUBLISH_AT_SHUTDOWN_S = 5.0


class Sidecar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.validate()
        self.ledger: LedgerWriter | None = None
        self.checkpointer: Checkpointer | None = None
        self.archiving: Archiving | None = None
        self.backend: Backend | None = None
        self.model_file: ModelFile | None = None
        self.service: InferenceService | None = None
        self.audit_service: AuditService | None = None
        self.metrics: Metrics | None = None
        self.metrics_port = 0
        self.checks: InlineChecks | None = None
        self.baseline: Baseline | None = None
        self.inference: GrpcPort | None = None
        self.audit: GrpcPort | None = None
        self.probes: GrpcPort | None = None  # the plaintext health port
        self.audit_access = AccessFile("audit", settings.audit_access, "auditor")
        self.inference_access: AccessFile | None = None
        self.guard_file: GuardFile | None = None
        self.ready = False
        self.alive = True  # the `liveness` service's status
        self._tasks: list[asyncio.Task] = []

    @property
    def port(self) -> int:
        return self.inference.port if self.inference else 0

    @property
    def audit_port(self) -> int:
        return self.audit.port if self.audit else 0

    @property
    def health_port(self) -> int:
        return self.probes.port if self.probes else 0

    # ── start ──────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        s = self.settings
        signer = load_signer(s.signing_key) if s.signing_key else None
        archive = open_archive(s.archive) if s.archive else None  # before the ledger: a bad
        # --archive stops the start with nothing created
        first = s.model.read_bytes()  # type: ignore[union-attr]
        session = SessionConfig(intra_op_num_threads=s.ort_threads)
        model = await asyncio.to_thread(OnnxModel, first, session)
        ledger = await self._open_ledger(model)
        self.checkpointer = start_checkpoints(s, ledger, signer)
        if archive is not None:
            self.archiving = Archiving(s, ledger, archive)
            await asyncio.to_thread(self.archiving.start)
        self.model_file = ModelFile(s.model, model_store(ledger, s))  # type: ignore[arg-type]
        if self.model_file.sha256 != model.sha256:  # the file changed while we loaded it
            model = await asyncio.to_thread(OnnxModel, self.model_file.onnx, session)
        # The session options are those of the session that decides; an upstream server's
        # are not known here.
        env = environment.fingerprint(None if s.upstream else model.session_config)
        env_id = ledger.write(lambda con: store.put_environment(con, env))
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
        check_minimised_names(s.redact_inputs + s.hash_inputs, ledger.tabulator,
                              model.signature)
        if s.metrics_port:
            self.metrics = Metrics(s.served_name)
            self.metrics.watch_ledger(ledger)
            if self.checkpointer is not None:
                self.metrics.watch_checkpoints(self.checkpointer)
            if self.archiving is not None:
                self.metrics.watch_archive(self.archiving.shipper)
        if s.baseline:
            self.baseline = await store_baseline_file(ledger, s.baseline, model.signature)
        if s.guards:
            await self._load_guards(s.guards, model)
        self.service = inference_service(s, ledger, self.backend, env_id, current_sha,
                                         self.metrics, self.checks)
        await self._start_inference(model)
        await self._start_audit()
        if s.health_port:
            self.probes = GrpcPort.for_probes(s)
            await self.probes.start(s.health_port)
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(s.host, s.metrics_port)
        await self._update_health()
        self._start_tasks()
        log.info(
            "serving model %s (sha256 %s, %s) on %s:%d, ledger %s",
            s.served_name, model.sha256[:12], self.backend.mode, s.host, self.port, s.ledger,
        )

    async def _open_ledger(self, model: OnnxModel) -> LedgerWriter:
        s = self.settings
        self.ledger = ledger = LedgerWriter(
            s.ledger,
            WriterOptions(
                durability=s.durability,
                load_interval_s=s.load_interval,
                max_unloaded=s.max_backlog,
                duckdb_threads=s.duckdb_threads,
                duckdb_memory_bytes=s.duckdb_memory_bytes,
                table_process=s.table_builder == "process",
            ),
            tabulator=tabulator_for(s, model.signature),
            decoder=decode_record_tensors,
        )
        await asyncio.to_thread(ledger.open)
        await announce_features(ledger)
        loop = asyncio.get_running_loop()
        def on_change() -> None:  # from a writer thread, on failure or recovery: flip health now
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._update_health()))

        ledger.on_failure = ledger.on_recovery = on_change
        return ledger

    async def _load_guards(self, path: Path, model: OnnxModel) -> None:
        ledger, mode = self.ledger, self.settings.guard_mode
        assert ledger is not None
        config = load_guards(path)
        self.checks = InlineChecks(
            config, mode, ledger.tabulator, self.metrics,
            columns=(columns_of(ledger.tabulator, model.signature.inputs),
                     columns_of(ledger.tabulator, model.signature.outputs)))
        self.guard_file = GuardFile(path, self.checks, lambda edited: record_guards(
            ledger, edited, mode=mode, source=str(path), caller="file reload"))
        await record_guards(ledger, config, mode=mode, source=str(path), caller="startup")

    async def _start_inference(self, model: OnnxModel) -> None:
        s = self.settings
        assert self.service is not None and self.backend is not None
        self.inference_access = AccessFile("inference", s.inference_access, "caller")
        servicer = inference_servicer.InferenceServicer(
            self.service, self.backend, model.signature, s.record_metadata, lambda: self.ready,
            auth=self.inference_access.auth, mtls=bool(s.tls_client_ca),
        )
        self.inference = GrpcPort.carrying(s, pb.SERVICE, inference_servicer.handler(servicer),
                                           liveness=True)
        await self.inference.start(s.port)

    async def _start_audit(self) -> None:
        s = self.settings
        if not s.audit_port:
            return
        assert self.ledger is not None
        ledger = self.ledger
        reader = LedgerReader(ledger.cursor, ledger.sync)
        minimiser = self.service.minimiser if self.service is not None else None
        self.audit_service = AuditService(
            reader, trail=ledger.append_blocking, store_model=store_model_with(ledger.write),
            threads=s.ort_threads, checks=self.checks, limits=AuditLimits.of(s),
            status=live_status(ledger, self.checkpointer,
                               self.archiving.status if self.archiving else None),
            erase=lambda record, compact: ledger.erase(record, compact=compact),
            stored_value=minimiser.stored_parameter if minimiser is not None else None,
            append_group=ledger.append_group, ledger_path=s.ledger)
        service = self.audit_service  # its questions' records name its environment
        ledger.write(lambda con: store.put_environment(con, service.environment))
        self.audit = await start_audit_port(self.audit_service, s.ledger, s.audit_port, s,
                                            self.audit_access.auth)

    def _start_tasks(self) -> None:
        """The watcher and, with metrics and a baseline, the drift gauges' refresh."""
        s = self.settings
        access = [a for a in (self.audit_access, self.inference_access) if a is not None]
        watcher = Watcher(s, self._update_health, access=access, guards=self.guard_file,
                          model_file=self.model_file if s.upstream else None)
        self._tasks.append(asyncio.create_task(watcher.run()))
        if self.archiving is not None and s.local_retention > 0:
            self._tasks.append(asyncio.create_task(self.archiving.retain()))
        if self.metrics is not None and self.baseline is not None and s.drift_interval > 0:
            assert self.ledger is not None
            compute = recent_drift(self.ledger, self.baseline, s.drift_window)
            self._tasks.append(asyncio.create_task(
                refresh_drift(self.metrics, compute, s.drift_interval)))
        if self.metrics is not None and s.quality_label and s.quality_interval > 0:
            assert self.ledger is not None
            self._tasks.append(asyncio.create_task(refresh_quality(
                self.metrics, recent_quality(self.ledger, s), s.quality_interval)))

    def _current_sha(self) -> str:
        assert self.model_file is not None
        return self.model_file.sha256

    # ── health ─────────────────────────────────────────────────────────────────────────

    async def _update_health(self) -> None:
        """Inference readiness: model, ledger and (forwarding) upstream. The audit port
        needs the ledger only: auditors are served while the model server is down."""
        assert self.ledger is not None and self.backend is not None
        ledger_ok = self.ledger.healthy
        ready = ledger_ok and await self.backend.ready()
        for port in (self.inference, self.probes):
            if port is not None:
                await port.set_ready(ready)
        if self.audit is not None:
            await self.audit.set_ready(ledger_ok)
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
        for port in (self.inference, self.probes):
            if port is not None:
                await port.set_alive(False)

    # ── stop ───────────────────────────────────────────────────────────────────────────

    async def stop(self) -> None:
        """Drain in-flight calls (up to --drain-timeout), then flush and close the ledger."""
        if self.service is not None:
            loop = asyncio.get_running_loop()
            self.service.drain_deadline = loop.time() + self.settings.drain_timeout
        await stop_ports([self.inference, self.audit, self.probes], self.settings.drain_timeout)
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
        if self.checkpointer is not None:  # the last checkpoint, after the final load
            await asyncio.to_thread(self.checkpointer.close, PUBLISH_AT_SHUTDOWN_S)
        if self.archiving is not None:  # the next start ships what is left
            await asyncio.to_thread(self.archiving.stop)
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)

    def addresses(self) -> dict[str, Any]:
        return {"event": "ready", "host": self.settings.host, "port": self.port,
                "audit_port": self.audit_port, "metrics_port": self.metrics_port,
                "health_port": self.health_port}



def inference_service(s: Settings, ledger: LedgerWriter, backend: Backend, env_id: Any,
                      current_sha: Callable[[], str], metrics: Metrics | None,
                      checks: InlineChecks | None) -> InferenceService:
    """The inference service: one call, one record, with the minimiser the settings ask."""
    return InferenceService(
        backend=backend,
        ledger=ledger,
        model_name=s.served_name,
        model_version=s.model_version,
        model_sha256=current_sha,
        env_id=env_id,
        max_request_bytes=s.max_request_bytes,
        max_string_elements=s.max_string_elements,
        observe=metrics.observe if metrics else None,
        checks=checks,
        minimiser=Minimiser(s.redact_inputs, s.hash_inputs,
                            key=s.hash_key.read_bytes() if s.hash_key else None,
                            tabulator=ledger.tabulator, unkeyed=s.hash_inputs_unkeyed)
        if s.redact_inputs or s.hash_inputs else None,
    )

def recent_drift(ledger: LedgerWriter, baseline: Baseline, window_s: float
                 ) -> Callable[[int], list[FeatureDrift]]:
    """Drift of the last `window_s` seconds of traffic up to a time, against the baseline,
    per column (for the drift gauges; run in a thread)."""
    def compute(until_us: int) -> list[FeatureDrift]:
        ledger.sync()
        cursor = ledger.cursor()
        try:
            return drift_report(cursor, baseline, until_us=until_us,
                                since_us=until_us - int(window_s * 1e6)).features
        finally:
            cursor.close()

    return compute


def recent_quality(ledger: LedgerWriter, s: Settings
                   ) -> Callable[[int], tuple[float | None, int, dict[str, float | None]]]:
    """Coverage, rows with an outcome and the quality figures of the decisions of the last
    --quality-window seconds up to a time (for the quality gauges; run in a thread)."""
    def compute(until_us: int) -> tuple[float | None, int, dict[str, float | None]]:
        q = QualityQuery(label=s.quality_label, since_us=until_us - int(s.quality_window * 1e6),
                         until_us=until_us, decision=s.quality_decision, score=s.quality_score)
        ledger.sync()
        cursor = ledger.cursor()
        try:
            a = quality_answer(fetch(cursor, q), q)
        finally:
            cursor.close()
        r = a.quality
        figures = {name: getattr(r, name).value if r else None
                   for name in ("accuracy", "precision", "recall", "roc_auc", "brier")}
        return a.coverage.value, a.with_outcome, figures

    return compute


async def serve(settings: Settings) -> None:
    """Run the sidecar until SIGTERM or SIGINT, then drain and exit."""
    sidecar = Sidecar(settings)

    async def start() -> dict[str, Any]:
        await sidecar.start()
        return sidecar.addresses()

    async def stop() -> None:
        log.info("shutting down: draining in-flight calls")
        await sidecar.stop()
        log.info("stopped; ledger flushed")

    await run_until_signal(start, stop, freeze=True)
