"""The archive: sealed segments of the ledger in object storage, and a fleet of chains read
back from it.

- `store`: the `ObjectStore` contract every backend keeps, its errors, the rules for keys,
  `content_key` for content-addressed objects, and `open_store(url)`.
- `files`: `file:///abs/path`, a local or mounted directory (FileStore).
- `s3`: `s3://bucket/prefix`, Amazon S3 or an S3-compatible server (S3Store, on boto3,
  which the `archive` extra installs).
- `segments`: the archive's layout; a range of a chain's records as Parquet and its
  manifest (the commit point); content-addressed models, environments, baselines.
- `shipper`: the thread that seals and uploads what the ledger loaded, without gap or
  duplicate across crashes and outages (`Shipper`, its status for metrics and health).
- `retention`: deleting locally what the archive was read back to hold (`prune_archived`).
- `fleet`: every chain as one DuckDB database (`open_fleet`) and the ledger's reader over
  it (`FleetReader`), records addressed by request id or CHAIN:SEQ.
- `verify`: every chain checked from the objects (`verify_archive`).
- `iceberg`: the segments registered in an Apache Iceberg table (`register`).

The stores move named bytes and keep them intact and know nothing of the ledger; the
other modules read the ledger (layer 3), so the package sits on layer 4.
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
