"""Registering the archive's segments in an Apache Iceberg table, for any Iceberg engine.

`register(store_url, catalog_uri)` adds every segment not yet in the table, with
pyiceberg's `add_files`: the Parquet objects stay where the shipper wrote them and become
the table's data files (nothing is copied). The catalog is a SQL catalog (`sqlite:///…`,
the default, or any SQLAlchemy URL) or a REST catalog (`http(s)://…`); the table's
metadata goes under the archive's `iceberg/` folder unless `warehouse` says otherwise.

* **Idempotent.** The files already in the table's current snapshot are read first and
  skipped, so running it again (a CronJob) adds only what was archived since.
* **One writer.** Iceberg commits are optimistic: a commit based on a snapshot that is no
  longer current fails (CommitFailedException), in the SQL catalog as in a REST one. Then
  the table is read again, the files it gained meanwhile are skipped, and the commit is
  tried again (COMMIT_ATTEMPTS in all); so two registrations at once add every file once.
  pyiceberg's own retry (table property `commit.retry.num-retries`, 4 by default) is set to
  0 on the table: it re-applies the same append on top of the concurrent one, which added
  the files twice when two registrations raced (pyiceberg 0.12).
* **Only committed segments.** A segment is registered when its manifest exists and the
  store's SHA-256 of its Parquet object (S3's stored checksum, or the file hashed) is the
  one the manifest names.
* **Schema.** The table's schema is the segments' (Parquet without field ids: pyiceberg
  maps the columns by name). A segment with columns the table lacks (a later ledger format)
  widens the table first (`union_by_name`); older files read those columns as NULL.
  Partitioned by `chain_id` (identity), which each segment holds one value of.

Credentials and the S3 endpoint come from the standard AWS environment, as for the
archive itself.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlwitness.archive import segments
from mlwitness.archive.segments import Manifest
from mlwitness.archive.store import ObjectStore, open_store
from mlwitness.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CATALOG = "sqlite:///catalog.db"
DEFAULT_TABLE = "mlwitness.records"
COMMIT_ATTEMPTS = 5
FILES_PER_COMMIT = 1000
RETRIES = "commit.retry.num-retries"


@dataclass
class Registered:
    table: str
    added: list[str] = field(default_factory=list)  # data file URLs added by this run
    already: int = 0  # segments that were in the table before
    skipped: list[str] = field(default_factory=list)  # segments not registered, and why

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "added": len(self.added), "already": self.already,
                "skipped": self.skipped}


def register(store_url: str, catalog_uri: str = DEFAULT_CATALOG, table: str = DEFAULT_TABLE,
             *, warehouse: str = "", store: ObjectStore | None = None) -> Registered:
    """Add the archive's committed segments that the Iceberg table `table` lacks."""
    try:
        from pyiceberg.exceptions import CommitFailedException
    except ImportError:
        raise ConfigError("Iceberg registration needs pyiceberg: "
                          "pip install 'mlwitness[archive]'") from None
    store = store or open_store(store_url)
    result = Registered(table)
    manifests = _committed(store, result)
    catalog = open_catalog(catalog_uri, warehouse or store_url.rstrip("/") + "/iceberg")
    urls = {data_url(store, m.parquet_key): m for m in manifests}
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            iceberg = _no_blind_retries(catalog, _table(catalog, table, store, manifests))
            present = _files(iceberg)
            wanted = [url for url in urls if url not in present]
            result.already = len(urls) - len(wanted) - len(result.added)
            if not wanted:
                return result
            _widen(iceberg, store, [urls[url] for url in wanted])
            for start in range(0, len(wanted), FILES_PER_COMMIT):
                batch = wanted[start:start + FILES_PER_COMMIT]
                iceberg.add_files(batch, snapshot_properties={
                    "mlwitness.added-segments": str(len(batch))})
                result.added += batch
                iceberg = catalog.load_table(table)
            return result
        except CommitFailedException as exc:
            log.info("iceberg: another writer committed to %s first (%s); reading it again "
                     "(attempt %d)", table, exc, attempt + 1)
    raise ConfigError(f"could not commit to Iceberg table {table} after {COMMIT_ATTEMPTS} "
                      "attempts: other writers kept committing first")


