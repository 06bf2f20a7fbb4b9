"""The fleet: every chain of an archive as one DuckDB database, for a fleet audit server.

`open_fleet(store, cache_dir)` syncs the archive into a local cache and returns a `Fleet`
whose cursors see the same tables and views as a ledger's (`entries`, `models`,
`environments`, `baselines`, `ledger_meta`, `records`, `decisions`, `audit_log`), with a
`chain_id` column added to `entries` and the three views, and a `chains` table (one row a
chain: segments, records, first and last seq, last hash). `FleetReader` is the ledger's
reader over it: drift, bias and violations read `entries` and need nothing else.

* **What is trusted.** A segment is served only when its manifest exists and the Parquet
  object's SHA-256 is the one the manifest names (checked at download); content objects
  (models, environments, baselines) only when their bytes hash to their name. A segment
  that fails, or that overlaps one already taken for its chain, is left out and listed in
  `Fleet.problems`; `verify` (archive/verify.py) names every such problem and checks the
  chains themselves.
* **The cache** mirrors the archive's keys under `cache_dir`. Segments and content objects
  never change once written, so a file already cached with the size the manifest gives is
  not fetched again; `refresh()` fetches what was archived since.
* **Addressing.** A seq is per chain: the fleet names a record `CHAIN:SEQ` (chain id or a
  unique prefix of it, `parse_record_ref`); a request id names a record anywhere in the
  fleet and is refused, with every chain and seq that carries it, when several do.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mlwitness.archive import segments
from mlwitness.archive.segments import Manifest
from mlwitness.archive.store import ArchiveError, ObjectStore
from mlwitness.errors import FailedPrecondition, InvalidInput, RecordNotFound
from mlwitness.ledger import schema
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.reader import AMBIGUOUS_LISTED, LedgerReader, StoredRecord
from mlwitness.ledger.record import Record

log = logging.getLogger(__name__)

DOWNLOADS = 4  # objects fetched at once
MIN_CHAIN_PREFIX = 4  # hex digits of a chain id a record reference may shorten it to
_REF = re.compile(r"([0-9a-f]{4,64}):([0-9]{1,19})")
_PAGE_TOKEN = re.compile(r"([0-9]{1,19}):([0-9a-f]{8,64}):([0-9]{1,19})")


@dataclass(slots=True)
class ChainRecord(Record):
    """A record and the chain it is on (replays of a range over the fleet yield these)."""

    chain_id: str = ""


@dataclass(frozen=True)
class ChainInfo:
    chain_id: str
    segments: int
    records: int
    first_seq: int
    last_seq: int
    last_hash: str


@dataclass
class _Synced:
    manifests: dict[str, Manifest] = field(default_factory=dict)  # by key
    problems: list[str] = field(default_factory=list)


class Fleet:
    """The archive in `store`, cached under `cache_dir`, as a DuckDB database."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(":memory:")
        self.chains: dict[str, ChainInfo] = {}
        self.problems: list[str] = []
        self._manifests: dict[str, Manifest] = {}
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one thread's use."""
        return self.con.cursor()

    def close(self) -> None:
        self.con.close()

    def refresh(self) -> None:
        """Fetch what was archived since the last refresh and define the views again."""
        with self._lock:
            synced = self._sync()
            taken = self._take(synced)
            self._fetch_content(taken, synced.problems)
            self.problems = synced.problems
            self._define(taken)

    # ── syncing the cache ──────────────────────────────────────────────────────────────

    def _sync(self) -> _Synced:
        synced = _Synced()
        keys = [info.key for info in self.store.list(segments.manifest_prefix())
                if segments.parse_manifest_key(info.key)]
        new = [key for key in keys if key not in self._manifests]
        with ThreadPoolExecutor(DOWNLOADS) as pool:
            for key, manifest in zip(new, pool.map(self._manifest, new), strict=True):
                if isinstance(manifest, str):
                    synced.problems.append(manifest)
                else:
                    self._manifests[key] = manifest
        synced.manifests = {key: self._manifests[key] for key in keys if key in self._manifests}
        return synced

    def _manifest(self, key: str) -> Manifest | str:
        try:
            data = self._cached(key, None)
            return Manifest.from_bytes(data, key)
        except (ArchiveError, OSError) as exc:
            return f"{key}: {exc}"

    def _take(self, synced: _Synced) -> list[Manifest]:
        """The segments served: per chain in seq order, each one after the last taken, its
        Parquet object fetched and matching its manifest."""
        by_chain: dict[str, list[Manifest]] = {}
        for manifest in synced.manifests.values():
            by_chain.setdefault(manifest.chain_id, []).append(manifest)
        candidates = []
        for chain in by_chain.values():
            chain.sort(key=lambda m: (m.first_seq, m.last_seq))
            last = 0
            for manifest in chain:
                if manifest.first_seq <= last:
                    synced.problems.append(f"{manifest.key}: overlaps records up to {last} of "
                                           "a segment already taken; left out")
                    continue
                if manifest.first_seq != last + 1:
                    synced.problems.append(f"chain {manifest.chain_id}: records {last + 1}.."
                                           f"{manifest.first_seq - 1} are missing from the "
                                           "archive")
                candidates.append(manifest)
                last = manifest.last_seq
        with ThreadPoolExecutor(DOWNLOADS) as pool:
            fetched = list(pool.map(self._segment, candidates))
        taken = []
        for manifest, problem in zip(candidates, fetched, strict=True):
            if problem:
                synced.problems.append(problem)
            else:
                taken.append(manifest)
        return taken

    def _segment(self, manifest: Manifest) -> str:
        try:
            self._cached(manifest.parquet_key, manifest.parquet_sha256, manifest.parquet_bytes)
        except (ArchiveError, OSError) as exc:
            return f"{manifest.parquet_key}: {exc}; segment left out"
        return ""

    def _fetch_content(self, taken: list[Manifest], problems: list[str]) -> None:
        wanted: dict[str, str] = {}
        for manifest in taken:
            for model in manifest.models:
                wanted[segments.content_key_of("model", model.sha256)] = model.sha256
            for env in manifest.environments:
                wanted[segments.content_key_of("environment", env.env_id)] = env.env_id
            for baseline in manifest.baselines:
                wanted[segments.content_key_of("baseline", baseline.sha256)] = baseline.sha256

        def fetch(item: tuple[str, str]) -> str:
            try:
                self._cached(*item)
            except (ArchiveError, OSError) as exc:
                return f"{item[0]}: {exc}"
            return ""

        with ThreadPoolExecutor(DOWNLOADS) as pool:
            problems.extend(p for p in pool.map(fetch, sorted(wanted.items())) if p)

    def _cached(self, key: str, sha256: str | None, size: int | None = None) -> bytes:
        """The bytes of `key`, from the cache or else the store (then cached), checked
        against `sha256` when it is given. Returns b"" for a cached file it did not read
        (a segment with the expected size: immutable once written)."""
        path = self.path(key)
        if path.is_file():
            if sha256 is None:
                return path.read_bytes()
            if size is not None and path.stat().st_size == size:
                return b""
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha256:
                return data
        data = self.store.get(key)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ArchiveError(f"{self.store.url(key)} does not match its SHA-256 "
                               f"({'its manifest' if size is not None else 'its name'} "
                               "gives another)")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return data

    def path(self, key: str) -> Path:
        return self.cache_dir.joinpath(*key.split("/"))

    # ── the database ───────────────────────────────────────────────────────────────────

    def _define(self, taken: list[Manifest]) -> None:
        con = self.con.cursor()
        con.execute("BEGIN TRANSACTION")
        try:
            self._tables(con, taken)
            files = [str(self.path(m.parquet_key)) for m in
                     sorted(taken, key=lambda m: (m.chain_id, m.first_seq))]
            if files:
                parquet = f"read_parquet({_literal(files)}, union_by_name = true)"
                have = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {parquet}").fetchall()]
                # segments sealed before record format 2 lack its columns
                con.execute(f"CREATE OR REPLACE VIEW entries AS SELECT *"
                            f"{schema.missing_columns(have)} FROM {parquet}")
            else:
                con.execute("CREATE OR REPLACE VIEW entries AS SELECT *, ''::VARCHAR AS "
                            f"{segments.CHAIN_COLUMN} FROM fleet_empty.entries")
            con.execute(FLEET_VIEWS)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.chains = {row[0]: ChainInfo(*row) for row in con.execute(
            "SELECT * FROM chains ORDER BY chain_id").fetchall()}

    def _tables(self, con: duckdb.DuckDBPyConnection, taken: list[Manifest]) -> None:
        con.execute("CREATE SCHEMA IF NOT EXISTS fleet_empty")
        con.execute("SET schema = 'fleet_empty'")
        con.execute(schema.TABLES)
        con.execute("SET schema = 'main'")
        con.execute("CREATE OR REPLACE TABLE ledger_meta (key VARCHAR PRIMARY KEY, "
                    "value VARCHAR NOT NULL)")
        con.execute("INSERT INTO ledger_meta VALUES ('schema_version', ?), ('fleet', 'true')",
                    [schema.SCHEMA_VERSION])
        chains: dict[str, tuple[int, int, int, int, str]] = {}
        for m in sorted(taken, key=lambda m: (m.chain_id, m.first_seq)):
            segs, records, first, _, _ = chains.get(m.chain_id, (0, 0, m.first_seq, 0, ""))
            chains[m.chain_id] = (segs + 1, records + m.records, first, m.last_seq, m.last_hash)
        con.execute("CREATE OR REPLACE TABLE chains (chain_id VARCHAR PRIMARY KEY, "
                    "segments BIGINT, records BIGINT, first_seq BIGINT, last_seq BIGINT, "
                    "last_hash VARCHAR)")
        if chains:
            con.executemany("INSERT INTO chains VALUES (?, ?, ?, ?, ?, ?)",
                            [[chain, *info] for chain, info in chains.items()])
        models: dict[str, list[Any]] = {}
        environments: dict[str, list[Any]] = {}
        baselines: dict[str, list[Any]] = {}
        for m in sorted(taken, key=lambda m: (m.created_us, m.chain_id, m.first_seq)):
            for model in m.models:
                path = self.path(segments.content_key_of("model", model.sha256))
                models.setdefault(model.sha256, [model.sha256, model.name, model.version,
                                                 model.signature, model.first_seen_us,
                                                 str(path)])
            for env in m.environments:
                path = self.path(segments.content_key_of("environment", env.env_id))
                if path.is_file():
                    environments.setdefault(env.env_id, [env.env_id, path.read_text(),
                                                         env.first_seen_us])
            for base in m.baselines:
                path = self.path(segments.content_key_of("baseline", base.sha256))
                if path.is_file():
                    baselines.setdefault(base.sha256, [base.sha256, base.name,
                                                       path.read_text(), base.created_us])
        present = {sha: row for sha, row in models.items() if Path(row[5]).is_file()}
        con.execute("CREATE OR REPLACE TABLE fleet_models (sha256 VARCHAR PRIMARY KEY, "
                    "name VARCHAR, version VARCHAR, signature VARCHAR, first_seen_us BIGINT, "
                    "path VARCHAR)")
        if present:
            con.executemany("INSERT INTO fleet_models VALUES (?, ?, ?, ?, ?, ?)",
                            list(present.values()))
            con.execute("CREATE OR REPLACE VIEW models AS SELECT m.sha256, m.name, m.version, "
                        "b.content AS onnx, m.signature, m.first_seen_us FROM fleet_models m "
                        f"JOIN read_blob({_literal([row[5] for row in present.values()])}) b "
                        "ON b.filename = m.path")
        else:
            con.execute("CREATE OR REPLACE VIEW models AS SELECT * FROM fleet_empty.models")
        con.execute("CREATE OR REPLACE TABLE environments AS SELECT * FROM "
                    "fleet_empty.environments")
        if environments:
            con.executemany("INSERT INTO environments VALUES (?, ?, ?)",
                            list(environments.values()))
        con.execute("CREATE OR REPLACE TABLE baselines AS SELECT * FROM fleet_empty.baselines")
        if baselines:
            con.executemany("INSERT INTO baselines VALUES (?, ?, ?, ?)",
                            list(baselines.values()))


