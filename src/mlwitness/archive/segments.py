"""Sealed segments: a stretch of one chain's records as one Parquet object and its manifest.

An archive's keys (relative to the store's root: the directory of a `file://` archive, the
bucket and prefix of an `s3://` one):

    records/chain=<chain_id>/date=<YYYY-MM-DD>/seg-<first:020d>-<last:020d>.parquet
    manifests/chain=<chain_id>/seg-<first:020d>-<last:020d>.json
    models/sha256/<hex>.onnx            the model's bytes, once for the whole fleet
    environments/sha256/<hex>.json      an environment fingerprint (its hex is the env id)
    baselines/sha256/<hex>.json         a drift baseline's JSON
    chains/<chain_id>.json              where the chain's shipping stands (a hint, see below)

* **Parquet**: every column of the ledger's `entries` table as it is (`SELECT *`, so columns
  a later ledger format adds ride along), plus `chain_id`; zstd, row groups of
  ROW_GROUP_ROWS, one record per row in seq order. The same rows always give the same bytes
  (same pyarrow), which is what makes a repeated upload idempotent. `records/` holds nothing
  else, so it is a table location as it stands: Hive partitions `chain` and `date` (the UTC
  day of the segment's first record) for DuckDB, Trino, Spark and Athena.
* **Manifest**: the commit point. It is written after the Parquet object and names its
  SHA-256; readers (the fleet, verify, Iceberg registration) trust only segments whose
  manifest exists and whose Parquet matches it. A Parquet object without a manifest is an
  upload that was cut short: the shipper finds it and completes it (`orphan_prefix`). The
  manifest also lists the catalogue rows the segment's records rely on (the models' names,
  versions and signatures, the environments, the baselines its admin records announced),
  so that a segment can be replayed and verified with only the content-addressed bytes
  beside it, and the chain head it seals (the last record's seq and hash).
* **Content-addressed objects** are stored once (create-if-absent) whatever the number of
  chains and segments that use them.
* **`chains/<chain_id>.json`** names the chain's newest manifest when it was written. It is
  replaced at every segment, so it is no evidence; the shipper starts its search there
  instead of listing every manifest of the chain, and `verify` reports a chain whose
  newest manifest it names has gone.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlwitness.archive.store import CONTENT_KINDS, ArchiveError
from mlwitness.errors import DataLoss

MANIFEST_FORMAT = "mlwitness-segment/1"
ROW_GROUP_ROWS = 16_384  # DuckDB reads row groups in parallel; ~10-30 MiB each for credit rows
COMPRESSION = "zstd"
CHAIN_COLUMN = "chain_id"

RECORDS = "records"
MANIFESTS = "manifests"
CHAINS = "chains"

_CHAIN = re.compile(r"[0-9a-f]{8,64}")  # the ledger makes uuid4().hex chain ids
_SEGMENT_NAME = re.compile(r"seg-([0-9]{20})-([0-9]{20})")
_MANIFEST_KEY = re.compile(
    rf"{MANIFESTS}/chain=([0-9a-f]{{8,64}})/seg-([0-9]{{20}})-([0-9]{{20}})\.json")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BadManifest(ArchiveError):
    """A manifest that is not what the shipper writes (damaged, or written by someone else)."""

    status = "DATA_LOSS"


# ── keys ───────────────────────────────────────────────────────────────────────────────


def check_chain(chain_id: str) -> str:
    if not isinstance(chain_id, str) or not _CHAIN.fullmatch(chain_id):
        raise ArchiveError(f"{chain_id!r:.80} is not a chain id (lowercase hex, as the ledger "
                           "makes them)")
    return chain_id


def day_of(received_us: int) -> str:
    """The UTC day of a record's receipt, as the `date=` partition names it."""
    return datetime.fromtimestamp(received_us / 1e6, UTC).strftime("%Y-%m-%d")


def _name(first: int, last: int) -> str:
    if not 1 <= first <= last < 10**20:
        raise ValueError(f"bad segment range {first}..{last}")
    return f"seg-{first:020d}-{last:020d}"


def segment_key(chain_id: str, first: int, last: int, first_received_us: int) -> str:
    return (f"{RECORDS}/chain={check_chain(chain_id)}/date={day_of(first_received_us)}/"
            f"{_name(first, last)}.parquet")


def orphan_prefix(chain_id: str, first: int, first_received_us: int) -> str:
    """The prefix under which a segment of this chain starting at `first` would lie,
    whatever its last seq: how the shipper finds an upload a crash cut short."""
    return (f"{RECORDS}/chain={check_chain(chain_id)}/date={day_of(first_received_us)}/"
            f"seg-{first:020d}-")


