"""S3Store: the archive in Amazon S3 or an S3-compatible server (`s3://bucket/prefix`).

Configuration is AWS's own, read by boto3 when the store opens: credentials from the
default chain (AWS_ACCESS_KEY_ID/…, web identity as IRSA sets it up, profiles, instance
metadata); the endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO, Ceph, a test
server), in which case path-style addressing is used, as those servers expect; the region
from AWS_REGION or AWS_DEFAULT_REGION (or the profile). Prefer AWS_ENDPOINT_URL_S3 next to
IRSA: AWS_ENDPOINT_URL also redirects the STS call that fetches the credentials.

- Create-if-absent is S3's conditional write (`If-None-Match: *`, AWS since August 2024,
  also MinIO, R2, GCS). A server that ignores the header silently overwrites; one that
  refuses it makes `put(if_absent=True)` fail with a clear error.
- Integrity: every put sends the SHA-256 of the bytes (`x-amz-checksum-sha256`), which AWS
  checks before storing and returns on HEAD and GET; `get` rehashes what it receives.
- Retries: botocore's standard mode (exponential backoff with jitter on throttling, 5xx,
  timeouts and connection errors), `max_attempts` in all; connect and read timeouts bound
  every attempt, so no call blocks for longer than about
  max_attempts × (connect_timeout + read_timeout) + the backoff between attempts.
- Object Lock: `retain_until` puts the object in COMPLIANCE mode, which nobody, the root
  account included, can shorten or lift. `delete` refuses an object under retention; on a
  versioned bucket a delete that is allowed leaves the old version behind a delete marker.
- Objects are written with one PutObject, so at most 5 GiB each.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlwitness.archive.store import (
    MAX_KEY_BYTES,
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveDenied,
    ArchiveError,
    ArchiveUnavailable,
    InvalidKey,
    NotFound,
    ObjectInfo,
    ObjectLocked,
    ObjectLockUnsupported,
    PutResult,
    check_key,
    check_prefix,
    check_retain_until,
)
from mlwitness.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PUT_BYTES = 5 << 30  # S3's limit for a single PutObject
_DENIED = {
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AccountProblem", "403",
}  # fmt: skip
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CONDITION_RACES = 3  # 409 ConditionalRequestConflict: another conditional write was in flight


@dataclass(frozen=True)
class S3Options:
    """Bounds on every S3 call: seconds to connect, seconds to wait for each read, and
    attempts in all (the first included) under botocore's standard retry mode."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 4
    page_size: int = 1000  # keys per ListObjectsV2 page (S3's maximum)


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigError("s3:// archives need boto3: pip install 'mlwitness[archive]'") from None
    return boto3