def _literal(paths: builtins.list[str]) -> str:
    """A list of file names as an SQL literal (a view cannot take parameters)."""
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _fleet_views() -> str:
    """The ledger's `records`, `decisions` and `audit_log` views with `chain_id` first."""
    views = schema.VIEWS.replace("SELECT\n    seq,", "SELECT\n    chain_id,\n    seq,")
    if views.count("chain_id,") != 3:  # the ledger's views changed shape: say so here
        raise RuntimeError("schema.VIEWS no longer starts each view with `SELECT seq,`")
    return views


FLEET_VIEWS = _fleet_views()


def open_fleet(store: ObjectStore, cache_dir: Path) -> Fleet:
    """The archive in `store` as a DuckDB database, synced into `cache_dir` now; call
    `refresh()` to take what was archived since, `cursor()` for each thread."""
    fleet = Fleet(store, cache_dir)
    try:
        fleet.refresh()
    except BaseException:
        fleet.close()
        raise
    for problem in fleet.problems:
        log.warning("archive: %s", problem)
    return fleet


# ── reading records over the fleet ──────────────────────────────────────────────────────


def parse_record_ref(text: str) -> tuple[str, int]:
    """`CHAIN:SEQ` (the chain id or a prefix of at least MIN_CHAIN_PREFIX hex digits) as
    (chain, seq); InvalidInput otherwise."""
    found = _REF.fullmatch(text.strip().lower())
    if found is None or int(found[2]) < 1:
        raise InvalidInput(f"record {text[:80]!r}: a record of the fleet is CHAIN:SEQ, the "
                           f"chain id (or its first {MIN_CHAIN_PREFIX}+ hex digits) and the seq "
                           "on it, e.g. 3f2a9c01:42")
    return found[1], int(found[2])


