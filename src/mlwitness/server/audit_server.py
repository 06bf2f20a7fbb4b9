"""The audit port, and `mlwitness audit-server`: the audit API over a ledger file opened
read-only, without the sidecar. Its own audit trail goes to a separate ledger
(--audit-trail) since it may not write this one."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import duckdb

from mlwitness.audit.service import AuditLimits, AuditService, store_model_with
from mlwitness.auth import Access, Authenticator
from mlwitness.ledger import journal, schema, store
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.writer import LedgerWriter
from mlwitness.protocol import audit_pb2
from mlwitness.protocol import inference as pb
from mlwitness.server.lifecycle import run_until_signal
from mlwitness.server.port import GrpcPort, stop_ports
from mlwitness.settings import Settings
from mlwitness.wire import audit as audit_servicer

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
                    "Changing guards and erasing records need an admin identity in an "
                    "--audit-access file.",
                    address)
    else:
        log.warning("audit port %s has no --audit-access: anyone who can reach it may read "
                    "every record (request and response bytes), replay, ask what-if, drift, "
                    "bias and verify, change the guards and erase records. Give it an access file "
                    "(`mlwitness token add`) or keep it off the network (--audit-port 0).",
                    address)


class AuditServer:
    """`mlwitness audit-server`'s parts: the ledger read-only, the trail, the audit port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.con: duckdb.DuckDBPyConnection | None = None
        self.trail: LedgerWriter | None = None
        self.service: AuditService | None = None
        self.audit: GrpcPort | None = None

    async def start(self) -> dict[str, Any]:
        """Open the ledger and the trail, serve; return the "ready" line."""
        settings = self.settings
        settings.validate_limits()
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
                                              limits=AuditLimits.of(settings))
        trail.write(lambda con: store.put_environment(con, service.environment))
        access = Access.load(settings.audit_access) if settings.audit_access else None
        auth = Authenticator(access, required_role="auditor")
        self.audit = await start_audit_port(self.service, path, settings.audit_port, settings,
                                            auth)
        return {"event": "ready", "host": settings.host, "audit_port": self.audit.port,
                "ledger": str(path), "audit_trail": str(trail_path)}

    async def stop(self) -> None:
        """Drain the calls in flight, then close the trail and the ledger."""
        await stop_ports([self.audit], self.settings.drain_timeout)
        if self.service is not None:
            await self.service.close_refusals()
            self.service.close()
        if self.trail is not None:
            await asyncio.to_thread(self.trail.close)
        if self.con is not None:
            self.con.close()


async def serve_audit(settings: Settings) -> None:
    """Run `mlwitness audit-server` until SIGTERM or SIGINT."""
    server = AuditServer(settings)
    await run_until_signal(server.start, server.stop)