def manifest_key(chain_id: str, first: int, last: int) -> str:
    return f"{MANIFESTS}/chain={check_chain(chain_id)}/{_name(first, last)}.json"


def manifest_prefix(chain_id: str = "") -> str:
    return f"{MANIFESTS}/chain={check_chain(chain_id)}/" if chain_id else f"{MANIFESTS}/"


def parse_manifest_key(key: str) -> tuple[str, int, int] | None:
    """(chain id, first, last) of a manifest key; None for any other key."""
    found = _MANIFEST_KEY.fullmatch(key)
    if found is None:
        return None
    return found[1], int(found[2]), int(found[3])


def parse_segment_name(key: str) -> tuple[int, int] | None:
    """(first, last) of a segment object's key; None if it does not end like one."""
    found = _SEGMENT_NAME.fullmatch(key.rpartition("/")[2].removesuffix(".parquet"))
    return (int(found[1]), int(found[2])) if found and key.endswith(".parquet") else None


def hint_key(chain_id: str) -> str:
    return f"{CHAINS}/{check_chain(chain_id)}.json"


# ── the manifest ───────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ModelRow:
    sha256: str
    name: str
    version: str
    signature: str  # JSON text, as the ledger stores it
    first_seen_us: int


@dataclass(frozen=True)
class EnvironmentRow:
    env_id: str
    first_seen_us: int


@dataclass(frozen=True)
class BaselineRow:
    sha256: str
    name: str
    created_us: int


@dataclass(frozen=True)
class Manifest:
    """What a segment holds and seals. `head` is the (seq, hex hash) of its last record;
    `checkpoint` a signed checkpoint of the chain covering it, when the ledger keeps them
    (else None)."""

    chain_id: str
    first_seq: int
    last_seq: int
    records: int
    first_prev_hash: str
    last_hash: str
    first_received_us: int
    last_received_us: int
    parquet_key: str
    parquet_sha256: str
    parquet_bytes: int
    columns: tuple[str, ...]
    ledger_schema_version: str
    created_us: int
    checkpoint: dict[str, Any] | None = None
    models: tuple[ModelRow, ...] = ()
    environments: tuple[EnvironmentRow, ...] = ()
    baselines: tuple[BaselineRow, ...] = ()
    format: str = MANIFEST_FORMAT

    @property
    def key(self) -> str:
        return manifest_key(self.chain_id, self.first_seq, self.last_seq)

    @property
    def head(self) -> tuple[int, str]:
        return self.last_seq, self.last_hash

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["head"] = {"seq": self.last_seq, "hash": self.last_hash}
        return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "") -> Manifest:
        """Parse and check a manifest; BadManifest naming `key` and what is wrong."""
        where = key or "a manifest"
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            if raw.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {str(raw.get('format'))[:40]!r} is not "
                                 f"{MANIFEST_FORMAT!r}")
            manifest = cls(
                chain_id=check_chain(_typed(raw, "chain_id", str)),
                first_seq=_typed(raw, "first_seq", int),
                last_seq=_typed(raw, "last_seq", int),
                records=_typed(raw, "records", int),
                first_prev_hash=_hex(raw, "first_prev_hash"),
                last_hash=_hex(raw, "last_hash"),
                first_received_us=_typed(raw, "first_received_us", int),
                last_received_us=_typed(raw, "last_received_us", int),
                parquet_key=_typed(raw, "parquet_key", str),
                parquet_sha256=_hex(raw, "parquet_sha256"),
                parquet_bytes=_typed(raw, "parquet_bytes", int),
                columns=tuple(_strings(raw, "columns")),
                ledger_schema_version=_typed(raw, "ledger_schema_version", str),
                created_us=_typed(raw, "created_us", int),
                checkpoint=_checkpoint(raw.get("checkpoint")),
                models=tuple(ModelRow(_hex(m, "sha256"), _typed(m, "name", str),
                                      _typed(m, "version", str), _typed(m, "signature", str),
                                      _typed(m, "first_seen_us", int))
                             for m in _objects(raw, "models")),
                environments=tuple(EnvironmentRow(_hex(e, "env_id"),
                                                  _typed(e, "first_seen_us", int))
                                   for e in _objects(raw, "environments")),
                baselines=tuple(BaselineRow(_hex(b, "sha256"), _typed(b, "name", str),
                                            _typed(b, "created_us", int))
                                for b in _objects(raw, "baselines")),
            )
        except (ValueError, TypeError, ArchiveError) as exc:
            raise BadManifest(f"{where}: {exc}") from None
        manifest._check(key)
        return manifest

    def _check(self, key: str) -> None:
        where = key or "a manifest"
        if not 1 <= self.first_seq <= self.last_seq:
            raise BadManifest(f"{where}: seqs {self.first_seq}..{self.last_seq} are no range")
        if self.records != self.last_seq - self.first_seq + 1:
            raise BadManifest(f"{where}: {self.records} records for seqs "
                              f"{self.first_seq}..{self.last_seq}")
        if key and key != self.key:
            raise BadManifest(f"{where}: it describes {self.key}")
        expected = segment_key(self.chain_id, self.first_seq, self.last_seq,
                               self.first_received_us)
        if self.parquet_key != expected:
            raise BadManifest(f"{where}: its Parquet object is {self.parquet_key!r:.200}, "
                              f"not {expected}")


