"""The archive: object storage that sealed ledger segments, models and environments are
shipped to, and that a fleet audit server reads back.

- `store`: the `ObjectStore` contract every backend keeps, its errors, the rules for keys,
  `content_key` for content-addressed objects, and `open_store(url)`.
- `files`: `file:///abs/path`, a local or mounted directory (FileStore).
- `s3`: `s3://bucket/prefix`, Amazon S3 or an S3-compatible server (S3Store, on boto3,
  which the `archive` extra installs).

Nothing here knows about the ledger: a store moves named bytes and keeps them intact.
"""

from mlwitness.archive.store import (
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveDenied,
    ArchiveError,
    ArchiveUnavailable,
    InvalidKey,
    InvalidRetention,
    NotFound,
    ObjectInfo,
    ObjectLocked,
    ObjectLockUnsupported,
    ObjectStore,
    PutResult,
    check_key,
    content_key,
    open_store,
)

__all__ = [
    "ArchiveConflict",
    "ArchiveCorrupt",
    "ArchiveDenied",
    "ArchiveError",
    "ArchiveUnavailable",
    "InvalidKey",
    "InvalidRetention",
    "NotFound",
    "ObjectInfo",
    "ObjectLockUnsupported",
    "ObjectLocked",
    "ObjectStore",
    "PutResult",
    "check_key",
    "content_key",
    "open_store",
]
