"""The object-store contract, one suite run against both backends: a directory under
tmp_path (file://) and a real S3 API (moto's server on 127.0.0.1, s3://), as Litestream runs
its replica-client tests against the file backend and S3."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from s3_server import S3Server, point_aws_at, running_s3

from mlwitness.archive import (
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveUnavailable,
    InvalidKey,
    InvalidRetention,
    NotFound,
    ObjectLocked,
    ObjectLockUnsupported,
    ObjectStore,
    content_key,
    open_store,
)
from mlwitness.archive.files import FileStore
from mlwitness.archive.s3 import S3Options, S3Store
from mlwitness.errors import ConfigError

# Short bounds, so that a dead endpoint fails a test in seconds rather than minutes.
QUICK = S3Options(connect_timeout=1.0, read_timeout=1.0, max_attempts=2)


@dataclass
class Backend:
    name: str
    store: ObjectStore
    seed: Callable[[dict[str, bytes]], None]  # many objects at once, bypassing the store


@pytest.fixture(scope="module")
def shared_s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


@pytest.fixture
def s3_server(shared_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The module's S3 server, with this test's AWS environment pointing at it."""
    point_aws_at(monkeypatch, shared_s3.endpoint)
    return shared_s3


@pytest.fixture
def own_s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A server of this test's own, which it may stop and start."""
    with running_s3(monkeypatch) as server:
        yield server


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        root = tmp_path / "archive"
        root.mkdir()

        def write_files(objects: dict[str, bytes]) -> None:
            for key, data in objects.items():
                (root / key).parent.mkdir(parents=True, exist_ok=True)
                (root / key).write_bytes(data)

        yield Backend("file", open_store(root.as_uri()), write_files)
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket()
    store = open_store(f"s3://{bucket}/fleet/a", s3=QUICK)

    def seed(objects: dict[str, bytes]) -> None:
        server.seed(bucket, {f"fleet/a/{key}": data for key, data in objects.items()})

    yield Backend("s3", store, seed)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ── the contract, on both backends ─────────────────────────────────────────────────────


def test_put_get_head_list_delete_round_trip(backend: Backend) -> None:
    store = backend.store
    result = store.put("segments/r1/000001.parquet", b"first segment")
    assert (result.created, result.size, result.sha256) == (True, 13, sha(b"first segment"))
    assert store.get("segments/r1/000001.parquet") == b"first segment"

    info = store.head("segments/r1/000001.parquet")
    assert info is not None
    assert (info.key, info.size, info.sha256) == (
        "segments/r1/000001.parquet",
        13,
        sha(b"first segment"),
    )
    assert info.retain_until is None
    assert [i.key for i in store.list("segments/")] == ["segments/r1/000001.parquet"]

    store.delete("segments/r1/000001.parquet")
    assert store.head("segments/r1/000001.parquet") is None
    with pytest.raises(NotFound, match="000001.parquet"):
        store.get("segments/r1/000001.parquet")
    assert list(store.list()) == []


def test_missing_objects_are_absent_and_deleting_them_succeeds(backend: Backend) -> None:
    store = backend.store
    assert store.head("no/such") is None
    with pytest.raises(NotFound) as caught:
        store.get("no/such")
    assert caught.value.status == "NOT_FOUND"
    assert store.url("no/such") in caught.value.message
    store.delete("no/such")
    assert list(store.list("no/")) == []


def test_put_if_absent_is_idempotent_for_identical_bytes(backend: Backend) -> None:
    store = backend.store
    first = store.put("models/m.onnx", b"model bytes", if_absent=True)
    again = store.put("models/m.onnx", b"model bytes", if_absent=True)
    assert (first.created, again.created) == (True, False)
    assert again.sha256 == first.sha256 == sha(b"model bytes")
    assert store.get("models/m.onnx") == b"model bytes"


@pytest.mark.parametrize("other", [b"model bytez", b"longer model bytes", b""])
def test_put_if_absent_refuses_different_bytes_naming_the_key(
    backend: Backend, other: bytes
) -> None:
    store = backend.store
    store.put("models/m.onnx", b"model bytes", if_absent=True)
    with pytest.raises(ArchiveConflict) as caught:
        store.put("models/m.onnx", other, if_absent=True)
    assert caught.value.key == "models/m.onnx"
    assert caught.value.status == "ALREADY_EXISTS"
    assert store.url("models/m.onnx") in caught.value.message
    assert store.get("models/m.onnx") == b"model bytes"


def test_plain_put_replaces_the_object(backend: Backend) -> None:
    store = backend.store
    store.put("latest.json", b'{"seq": 1}')
    result = store.put("latest.json", b'{"seq": 2}')
    assert result.created
    assert store.get("latest.json") == b'{"seq": 2}'
    assert [i.key for i in store.list()] == ["latest.json"]


