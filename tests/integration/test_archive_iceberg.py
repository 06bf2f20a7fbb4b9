"""Registering the archive in an Iceberg table: pyiceberg's SQL catalog on SQLite, the
segments and the table's metadata on a real S3 API (moto's server on 127.0.0.1)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from archive_support import T0_US, make_ledger, manifests, ship
from s3_server import S3Server, point_aws_at, running_s3

from mlwitness.archive import ObjectStore, open_store
from mlwitness.archive.iceberg import open_catalog, register


@pytest.fixture(scope="module")
def shared_s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


@pytest.fixture
def archive(shared_s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
            ) -> tuple[str, ObjectStore, list[str]]:
    """An s3:// archive of two chains: its URL, store and chain ids."""
    point_aws_at(monkeypatch, shared_s3.endpoint)
    url = f"s3://{shared_s3.create_bucket()}/credit"
    store = open_store(url)
    chains = []
    for n, count in enumerate((130, 70)):
        path = tmp_path / f"ledger{n}.duckdb"
        chains.append(make_ledger(path, count, tag=f"c{n}", received_us=T0_US + n))
        ship(path, store, max_records=50)
    return url, store, chains


def scan(catalog_uri: str, url: str) -> list[tuple[str, int, str]]:
    table = open_catalog(catalog_uri, f"{url}/iceberg").load_table("mlwitness.records")
    rows = table.scan(selected_fields=("chain_id", "seq", "request_id")).to_arrow()
    return sorted(zip(*(rows.column(c).to_pylist() for c in ("chain_id", "seq", "request_id")),
                      strict=True))


def test_registering_twice_adds_each_segment_once_and_the_table_holds_every_record(
        archive: tuple[str, ObjectStore, list[str]], tmp_path: Path) -> None:
    url, store, chains = archive
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    first = register(url, catalog)
    assert (len(first.added), first.already, first.skipped) == (5, 0, [])
    second = register(url, catalog)
    assert (second.added, second.already) == ([], 5)
    rows = scan(catalog, url)
    assert len(rows) == 200 == len(set(rows))
    assert {(c, s) for c, s, _ in rows} == {(chains[0], s) for s in range(1, 131)} | {
        (chains[1], s) for s in range(1, 71)}
    table = open_catalog(catalog, f"{url}/iceberg").load_table("mlwitness.records")
    assert [f.name for f in table.spec().fields] == ["chain_id"]
    assert set(table.inspect.files().column("file_path").to_pylist()) == {
        store.url(m.parquet_key) for m in manifests(store)}


def test_new_segments_are_added_by_the_next_registration(
        archive: tuple[str, ObjectStore, list[str]], tmp_path: Path) -> None:
    url, store, _ = archive
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    register(url, catalog)
    path = tmp_path / "later.duckdb"
    chain = make_ledger(path, 40, tag="later")
    ship(path, store)
    again = register(url, catalog)
    assert (len(again.added), again.already) == (1, 5)
    assert sum(c == chain for c, _, _ in scan(catalog, url)) == 40


def test_two_registrations_at_once_add_every_segment_once(
        archive: tuple[str, ObjectStore, list[str]], tmp_path: Path) -> None:
    url, _, _ = archive
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    register(url, catalog)  # the table exists; both race to add the next segments
    path = tmp_path / "later.duckdb"
    make_ledger(path, 120, tag="later")
    ship(path, open_store(url), max_records=20)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            register(url, catalog)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    rows = scan(catalog, url)
    assert len(rows) == 320 == len(set(rows))


def test_a_segment_whose_object_does_not_match_its_manifest_is_not_registered(
        archive: tuple[str, ObjectStore, list[str]], tmp_path: Path) -> None:
    url, store, _ = archive
    victim = manifests(store)[0]
    store.put(victim.parquet_key, b"not the segment")
    result = register(url, f"sqlite:///{tmp_path / 'catalog.db'}")
    assert len(result.added) == 4
    assert result.skipped == [f"{victim.parquet_key} does not match its manifest's SHA-256"]
