"""Domain errors. Each carries the name of the gRPC status it maps to.

The core raises these; `mlwitness.wire.status` is the one place that turns them into
gRPC statuses, and the ledger records `status` by the same name. Nothing here imports grpc.
"""

from __future__ import annotations


class MlwitnessError(Exception):
    """Base class. `status` is a grpc.StatusCode name; `message` is for a person to act on."""

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(MlwitnessError):
    """The request is malformed or does not fit the model's signature."""

    status = "INVALID_ARGUMENT"


class ModelNotFound(MlwitnessError):
    """No served model has that name (or version)."""

    status = "NOT_FOUND"


class RecordNotFound(MlwitnessError):
    """No ledger record has that request id or sequence number."""

    status = "NOT_FOUND"


class TooLarge(MlwitnessError):
    """The request exceeds a configured size limit."""

    status = "RESOURCE_EXHAUSTED"


class LedgerUnavailable(MlwitnessError):
    """The ledger cannot make a record durable; no decision may be returned."""

    status = "UNAVAILABLE"


class BackendUnavailable(MlwitnessError):
    """The model backend (e.g. the upstream server) cannot be reached."""

    status = "UNAVAILABLE"


class GuardViolation(MlwitnessError):
    """An enforced guard refused the request."""

    status = "INVALID_ARGUMENT"


class FailedPrecondition(MlwitnessError):
    """The operation cannot run in the current state (e.g. model bytes not in the store)."""

    status = "FAILED_PRECONDITION"


class DataLoss(MlwitnessError):
    """Stored data no longer matches its hash."""

    status = "DATA_LOSS"


class Unauthenticated(MlwitnessError):
    status = "UNAUTHENTICATED"


class PermissionDenied(MlwitnessError):
    status = "PERMISSION_DENIED"


class UpstreamError(MlwitnessError):
    """An upstream model server answered with an error; its code is kept as is."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConfigError(MlwitnessError):
    """Settings, guard files or baselines are invalid. Raised at start-up or on reload."""

    status = "INVALID_ARGUMENT"