def test_racing_creators_of_one_key_never_both_create(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    for round in range(20):
        key = f"segments/{round:06d}.parquet"
        start = threading.Barrier(2, timeout=10)
        outcomes: dict[bytes, object] = {}

        def put(
            data: bytes,
            key: str = key,
            start: threading.Barrier = start,
            outcomes: dict[bytes, object] = outcomes,
        ) -> None:
            start.wait()
            try:
                outcomes[data] = store.put(key, data, if_absent=True)
            except ArchiveConflict as exc:
                outcomes[data] = exc

        threads = [threading.Thread(target=put, args=(d,)) for d in (b"replica A", b"replica B")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        created = [d for d, o in outcomes.items() if not isinstance(o, ArchiveConflict)]
        refused = [d for d, o in outcomes.items() if isinstance(o, ArchiveConflict)]
        assert len(created) == 1 and len(refused) == 1
        assert store.get(key) == created[0]


HOSTILE_KEYS = [
    "",
    "../outside",
    "a/../../outside",
    "/etc/passwd",
    "a//b",
    "a/",
    ".",
    "a/./b",
    ".hidden",
    "a/.tmp",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "a\\..\\b",
    "x" * 256,
    "a/" * 513,
    "\udcff",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_hostile_keys_are_refused_before_touching_the_store(
    backend: Backend, key: str, tmp_path: Path
) -> None:
    store = backend.store
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for attempt in (
        lambda: store.put(key, b"payload"),
        lambda: store.put(key, b"payload", if_absent=True),
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.delete(key),
        lambda: store.url(key),
    ):
        with pytest.raises(InvalidKey) as caught:
            attempt()
        assert caught.value.status == "INVALID_ARGUMENT"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert list(store.list()) == []


def test_list_is_sorted_by_key_and_filtered_by_prefix(backend: Backend) -> None:
    store = backend.store
    keys = ["b/2", "a/b/c", "a-b", "a/b", "ab", "a/é", "a/z", "b/10"]
    for key in keys:
        if key != "a/b":  # "a/b" and "a/b/c" cannot both be files: one of each suffices
            store.put(key, key.encode())
    listed = list(store.list())
    assert [i.key for i in listed] == sorted(k for k in keys if k != "a/b")
    assert [i.size for i in listed] == [len(i.key.encode()) for i in listed]
    assert [i.key for i in store.list("a/")] == ["a/b/c", "a/z", "a/é"]
    assert [i.key for i in store.list("a")] == ["a-b", "a/b/c", "a/z", "a/é", "ab"]
    assert [i.key for i in store.list("b/1")] == ["b/10"]
    assert list(store.list("c/")) == []
    with pytest.raises(InvalidKey):
        list(store.list("../"))


def test_list_pages_through_more_than_a_thousand_objects(backend: Backend) -> None:
    keys = [f"segments/{n:06d}.parquet" for n in range(1234)]
    backend.seed({key: b"s" for key in reversed(keys)})
    backend.seed({"environments/e.json": b"{}"})
    listed = [info.key for info in backend.store.list("segments/")]
    assert listed == keys


def test_a_20_mib_object_round_trips(backend: Backend) -> None:
    data = os.urandom(20 << 20)
    result = backend.store.put("segments/big.parquet", data, if_absent=True)
    assert result.sha256 == sha(data)
    assert backend.store.get("segments/big.parquet") == data
    info = backend.store.head("segments/big.parquet")
    assert info is not None and info.size == len(data) and info.sha256 == sha(data)
    assert not backend.store.put("segments/big.parquet", data, if_absent=True).created


# ── backend specifics ──────────────────────────────────────────────────────────────────


def test_open_store_names_each_backend(tmp_path: Path, s3_server: S3Server) -> None:
    files = open_store(tmp_path.as_uri())
    assert isinstance(files, FileStore)
    assert files.url("a/b.json") == (tmp_path / "a" / "b.json").as_uri()
    bucket = s3_server.create_bucket()
    s3 = open_store(f"s3://{bucket}/fleet/prod/")
    assert isinstance(s3, S3Store)
    assert s3.url("a/b.json") == f"s3://{bucket}/fleet/prod/a/b.json"
    assert open_store(f"s3://{bucket}").url("k") == f"s3://{bucket}/k"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.invalid/bucket",
        "/var/archive",
        "file://relative/path",
        "file:relative",
        "file:///definitely/not/there",
        "s3://",
        "s3://Bad_Bucket/x",
        "s3://ab",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "s3://bucket/x?versionId=1",
    ],
)
def test_open_store_refuses_other_urls_clearly(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert caught.value.status == "INVALID_ARGUMENT"
    assert url in caught.value.message


def test_file_store_writes_0640_files_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        store = open_store(tmp_path.as_uri())
        store.put("a/b/c.bin", b"x", if_absent=True)
        store.put("a/b/c.bin", b"x", if_absent=True)
        store.put("a/d.bin", b"1")
        store.put("a/d.bin", b"2")
        with pytest.raises(ArchiveConflict):
            store.put("a/d.bin", b"3", if_absent=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a/b/c.bin").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c.bin", "d.bin"]


def test_file_store_lists_no_temporary_file_a_crashed_writer_left(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    store.put("segments/1.parquet", b"whole")
    (tmp_path / "segments" / ".2.parquet.0123456789ab.tmp").write_bytes(b"hal")
    assert [i.key for i in store.list()] == ["segments/1.parquet"]
    assert store.head("segments/2.parquet") is None
    assert store.put("segments/2.parquet", b"whole too", if_absent=True).created


def test_file_store_refuses_retention_and_cannot_lock(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    assert store.supports_object_lock() is False
    with pytest.raises(ObjectLockUnsupported, match="file:// archive cannot lock"):
        store.put("k", b"v", retain_until=datetime.now(UTC) + timedelta(days=1))
    assert list(tmp_path.iterdir()) == []


def test_file_store_keys_cannot_cross_objects(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    store.put("a", b"object a")
    with pytest.raises(ArchiveConflict, match="'a/b'"):
        store.put("a/b", b"object under a")
    store.put("c/d", b"object under c")
    with pytest.raises(ArchiveConflict):
        store.put("c", b"object c", if_absent=True)
    with pytest.raises(ArchiveConflict):
        store.put("c", b"object c")
    assert store.get("a") == b"object a" and store.get("c/d") == b"object under c"


def test_deleting_the_last_key_of_a_folder_removes_the_folder(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    store.put("x/y/z", b"1")
    store.put("x/w", b"2")
    store.delete("x/y/z")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["w", "x"]


def test_s3_endpoint_for_s3_alone_wins_over_the_global_one(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    store = open_store(f"s3://{s3_server.create_bucket()}", s3=QUICK)
    assert store.put("k", b"v").created
    assert store.get("k") == b"v"


def test_s3_store_keeps_to_its_prefix(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    one, two = open_store(f"s3://{bucket}/one"), open_store(f"s3://{bucket}/one-two")
    one.put("k", b"1")
    two.put("k", b"2")
    assert [(i.key, one.get(i.key)) for i in one.list()] == [("k", b"1")]
    assert [(i.key, two.get(i.key)) for i in two.list()] == [("k", b"2")]
    stored = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in stored) == ["one-two/k", "one/k"]


def test_s3_object_lock_refuses_delete_until_the_date(s3_server: S3Server) -> None:
    store = open_store(f"s3://{s3_server.create_bucket(object_lock=True)}/p", s3=QUICK)
    assert store.supports_object_lock()
    until = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    store.put("segments/1.parquet", b"sealed", if_absent=True, retain_until=until)
    info = store.head("segments/1.parquet")
    assert info is not None and info.retain_until == until

    with pytest.raises(ObjectLocked) as caught:
        store.delete("segments/1.parquet")
    assert caught.value.key == "segments/1.parquet"
    assert caught.value.retain_until == until
    assert until.isoformat() in caught.value.message
    assert caught.value.status == "FAILED_PRECONDITION"
    assert store.get("segments/1.parquet") == b"sealed"


def test_s3_identical_put_extends_a_shorter_retention(s3_server: S3Server) -> None:
    store = open_store(f"s3://{s3_server.create_bucket(object_lock=True)}", s3=QUICK)
    soon = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    later = soon + timedelta(days=365)
    store.put("k", b"v", if_absent=True, retain_until=soon)
    assert not store.put("k", b"v", if_absent=True, retain_until=later).created
    info = store.head("k")
    assert info is not None and info.retain_until == later
    assert not store.put("k", b"v", if_absent=True, retain_until=soon).created
    info = store.head("k")
    assert info is not None and info.retain_until == later  # never shortened


def test_s3_delete_succeeds_once_retention_has_passed(s3_server: S3Server) -> None:
    store = open_store(f"s3://{s3_server.create_bucket(object_lock=True)}", s3=QUICK)
    # S3 keeps retention dates to the second: a whole second, 1 to 2 s from now.
    until = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    store.put("k", b"v", retain_until=until)
    with pytest.raises(ObjectLocked):
        store.delete("k")
    while datetime.now(UTC) <= until:  # ends within 2 s
        time.sleep(0.05)
    store.delete("k")
    assert store.head("k") is None


def test_s3_retention_must_be_an_aware_future_time(s3_server: S3Server) -> None:
    store = open_store(f"s3://{s3_server.create_bucket(object_lock=True)}", s3=QUICK)
    for when in (datetime.now() + timedelta(days=1), datetime.now(UTC) - timedelta(seconds=5)):
        with pytest.raises(InvalidRetention) as caught:
            store.put("k", b"v", retain_until=when)
        assert caught.value.status == "INVALID_ARGUMENT"
    assert store.head("k") is None


def test_s3_retention_on_a_bucket_without_object_lock_is_refused(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    store = open_store(f"s3://{bucket}", s3=QUICK)
    assert store.supports_object_lock() is False
    with pytest.raises(ObjectLockUnsupported, match=bucket):
        store.put("k", b"v", retain_until=datetime.now(UTC) + timedelta(days=1))
    assert store.head("k") is None


def test_s3_get_detects_bytes_that_do_not_match_their_checksum(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    # moto stores the checksum a client sends without checking it (AWS would refuse the
    # upload): that lets this test store bytes beside a checksum they do not match.
    s3_server.client().put_object(
        Bucket=bucket,
        Key="k",
        Body=b"tampered",
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256="LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=",  # of b"hello"
    )
    with pytest.raises(ArchiveCorrupt) as caught:
        open_store(f"s3://{bucket}", s3=QUICK).get("k")
    assert caught.value.status == "DATA_LOSS"


def test_s3_missing_bucket_is_a_configuration_error(s3_server: S3Server) -> None:
    store = open_store("s3://no-such-bucket-here/p", s3=QUICK)
    with pytest.raises(ConfigError, match="bucket no-such-bucket-here does not exist"):
        store.put("k", b"v")


@pytest.mark.timeout(60)
def test_s3_server_stopped_midway_fails_clearly_then_recovers(own_s3_server: S3Server) -> None:
    s3_server = own_s3_server
    store = open_store(f"s3://{s3_server.create_bucket()}/p", s3=QUICK)
    store.put("before", b"1", if_absent=True)
    s3_server.stop()
    for attempt in (
        lambda: store.put("during", b"2", if_absent=True),
        lambda: store.get("before"),
        lambda: list(store.list()),
    ):
        with pytest.raises(ArchiveUnavailable) as caught:
            attempt()
        assert caught.value.status == "UNAVAILABLE"
        assert s3_server.endpoint in caught.value.message
        assert "2 attempts" in caught.value.message
    s3_server.start()  # same port: the same store carries on
    assert store.get("before") == b"1"
    assert store.put("during", b"2", if_absent=True).created
    assert [i.key for i in store.list()] == ["before", "during"]


@pytest.mark.timeout(60)
def test_s3_endpoint_that_never_answers_times_out(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        quicker = S3Options(connect_timeout=0.5, read_timeout=0.5, max_attempts=2)
        store = open_store("s3://silent-bucket", s3=quicker)
        with pytest.raises(ArchiveUnavailable, match="did not answer after 2 attempts"):
            store.put("k", b"v")


def test_s3_without_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'mlwitness\[archive\]'"):
        open_store("s3://some-bucket/p")


# ── content addressing ─────────────────────────────────────────────────────────────────


def test_content_keys_name_bytes_by_their_sha256() -> None:
    digest = sha(b"onnx")
    assert content_key("model", b"onnx") == f"models/sha256/{digest}.onnx"
    assert content_key("environment", b"{}") == f"environments/sha256/{sha(b'{}')}.json"
    with pytest.raises(ValueError, match="unknown content kind 'segment'"):
        content_key("segment", b"x")


def test_a_writer_killed_mid_write_leaves_no_temporary_once_the_key_is_written_again(
        tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    key = ("records/chain=00112233/date=2026-12-07/"
           "seg-00000000000000000001-00000000000000000002.parquet")
    folder = tmp_path / key.rpartition("/")[0]
    folder.mkdir(parents=True)
    name = key.rpartition("/")[2]
    stale = folder / f".{name}.0123456789ab.tmp"  # as a kill -9 during the write leaves it
    young = folder / f".{name}.ba9876543210.tmp"  # maybe another writer's, under way
    other = folder / ".seg-00000000000000000003-00000000000000000004.parquet.0123456789ab.tmp"
    for path in (stale, young, other):
        path.write_bytes(b"half")
    hour_ago = time.time() - 2 * 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    store.put(key, b"segment", if_absent=True)
    assert store.get(key) == b"segment"
    assert not stale.exists()
    assert young.exists() and other.exists()  # under way, or another key's: not ours to judge
    assert [info.key for info in store.list("records/")] == [key]
