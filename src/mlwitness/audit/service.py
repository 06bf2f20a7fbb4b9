"""The audit service: every question an auditor can ask, behind one object.

It wires the parts, each a module of its own: the trail every question goes on
(`trail`), reading and verifying records (`records`), one call run again — replay, what-if,
sensitivity (`rerun`) — on stored models or uploaded candidates in sandbox workers
(`candidates`), traffic replay over a window (`replay_range`), drift and bias
(`monitoring`), the guards (`guards`), checkpoints, proofs and the health detail
(`evidence`), and erasures (`erasure`). Answers are the dataclasses of `results`;
`mlwitness.wire.audit` serves them over gRPC.
"""

from __future__ import annotations

from collections.abc import Callable

from mlwitness.audit.candidates import AuditLimits, Candidates, StoreModel, store_model_with
from mlwitness.audit.erasure import Eraser, Erasures, StoredValue
from mlwitness.audit.evidence import Evidence, StatusSource
from mlwitness.audit.guards import Guards
from mlwitness.audit.monitoring import Monitoring
from mlwitness.audit.records import Records
from mlwitness.audit.replay_range import ReplayRanges
from mlwitness.audit.rerun import Reruns
from mlwitness.audit.trail import Asker, Trail
from mlwitness.guards.checks import InlineChecks
from mlwitness.ledger import environment
from mlwitness.ledger.reader import LedgerReader
from mlwitness.ledger.record import Record

__all__ = ["AuditLimits", "AuditService", "Asker", "store_model_with"]


class AuditService:
    """`trail` appends a record to the ledger (None: questions are not recorded);
    `store_model` keeps an uploaded candidate's bytes (None: uploads are refused);
    `checks` are the sidecar's live guards (None: none, or a standalone server);
    `status` gives the health detail (None: what the ledger file says);
    `erase` carries out an erasure on the ledger's writer (None: erasures are refused, as
    on a standalone server) and `stored_value` gives a request parameter's value as the
    records store it (the sidecar's minimiser; None: as sent)."""

    def __init__(
        self,
        reader: LedgerReader,
        *,
        trail: Callable[[Record], None] | None,
        store_model: StoreModel | None = None,
        threads: int = 1,
        checks: InlineChecks | None = None,
        limits: AuditLimits | None = None,
        status: StatusSource | None = None,
        erase: Eraser | None = None,
        stored_value: StoredValue | None = None,
    ) -> None:
        self.reader = reader
        # The environment the trail's records name: this process's, with no model session
        # (the server stores it in the ledger's environments before any question).
        self.environment = environment.fingerprint()
        self.trail = Trail(trail, self.environment)
        self.candidates = Candidates(reader, store_model, limits or AuditLimits(), threads)
        records = Records(reader, self.trail)
        reruns = Reruns(reader, self.trail, self.candidates)
        monitoring = Monitoring(reader, self.trail)
        guards = Guards(reader, self.trail, checks)
        self.get_record = records.get
        self.list_records = records.list
        self.verify = records.verify
        self.replay = reruns.replay
        self.what_if = reruns.what_if
        self.sensitivity = reruns.sensitivity
        self.replay_range = ReplayRanges(reader, self.trail, self.candidates).replay_range
        self.drift = monitoring.drift
        self.bias = monitoring.bias
        self.violations = guards.violations
        self.get_guards = guards.get
        self.set_guards = guards.set
        evidence = Evidence(reader, self.trail, status)
        self.get_checkpoint = evidence.checkpoint
        self.inclusion_proof = evidence.inclusion_proof
        self.consistency_proof = evidence.consistency_proof
        self.status = evidence.status
        self.erasures = Erasures(reader, self.trail, erase, stored_value)
        self.erase = self.erasures.erase
        self.refuse = self.trail.refuse
        self.close_refusals = self.trail.close_refusals

    def close(self) -> None:
        """End the idle sandbox workers."""
        self.candidates.close()
