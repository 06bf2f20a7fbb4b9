"""Domain errors. Each carries the name of the gRPC status it maps to.

The core raises these; `mlwitness.wire.status` is the one place that turns them into
gRPC statuses, and the ledger records `status` by the same name. Nothing here imports grpc.
"""

from __future__ import annotations

# A status message travels in a gRPC trailer, percent-encoded; clients refuse trailers
# over 8-16 KiB. Messages that echo a caller's names or list a wide signature are cut to
# this many UTF-8 bytes, plus a note saying so; the caller and the ledger get the same text.
MESSAGE_BYTES = 1024


class MlwitnessError(Exception):
    """Base class. `status` is a grpc.StatusCode name; `message` is for a person to act on."""

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        message = fitted(message)
        super().__init__(message)
        self.message = message


def fitted(message: str) -> str:
    """`message`, cut to MESSAGE_BYTES (saying so) when longer."""
    data = message.encode()
    if len(data) <= MESSAGE_BYTES:
        return message
    kept = data[:MESSAGE_BYTES].decode(errors="ignore")
    return f"{kept}… (cut from {len(data)} bytes)"


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


class Overloaded(MlwitnessError):
    """Every call slot of the port is taken (--max-concurrent-rpcs): try again shortly."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(MlwitnessError):
    """The caller's deadline passed before the answer was ready."""

    status = "DEADLINE_EXCEEDED"


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
        Exception.__init__(self, message)
        self.message = message  # as the upstream sent it: it already fit a gRPC status
        self.status = status


class ConfigError(MlwitnessError):
    """Settings, guard files or baselines are invalid. Raised at start-up or on reload."""

    status = "INVALID_ARGUMENT"


class ModelNotSettled(MlwitnessError):
    """The model file changed into bytes that are not (yet) a whole ONNX model."""

    status = "UNAVAILABLE"