class S3Store:
    """An ObjectStore over `bucket`, every key under `prefix` (no trailing '/')."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        options: S3Options | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        boto3 = _boto3()
        from botocore.config import Config

        options = options or S3Options()
        environ = os.environ if environ is None else environ
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
        config = Config(
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            retries={"mode": "standard", "total_max_attempts": options.max_attempts},
            s3={"addressing_style": "path"} if endpoint else None,
        )
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.options = options
        self.endpoint = endpoint
        with self._errors("open", ""):
            session = boto3.session.Session(region_name=region or None)
            self._client = session.client("s3", endpoint_url=endpoint, config=config)

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{check_key(key)}"

    def supports_object_lock(self) -> bool:
        with self._errors("read the Object Lock configuration of", ""):
            try:
                answer = self._client.get_object_lock_configuration(Bucket=self.bucket)
            except self._client.exceptions.ClientError as exc:
                if _code(exc) in ("ObjectLockConfigurationNotFoundError", "NotImplemented"):
                    return False
                raise
        return answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        retain_until: datetime | None = None,
    ) -> PutResult:
        name = self._name(key)
        until = None if retain_until is None else check_retain_until(retain_until)
        if len(data) > MAX_PUT_BYTES:
            raise ArchiveError(f"cannot put {self.url(key)}: {len(data)} bytes is over 5 GiB")
        digest = hashlib.sha256(data).digest()
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": name,
            "Body": data,
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": base64.b64encode(digest).decode(),
        }
        if until is not None:
            request |= {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}
        if if_absent:
            request["IfNoneMatch"] = "*"
        for _ in range(_CONDITION_RACES):
            with self._errors("put", key):
                try:
                    self._client.put_object(**request)
                    return PutResult(key, True, len(data), digest.hex())
                except self._client.exceptions.ClientError as exc:
                    code = _code(exc)
                    if if_absent and code in ("PreconditionFailed", "412"):
                        existing = self._existing(key, data, digest.hex(), until)
                        if existing is not None:
                            return existing
                        continue  # deleted since: try to create it again
                    if if_absent and code in ("ConditionalRequestConflict", "409"):
                        continue
                    if code == "NotImplemented" and if_absent:
                        raise ArchiveError(
                            f"cannot create {self.url(key)} only-if-absent: the S3 server "
                            "does not support conditional writes (If-None-Match)"
                        ) from exc
                    raise
        raise ArchiveUnavailable(
            f"cannot put {self.url(key)}: concurrent writers kept racing for it"
        )

    def get(self, key: str) -> bytes:
        name = self._name(key)
        with self._errors("get", key):
            try:
                answer = self._client.get_object(
                    Bucket=self.bucket, Key=name, ChecksumMode="ENABLED"
                )
            except self._client.exceptions.ClientError as exc:
                if _code(exc) in _MISSING:
                    raise NotFound(f"{self.url(key)} does not exist") from None
                raise
            data: bytes = answer["Body"].read()
        # botocore checks this too (ChecksumMode), where its configuration lets it; check
        # here as well, so that no setting can turn the check off.
        expected = _sha256(answer.get("ChecksumSHA256"))
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ArchiveCorrupt(
                f"{self.url(key)}: the bytes read do not match the SHA-256 stored with them"
            )
        return data

    def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)
        with self._errors("head", key):
            try:
                answer = self._client.head_object(
                    Bucket=self.bucket, Key=name, ChecksumMode="ENABLED"
                )
            except self._client.exceptions.ClientError as exc:
                if _code(exc) in _MISSING:
                    return None
                raise
        until = answer.get("ObjectLockRetainUntilDate") if answer.get("ObjectLockMode") else None
        return ObjectInfo(
            key,
            answer["ContentLength"],
            sha256=_sha256(answer.get("ChecksumSHA256")),
            etag=answer.get("ETag", "").strip('"') or None,
            retain_until=None if until is None else until.astimezone(UTC),
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.options.page_size},
        )
        with self._errors("list", prefix):
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self.prefix) :]
                    try:
                        check_key(key)
                    except InvalidKey:
                        log.warning("archive %s: skipping %r, not a valid key", self, key)
                        continue
                    yield ObjectInfo(key, item["Size"], etag=item.get("ETag", "").strip('"'))

    def delete(self, key: str) -> None:
        info = self.head(key)
        if info is None:
            return
        # On a bucket with Object Lock a plain DeleteObject of a locked object "succeeds" by
        # hiding it behind a delete marker; refuse instead, as the contract says.
        if info.retain_until is not None and info.retain_until > datetime.now(UTC):
            raise ObjectLocked(
                f"{self.url(key)} is under S3 Object Lock until "
                f"{info.retain_until.isoformat()} and cannot be deleted before then",
                key,
                info.retain_until,
            )
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))

    # ── internals ─────────────────────────────────────────────────────────────────────

    def _name(self, key: str) -> str:
        name = self.prefix + check_key(key)
        if len(name.encode()) > MAX_KEY_BYTES:
            raise InvalidKey(f"refusing archive key {key!r:.200}: with the prefix it is too long")
        return name

    def _existing(
        self, key: str, data: bytes, sha: str, until: datetime | None
    ) -> PutResult | None:
        """The answer to an `if_absent` put that found `key` taken; None if it vanished."""
        info = self.head(key)
        if info is None:
            return None
        theirs = info.sha256
        if info.size == len(data) and theirs is None:  # no full-object checksum stored
            try:
                theirs = hashlib.sha256(self.get(key)).hexdigest()
            except NotFound:
                return None
        if info.size != len(data) or theirs != sha:
            raise ArchiveConflict(
                f"{self.url(key)} already holds different bytes ({info.size} bytes, sha256 "
                f"{theirs or 'unknown'}) from the ones being put ({len(data)} bytes, "
                f"sha256 {sha})",
                key,
            )
        if until is not None and (info.retain_until is None or info.retain_until < until):
            self._retain(key, until)
        return PutResult(key, False, len(data), sha)

    def _retain(self, key: str, until: datetime) -> None:
        with self._errors("lock", key):
            self._client.put_object_retention(
                Bucket=self.bucket,
                Key=self._name(key),
                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until},
            )

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn what boto3 raises into the archive's errors, naming the object."""
        from botocore import exceptions as boto

        where = f"s3://{self.bucket}/{self.prefix}{key}"  # key or prefix, checked already
        try:
            yield
        except boto.ClientError as exc:
            raise self._refusal(exc, action, where) from exc
        except (boto.NoCredentialsError, boto.PartialCredentialsError) as exc:
            raise ConfigError(
                f"cannot {action} {where}: no usable AWS credentials ({exc}); set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a web identity (IRSA) or a profile"
            ) from exc
        except boto.CredentialRetrievalError as exc:
            raise ArchiveDenied(f"cannot {action} {where}: {exc}") from exc
        except (boto.ChecksumError, boto.FlexibleChecksumError) as exc:
            raise ArchiveCorrupt(f"cannot {action} {where}: {exc}") from exc
        except (boto.HTTPClientError, boto.ConnectionError) as exc:
            raise ArchiveUnavailable(
                f"cannot {action} {where}: the S3 endpoint "
                f"{self.endpoint or '(AWS)'} did not answer after "
                f"{self.options.max_attempts} attempts: {exc}"
            ) from exc
        except boto.BotoCoreError as exc:
            raise ArchiveError(f"cannot {action} {where}: {exc}") from exc

    def _refusal(self, exc: Any, action: str, where: str) -> Exception:
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        said = f"cannot {action} {where}: S3 answered {code}: {message}"
        if code == "NoSuchBucket":
            return ConfigError(f"cannot {action} {where}: bucket {self.bucket} does not exist")
        if code in _DENIED:
            return ArchiveDenied(said)
        if code == "InvalidRequest" and "ObjectLock" in message:
            return ObjectLockUnsupported(
                f"cannot {action} {where} with retention: bucket {self.bucket} has no Object "
                "Lock (it can only be turned on for a bucket with versioning)"
            )
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling"):
            return ArchiveUnavailable(f"{said} (after {self.options.max_attempts} attempts)")
        return ArchiveError(said)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _sha256(checksum: str | None) -> str | None:
    """The hex SHA-256 in an x-amz-checksum-sha256 value; None for none, or for the
    checksum-of-checksums of a multipart upload ('…-3')."""
    if not checksum or "-" in checksum:
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except binascii.Error:
        return None
    return raw.hex() if len(raw) == 32 else None
