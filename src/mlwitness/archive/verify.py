"""Verifying an archive: every chain under it, from the objects themselves.

For each chain (found from its manifests, its hint and its segment objects):

* every manifest parses and names its own range and Parquet key;
* the segments are contiguous from seq 1: a missing range is named with the objects on
  either side of it (and a Parquet object whose manifest is gone, if one holds it);
  overlapping segments are named;
* each Parquet object exists, matches the SHA-256 its manifest names, holds exactly the
  manifest's seqs of this chain, and the manifest's first prev_hash and last hash are its
  records';
* the hash chain runs through every record (ledger/verify.py's own check of each link,
  so the archive is held to the ledger's rule), and the decoded columns drift and bias read
  are those the hashed bytes give (ledger/decoded.py);
* every model, environment and baseline a record relies on is in a manifest's catalogue
  and its content-addressed object exists and hashes to its name;
* the chain reaches the segment its hint (`chains/<id>.json`) names, and a published head
  (`expect_heads`), if given.

Every problem names the chain, the first bad seq where there is one, and the object.
A Parquet object just past the chain's last manifest is an upload under way (or cut short,
which the shipper completes): a note, not a problem.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlwitness.archive import segments
from mlwitness.archive.segments import Manifest
from mlwitness.archive.store import ArchiveError, NotFound, ObjectStore
from mlwitness.ledger import decoded
from mlwitness.ledger.record import genesis_hash
from mlwitness.ledger.verify import LISTED, chain_problem, records_from

BATCH = 4096  # records checked at a time


@dataclass
class ArchiveProblem:
    chain_id: str | None
    seq: int | None
    key: str | None  # the object concerned
    what: str

    def __str__(self) -> str:
        where = [f"chain {self.chain_id}" if self.chain_id else "",
                 f"seq {self.seq}" if self.seq is not None else "",
                 self.key or ""]
        return f"{', '.join(w for w in where if w)}: {self.what}"


@dataclass
class ChainReport:
    chain_id: str
    segments: int = 0
    records: int = 0
    head_seq: int = 0
    head_hash: str = ""
    decoded_checked: int = 0
    problems: list[ArchiveProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> ArchiveProblem | None:
        """The problem at the lowest seq (else the first one found)."""
        with_seq = [p for p in self.problems if p.seq is not None]
        if with_seq:
            return min(with_seq, key=lambda p: p.seq or 0)
        return self.problems[0] if self.problems else None


@dataclass
class ArchiveReport:
    archive: str
    chains: list[ChainReport] = field(default_factory=list)
    problems: list[ArchiveProblem] = field(default_factory=list)  # not of one chain
    content_objects: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and all(chain.ok for chain in self.chains)

    @property
    def records(self) -> int:
        return sum(chain.records for chain in self.chains)

    @property
    def all_problems(self) -> list[ArchiveProblem]:
        return [*self.problems, *(p for chain in self.chains for p in chain.problems)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ok=self.ok, records=self.records,
                    records_per_second=self.records / self.seconds if self.seconds else 0.0,
                    problems=[str(p) for p in self.all_problems])
        for chain, report in zip(data["chains"], self.chains, strict=True):
            first = report.first_bad
            chain["first_bad"] = None if first is None else asdict(first)
        return data


def verify_archive(store: ObjectStore, *, decoded_columns: bool = True,
                   expect_heads: dict[str, tuple[int, str]] | None = None) -> ArchiveReport:
    """Verify every chain of the archive in `store`. `expect_heads`: {chain id: (seq, hex
    hash)} published earlier, each of which the chain must reach and carry."""
    started = time.monotonic()
    report = ArchiveReport(store.url("manifests").rpartition("/")[0])
    found = _inventory(store, report)
    content = _Content(store)
    heads = expect_heads or {}
    for chain_id in sorted(found):
        chain = _Chain(store, chain_id, found[chain_id], content, decoded_columns,
                       heads.get(chain_id))
        chain.run()
        report.chains.append(chain.report)
    for chain_id in sorted(set(expect_heads or ()) - set(found)):
        report.problems.append(ArchiveProblem(chain_id, None, None, "a head was published for "
                                              "this chain, but the archive holds none of it"))
    report.content_objects = len(content.checked)
    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Found:
    manifests: list[str] = field(default_factory=list)
    objects: dict[tuple[int, int], str] = field(default_factory=dict)  # Parquet by range
    hinted: bool = False


def _inventory(store: ObjectStore, report: ArchiveReport) -> dict[str, _Found]:
    found: dict[str, _Found] = {}
    for info in store.list(segments.manifest_prefix()):
        parsed = segments.parse_manifest_key(info.key)
        if parsed is None:
            report.problems.append(ArchiveProblem(None, None, info.key, "not a manifest's name "
                                                  "(the shipper writes none such)"))
            continue
        found.setdefault(parsed[0], _Found()).manifests.append(info.key)
    for info in store.list(f"{segments.RECORDS}/"):
        chain_part = info.key.split("/")[1] if info.key.count("/") >= 2 else ""
        bounds = segments.parse_segment_name(info.key)
        chain_id = chain_part.removeprefix("chain=")
        if bounds is None or not chain_part.startswith("chain=") or not _is_chain(chain_id):
            report.problems.append(ArchiveProblem(None, None, info.key, "not a segment "
                                                  "object's name (the shipper writes none "
                                                  "such)"))
            continue
        found.setdefault(chain_id, _Found()).objects[bounds] = info.key
    for info in store.list(f"{segments.CHAINS}/"):
        chain_id = info.key.removeprefix(f"{segments.CHAINS}/").removesuffix(".json")
        if _is_chain(chain_id):
            found.setdefault(chain_id, _Found()).hinted = True
    return found


def _is_chain(text: str) -> bool:
    try:
        segments.check_chain(text)
    except ArchiveError:
        return False
    return True


class _Content:
    """Content-addressed objects, each fetched and hashed once for the whole archive."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.checked: dict[str, str] = {}  # key -> "" if good, else what is wrong

    def problem(self, kind: str, sha256: str) -> tuple[str, str]:
        key = segments.content_key_of(kind, sha256)
        if key not in self.checked:
            try:
                data = self.store.get(key)
            except NotFound:
                self.checked[key] = f"the {kind} object is missing"
            except ArchiveError as exc:
                self.checked[key] = f"the {kind} object cannot be read: {exc}"
            else:
                good = hashlib.sha256(data).hexdigest() == sha256
                self.checked[key] = "" if good else (f"the {kind} object's bytes do not "
                                                     "match its SHA-256")
        return key, self.checked[key]


