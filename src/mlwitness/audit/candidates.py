"""The models a question runs: stored ones by hash, and candidates an auditor uploads.

Models run in a sandbox worker process (`mlwitness.model.sandbox`), bounded in memory and in
time (the caller's deadline, and `run_timeout` a run). An uploaded candidate is at most
`max_candidate_bytes`, must be self-contained, and is put in the ledger's model store only
once it has run — before the answer that rests on it; one that fails to load or run is not
kept. The audit record's request bytes name an upload by `sha256:<hex>` instead of
holding it again (`mlwitness.wire.audit`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mlwitness.audit.replay import Decoded
from mlwitness.errors import FailedPrecondition, InvalidInput, TooLarge
from mlwitness.ledger import store
from mlwitness.ledger.reader import LedgerReader
from mlwitness.model.external_data import NotProtobuf, NotSelfContained, check_self_contained
from mlwitness.model.runtime import SessionConfig
from mlwitness.model.sandbox import Aborted, Limits, Sandbox, SandboxedModel, Sandboxes

StoreModel = Callable[[bytes, dict[str, Any]], str]  # (onnx, signature) -> sha256


@dataclass(frozen=True)
class AuditLimits:
    # 16 MiB: the tabular models mlwitness serves are kilobytes to a few MiB, and every
    # candidate that runs is kept for good in the ledger's model store.
    max_candidate_bytes: int = 16 << 20
    # What one question's sandbox worker may allocate beyond its start-up size, for all
    # the models it holds: a credit model's session is a few MiB, a batch of 8,192 rows
    # well under one. A model that needs more is refused, the sidecar untouched.
    memory_bytes: int = 512 << 20
    run_timeout: float = 60.0  # seconds one model run may take, deadline or not

    @classmethod
    def of(cls, settings: Any) -> AuditLimits:
        return cls(settings.max_candidate_bytes, settings.audit_memory_bytes,
                   settings.audit_run_timeout)


class Runs:
    """The models one question runs, in one sandbox worker (opened on first use)."""

    def __init__(self, reader: LedgerReader, sandboxes: Sandboxes,
                 deadline: float | None) -> None:
        self.reader = reader
        self.sandboxes = sandboxes
        self.deadline = deadline
        self.uploads: dict[str, bytes] = {}  # candidates by SHA-256: not in the store yet
        self._sandbox: Sandbox | None = None

    def _open(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = self.sandboxes.open(self.deadline)
        return self._sandbox

    def model(self, sha256: str, session: SessionConfig | None = None) -> SandboxedModel:
        """A stored model (or this question's upload) by SHA-256, loaded in the worker in
        a session built from `session` (a record's: `Candidates.session_of`; None: the
        default).
        A stored one is looked up even when the worker has it loaded: a worker may still
        hold an earlier question's upload that failed and was never stored, and an answer
        must rest only on models the store holds."""
        onnx = self.uploads.get(sha256)
        if onnx is None:
            onnx = self.reader.model(sha256).onnx  # or FailedPrecondition, DataLoss
        return self._open().load(sha256, lambda: onnx, session)

    def upload(self, onnx: bytes, session: SessionConfig | None = None) -> SandboxedModel:
        sha = hashlib.sha256(onnx).hexdigest()
        self.uploads[sha] = onnx
        return self.model(sha, session)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()


class Candidates:
    """Sandbox workers for the questions, and the checks and storage of uploads."""

    def __init__(self, reader: LedgerReader, store_model: StoreModel | None,
                 limits: AuditLimits, threads: int) -> None:
        self.reader = reader
        self.store_model = store_model
        self.limits = limits
        self.sandboxes = Sandboxes(Limits(limits.memory_bytes, limits.run_timeout, threads))

    def close(self) -> None:
        """End the idle sandbox workers."""
        self.sandboxes.close()

    def session_of(self, env_id: str) -> SessionConfig | None:
        """The session options a record's environment names (None: it names none)."""
        return SessionConfig.from_environment(self.reader.environment(env_id))

    @contextlib.contextmanager
    def runs(self, deadline: float | None) -> Iterator[Runs]:
        runs = Runs(self.reader, self.sandboxes, deadline)
        try:
            yield runs
        finally:
            runs.close()

    def upload(self, runs: Runs, onnx: bytes,
               session: SessionConfig | None = None) -> SandboxedModel:
        """An uploaded candidate, checked and loaded (not stored: see `keep`)."""
        if self.store_model is None:
            raise FailedPrecondition("this audit server cannot store uploaded models; "
                                     "pass candidate_sha256 of a stored model")
        limit = self.limits.max_candidate_bytes
        if len(onnx) > limit:
            raise TooLarge(f"candidate_onnx of {len(onnx)} bytes exceeds the limit of "
                           f"{limit} bytes (--max-candidate-bytes)")
        try:
            check_self_contained(onnx)  # here too: onnxruntime must never see it
            return runs.upload(onnx, session)
        except Aborted:
            raise
        except (NotSelfContained, NotProtobuf) as exc:
            raise InvalidInput(f"candidate_onnx: {exc.message}") from None
        except FailedPrecondition as exc:  # the caller's upload, not the ledger's state
            raise InvalidInput(f"candidate_onnx is not a model onnxruntime can load: "
                               f"{exc.message}") from None

    def keep(self, onnx: bytes, model: SandboxedModel) -> None:
        """Store a candidate that has run: the bytes an answer rests on, before it is sent."""
        assert self.store_model is not None
        self.store_model(onnx, model.signature.to_dict())


def upload_sha256(onnx: bytes) -> str:
    """How the trail's summary names an upload ("" when there is none)."""
    return hashlib.sha256(onnx).hexdigest() if onnx else ""


def check_fits(model: SandboxedModel, call: Decoded, seq: int) -> None:
    """A candidate that cannot take the recorded call: the auditor's choice, said so."""
    try:
        model.signature.check_inputs(call.inputs)
        model.signature.check_outputs(call.requested)
    except InvalidInput as exc:
        raise InvalidInput(f"the candidate cannot take record seq {seq}'s call: "
                           f"{exc.message}") from None


def store_model_with(writer_write: Callable[[Callable], Any]) -> StoreModel:
    """A `store_model` for AuditService that puts candidate bytes in the ledger's store."""

    def put(onnx: bytes, signature: dict[str, Any]) -> str:
        return writer_write(lambda con: store.put_model(con, onnx, "candidate", "",
                                                       signature))

    return put