class FleetReader(LedgerReader):
    """The ledger's reader over a fleet: records are addressed by request id or by chain
    and seq, lists are newest first by receipt time, and every item names its chain."""

    def get(self, request_id: str = "", seq: int = 0, *, rows: bool = True,
            chain: str = "") -> StoredRecord:
        """One record by request id, or by seq on `chain` (its id or a unique prefix; may
        be left out when one chain only has that seq)."""
        if not request_id and seq <= 0:
            raise InvalidInput("give a request id, or a chain and a positive seq")
        if request_id:
            chain, seq = self.locate(request_id)
        else:
            chain = self.resolve_chain(chain, seq)
        return self._fetch("chain_id = ? AND seq = ?", [chain, seq],
                           f"no record {chain}:{seq} in the archive", rows=rows)

    def locate(self, request_id: str) -> tuple[str, int]:
        """(chain, seq) of the one record with this request id in the fleet."""
        found = self.cursor().execute(
            "SELECT chain_id, seq, status FROM entries WHERE request_id = ? "
            "ORDER BY chain_id, seq LIMIT ?", [request_id, AMBIGUOUS_LISTED + 1]).fetchall()
        if not found:
            raise RecordNotFound(f"no record with request id {request_id!r} in the archive")
        if len(found) > 1:
            listed = ", ".join(f"{c}:{s} {status}" for c, s, status in found[:AMBIGUOUS_LISTED])
            more = " and more" if len(found) > AMBIGUOUS_LISTED else ""
            chains = len({c for c, _, _ in found})
            where = f"on {chains} chains" if chains > 1 else "on one chain"
            raise FailedPrecondition(
                f"request id {request_id!r} names more than one record {where} ({listed}"
                f"{more}); ask for one by CHAIN:SEQ")
        return str(found[0][0]), int(found[0][1])

    def resolve_chain(self, text: str, seq: int = 0) -> str:
        """The chain id `text` names (whole or a unique prefix); with no text, the one
        chain that holds record `seq`."""
        con = self.cursor()
        if text:
            prefix = text.strip().lower()
            if len(prefix) < MIN_CHAIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", prefix):
                raise InvalidInput(f"{text[:80]!r} is not a chain id or a prefix of at least "
                                   f"{MIN_CHAIN_PREFIX} hex digits")
            found = [r[0] for r in con.execute(
                "SELECT chain_id FROM chains WHERE starts_with(chain_id, ?) ORDER BY chain_id "
                "LIMIT 6", [prefix]).fetchall()]
            if not found:
                raise RecordNotFound(f"no chain {prefix} in the archive")
            if len(found) > 1:
                raise InvalidInput(f"{prefix} is the start of several chains' ids "
                                   f"({', '.join(found[:5])}); give more digits")
            return str(found[0])
        found = [r[0] for r in con.execute(
            "SELECT chain_id FROM chains WHERE ? BETWEEN first_seq AND last_seq "
            "ORDER BY chain_id LIMIT ?", [seq, AMBIGUOUS_LISTED + 1]).fetchall()]
        if not found:
            raise RecordNotFound(f"no chain in the archive holds a record {seq}")
        if len(found) > 1:
            listed = ", ".join(f"{c}:{seq}" for c in found[:AMBIGUOUS_LISTED])
            more = " and more" if len(found) > AMBIGUOUS_LISTED else ""
            raise FailedPrecondition(f"seq {seq} is a record of several chains ({listed}"
                                     f"{more}); ask for one by CHAIN:SEQ")
        return str(found[0])

    def list(self, filters: Filters, page_size: int = 50, page_token: str = ""
             ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Newest first by receipt time (seqs of different chains do not compare). The
        page token is RECEIVED_US:CHAIN:SEQ of the last item."""
        page_size = max(1, min(page_size or 50, 1000))
        where, params = filters.where()
        if page_token:
            after = _PAGE_TOKEN.fullmatch(page_token)
            if after is None:
                raise InvalidInput(f"bad page token {page_token[:40]!r}: give the "
                                   "next_page_token of the previous page")
            where += " AND (received_us, chain_id, seq) < (?, ?, ?)"
            params += [int(after[1]), after[2], int(after[3])]
        rows = self.cursor().execute(
            "SELECT chain_id, seq, request_id, received_us, model_name, model_sha256, status, "
            f"responded_us - received_us, peer, {schema.BATCH_SIZE}, outputs[1] "
            f"FROM entries WHERE {where} ORDER BY received_us DESC, chain_id DESC, seq DESC "
            "LIMIT ?", [*params, page_size + 1]).fetchall()
        more = len(rows) > page_size
        keys = ("chain_id", "seq", "request_id", "received_us", "model_name", "model_sha256",
                "status", "latency_us", "caller", "batch_size", "first_output")
        items = [dict(zip(keys, row, strict=True)) for row in rows[:page_size]]
        for item in items:
            item["first_output"] = dict(item["first_output"] or {})
        token = ""
        if more and items:
            last = items[-1]
            token = f"{last['received_us']}:{last['chain_id']}:{last['seq']}"
        return items, token

    def window(self, filters: Filters, batch: int = 4096
               ) -> Iterator[builtins.list[Record]]:
        """Answered inference records in a window, by receipt time, as ChainRecords."""
        where, params = filters.where()
        cursor = self.cursor().execute(
            "SELECT seq, kind, request_id, status, message, model_sha256, request, response, "
            f"chain_id FROM entries WHERE {where} AND status = 'OK' "
            "ORDER BY received_us, chain_id, seq", params)
        while rows := cursor.fetchmany(batch):
            yield [ChainRecord(seq=r[0], kind=r[1], request_id=r[2], status=r[3], message=r[4],
                               model_sha256=r[5], request=r[6], response=r[7], chain_id=r[8])
                   for r in rows]


def fleet_reader(fleet: Fleet) -> FleetReader:
    return FleetReader(fleet.cursor)
