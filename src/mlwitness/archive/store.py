"""The object-store contract, its errors and keys, and `open_store`.

A store holds immutable-minded objects under '/'-separated keys relative to its root (a
directory, or a bucket and prefix). The ledger ships sealed segments with
`put(key, data, if_absent=True)`: uploads are retried after crashes and timeouts, so every
operation is idempotent, and a second upload of the same key with other bytes is an error
(`ArchiveConflict`), never a silent overwrite.

Keys are checked by `check_key` before any backend sees them: a key from a hostile or buggy
caller (`../x`, `/etc/passwd`, `a//b`, control characters) is refused, so it can neither
leave a file store's directory nor a bucket's prefix.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlwitness.errors import ConfigError, MlwitnessError

if TYPE_CHECKING:
    from mlwitness.archive.s3 import S3Options

MAX_KEY_BYTES = 1024  # S3's limit for a whole key (prefix included)
MAX_PART_BYTES = 255  # a file name on every common file system

# C0 and C1 controls and DEL; backslash too, which some tools read as a path separator.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\\\\]")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

CONTENT_KINDS = {
    "model": ("models", ".onnx"),
    "environment": ("environments", ".json"),
    "baseline": ("baselines", ".json"),
}


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object. `sha256` (hex) and `etag` are None where the
    backend does not know them (a listing never carries them); `retain_until` is the UTC
    time before which the object cannot be deleted, or None."""

    key: str
    size: int
    sha256: str | None = None
    etag: str | None = None
    retain_until: datetime | None = None


@dataclass(frozen=True)
class PutResult:
    """`created` is False only when `put(..., if_absent=True)` found the identical bytes
    already stored under `key` and wrote nothing."""

    key: str
    created: bool
    size: int
    sha256: str


