"""DuckDB schema of the ledger, and the stable views auditors query.

Tables are the storage contract of the writer; the views (`records`, `decisions`,
`audit_log`) are the documented interface for people and tools. Timestamps in tables are
µs since the epoch (UTC); views show them as TIMESTAMP (UTC).

The views stored in a ledger file are only as trustworthy as the file: whoever can write
it can redefine `records` to hide a row, or add a macro or type that replaces a built-in
function in every query of the file. So `mlwitness sql` and the audit server read through
`connect_reader`, which defines this version's views itself, and `stray_objects` (used by
`mlwitness verify`) reports every view, macro or type in a file that is not ours.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"

_NUM_ROWS = "MAP(VARCHAR, DOUBLE)[]"
_TEXT_ROWS = "MAP(VARCHAR, VARCHAR)[]"

TABLES = f"""
CREATE TABLE IF NOT EXISTS ledger_meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq BIGINT NOT NULL,
    kind VARCHAR NOT NULL,
    request_id VARCHAR NOT NULL,
    received_us BIGINT NOT NULL,
    responded_us BIGINT NOT NULL,
    model_name VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    model_sha256 VARCHAR NOT NULL,
    env_id VARCHAR NOT NULL,
    peer VARCHAR NOT NULL,
    metadata VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    violations VARCHAR NOT NULL,
    detail VARCHAR NOT NULL,
    request BLOB NOT NULL,
    response BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    inputs {_NUM_ROWS},
    inputs_text {_TEXT_ROWS},
    outputs {_NUM_ROWS},
    outputs_text {_TEXT_ROWS},
    parameters MAP(VARCHAR, VARCHAR),
    format TINYINT,
    salt BLOB,
    payload_commitment BLOB,
    erased_by BIGINT
);
CREATE TABLE IF NOT EXISTS models (
    sha256 VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    onnx BLOB NOT NULL,
    signature VARCHAR NOT NULL,
    first_seen_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS baselines (
    sha256 VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    json VARCHAR NOT NULL,
    created_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS environments (
    env_id VARCHAR PRIMARY KEY,
    fingerprint VARCHAR NOT NULL,
    first_seen_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS merkle_nodes (
    level SMALLINT NOT NULL,
    idx BIGINT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size BIGINT PRIMARY KEY,
    root BLOB NOT NULL,
    note VARCHAR NOT NULL,
    created_us BIGINT NOT NULL,
    published_us BIGINT
);
"""

# Tables a ledger gains at the first start of the version that added them (read-write
# connections create them): a file no such version has opened yet lacks them, and that is
# no damage. Readers treat them as empty.
LATER_TABLES = frozenset({"merkle_nodes", "checkpoints"})

# Rows in a call: of its tabulated inputs or, when they are not tabular (images), outputs.
BATCH_SIZE = "greatest(len(inputs), len(inputs_text), len(outputs), len(outputs_text))"

VIEWS = """
CREATE OR REPLACE VIEW records AS
SELECT
    seq,
    request_id,
    make_timestamp(received_us) AS received_at,
    make_timestamp(responded_us) AS responded_at,
    responded_us - received_us AS latency_us,
    model_name,
    model_version,
    model_sha256,
    env_id,
    peer AS caller,
    metadata,
    status,
    message,
    violations,
    NULLIF(detail, '')::JSON AS detail,
    {batch_size} AS batch_size,
    inputs,
    inputs_text,
    outputs,
    outputs_text,
    parameters,
    lower(hex(hash)) AS hash
FROM entries
WHERE kind = 'infer';

CREATE OR REPLACE VIEW decisions AS
SELECT
    seq,
    request_id,
    received_at,
    model_name,
    model_sha256,
    status,
    parameters,
    unnest(range(batch_size)) AS row,
    unnest(inputs) AS inputs,
    unnest(inputs_text) AS inputs_text,
    unnest(outputs) AS outputs,
    unnest(outputs_text) AS outputs_text
FROM records
WHERE status = 'OK';

CREATE OR REPLACE VIEW audit_log AS
SELECT
    seq,
    kind,
    request_id,
    make_timestamp(received_us) AS at,
    peer AS caller,
    status,
    message,
    detail::JSON AS detail
FROM entries
WHERE kind <> 'infer';
""".replace("{batch_size}", BATCH_SIZE)


# Columns of `entries` that schema versions after the first added, with their types: the
# record format (NULL in a row written before format 2: format 1), a format-2 record's salt,
# an erased record's payload commitment and the seq of the admin record that erased it
# (ledger/record.py, ledger/erasure.py). An older ledger gains them in place (`upgrade`).
ADDED_COLUMNS = {
    "format": "TINYINT",
    "salt": "BLOB",
    "payload_commitment": "BLOB",
    "erased_by": "BIGINT",
}


def create(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Create missing tables, upgrade an older ledger's (`upgrade`) and (re)create the
    views. Idempotent. Returns what the upgrade did, in sentences (none: nothing)."""
    con.execute(TABLES)
    done = upgrade(con)
    con.execute(VIEWS)
    con.execute(
        "INSERT INTO ledger_meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
        [SCHEMA_VERSION],
    )
    return done


def upgrade(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Bring an older ledger's tables to this schema version in place, in one transaction:
    the columns of ADDED_COLUMNS that `entries` lacks are added (NULL in every row it
    holds: its records stay format 1, and verify and serve as they are) and the schema
    version is set. Returns what it did, in sentences (none: the ledger was current)."""
    missing = [name for name in ADDED_COLUMNS if name not in entries_columns(con)]
    found = con.execute(
        "SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchall()
    version = found[0][0] if found else None
    if not missing and version in (None, SCHEMA_VERSION):
        return []
    done = []
    con.execute("BEGIN TRANSACTION")
    try:
        for name in missing:
            con.execute(f"ALTER TABLE entries ADD COLUMN {name} {ADDED_COLUMNS[name]}")
        if missing:
            (records,) = con.execute("SELECT count(*) FROM entries").fetchone() or (0,)
            done.append(f"added the columns {', '.join(missing)} to entries; its {records} "
                        "records stay record format 1 (they verify and serve as before), new "
                        "records are format 2 (erasable payloads)")
        if version is not None and version != SCHEMA_VERSION:
            con.execute("UPDATE ledger_meta SET value = ? WHERE key = 'schema_version'",
                        [SCHEMA_VERSION])
            done.append(f"schema version {version} -> {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return done


def entries_columns(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> list[str]:
    """The columns of the `entries` table of the current database (or of `catalog`)."""
    where = "database_name = ?" if catalog else "database_name = current_database()"
    return [name for (name,) in con.execute(
        "SELECT column_name FROM system.main.duckdb_columns() WHERE " + where
        + " AND schema_name = 'main' AND table_name = 'entries' ORDER BY column_index",
        [catalog] if catalog else []).fetchall()]


# Bits no ledger file may grant: the ledger holds every caller's request and response, so
# like the journal's segments (0640) it is not for other users. DuckDB creates its files
# itself with mode 0666 less the umask, and not only at connect: the `.wal` beside the
# ledger is removed at each checkpoint and created again by a later commit, from whatever
# thread commits. So the process's umask must keep these bits off for as long as the
# ledger is open; `connect` adds them to it, for good (it is process-wide: files that
# other threads create from then on lose these bits too, a narrowing only).
PRIVATE_UMASK = 0o027
_umask_lock = threading.Lock()


def restrict_umask() -> None:
    """Add PRIVATE_UMASK to the process's umask (reading it means setting it: the lock
    keeps two callers from restoring each other's temporary value)."""
    with _umask_lock:
        current = os.umask(0o077)
        os.umask(current | PRIVATE_UMASK)


def connect(path: Path, *, read_only: bool = False,
            upgrade: bool = True) -> duckdb.DuckDBPyConnection:
    """Open a ledger file. Read-only connections never create or alter anything. A
    read-write connection first keeps group write and all other users' access off the
    files DuckDB creates (`restrict_umask`), then creates what the file lacks and upgrades
    an older ledger in place, saying so in one log line (`create`; `upgrade=False`
    leaves that to the caller)."""
    if read_only:
        if not path.exists():
            from mlwitness.errors import FailedPrecondition

            raise FailedPrecondition(f"ledger file {path} does not exist")
        return duckdb.connect(str(path), read_only=True)
    restrict_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    # No vacuum at checkpoints. Nothing in the ledger is ever deleted, yet DuckDB's vacuum
    # re-merged the `entries` row groups at every automatic checkpoint, at a cost that grows
    # with the table: loading 490k records took 17.1 µs of CPU a record with it against
    # 6.9 without, single checkpoints grew to 1.6 s (0.14 s without) and the file was 64 %
    # larger (580 against 354 bytes a record). `python bench/bench_duckdb_load.py`.
    with contextlib.suppress(duckdb.Error):  # an older DuckDB without it keeps its default
        con.execute("SET max_vacuum_tasks = 0")
    if upgrade:
        done = create(con)
        if done:
            log.warning("ledger %s upgraded in place: %s", path, "; ".join(done))
    return con


# ── reading a file someone else could have written ───────────────────────────────────

READER_CATALOG = "ledger"  # what `connect_reader` attaches the file as
TABLE_NAMES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", TABLES))


def connect_reader(path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a ledger file in which its tables and this version's
    views are what queries see, whatever else the file holds.

    An in-memory database attaches the file read-only as catalog `ledger` and defines, in
    its own catalog, a view over each of the file's tables and the `records`, `decisions`
    and `audit_log` views from VIEWS. The file's catalog is not on the search path: a view,
    macro or type stored in the file (mlwitness never stores any but its views) is reached
    only by naming it `ledger.main.<name>`. Its cursors share all this (they are
    connections to the same in-memory database)."""
    if not path.exists():
        from mlwitness.errors import FailedPrecondition

        raise FailedPrecondition(f"ledger file {path} does not exist")
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH ? AS {READER_CATALOG} (READ_ONLY)", [str(path)])
        stored = {name for (name,) in con.execute(
            "SELECT table_name FROM system.main.duckdb_tables() "
            "WHERE database_name = ? AND schema_name = 'main'", [READER_CATALOG]).fetchall()}
        for name in TABLE_NAMES:
            if name in stored:  # an older ledger may lack a table that came later
                con.execute(f"CREATE VIEW {name} AS SELECT *{_added(con, name)} "
                            f"FROM {READER_CATALOG}.main.{name}")
        if "entries" in stored:
            con.execute(VIEWS)
    except BaseException:
        con.close()
        raise
    return con


def _added(con: duckdb.DuckDBPyConnection, table: str) -> str:
    if table != "entries":
        return ""
    return missing_columns(entries_columns(con, READER_CATALOG))


def missing_columns(have: list[str]) -> str:
    """The columns a later schema version added to `entries` that a table with columns
    `have` lacks (a ledger no writer of this version has opened yet, an archive segment
    written before them), as a select list of NULLs of their types (", NULL::TINYINT AS
    format, …"): read through this version's code, its records are what they are,
    format 1."""
    return "".join(f", NULL::{kind} AS {name}" for name, kind in ADDED_COLUMNS.items()
                   if name not in have)


@functools.cache
def expected_views() -> dict[str, str]:
    """This version's views as DuckDB stores them (its own rendering of VIEWS' text)."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(TABLES)
        con.execute(VIEWS)
        return dict(con.execute(
            "SELECT view_name, sql FROM system.main.duckdb_views() WHERE NOT internal"
        ).fetchall())
    finally:
        con.close()


def stray_objects(con: duckdb.DuckDBPyConnection, catalog: str) -> list[str]:
    """What in the ledger file attached as `catalog` differs from what mlwitness creates:
    one of our views missing or redefined, any other view, any macro or type (each can
    change what a query of the file shows), one of our tables missing or not a table. A
    sentence each, our views first. Functions are named `system.main.…` because a macro
    in the file could stand in for them."""
    problems: list[str] = []
    stored: dict[tuple[str, str], str] = {
        (schema, name): sql for schema, name, sql in con.execute(
            "SELECT schema_name, view_name, sql FROM system.main.duckdb_views() "
            "WHERE database_name = ? AND NOT internal ORDER BY ALL", [catalog]).fetchall()}
    for name, sql in expected_views().items():
        found = stored.pop(("main", name), None)
        if found is None:
            problems.append(f"view {name} is missing")
        elif _normal(found) != _normal(sql):
            problems.append(f"view {name} is not mlwitness's definition: it was redefined "
                            "(queries of the file through it may hide or change records), or "
                            "written by another version of mlwitness or DuckDB (`mlwitness "
                            "serve` recreates it)")
    tables = {name for (name,) in con.execute(
        "SELECT table_name FROM system.main.duckdb_tables() "
        "WHERE database_name = ? AND schema_name = 'main'", [catalog]).fetchall()}
    for name in TABLE_NAMES:
        if name not in tables:
            if ("main", name) in stored:
                problems.append(f"table {name} is a view")
            elif name not in LATER_TABLES:
                problems.append(f"table {name} is missing")
    for (schema, name) in stored:
        problems.append(f"view {_qualified(schema, name)} is not one mlwitness creates")
    for schema, name, kind in con.execute(
        "SELECT DISTINCT schema_name, function_name, function_type "
        "FROM system.main.duckdb_functions() WHERE database_name = ? AND NOT internal "
        "ORDER BY ALL", [catalog]).fetchall():
        problems.append(f"{kind.replace('_', ' ')} {_qualified(schema, name)} is not one "
                        "mlwitness creates (it can replace a built-in function in queries of "
                        "the file)")
    for schema, name in con.execute(
        "SELECT DISTINCT schema_name, type_name FROM system.main.duckdb_types() "
        "WHERE database_name = ? AND NOT internal ORDER BY ALL", [catalog]).fetchall():
        problems.append(f"type {_qualified(schema, name)} is not one mlwitness creates (it can "
                        "replace a built-in type in queries of the file)")
    return problems


def _normal(sql: str) -> str:
    return " ".join(sql.split())


def _qualified(schema: str, name: str) -> str:
    return name if schema == "main" else f"{schema}.{name}"
