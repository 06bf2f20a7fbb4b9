"""Ledger verification: everything an auditor reads, checked against what is hashed.

* **The chain.** Every field of every record is hashed (see `record.encode`; a format-2
  record's payload through its salted commitment), so changing any byte of a stored
  record, its salt or its commitment, deleting a record or reordering records breaks the
  chain at the first affected seq. Records still in the journal (acknowledged, not yet
  loaded into DuckDB) are verified as the chain's continuation. A ledger may hold format-1
  records (written before format 2) and then format-2 ones; each is checked in its own.
* **Erased records** (ledger/erasure.py) keep their payload commitment, which their hash
  covers, and nothing of their payload; each must be one that the admin record it names
  states it erases. The report counts them by that admin record.
* **A published head** (`expect_head`, SEQ and its hash as published earlier): the record
  at SEQ must carry that hash whenever the chain reaches SEQ, so neither a truncated ledger
  nor one rewritten from some record on (every later hash recomputed) passes.
* **Decoded columns** (`entries.inputs`, `outputs`, `parameters`, …), which SQL, drift and
  bias read, derived again from each record's hashed bytes and compared (ledger/decoded.py).
* **Models**: their bytes against their SHA-256, their signature against the one those
  bytes give, their name and version against the first record that used them.
  **Environments** and **baselines**: content against id; a baseline's name and time
  against the admin record that announced it.
* **The file's views and other objects** (schema.stray_objects): `records`, `decisions`
  and `audit_log` as mlwitness defines them, and no view, macro or type of anyone else's.
* **An archived prefix.** Local retention (archive/retention.py) deletes records once they
  are archived and notes the last one it deleted, seq and hash, in `ledger_meta`
  (ARCHIVED_SEQ, ARCHIVED_HASH): the chain is then checked from the record after it, that
  hash as its prev_hash, and the report names the prefix (`archived_prefix`), which
  `mlwitness archive verify` checks in the archive.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlwitness.errors import InvalidInput
from mlwitness.ledger import decoded, erasure, journal, schema
from mlwitness.ledger.record import (
    FORMAT_V1,
    FORMAT_V2,
    PAYLOAD_FIELDS,
    Record,
    chain_hash,
    encode,
    genesis_hash,
)

# Stored record fields in the order of Record's own (so a row is Record(*row)).
RECORD_FIELDS = (
    "kind", "request_id", "received_us", "responded_us", "model_name", "model_version",
    "model_sha256", "env_id", "peer", "metadata", "status", "message", "violations", "detail",
    "request", "response", "seq", "prev_hash", "hash", "format", "salt", "payload_commitment",
    "erased_by",
)
# The fields of RECORD_FIELDS a later schema added (schema.ADDED_COLUMNS): NULL, or missing
# from an older archive segment, they are what a format-1 record has.
_ADDED_DEFAULTS = {"format": FORMAT_V1, "salt": b"", "payload_commitment": b"", "erased_by": 0}
ARCHIVED_SEQ = "archived_seq"  # ledger_meta: the last record deleted once archived
ARCHIVED_HASH = "archived_hash"  # ledger_meta: its hash (hex)
BATCH = 4096  # records read, decoded and compared at a time
LISTED = 20  # records with differing decoded columns named one by one; the rest counted


@dataclass
class Problem:
    seq: int | None
    what: str


@dataclass
class VerifyReport:
    ledger: str
    records: int = 0
    journal_records: int = 0
    models: int = 0
    environments: int = 0
    head_seq: int = 0
    head_hash: str = ""
    problems: list[Problem] = field(default_factory=list)
    baselines: int = 0
    decoded_checked: int = 0  # records whose decoded columns were derived and compared
    # Stored decoded values the hashed bytes do not determine: {why, records, first_seqs}
    not_covered: list[dict[str, Any]] = field(default_factory=list)
    # Column names of tensors configured by --features, learned from the data where no
    # record announced them (older ledgers): {tensor: {names, first_seq}}
    column_names: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Records 1..seq deleted locally once archived: {seq, hash}; None when none were
    archived_prefix: dict[str, Any] | None = None
    # Records by format ({"1": n, "2": m}) and erased records by the seq of the admin record
    # that erased them ({"812": 3}); erasures not complete: {seq, listed, erased}
    record_formats: dict[str, int] = field(default_factory=dict)
    erased: dict[str, int] = field(default_factory=dict)
    erasures_incomplete: list[dict[str, int]] = field(default_factory=list)
    _reasons: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    @property
    def decoded_not_covered(self) -> int:
        return sum(group["records"] for group in self.not_covered)

    @property
    def erased_records(self) -> int:
        return sum(self.erased.values())

    def notes(self) -> list[str]:
        """What verification could not cover, in sentences (not failures)."""
        out = []
        if self.archived_prefix:
            out.append(f"records 1..{self.archived_prefix['seq']} are in the archive only "
                       "(deleted locally once archived): `mlwitness archive verify` checks them")
        for group in self.not_covered:
            seqs = ", ".join(map(str, group["first_seqs"]))
            more = ", …" if group["records"] > len(group["first_seqs"]) else ""
            out.append(f"{group['records']} records: {group['why']}, not covered by the "
                       f"chain (seq {seqs}{more})")
        for tensor, named in self.column_names.items():
            out.append(f"columns of tensor {tensor} named {', '.join(named['names'])} from "
                       f"seq {named['first_seq']} on: --features, not in the hashed bytes")
        for by, count in self.erased.items():
            why = self._reasons.get(int(by), "")
            out.append(f"{count} records erased by admin record seq {by}"
                       + (f" ({why})" if why else "")
                       + ": their hashes cover their payload commitments, kept")
        for stated in self.erasures_incomplete:
            out.append(f"admin record seq {stated['seq']} erases {stated['listed']} records, "
                       f"{stated['erased']} of them erased so far (the sidecar completes an "
                       "erasure when it starts; records deleted once archived are in the "
                       "archive)")
        return out

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("_reasons", None)
        data["ok"] = self.ok
        data["first_bad_seq"] = self.first_bad_seq
        data["decoded_not_covered"] = self.decoded_not_covered
        data["erased_records"] = self.erased_records
        return data


# ── a published head ───────────────────────────────────────────────────────────────────

_SEQ = re.compile(r"-?[0-9]+")
_HEX = re.compile(r"[0-9a-f]{64}")


def expected_head(seq: int, digest: str) -> tuple[int, str]:
    """A published chain head (seq, hash), checked; InvalidInput naming what is wrong."""
    if seq < 1:
        raise InvalidInput(f"expected head: seq must be 1 or more (got {seq}); publish the "
                           "seq and hash that `mlwitness verify` prints as the chain head")
    text = digest.strip().lower()
    if not _HEX.fullmatch(text):
        raise InvalidInput(f"expected head: the hash must be 64 hex digits (a SHA-256), got "
                           f"{len(digest)} characters{'' if _hexish(text) else ' (not hex)'}")
    return seq, text


def parse_head(text: str) -> tuple[int, str]:
    """SEQ:HASH, as `--expect-head` takes it."""
    seq, colon, digest = text.strip().partition(":")
    if not colon or not _SEQ.fullmatch(seq.strip()):
        raise InvalidInput("--expect-head must be SEQ:HASH, e.g. 1042:<64 hex digits>, the "
                           "seq and hash `mlwitness verify` printed as the chain head")
    return expected_head(int(seq), digest)


def _hexish(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# ── verification ───────────────────────────────────────────────────────────────────────


@dataclass
class _Walk:
    """What the pass over the records collects for the later checks."""

    expected_seq: int = 1
    prev: bytes = b""
    broken: bool = False  # only the chain's first break is reported: the rest follows
    head_wanted: int = 0
    hash_at_wanted: bytes | None = None
    first_use: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"model_sha256": {}, "env_id": {}})
    named: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # model -> first use
    candidates: set[str] = field(default_factory=set)  # model uploads for what-if questions
    baselines: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # sha -> announced
    erasures: dict[int, erasure.Erasure] = field(default_factory=dict)  # admin seq -> stated
    erased: list[tuple[int, int]] = field(default_factory=list)  # (seq, erased_by)


def verify(path: Path, *, expect_head: tuple[int, str] | None = None,
           con: Any = None) -> VerifyReport:
    """Verify the ledger file at `path` and its journal tail. The file is opened read-only
    unless `con`, a cursor on it (e.g. from the process that writes it), is given.
    `expect_head`: (seq, hash) as checked by `expected_head`."""
    report = VerifyReport(ledger=str(path))
    # The journal first: a live writer loads records into DuckDB and only then deletes
    # their journal segment, so read in this order every record is in one or the other.
    tail: list[Record] = []
    unreadable: Exception | None = None
    try:
        tail.extend(journal.read(journal.journal_dir(path)))
    except Exception as exc:  # damaged journal: report it, don't crash the verifier
        unreadable = exc
    walk = _Walk(head_wanted=expect_head[0] if expect_head else 0)
    own = con is None
    if own:
        con = schema.connect_reader(path)
    try:
        catalog = _catalog(con, path)
        objects = schema.stray_objects(con, catalog)
        report.problems.extend(Problem(None, what) for what in objects)
        tables = {name for name in schema.TABLE_NAMES if not any(
            w.startswith(f"table {name} ") for w in objects)}
        where = f'"{catalog}".main.'
        meta = dict(con.execute(f"SELECT key, value FROM {where}ledger_meta").fetchall()
                    ) if "ledger_meta" in tables else {}
        walk.prev = genesis_hash(meta.get("chain_id", ""))
        _start_after_archived(meta, walk, report)
        if "entries" in tables:
            _check_entries(con, where, catalog, walk, report)
            _check_erasures(walk, report)
        _check_models(con, where, walk, report, tables)
        _check_baselines(con, where, walk, report, tables)
    finally:
        if own:
            con.close()
    for record in tail:
        if record.seq < walk.expected_seq:
            continue
        _chain_step(record, walk, report, "journal: ")
        report.journal_records += 1
    if unreadable is not None:
        report.problems.append(Problem(walk.expected_seq,
                                       f"journal unreadable: {unreadable}"))
    report.head_seq = walk.expected_seq - 1
    report.head_hash = walk.prev.hex()
    if expect_head is not None:
        _check_head(report, walk, *expect_head)
    return report


def _start_after_archived(meta: dict[str, str], walk: _Walk, report: VerifyReport) -> None:
    """Begin the chain after the archived prefix, if records were deleted once archived."""
    if ARCHIVED_SEQ not in meta:
        return
    seq, digest = int(meta[ARCHIVED_SEQ]), meta.get(ARCHIVED_HASH, "")
    report.archived_prefix = {"seq": seq, "hash": digest}
    walk.expected_seq, walk.prev = seq + 1, bytes.fromhex(digest)
    if walk.head_wanted == seq:
        walk.hash_at_wanted = walk.prev


def _catalog(con: Any, path: Path) -> str:
    """The name under which `con` sees the ledger file (its own database for the writer's
    cursor; `ledger` when attached by schema.connect_reader)."""
    want = Path(path).resolve()
    for name, file in con.execute(
        "SELECT database_name, path FROM system.main.duckdb_databases() WHERE NOT internal"
    ).fetchall():
        if file and Path(file).resolve() == want:
            return str(name)
    return str(con.execute("SELECT system.main.current_database()").fetchone()[0])


def _check_entries(con: Any, where: str, catalog: str, walk: _Walk,
                   report: VerifyReport) -> None:
    check = decoded.DecodedCheck()
    mismatched: list[decoded.Mismatch] = []  # the first LISTED + 1
    more = 0
    formats: dict[int, int] = {}
    for batch, records in _stored_batches(con, where, catalog):
        for record in records:
            _chain_step(record, walk, report, "")
            _note_use(record, walk)
            _note_erasure(record, walk, report)
            formats[record.format] = formats.get(record.format, 0) + 1
        report.records += len(records)
        found = check.check(records, batch)
        room = LISTED + 1 - len(mismatched)
        mismatched += found[:room]
        more += len(found[room:])
    for mismatch in mismatched[:LISTED]:
        report.problems.append(Problem(mismatch.seq, (
            f"decoded {', '.join(mismatch.columns)} differ from what its hashed bytes give "
            "(the values SQL, drift and bias read were changed)")))
    if len(mismatched) > LISTED:
        report.problems.append(Problem(mismatched[LISTED].seq, (
            f"{1 + more} more records whose decoded columns differ from their hashed "
            f"bytes, from seq {mismatched[LISTED].seq} on")))
    report.decoded_checked = check.checked
    report.not_covered = [
        {"why": why, "records": group.records, "first_seqs": group.first_seqs}
        for why, group in check.uncovered.items()]
    report.column_names = {
        tensor: {"names": list(names), "first_seq": check.named_at[tensor]}
        for tensor, names in check.feature_names.items()}
    report.record_formats = {str(f): n for f, n in sorted(formats.items())}


def _stored_batches(con: Any, where: str, catalog: str
                    ) -> Iterator[tuple[Any, list[Record]]]:
    """The stored records in seq order, a batch at a time: (the Arrow batch, with the
    decoded columns; its records). A ledger no writer of this version has opened yet lacks
    the columns later schema versions added: NULL, as for its format-1 records."""
    have = set(schema.entries_columns(con, catalog))
    columns = [name if name in have or name not in schema.ADDED_COLUMNS
               else f"NULL::{schema.ADDED_COLUMNS[name]} AS {name}" for name in RECORD_FIELDS]
    reader = con.sql(
        f"SELECT {', '.join(columns)}, {', '.join(decoded.COLUMNS)} FROM {where}entries "
        "ORDER BY seq").to_arrow_reader(BATCH)
    for batch in reader:
        yield batch, records_from(batch)


def records_from(batch: Any) -> list[Record]:
    """The records of an Arrow batch (or table) holding the RECORD_FIELDS columns (the
    archive's segments too; one written before record format 2 lacks the columns it
    added, and its records are format 1)."""
    present = set(batch.schema.names)
    columns = []
    for name in RECORD_FIELDS:
        if name not in present:
            columns.append([_ADDED_DEFAULTS[name]] * batch.num_rows)
            continue
        values = batch.column(name).to_pylist()
        if name in _ADDED_DEFAULTS:
            default = _ADDED_DEFAULTS[name]
            values = [default if value is None else value for value in values]
        columns.append(values)
    return [Record(*values) for values in zip(*columns, strict=True)]


def _chain_step(record: Record, walk: _Walk, report: VerifyReport, where: str) -> None:
    problem = chain_problem(record, walk.expected_seq, walk.prev)
    if problem is not None and not walk.broken:
        walk.broken = True
        report.problems.append(Problem(problem.seq, where + problem.what))
    if record.seq == walk.head_wanted and walk.hash_at_wanted is None:
        walk.hash_at_wanted = record.hash
    walk.expected_seq = record.seq + 1
    walk.prev = record.hash


def chain_problem(record: Record, expected_seq: int, prev: bytes) -> Problem | None:
    """Whether `record` continues the chain whose next seq is `expected_seq` after the
    hash `prev` (the archive's verifier walks its segments with this too)."""
    if record.seq != expected_seq:
        if record.seq > expected_seq:
            return Problem(expected_seq, f"record seq {expected_seq} is missing "
                           f"(next stored record is seq {record.seq})")
        return Problem(record.seq, f"seq {record.seq} appears out of order or twice")
    if record.prev_hash != prev:
        return Problem(record.seq, "prev_hash does not match the previous record's hash "
                       "(a record was removed, inserted or reordered before it)")
    try:
        hashed = encode(record)
    except ValueError as exc:  # a format-2 record without its salt, an unknown format
        return Problem(record.seq, f"its hashed bytes cannot be formed ({exc}): the record "
                       "was altered")
    if chain_hash(record.prev_hash, hashed) != record.hash:
        return Problem(record.seq, "content does not match its hash (the record was altered)")
    return None


def _note_erasure(record: Record, walk: _Walk, report: VerifyReport) -> None:
    """Remember what erasures the admin records state, and the records erased; an erased
    record must hold nothing of its payload (its hash covers the commitment it keeps)."""
    stated = erasure.parse(record)
    if stated is not None:
        walk.erasures[record.seq] = stated
    if not (record.payload_commitment or record.erased_by):
        return
    if not (record.payload_commitment and record.erased_by):
        report.problems.append(Problem(record.seq, "an erased record keeps both its payload "
                                       "commitment and the seq of the erasure; it has one"))
    elif record.format != FORMAT_V2:
        report.problems.append(Problem(record.seq, f"a format-{record.format} record is "
                                       "marked erased (only format-2 records can be)"))
    kept = [name for name in (*PAYLOAD_FIELDS, "salt") if getattr(record, name)]
    if kept:
        report.problems.append(Problem(record.seq, f"marked erased, yet it holds "
                                       f"{', '.join(kept)}"))
    walk.erased.append((record.seq, record.erased_by))


def _check_erasures(walk: _Walk, report: VerifyReport) -> None:
    """Every erased record must be one that the admin record it names (later in the
    chain: records are erased after they are stored) states it erases; count them by
    erasure, and note the erasures not complete."""
    counted: dict[int, int] = {}
    for seq, by in walk.erased:
        stated = walk.erasures.get(by)
        if stated is None or not stated.covers(seq):
            report.problems.append(Problem(seq, f"erased, but admin record seq {by} states no "
                                           "erasure of it (a record's payload was removed "
                                           "without an erasure on the chain)"))
            continue
        counted[by] = counted.get(by, 0) + 1
    report.erased = {str(by): n for by, n in sorted(counted.items())}
    report._reasons = {by: stated.reason for by, stated in walk.erasures.items()}
    for by, stated in walk.erasures.items():
        if counted.get(by, 0) < stated.count:
            report.erasures_incomplete.append(
                {"seq": by, "listed": stated.count, "erased": counted.get(by, 0)})


def _check_head(report: VerifyReport, walk: _Walk, seq: int, digest: str) -> None:
    if report.archived_prefix and seq < report.archived_prefix["seq"]:
        return  # in the archive only: `mlwitness archive verify --expect-head` checks it
    if report.head_seq < seq:
        report.problems.append(Problem(
            report.head_seq + 1, f"records after seq {report.head_seq} are missing; "
            f"expected the chain to reach seq {seq}"))
    elif walk.hash_at_wanted is None or walk.hash_at_wanted.hex() != digest:
        report.problems.append(Problem(
            seq, f"the hash at seq {seq} differs from the expected (published) one: the "
            f"chain was rewritten at or before seq {seq}"))


def _note_use(record: Record, walk: _Walk) -> None:
    """Remember what the later checks of models and baselines compare with."""
    for column, first in walk.first_use.items():
        key = getattr(record, column)
        if key and key not in first:
            first[key] = record.seq
    if record.kind == "infer":
        # A call to an unknown model (or version) carries the name it asked for
        if record.model_sha256 not in walk.named and record.status != "NOT_FOUND":
            walk.named[record.model_sha256] = (record.seq, record.model_name,
                                               record.model_version)
    elif record.kind == "audit" and "candidate_upload_sha256" in record.detail:
        asked = _json(record.detail).get("request")
        if isinstance(asked, dict) and asked.get("candidate_upload_sha256"):
            walk.candidates.add(str(asked["candidate_upload_sha256"]))
    elif record.kind == "admin":
        detail = _json(record.detail)
        sha = detail.get("sha256")
        if detail.get("action") == "baseline" and isinstance(sha, str):
            walk.baselines.setdefault(sha, (record.seq, str(detail.get("source", "")),
                                            record.received_us))


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ── models, environments, baselines ────────────────────────────────────────────────────


def _check_models(con: Any, where: str, walk: _Walk, report: VerifyReport,
                  tables: set[str]) -> None:
    """Stored model bytes and environment fingerprints must match their ids, and every id a
    record names must be stored; a model's signature and name must be those its bytes and
    its first record give. A problem names the first record that relies on it."""
    first_use = walk.first_use["model_sha256"]
    stored = set()
    rows = con.execute(f"SELECT sha256, name, version, onnx, signature FROM {where}models "
                       "ORDER BY sha256").fetchall() if "models" in tables else []
    for sha, name, version, onnx, signature in rows:
        report.models += 1
        stored.add(sha)
        seq = first_use.get(sha)
        if hashlib.sha256(bytes(onnx)).hexdigest() != sha:
            report.problems.append(Problem(seq, f"model {sha}: stored bytes do not match "
                                           "their SHA-256"))
            continue
        for what in (_signature_problem(bytes(onnx), signature),
                     _name_problem(sha, name, version, walk)):
            if what:
                report.problems.append(Problem(seq, f"model {sha}: {what}"))
    _report_missing(report, first_use, stored, "model {} is not in the model store")
    first_use = walk.first_use["env_id"]
    stored = set()
    rows = con.execute(f"SELECT env_id, fingerprint FROM {where}environments ORDER BY env_id"
                       ).fetchall() if "environments" in tables else []
    for env_id, fingerprint in rows:
        report.environments += 1
        stored.add(env_id)
        if hashlib.sha256(fingerprint.encode()).hexdigest() != env_id:
            report.problems.append(Problem(first_use.get(env_id), f"environment {env_id}: "
                                           "fingerprint does not match its id"))
    _report_missing(report, first_use, stored, "environment {} is not in the ledger")


def _signature_problem(onnx: bytes, stored: str) -> str | None:
    """The stored signature must be the one onnxruntime reads from the bytes. A model
    onnxruntime could not load when it was pinned (served through an upstream) is stored
    with an error instead; that is accepted as it stands (a later onnxruntime may load it)."""
    from mlwitness.errors import FailedPrecondition
    from mlwitness.model.runtime import OnnxModel

    signature = _json(stored) if stored.startswith("{") else None
    if signature is None:
        return "the stored signature is not a JSON object"
    if (set(signature) == {"inputs", "outputs", "error"} and signature["inputs"] == []
            and signature["outputs"] == [] and isinstance(signature["error"], str)
            and signature["error"]):
        return None
    try:
        derived = OnnxModel(onnx).signature.to_dict()
    except FailedPrecondition:
        return "a signature is stored, but onnxruntime cannot load the stored bytes"
    if signature != derived:
        return (f"the stored signature {json.dumps(signature, sort_keys=True)[:200]} is not "
                f"the one its bytes give, {json.dumps(derived, sort_keys=True)[:200]}")
    return None


def _name_problem(sha: str, name: str, version: str, walk: _Walk) -> str | None:
    """A served model is stored under the name and version of the calls it answers (the
    first call to it says which); a what-if candidate (an audit record names its upload)
    as "candidate"."""
    if (name, version) == ("candidate", "") and sha in walk.candidates:
        return None
    if sha in walk.named:
        seq, first_name, first_version = walk.named[sha]
        if (name, version) != (first_name, first_version):
            return (f"stored as {name!r} version {version!r}, but record seq {seq}, the first "
                    f"to use it, says {first_name!r} version {first_version!r}")
    elif sha in walk.candidates:
        return (f"stored as {name!r} version {version!r}, but it was uploaded as a what-if "
                "candidate (stored as 'candidate')")
    return None


def _check_baselines(con: Any, where: str, walk: _Walk, report: VerifyReport,
                     tables: set[str]) -> None:
    """A baseline's JSON must match its SHA-256, and the sidecar announces each one it
    stores with an admin record: its name is that record's file name, and it was stored
    before the announcement (the newest baseline, by that time, is drift's default)."""
    if "baselines" not in tables:
        return
    for sha, name, text, created_us in con.execute(
        f"SELECT sha256, name, json, created_us FROM {where}baselines ORDER BY sha256"
    ).fetchall():
        report.baselines += 1
        announced = walk.baselines.get(sha)
        seq = announced[0] if announced else None
        if hashlib.sha256(text.encode()).hexdigest() != sha:
            report.problems.append(Problem(seq, f"baseline {sha}: stored JSON does not "
                                           "match its SHA-256"))
        elif announced is None:
            if report.archived_prefix is None:  # else announced, maybe, in the archive only
                report.problems.append(Problem(None, f"baseline {sha} ({name!r}) was "
                                               "announced by no record (the sidecar records "
                                               "each baseline it stores)"))
        elif name != Path(announced[1]).name:
            report.problems.append(Problem(seq, f"baseline {sha}: stored as {name!r}, but "
                                           f"record seq {seq} stored it from "
                                           f"{announced[1]!r}"))
        elif created_us > announced[2]:
            report.problems.append(Problem(seq, f"baseline {sha}: its stored time is after "
                                           f"record seq {seq} announced it (the time decides "
                                           "which baseline is the latest)"))


def _report_missing(
    report: VerifyReport, first_use: dict[str, int], stored: set[str], what: str
) -> None:
    for key, seq in sorted(first_use.items(), key=lambda item: item[1]):
        if key not in stored:
            report.problems.append(Problem(seq, what.format(key) + f" (named by seq {seq})"))