def _typed(raw: dict[str, Any], name: str, kind: type) -> Any:
    value = raw.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{name} is not a {kind.__name__}")
    return value


def _hex(raw: dict[str, Any], name: str) -> str:
    value = _typed(raw, name, str)
    if not _HEX64.fullmatch(value):
        raise ValueError(f"{name} is not 64 lowercase hex digits")
    return str(value)


def _strings(raw: dict[str, Any], name: str) -> list[str]:
    value = _typed(raw, name, list)
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} is not a list of strings")
    return value


def _objects(raw: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = _typed(raw, name, list)
    if not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{name} is not a list of objects")
    return value


def _checkpoint(value: Any) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise ValueError("checkpoint is not an object")


# ── sealing ────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Content:
    """A content-addressed object a segment relies on: its key, and how to read its bytes
    from the ledger (only when the store lacks it)."""

    key: str
    kind: str  # "model", "environment", "baseline"
    id: str  # the hex SHA-256 that names it


@dataclass
class Segment:
    manifest: Manifest
    parquet: bytes = field(repr=False)
    content: tuple[Content, ...] = ()


class Catalogue:
    """The catalogue rows segments name, each read from the ledger once: a model's,
    environment's or baseline's row is keyed by its hash and never changes. A shipper keeps
    one, so that a segment costs fewer queries (each is ~0.5 ms of DuckDB)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple] = {}
        self._schema_version: str | None = None

    def rows(self, con: duckdb.DuckDBPyConnection, select: str, ids: Iterable[str],
             column: str = "sha256") -> list[tuple]:
        wanted = sorted(i for i in ids if i and _HEX64.fullmatch(i))
        missing = [i for i in wanted if (select, i) not in self._rows]
        if missing:
            for row in con.execute(f"{select} WHERE {column} IN (SELECT unnest(?))",
                                   [missing]).fetchall():
                self._rows[(select, str(row[0]))] = row
        return [self._rows[(select, i)] for i in wanted if (select, i) in self._rows]

    def schema_version(self, con: duckdb.DuckDBPyConnection) -> str:
        if self._schema_version is None:
            rows = con.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'"
                               ).fetchall()
            self._schema_version = str(rows[0][0]) if rows else ""
        return self._schema_version


def seal(con: duckdb.DuckDBPyConnection, chain_id: str, first: int, last: int,
         *, created_us: int, catalogue: Catalogue | None = None) -> Segment:
    """Records `first`..`last` of the ledger `con` reads, as a segment of `chain_id`.
    DataLoss if the ledger does not hold every one of them."""
    catalogue = catalogue or Catalogue()
    table = con.sql("SELECT * FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    params=[first, last]).to_arrow_table()
    seqs = table.column("seq").combine_chunks()  # checked in Arrow: to_numpy imports pandas
    records = len(seqs)
    steps = pc.unique(pc.pairwise_diff(seqs)[1:]).to_pylist() if records > 1 else []
    if (records != last - first + 1 or steps not in ([], [1])
            or seqs[0].as_py() != first):
        have = (f"{seqs[0]}..{seqs[-1]} ({records} records)" if records
                else "none of them")
        raise DataLoss(f"cannot seal records {first}..{last}: the ledger holds {have}")
    table = table.append_column(CHAIN_COLUMN, pa.repeat(pa.scalar(chain_id, pa.string()), records))
    data = parquet_bytes(table)
    received = table.column("received_us")
    models, environments, baselines = _catalogue(con, table, catalogue)
    manifest = Manifest(
        chain_id=check_chain(chain_id), first_seq=first, last_seq=last, records=records,
        first_prev_hash=bytes(table.column("prev_hash")[0].as_py()).hex(),
        last_hash=bytes(table.column("hash")[-1].as_py()).hex(),
        first_received_us=received[0].as_py(), last_received_us=received[-1].as_py(),
        parquet_key=segment_key(chain_id, first, last, received[0].as_py()),
        parquet_sha256=hashlib.sha256(data).hexdigest(), parquet_bytes=len(data),
        columns=tuple(table.column_names), ledger_schema_version=catalogue.schema_version(con),
        created_us=created_us, checkpoint=_covering_checkpoint(con, last),
        models=models, environments=environments, baselines=baselines,
    )
    content = (
        *(Content(content_key_of("model", m.sha256), "model", m.sha256) for m in models),
        *(Content(content_key_of("environment", e.env_id), "environment", e.env_id)
          for e in environments),
        *(Content(content_key_of("baseline", b.sha256), "baseline", b.sha256)
          for b in baselines),
    )
    return Segment(manifest, data, content)


def warm(con: duckdb.DuckDBPyConnection) -> None:
    """Seal no record: the imports and set-up a first segment would pay (pyarrow imports
    pandas on its first `append_column` where pandas is installed: 0.3 s of CPU) are paid
    when the shipper starts, before the sidecar serves, rather than in its first minute."""
    table = con.sql("SELECT * FROM entries LIMIT 0").to_arrow_table()
    table = table.append_column(CHAIN_COLUMN, pa.repeat(pa.scalar("", pa.string()), 0))
    pc.unique(pc.pairwise_diff(table.column("seq").combine_chunks()))
    _catalogue(con, table, Catalogue())
    parquet_bytes(table)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


def content_key_of(kind: str, sha256: str) -> str:
    """`content_key` from the hash alone (the bytes need not be at hand)."""
    folder, suffix = CONTENT_KINDS[kind]
    return f"{folder}/sha256/{sha256}{suffix}"


def content_bytes(con: duckdb.DuckDBPyConnection, item: Content) -> bytes:
    """The bytes of a content-addressed object, from the ledger, checked against its id."""
    sql = {
        "model": "SELECT onnx FROM models WHERE sha256 = ?",
        "environment": "SELECT fingerprint FROM environments WHERE env_id = ?",
        "baseline": "SELECT json FROM baselines WHERE sha256 = ?",
    }[item.kind]
    rows = con.execute(sql, [item.id]).fetchall()
    if not rows:
        raise DataLoss(f"{item.kind} {item.id} is not in the ledger")
    value = rows[0][0]
    data = value.encode() if isinstance(value, str) else bytes(value)
    if hashlib.sha256(data).hexdigest() != item.id:
        raise DataLoss(f"the ledger's {item.kind} {item.id} does not match its SHA-256")
    return data


def _catalogue(con: duckdb.DuckDBPyConnection, table: pa.Table, catalogue: Catalogue
               ) -> tuple[tuple[ModelRow, ...], tuple[EnvironmentRow, ...],
                          tuple[BaselineRow, ...]]:
    """The models, environments and baselines the records of `table` name: the models and
    environments of every record, the what-if candidates audit records name, the baselines
    admin records announce. Only those the ledger holds (verify reports the others)."""
    models = set(pc.unique(table.column("model_sha256")).to_pylist())
    environments = set(pc.unique(table.column("env_id")).to_pylist())
    baselines = set()
    # Python sees only the few records that may name one (not the inference records)
    named = table.select(["kind", "detail"]).filter(pc.and_(
        pc.not_equal(table.column("kind"), "infer"),
        pc.match_substring(table.column("detail"), "sha256")))
    for kind, detail in zip(named.column("kind").to_pylist(), named.column("detail").to_pylist(),
                            strict=True):
        value = _json(detail)
        if kind == "admin" and value.get("action") == "baseline":
            baselines.add(str(value.get("sha256", "")))
        asked = value.get("request")
        if kind == "audit" and isinstance(asked, dict):
            models |= {str(asked.get(k) or "") for k in ("candidate_upload_sha256",
                                                         "candidate_sha256")}
    return (
        tuple(ModelRow(*row) for row in catalogue.rows(
            con, "SELECT sha256, name, version, signature, first_seen_us FROM models", models)),
        tuple(EnvironmentRow(*row) for row in catalogue.rows(
            con, "SELECT env_id, first_seen_us FROM environments", environments, "env_id")),
        tuple(BaselineRow(*row) for row in catalogue.rows(
            con, "SELECT sha256, name, created_us FROM baselines", baselines)),
    )


def _covering_checkpoint(con: duckdb.DuckDBPyConnection, last: int) -> dict[str, Any] | None:
    """The newest signed checkpoint of the chain that covers record `last`, where the
    ledger keeps checkpoints (a later ledger format); None where it keeps none."""
    try:
        rows = con.execute("SELECT size, note FROM checkpoints WHERE size >= ? "
                           "ORDER BY size LIMIT 1", [last]).fetchall()
    except duckdb.CatalogException:
        return None
    return {"size": int(rows[0][0]), "note": str(rows[0][1])} if rows else None


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