class ObjectStore(Protocol):
    """Named bytes in a directory or a bucket. Implementations must be idempotent: a call
    repeated after a crash, a timeout or a lost answer leaves the store as one call would.
    Every method checks its key with `check_key` first; every failure is an ArchiveError
    (or ConfigError when the store itself is misconfigured), never a backend exception.
    Implementations are safe to share between threads."""

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        retain_until: datetime | None = None,
    ) -> PutResult:
        """Store `data` under `key`, atomically: a reader sees the old object, no object,
        or all of `data`, never part of it.

        Without `if_absent` an existing object is replaced. With `if_absent` nothing is
        replaced: if `key` holds the same bytes the result says `created=False`; if it holds
        other bytes, ArchiveConflict, and the stored object stays as it was. Two concurrent
        `if_absent` puts of one key never both create.

        `retain_until` (timezone-aware, in the future) locks the stored bytes until then
        (S3 Object Lock, COMPLIANCE mode: a later plain put adds a newer version and the
        locked one stays); when the identical object exists with an earlier or no
        retention, its retention is extended, never shortened. A store that cannot lock
        raises ObjectLockUnsupported and stores nothing."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes stored under `key`; NotFound if there are none; ArchiveCorrupt if the
        backend holds a checksum that they no longer match."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """What is known about `key` without reading it to the caller; None if absent."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a plain string prefix, not only a
        folder), in ascending key order (UTF-8 byte order, as S3 lists), fetched page by
        page. Objects whose names are not valid keys are skipped."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; deleting an absent key succeeds. An object under retention is not
        touched: ObjectLocked, naming the key and the date."""
        ...

    def url(self, key: str) -> str:
        """Where `key` lives, as a URL for people and other tools (`s3://…`, `file://…`)."""
        ...

    def supports_object_lock(self) -> bool:
        """Whether `put(..., retain_until=…)` can work here."""
        ...


class ArchiveError(MlwitnessError):
    """The object store answered with something that fits no narrower error."""

    status = "INTERNAL"


class ArchiveUnavailable(ArchiveError):
    """The store could not be reached or kept failing (after the configured retries)."""

    status = "UNAVAILABLE"


class ArchiveDenied(ArchiveError):
    """The store refused the credentials or the operation."""

    status = "PERMISSION_DENIED"


class NotFound(ArchiveError):
    status = "NOT_FOUND"


class ArchiveConflict(ArchiveError):
    """A key already holds different bytes from the ones being put."""

    status = "ALREADY_EXISTS"

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


class ArchiveCorrupt(ArchiveError):
    """Stored bytes no longer match the checksum stored with them."""

    status = "DATA_LOSS"


class ObjectLocked(ArchiveError):
    """The object is under retention and cannot be deleted yet."""

    status = "FAILED_PRECONDITION"

    def __init__(self, message: str, key: str, retain_until: datetime) -> None:
        super().__init__(message)
        self.key = key
        self.retain_until = retain_until


class ObjectLockUnsupported(ArchiveError):
    """Retention was asked of a store (or bucket) that cannot enforce it."""

    status = "FAILED_PRECONDITION"


class InvalidKey(ArchiveError):
    status = "INVALID_ARGUMENT"


class InvalidRetention(ArchiveError):
    status = "INVALID_ARGUMENT"


def check_key(key: str) -> str:
    """`key` if it is a safe relative key; InvalidKey saying why if not."""
    problem = _key_problem(key)
    if problem:
        raise InvalidKey(f"refusing archive key {key!r:.200}: {problem}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key, or a key followed by one '/'."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _key_problem(key: str) -> str | None:
    if not isinstance(key, str) or not key:
        return "a key is a non-empty string"
    if _FORBIDDEN.search(key):
        return "it contains a control character or a backslash"
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        return "it is not valid Unicode text"
    if size > MAX_KEY_BYTES:
        return f"it is {size} UTF-8 bytes long; the limit is {MAX_KEY_BYTES}"
    if key.startswith("/"):
        return "a key is relative: it must not start with '/'"
    for part in key.split("/"):
        if not part:
            return "it has an empty part ('//' or a trailing '/')"
        if part.startswith("."):
            return "no part may start with '.' ('.', '..' and hidden names are refused)"
        if len(part.encode()) > MAX_PART_BYTES:
            return f"a part is longer than {MAX_PART_BYTES} UTF-8 bytes"
    return None


def check_retain_until(when: datetime) -> datetime:
    """`when` in UTC, if it is a timezone-aware time in the future."""
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise InvalidRetention(f"retain_until must be a timezone-aware datetime, not {when!r}")
    when = when.astimezone(UTC)
    if when <= datetime.now(UTC):
        raise InvalidRetention(f"retain_until {when.isoformat()} is not in the future")
    return when


def content_key(kind: str, data: bytes) -> str:
    """The key of content-addressed `data`: `models/sha256/<hex>.onnx`,
    `environments/sha256/<hex>.json`, `baselines/sha256/<hex>.json`. `kind` is a key of
    CONTENT_KINDS."""
    try:
        folder, suffix = CONTENT_KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(CONTENT_KINDS))
        raise ValueError(f"unknown content kind {kind!r}; known: {known}") from None
    return f"{folder}/sha256/{hashlib.sha256(data).hexdigest()}{suffix}"


def open_store(url: str, *, s3: S3Options | None = None) -> ObjectStore:
    """The store an `--archive` URL names: `file:///abs/path` (an existing directory) or
    `s3://bucket[/prefix]` (endpoint, region and credentials from the standard AWS
    environment; `s3` sets timeouts and retries). ConfigError for anything else."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.query or parsed.fragment:
        raise ConfigError(f"archive URL {url!r} must not have a query or fragment")
    if parsed.scheme == "file":
        return _file_store(url, parsed)
    if parsed.scheme == "s3":
        return _s3_store(url, parsed, s3)
    raise ConfigError(
        f"archive URL {url!r} is not supported: use s3://bucket/prefix or file:///absolute/path"
    )


def _file_store(url: str, parsed: urllib.parse.SplitResult) -> ObjectStore:
    from mlwitness.archive.files import FileStore

    if parsed.netloc not in ("", "localhost"):
        raise ConfigError(f"archive URL {url!r} names a host; use file:///absolute/path")
    path = urllib.parse.unquote(parsed.path)
    if not path.startswith("/"):
        raise ConfigError(f"archive URL {url!r} needs an absolute path: file:///absolute/path")
    if not Path(path).is_dir():
        raise ConfigError(
            f"archive URL {url!r}: {path} is not an existing directory (a file:// archive is "
            "not created on the fly, so that a volume that failed to mount is noticed)"
        )
    return FileStore(Path(path))


def _s3_store(url: str, parsed: urllib.parse.SplitResult, options: S3Options | None) -> ObjectStore:
    from mlwitness.archive.s3 import S3Options, S3Store

    bucket = parsed.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"archive URL {url!r}: {bucket!r} is not an S3 bucket name "
            "(3-63 lowercase letters, digits, '.' and '-')"
        )
    prefix = urllib.parse.unquote(parsed.path).strip("/")
    if prefix:
        try:
            check_key(prefix)
        except InvalidKey as exc:
            raise ConfigError(f"archive URL {url!r}: the prefix is unsafe: {exc}") from None
    return S3Store(bucket, prefix, options or S3Options())