def open_catalog(uri: str, warehouse: str) -> Any:
    """A pyiceberg catalog: REST for http(s) URIs, else a SQL catalog (SQLAlchemy URL)."""
    properties = {"warehouse": warehouse, **file_io_properties()}
    if uri.startswith(("http://", "https://")):
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog("mlwitness", uri=uri, **properties)
    if "://" not in uri:
        raise ConfigError(f"catalog {uri!r}: give sqlite:///path/catalog.db, another "
                          "SQLAlchemy URL, or the http(s) URL of an Iceberg REST catalog")
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("mlwitness", uri=uri, **properties)


def file_io_properties(environ: dict[str, str] | None = None) -> dict[str, str]:
    """pyiceberg's S3 settings from the standard AWS environment (and boto3's credential
    chain, so that IRSA and profiles work as for the archive)."""
    env = dict(os.environ if environ is None else environ)
    properties: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        properties["s3.endpoint"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        properties["s3.region"] = region
    try:
        import boto3

        credentials = boto3.session.Session().get_credentials()
    except Exception:  # no boto3, or no credentials: pyarrow's own chain then
        credentials = None
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        properties["s3.access-key-id"] = frozen.access_key
        properties["s3.secret-access-key"] = frozen.secret_key
        if frozen.token:
            properties["s3.session-token"] = frozen.token
    return properties


def data_url(store: ObjectStore, key: str) -> str:
    """Where an Iceberg engine reads `key`: the store's URL, but a file path as it is (pathlib
    writes '=' as %3D, which readers take literally)."""
    url = store.url(key)
    if url.startswith("file://"):
        return "file://" + urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return url


def _committed(store: ObjectStore, result: Registered) -> list[Manifest]:
    """The segments whose manifest exists and whose Parquet object matches it."""
    manifests = []
    for info in store.list(segments.manifest_prefix()):
        if segments.parse_manifest_key(info.key) is None:
            continue
        try:
            manifest = Manifest.from_bytes(store.get(info.key), info.key)
        except segments.ArchiveError as exc:
            result.skipped.append(f"{info.key}: {exc}")
            continue
        head = store.head(manifest.parquet_key)
        if head is None or (head.sha256 or manifest.parquet_sha256) != manifest.parquet_sha256:
            why = "is missing" if head is None else "does not match its manifest's SHA-256"
            result.skipped.append(f"{manifest.parquet_key} {why}")
            continue
        manifests.append(manifest)
    manifests.sort(key=lambda m: (m.chain_id, m.first_seq))
    return manifests


def _table(catalog: Any, name: str, store: ObjectStore, manifests: list[Manifest]) -> Any:
    from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

    try:
        return catalog.load_table(name)
    except NoSuchTableError:
        pass
    if not manifests:
        raise ConfigError(f"Iceberg table {name} does not exist and the archive has no "
                          "segment yet to take its schema from")
    namespace = name.rpartition(".")[0]
    if namespace:
        catalog.create_namespace_if_not_exists(namespace)
    schema = _schema(store, manifests[0])
    try:
        table = catalog.create_table(name, schema=schema)
        with table.update_spec() as update:
            update.add_identity(segments.CHAIN_COLUMN)
        return catalog.load_table(name)
    except TableAlreadyExistsError:  # another registration made it meanwhile
        return catalog.load_table(name)


def _no_blind_retries(catalog: Any, table: Any) -> Any:
    if table.properties.get(RETRIES) == "0":
        return table
    with table.transaction() as transaction:
        transaction.set_properties({RETRIES: "0"})
    return catalog.load_table(table.name())


def _schema(store: ObjectStore, manifest: Manifest) -> pa.Schema:
    return pq.read_schema(pa.BufferReader(store.get(manifest.parquet_key)))


def _files(table: Any) -> set[str]:
    if table.current_snapshot() is None:
        return set()
    return set(table.inspect.files().column("file_path").to_pylist())


def _widen(table: Any, store: ObjectStore, manifests: list[Manifest]) -> None:
    """Add the columns that segments have and the table lacks (a later ledger format)."""
    known = {f.name for f in table.schema().fields}
    for manifest in manifests:
        if set(manifest.columns) <= known:
            continue
        with table.update_schema() as update:
            update.union_by_name(_schema(store, manifest))
        known |= set(manifest.columns)