class _Chain:
    def __init__(self, store: ObjectStore, chain_id: str, found: _Found, content: _Content,
                 decoded_columns: bool, head: tuple[int, str] | None) -> None:
        self.store = store
        self.found = found
        self.content = content
        self.report = ChainReport(chain_id)
        self.expected = 1
        self.prev = genesis_hash(chain_id)
        self.broken = False  # only a chain's first broken link is named: the rest follows
        self.decoded = decoded.DecodedCheck() if decoded_columns else None
        self.mismatched: list[tuple[int, str, list[str]]] = []
        self.first_use: dict[tuple[str, str], int] = {}  # (kind, id) -> first seq using it
        self.catalogue: set[tuple[str, str]] = set()
        self.last_key = ""
        self.head = head  # a published (seq, hash) the chain must reach and carry
        self.hash_at_head: bytes | None = None

    def problem(self, seq: int | None, key: str | None, what: str) -> None:
        self.report.problems.append(ArchiveProblem(self.report.chain_id, seq, key, what))

    def run(self) -> None:
        manifests = []
        for key in self.found.manifests:
            try:
                manifests.append(Manifest.from_bytes(self.store.get(key), key))
            except (ArchiveError, NotFound) as exc:
                self.problem(_first_of(key), key, f"the manifest cannot be used: {exc}")
        manifests.sort(key=lambda m: (m.first_seq, m.last_seq))
        for manifest in manifests:
            self.segment(manifest)
        self.tail(manifests)
        self.content_check()
        self.decoded_report()
        self.report.head_seq, self.report.head_hash = self.expected - 1, self.prev.hex()
        if self.head is not None:
            self.expect(*self.head)

    def segment(self, m: Manifest) -> None:
        if m.first_seq < self.expected:
            self.problem(m.first_seq, m.key, f"overlaps records up to {self.expected - 1} "
                         f"(of {self.last_key}): records are archived twice")
            return
        if m.first_seq > self.expected:
            self.gap(self.expected, m.first_seq - 1, m.key)
            self.expected, self.prev = m.first_seq, bytes.fromhex(m.first_prev_hash)
        self.report.segments += 1
        for model in m.models:
            self.catalogue.add(("model", model.sha256))
        for env in m.environments:
            self.catalogue.add(("environment", env.env_id))
        for base in m.baselines:
            self.catalogue.add(("baseline", base.sha256))
        table = self.parquet(m)
        if table is not None:
            self.records(m, table)
        self.last_key = m.key

    def gap(self, first: int, last: int, after: str) -> None:
        orphans = [key for (a, b), key in self.found.objects.items() if a <= last and b >= first]
        held = f"; {', '.join(sorted(orphans))} holds records there but has no manifest" \
            if orphans else ""
        before = f"after {self.last_key} " if self.last_key else ""
        self.problem(first, after, f"records {first}..{last} are missing from the archive: no "
                     f"segment {before}holds them{held}")
        self.broken = True

    def parquet(self, m: Manifest) -> pa.Table | None:
        key = m.parquet_key
        try:
            data = self.store.get(key)
        except NotFound:
            self.problem(m.first_seq, key, f"the segment object of records {m.first_seq}.."
                         f"{m.last_seq} is missing (its manifest {m.key} remains)")
            self.skip(m)
            return None
        except ArchiveError as exc:
            self.problem(m.first_seq, key, f"the segment object cannot be read: {exc}")
            self.skip(m)
            return None
        if hashlib.sha256(data).hexdigest() != m.parquet_sha256:
            self.problem(None, key, "the segment object does not match the SHA-256 its "
                         "manifest names (it was changed or replaced)")
        try:
            return pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as exc:
            self.problem(m.first_seq, key, f"the segment object is not readable Parquet: {exc}")
            self.skip(m)
            return None

    def skip(self, m: Manifest) -> None:
        """Go on after a segment whose records cannot be read, as its manifest says."""
        self.broken = True
        self.expected, self.prev = m.last_seq + 1, bytes.fromhex(m.last_hash)

    def records(self, m: Manifest, table: pa.Table) -> None:
        key = m.parquet_key
        seqs = table.column("seq").to_pylist()
        if seqs != list(range(m.first_seq, m.last_seq + 1)):
            self.problem(m.first_seq, key, f"holds {len(seqs)} records, not exactly "
                         f"{m.first_seq}..{m.last_seq} in order as its manifest says")
        chains = set(table.column(segments.CHAIN_COLUMN).to_pylist()) \
            if segments.CHAIN_COLUMN in table.column_names else set()
        if chains != {self.report.chain_id}:
            self.problem(m.first_seq, key, f"holds records of chain(s) {sorted(chains)[:3]}")
        if table.num_rows and bytes(table.column("prev_hash")[0].as_py()).hex() != \
                m.first_prev_hash:
            self.problem(m.first_seq, m.key, "the manifest's first prev_hash is not its first "
                         "record's")
        if table.num_rows and bytes(table.column("hash")[-1].as_py()).hex() != m.last_hash:
            self.problem(m.last_seq, m.key, "the manifest seals a last hash that is not its "
                         "last record's")
        for batch in table.to_batches(BATCH):
            records = records_from(batch)
            for record in records:
                self.link(record, key)
            if self.decoded is not None:
                for mismatch in self.decoded.check(records, batch):
                    if len(self.mismatched) <= LISTED:
                        self.mismatched.append((mismatch.seq, key, mismatch.columns))
        self.report.records += table.num_rows

    def link(self, record: Any, key: str) -> None:
        problem = chain_problem(record, self.expected, self.prev)
        if problem is not None and not self.broken:
            self.broken = True
            self.problem(problem.seq, key, problem.what)
        for kind, value in (("model", record.model_sha256), ("environment", record.env_id)):
            if value and (kind, value) not in self.first_use:
                self.first_use[(kind, value)] = record.seq
        if record.kind == "admin" and '"baseline"' in record.detail:
            detail = _json(record.detail)
            if detail.get("action") == "baseline" and isinstance(detail.get("sha256"), str):
                self.first_use.setdefault(("baseline", detail["sha256"]), record.seq)
        if self.head is not None and record.seq == self.head[0]:
            self.hash_at_head = record.hash
        self.expected, self.prev = record.seq + 1, record.hash

    def tail(self, manifests: list[Manifest]) -> None:
        """After the last manifest: an upload under way, and what the hint names."""
        last = manifests[-1].last_seq if manifests else 0
        for (first, end), key in sorted(self.found.objects.items()):
            if first > last and not any(m.parquet_key == key for m in manifests):
                self.report.notes.append(f"{key}: records {first}..{end} uploaded without a "
                                         "manifest yet (an upload under way, or cut short; "
                                         "the shipper completes it)")
        if not self.found.hinted:
            return
        try:
            hint = json.loads(self.store.get(segments.hint_key(self.report.chain_id)))
            hinted_seq = int(hint["last_seq"])
            hinted_key = str(hint["manifest"])
        except (NotFound, ValueError, KeyError, TypeError):
            return
        if hinted_seq > last:
            self.problem(last + 1, hinted_key, f"the chain's hint says it was archived up to "
                         f"record {hinted_seq}, but the archive ends at record {last}: "
                         f"{hinted_key} and any segment after record {last} are gone")

    def content_check(self) -> None:
        for (kind, value), seq in sorted(self.first_use.items(), key=lambda item: item[1]):
            if (kind, value) not in self.catalogue:
                self.problem(seq, None, f"{kind} {value} (named by seq {seq}) is in no "
                             "manifest's catalogue")
                continue
            key, problem = self.content.problem(kind, value)
            if problem:
                self.problem(seq, key, f"{problem} (first named by seq {seq})")

    def decoded_report(self) -> None:
        if self.decoded is None:
            return
        self.report.decoded_checked = self.decoded.checked
        for seq, key, columns in self.mismatched[:LISTED]:
            self.problem(seq, key, f"decoded {', '.join(columns)} differ from what its hashed "
                         "bytes give (the values SQL, drift and bias read were changed)")

    def expect(self, seq: int, digest: str) -> None:
        if self.report.head_seq < seq:
            self.problem(self.report.head_seq + 1, None, f"records after "
                         f"{self.report.head_seq} are missing; a published head says the "
                         f"chain reached {seq}")
        elif self.hash_at_head is None or self.hash_at_head.hex() != digest:
            self.problem(seq, None, f"the hash at seq {seq} differs from the published one: "
                         f"the chain was rewritten at or before seq {seq}")


def _first_of(key: str) -> int | None:
    parsed = segments.parse_manifest_key(key)
    return parsed[1] if parsed else None


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
