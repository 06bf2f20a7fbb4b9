"""The audit port, and `mlwitness audit-server`: the audit API over a ledger file opened
read-only, without the sidecar, or (`--archive URL`) over every chain archived under URL,
read as one DuckDB database (archive/fleet.py) and refreshed every --archive-interval. Its
own audit trail goes to a separate ledger (--audit-trail) since it may not write the one
it reads."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from mlwitness.archive import ArchiveError, ObjectStore
from mlwitness.audit.evidence import fleet_status
from mlwitness.audit.service import AuditLimits, AuditService, store_model_with
from mlwitness.auth import Access, Authenticator
from mlwitness.errors import ConfigError
from mlwitness.ledger import journal, schema, store
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.writer import LedgerWriter
from mlwitness.protocol import audit_pb2
from mlwitness.protocol import inference as pb
from mlwitness.server.archiving import open_archive
from mlwitness.server.lifecycle import run_until_signal
from mlwitness.server.port import GrpcPort, stop_ports
from mlwitness.settings import Settings, check_archive_url
from mlwitness.wire import audit as audit_servicer

if TYPE_CHECKING:  # imported by _start_fleet: the sidecar never reads a fleet
    from mlwitness.archive.fleet import Fleet

log = logging.getLogger("mlwitness")


async def start_audit_port(service: AuditService, ledger_path: Path, port: int,
                           settings: Settings, auth: Authenticator) -> GrpcPort:
    """The audit service on --host:`port`, SERVING once it listens."""
    servicer = audit_servicer.AuditServicer(service, ledger_path, auth,
                                            mtls=bool(settings.tls_client_ca))
    pb.add_file(audit_pb2.DESCRIPTOR)
    audit = GrpcPort.carrying(settings, audit_servicer.SERVICE, audit_servicer.handler(servicer),
                              liveness=False)
    await audit.start(port)
    await audit.set_ready(True)
    if not auth.enabled:
        _warn_open_audit(f"{settings.host}:{audit.port}", mtls=bool(settings.tls_client_ca))
    return audit


def _warn_open_audit(address: str, *, mtls: bool) -> None:
    """The audit port without --audit-access: say at start who may do what there."""
    if mtls:
        log.warning("audit port %s has no --audit-access: any client certificate that "
                    "--tls-client-ca signed may read every record (request and response "
                    "bytes), replay, ask what-if, drift, bias and verify (role auditor). "
                    "Recording outcomes and reviews needs a reviewer; changing guards and "
                    "erasing records an admin identity, in an --audit-access file.", address)
    else:
        log.warning("audit port %s has no --audit-access: anyone who can reach it may read "
                    "every record (request and response bytes), replay, ask what-if, drift, "
                    "bias and verify, record outcomes and reviews, change the guards and erase "
                    "records. Give it an access file (`mlwitness token add`) or keep it off "
                    "the network (--audit-port 0).",
                    address)


class AuditServer:
    """`mlwitness audit-server`'s parts: the ledger read-only, the trail, the audit port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.con: duckdb.DuckDBPyConnection | None = None
        self.trail: LedgerWriter | None = None
        self.service: AuditService | None = None
        self.audit: GrpcPort | None = None
        self.fleet: Fleet | None = None
        self._temporary_cache: Path | None = None
        self._refresh: asyncio.Task | None = None

    async def start(self) -> dict[str, Any]:
        """Open the ledger (or the archive) and the trail, serve; return the "ready" line."""
        settings = self.settings
        settings.validate_limits()
        if settings.archive:
            return await self._start_fleet(settings.archive)
        path = settings.ledger
        # The file's tables under this version's views, with nothing stored in the file (a
        # redefined view, a macro standing in for a built-in) in the way of what is read.
        self.con = con = schema.connect_reader(path)
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
        self.trail = trail = LedgerWriter(trail_path)
        await asyncio.to_thread(trail.open)
        self.service = service = AuditService(LedgerReader(cursor), trail=trail.append_blocking,
                                              store_model=store_model_with(trail.write),
                                              threads=settings.ort_threads,
                                              limits=AuditLimits.of(settings),
                                              ledger_path=path)
        trail.write(lambda con: store.put_environment(con, service.environment))
        access = Access.load(settings.audit_access) if settings.audit_access else None
        auth = Authenticator(access, required_role="auditor")
        self.audit = await start_audit_port(self.service, path, settings.audit_port, settings,
                                            auth)
        return {"event": "ready", "host": settings.host, "audit_port": self.audit.port,
                "ledger": str(path), "audit_trail": str(trail_path)}

    async def _start_fleet(self, url: str) -> dict[str, Any]:
        """The audit API over every chain archived under `url`."""
        # Imported here: the fleet brings in pyarrow.parquet and its filesystems (~12 MiB),
        # and this module is also the sidecar's, which never reads one
        from mlwitness.archive.fleet import FleetReader, open_fleet

        settings = self.settings
        check_archive_url(url)
        store = open_archive(url)
        cache = settings.archive_cache
        if cache is None:
            cache = self._temporary_cache = Path(tempfile.mkdtemp(prefix="mlwitness-fleet-"))
        # The fleet answers questions over every replica (drift, bias, quality): the
        # statistics' scipy (1-2 s of imports) is loaded while the archive is read, not
        # in the first auditor's question
        warm = asyncio.create_task(asyncio.to_thread(importlib.import_module, "scipy.stats"))
        try:
            self.fleet = fleet = await asyncio.to_thread(open_fleet, store, cache)
        except ArchiveError as exc:
            raise ConfigError(f"--archive {url}: cannot read the archive: {exc.message}"
                              ) from None
        with contextlib.suppress(ImportError):
            await warm
        log.info("fleet audit over %s: %d chains, %d records", url, len(fleet.chains),
                 sum(c.records for c in fleet.chains.values()))
        trail_path = settings.audit_trail or settings.ledger.with_name(
            settings.ledger.name + ".audit-trail.duckdb")
        self.trail = trail = LedgerWriter(trail_path)
        await asyncio.to_thread(trail.open)
        self.service = service = AuditService(
            FleetReader(fleet.cursor), trail=trail.append_blocking,
            store_model=store_model_with(trail.write), threads=settings.ort_threads,
            limits=AuditLimits.of(settings), status=fleet_status(fleet, url), archive=store)
        trail.write(lambda con: store_environment(con, service.environment))
        access = Access.load(settings.audit_access) if settings.audit_access else None
        auth = Authenticator(access, required_role="auditor")
        self.audit = await start_audit_port(service, settings.ledger, settings.audit_port,
                                            settings, auth)
        self._refresh = asyncio.create_task(_keep_refreshed(fleet, store,
                                                            settings.archive_interval))
        return {"event": "ready", "host": settings.host, "audit_port": self.audit.port,
                "archive": url, "chains": len(fleet.chains), "audit_trail": str(trail_path)}

    async def stop(self) -> None:
        """Drain the calls in flight, then close the trail and the ledger."""
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        await stop_ports([self.audit], self.settings.drain_timeout)
        if self.service is not None:
            await self.service.close_refusals()
            self.service.close()
        if self.trail is not None:
            await asyncio.to_thread(self.trail.close)
        if self.con is not None:
            self.con.close()
        if self.fleet is not None:
            self.fleet.close()
        if self._temporary_cache is not None:
            shutil.rmtree(self._temporary_cache, ignore_errors=True)


def store_environment(con: duckdb.DuckDBPyConnection, env: dict[str, Any]) -> Any:
    return store.put_environment(con, env)


async def _keep_refreshed(fleet: Fleet, store: ObjectStore, interval_s: float) -> None:
    """Take what was archived since, every `interval_s`; a failed look is logged once per
    kind of failure and tried again (the answers meanwhile are those of the last look)."""
    last = ""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(fleet.refresh)
        except (ArchiveError, OSError) as exc:
            message = str(exc)
            if message != last:
                log.warning("fleet: cannot read %s (%s); serving what was read before",
                            store, message)
            last = message
            continue
        if last:
            log.info("fleet: the archive is readable again")
        last = ""


async def serve_audit(settings: Settings) -> None:
    """Run `mlwitness audit-server` until SIGTERM or SIGINT."""
    server = AuditServer(settings)
    await run_until_signal(server.start, server.stop)
