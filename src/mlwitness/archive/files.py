"""FileStore: the archive in a local or mounted directory (`file:///abs/path`).

Each key is a file under the root, its '/'-separated parts the directories. Writes are
atomic and durable: the bytes go to a temporary file in the target directory (named with a
leading '.', which no key may have, so listings never see it), are fsynced, and become the
object by rename (replace) or by hard link (`if_absent`: a link fails when the name exists,
so of two racing writers exactly one creates); then the directory is fsynced. Objects are
created mode 0640 whatever the umask. The root must exist: a missing mount point should
fail loudly, not fill the container's own disk.

Retention is refused (ObjectLockUnsupported): S3 Object Lock is enforced by the server
against every client, whereas anyone who can write this directory can delete from it, so a
file store claiming to lock would promise what it cannot keep.

Symbolic links inside the root are not followed when listing and are not created; whoever
can plant one there already controls the archive.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from mlwitness.archive.store import (
    ArchiveConflict,
    ArchiveDenied,
    ArchiveError,
    ArchiveUnavailable,
    NotFound,
    ObjectInfo,
    ObjectLockUnsupported,
    PutResult,
    check_key,
    check_prefix,
)
from mlwitness.errors import ConfigError

log = logging.getLogger(__name__)

FILE_MODE = 0o640
DIR_MODE = 0o750


class FileStore:
    """An ObjectStore over the directory `root`, which must exist."""

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise ConfigError(f"archive directory {root} must be an absolute path")
        if not root.is_dir():
            raise ConfigError(f"archive directory {root} does not exist or is not a directory")
        self.root = root

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def supports_object_lock(self) -> bool:
        return False

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        retain_until: datetime | None = None,
    ) -> PutResult:
        path = self._path(key)
        if retain_until is not None:
            raise ObjectLockUnsupported(
                f"cannot keep {path.as_uri()} until {retain_until}: a file:// archive cannot "
                "lock objects; retention needs an s3:// archive on a bucket with Object Lock"
            )
        sha = hashlib.sha256(data).hexdigest()
        with self._os_errors(key, "write"):
            if if_absent and path.exists():
                return self._existing(key, path, data, sha)
            self._make_dirs(path.parent)
            _remove_stale_temporaries(path)
            temporary = self._write_temporary(path, data)
            try:
                if not if_absent:
                    os.replace(temporary, path)
                elif not self._link(temporary, path):
                    return self._existing(key, path, data, sha)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
            _fsync_dir(path.parent)
        return PutResult(key, True, len(data), sha)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with self._os_errors(key, "read"):
            try:
                return path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise NotFound(f"{path.as_uri()} does not exist") from None

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        with self._os_errors(key, "read"):
            try:
                with open(path, "rb") as handle:
                    # A file store keeps no checksum beside the bytes: hash them, so that
                    # `head` answers what S3's does.
                    digest = hashlib.file_digest(handle, "sha256")
                    size = os.fstat(handle.fileno()).st_size
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        return ObjectInfo(key, size, sha256=digest.hexdigest())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        with self._os_errors(prefix, "list"):
            found = sorted(
                (key, size) for key, size in self._walk(start, folder) if key.startswith(prefix)
            )
        for key, size in found:
            yield ObjectInfo(key, size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._os_errors(key, "delete"):
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            except IsADirectoryError:
                return  # a folder of other keys, not an object
            _fsync_dir(path.parent)
            self._prune(path.parent)

    # ── internals ─────────────────────────────────────────────────────────────────────

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _existing(self, key: str, path: Path, data: bytes, sha: str) -> PutResult:
        """The answer to an `if_absent` put whose key already exists."""
        try:
            stored = path.read_bytes()
        except IsADirectoryError:
            raise ArchiveConflict(
                f"cannot create {path.as_uri()}: other keys are stored under it", key
            ) from None
        if stored != data:
            theirs = hashlib.sha256(stored).hexdigest()
            raise ArchiveConflict(
                f"{path.as_uri()} already holds different bytes (sha256 {theirs}, "
                f"{len(stored)} bytes) from the ones being put (sha256 {sha}, "
                f"{len(data)} bytes)",
                key,
            )
        return PutResult(key, False, len(data), sha)

    def _link(self, temporary: Path, path: Path) -> bool:
        """Give the temporary file its final name unless the name exists; False if it did."""
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise ArchiveError(
                    f"cannot create {path.as_uri()}: the file system under {self.root} does "
                    f"not support hard links, which create-if-absent needs ({exc.strerror})"
                ) from exc
            raise
        return True

    def _write_temporary(self, path: Path, data: bytes) -> Path:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # the umask does not decide who may read evidence
            with open(fd, "wb", closefd=False) as handle:
                handle.write(data)
                handle.flush()
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        os.close(fd)
        return temporary

    def _make_dirs(self, directory: Path) -> None:
        """Create the missing folders below the root, each one made durable in its parent."""
        missing = []
        while directory != self.root and not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for folder in reversed(missing):
            try:
                os.mkdir(folder, DIR_MODE)
            except FileExistsError:
                if folder.is_dir():
                    continue  # another writer made it
                raise NotADirectoryError(
                    errno.ENOTDIR, "an object has this name", str(folder)
                ) from None
            _fsync_dir(folder.parent)

    def _prune(self, directory: Path) -> None:
        """Remove folders that deleting left empty, up to the root (best effort: another
        writer may be filling one right now, and then it stays)."""
        while directory != self.root:
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = directory.parent

    def _walk(self, directory: Path, folder: str) -> Iterator[tuple[str, int]]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temporary files of writers, and nothing a key can name
            key = f"{folder}/{entry.name}" if folder else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key)
            elif entry.is_file(follow_symlinks=False):
                if _is_key(key):
                    yield key, entry.stat(follow_symlinks=False).st_size
                else:
                    log.warning("archive %s: skipping %r, which is not a valid key", self.root, key)

    @contextlib.contextmanager
    def _os_errors(self, key: str, action: str) -> Iterator[None]:
        try:
            yield
        except PermissionError as exc:
            raise ArchiveDenied(f"cannot {action} {key!r} in {self.root}: {exc.strerror}") from exc
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise ArchiveConflict(
                f"cannot {action} {key!r} in {self.root}: a part of it is an object, or "
                "other keys are stored under it",
                key,
            ) from exc
        except OSError as exc:
            raise ArchiveUnavailable(
                f"cannot {action} {key!r} in {self.root}: {exc.strerror or exc}"
            ) from exc


def _is_key(key: str) -> bool:
    try:
        check_key(key)
    except ArchiveError:
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STALE_TEMPORARY_S = 3600.0  # older than any upload under way: a writer killed mid-write


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files a writer killed while writing `path` left (a restarted
    shipper writes the same key again). Young ones may be another writer's, under way."""
    cutoff = time.time() - STALE_TEMPORARY_S
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.lstat().st_mtime < cutoff:
                stale.unlink()
