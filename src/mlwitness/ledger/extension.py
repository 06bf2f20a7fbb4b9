"""Does this ledger extend a checkpoint kept elsewhere? (`mlwitness verify --checkpoint`)

The chain alone cannot show a rewrite: whoever can write the file can change a record and
recompute every later hash. A checkpoint published outside the ledger (ledger/publisher.py)
can: it fixes the root of the tree over the first N records' hashes, signed. Here, offline,
with only the ledger file and what was published:

1. **The checkpoint**: its signature against the verifier key(s) given (evidence/check.py,
   the independent verifier), its format, its origin (a default origin names the chain).
   Unsigned, or without a key, it is used as it stands, and the report says so.
2. **Reference checkpoints**: every other one published beside it (DIR/checkpoints/<size>)
   and the ledger's own `checkpoints` rows — with a key, only those whose signature
   verifies. Two of one size with different roots are a **fork**, named.
3. **The ledger's tree**: the leaf hashes of its records 1..N (and of journal records not
   yet loaded) are folded into the root at every reference size and at N. A ledger shorter
   than N is **truncated**; a root that differs means records were **rewritten**.
4. **The first record that differs**: with the published tiles (DIR/tile/0/…) each leaf
   is compared with the published one, and the tiles are trusted only once they fold into
   the checkpoint's root: the exact seq. Without tiles, the reference checkpoints narrow it
   to a range (after the last size that matches, up to the first that does not); without
   either, records 1..N.

Records deleted from the ledger once archived (ledger/verify.py, ARCHIVED_SEQ) are taken
from the published tiles; without them the check cannot be made, and says so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mlwitness.errors import InvalidInput
from mlwitness.evidence import check
from mlwitness.evidence.merkle import Frontier, leaf_hash
from mlwitness.evidence.note import NoteError, parse_note
from mlwitness.evidence.tiles import TILE_WIDTH, tile_path
from mlwitness.ledger import journal, schema
from mlwitness.ledger.checkpoints import ORIGIN_PREFIX, default_origin
from mlwitness.ledger.publisher import HISTORY, LATEST, TLOG_CHECKPOINT
from mlwitness.ledger.verify import ARCHIVED_SEQ, Problem

BATCH = 65536  # (seq, hash) rows read at a time
_SIZE_NAME = re.compile(r"[1-9][0-9]{0,19}")


def read_keys(given: list[str]) -> list[str]:
    """Verifier keys from --key values: each a file of keys (one a line), or a key."""
    keys: list[str] = []
    for value in given:
        path = Path(value)
        if path.is_file():
            keys += [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        elif "+" in value and "/" not in value.split("+", 2)[0]:
            keys.append(value.strip())
        else:
            raise InvalidInput(f"--key {value}: no such file, and not a verifier key "
                               "(name+id+key, as `mlwitness keygen` prints)")
    for key in keys:
        try:
            check.parse_verifier_key(key)
        except check.VerificationError as exc:
            raise InvalidInput(f"--key: {key[:60]!r} is not a verifier key ({exc})") from None
    return keys


@dataclass
class ExtensionReport:
    """What the check found. `problems` go into the verify report's problems."""

    checkpoint: str  # the file read
    origin: str = ""
    size: int = 0
    root: str = ""  # hex
    signature: str = ""  # verified / unsigned / not checked, in words
    ledger_records: int = 0  # records of the ledger folded into the tree (up to what is needed)
    references: list[int] = field(default_factory=list)  # other checkpoint sizes compared
    tiles: str = ""  # how the published tiles were used, in words
    extends: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [{"seq": p.seq, "what": p.what} for p in self.problems]
        return data


@dataclass(frozen=True)
class _Head:
    size: int
    root: bytes
    source: str


def check_extends(ledger: Path, checkpoint: Path, keys: list[str]) -> ExtensionReport:
    """Whether the ledger at `ledger` extends the checkpoint at `checkpoint` (a file, or a
    --checkpoint-dir: its `latest`), the published directory beside it consulted."""
    base, file = _locate(Path(checkpoint))
    report = ExtensionReport(checkpoint=str(file))
    con = schema.connect_reader(Path(ledger))
    try:
        meta = dict(con.execute("SELECT key, value FROM ledger_meta").fetchall())
        main = _open_main(file, keys, meta.get("chain_id", ""), report)
        if main is None:
            return report
        references = _references(con, base, keys, main, report)
        tiles = _Tiles(base, main.size)
        archived = int(meta.get(ARCHIVED_SEQ, 0) or 0)
        if archived and not tiles.present:
            report.problems.append(Problem(None, (
                f"records 1..{archived} were deleted once archived and no published tiles "
                "hold their leaves: the checkpoint cannot be checked here")))
            return report
        _compare(_leaves(con, Path(ledger), archived, tiles, report), main, references,
                 tiles, report)
    finally:
        con.close()
    return report


def _locate(given: Path) -> tuple[Path, Path]:
    """(the published directory, the checkpoint file) of --checkpoint FILE|DIR."""
    if given.is_dir():
        for name in (LATEST, TLOG_CHECKPOINT):
            if (given / name).is_file():
                return given, given / name
        raise InvalidInput(f"--checkpoint {given}: a directory without `{LATEST}` (nor "
                           f"`{TLOG_CHECKPOINT}`); give the checkpoint file")
    if not given.is_file():
        raise InvalidInput(f"--checkpoint {given}: no such file or directory")
    return given.parent, given


def _open_main(file: Path, keys: list[str], chain_id: str, report: ExtensionReport
               ) -> _Head | None:
    data = file.read_bytes()
    try:
        text, report.signature = _open(data, keys)
        parsed = check.parse_checkpoint(text)
    except check.VerificationError as exc:
        report.problems.append(Problem(None, f"checkpoint {file}: {exc}"))
        return None
    report.origin, report.size, report.root = parsed.origin, parsed.size, parsed.root.hex()
    if parsed.origin.startswith(ORIGIN_PREFIX) and chain_id and \
            parsed.origin != default_origin(chain_id):
        report.problems.append(Problem(None, f"checkpoint {file} is of log {parsed.origin}, "
                                       f"and this ledger's chain is {chain_id}: another "
                                       "ledger's checkpoint"))
        return None
    if parsed.size == 0:
        report.notes.append("the checkpoint is of the empty tree: it fixes nothing")
    return _Head(parsed.size, parsed.root, str(file))


def _open(data: bytes, keys: list[str]) -> tuple[str, str]:
    """(the checkpoint text, what was established about its signature)."""
    signed = b"\n\n" in data
    if keys:
        if not signed:
            raise check.VerificationError("it is unsigned, and a --key was given: it is not "
                                          "the checkpoint that key signs")
        opened = check.open_note(data, keys)
        return opened.text, f"verified: signed by {', '.join(opened.signed_by)}"
    if not signed:
        return _text(data), ("unsigned: it shows what the ledger extends, not who "
                             "issued it")
    try:
        note = parse_note(data)
    except NoteError as exc:
        raise check.VerificationError(str(exc)) from None
    names = ", ".join(f"{s.name}+{s.key_id:08x}" for s in note.signatures)
    return note.text, f"not checked (no --key): signed by {names}"


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise check.VerificationError("not UTF-8") from None


def _references(con: Any, base: Path, keys: list[str], main: _Head,
                report: ExtensionReport) -> dict[int, _Head]:
    """Other checkpoints of the same log: published history and the ledger's own rows.
    With keys, only those whose signature verifies; forks among them are problems."""
    heads: dict[int, _Head] = {main.size: main}
    rejected = 0
    candidates: list[tuple[str, bytes]] = []
    history = base / HISTORY
    if history.is_dir():
        candidates += [(str(path), path.read_bytes()) for path in sorted(history.iterdir())
                       if _SIZE_NAME.fullmatch(path.name) and path.is_file()]
    own = _own_rows(con)
    candidates += [(f"the ledger's own checkpoint {size}", note.encode())
                   for size, note in own]
    accepted: set[str] = set()
    for source, data in candidates:
        try:
            text = check.open_note(data, keys).text if keys else _open(data, [])[0]
            parsed = check.parse_checkpoint(text)
        except check.VerificationError:
            rejected += 1
            continue
        if parsed.origin != report.origin or parsed.size == 0:
            rejected += 1
            continue
        accepted.add(source)
        head = _Head(parsed.size, parsed.root, source)
        known = heads.setdefault(head.size, head)
        if known.root != head.root:
            report.problems.append(Problem(None, (
                f"fork: two checkpoints of size {head.size} with different roots: "
                f"{known.source} ({known.root.hex()[:16]}…) and {source} "
                f"({head.root.hex()[:16]}…)")))
    for size, note in own:  # the ledger's own record of the checkpoint given, even unsigned
        source = f"the ledger's own checkpoint {size}"
        if size == main.size and source not in accepted and \
                _root_of(note) not in (None, main.root):
            report.problems.append(Problem(None, (
                f"fork: {source} (not signed by the key given) has another root than "
                f"{main.source}")))
    if rejected:
        report.notes.append(f"{rejected} other checkpoint(s) not used: "
                            + ("not signed by the key given, " if keys else "")
                            + "unreadable or of another log")
    report.references = sorted(size for size in heads if size != main.size)
    return heads


def _own_rows(con: Any) -> list[tuple[int, str]]:
    try:
        rows = con.execute("SELECT size, note FROM checkpoints ORDER BY size").fetchall()
    except duckdb.CatalogException:  # a ledger no version with checkpoints has opened
        return []
    return [(int(size), str(note)) for size, note in rows]


def _root_of(note: str) -> bytes | None:
    with contextlib.suppress(check.VerificationError):
        return check.parse_checkpoint(_open(note.encode(), [])[0]).root
    return None


class _Tiles:
    """The published level-0 tiles (leaf hashes) of a tree of `size` leaves, read lazily."""

    def __init__(self, base: Path, size: int) -> None:
        self.root = base
        self.size = size
        self.present = (base / "tile" / "0").is_dir()
        self._index = -1
        self._hashes: list[bytes] | None = None

    def leaf(self, i: int) -> bytes | None:
        """Leaf hash i as published (None: no tile holds it)."""
        n = i // TILE_WIDTH
        if n != self._index:
            self._index, self._hashes = n, self._read(n)
        hashes = self._hashes
        k = i % TILE_WIDTH
        return hashes[k] if hashes is not None and k < len(hashes) else None

    def _read(self, n: int) -> list[bytes] | None:
        if not self.present:
            return None
        need = min(TILE_WIDTH, self.size - n * TILE_WIDTH)
        full = self.root / tile_path(0, n)
        candidates = [full]
        if need < TILE_WIDTH:
            partial = Path(f"{full}.p")
            widths = sorted(int(p.name) for p in partial.iterdir()
                            if p.name.isdigit() and int(p.name) >= need) \
                if partial.is_dir() else []
            candidates = [partial / str(w) for w in widths] + [full]
        for path in candidates:
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                if len(data) % 32 == 0 and len(data) >= need * 32:
                    return [data[j:j + 32] for j in range(0, need * 32, 32)]
        return None

    def authentic(self, root: bytes) -> bool:
        """Whether leaves 0..size-1 as published fold into `root`."""
        frontier = Frontier()
        for i in range(self.size):
            leaf = self.leaf(i)
            if leaf is None:
                return False
            frontier.append(leaf)
        return frontier.root() == root


def _leaves(con: Any, ledger: Path, archived: int, tiles: _Tiles, report: ExtensionReport
            ) -> Iterator[bytes | None]:
    """The ledger's leaf hashes in order: records deleted once archived from the tiles
    (None where there is none), then the stored records, then the journal's."""
    if archived:
        report.notes.append(f"records 1..{archived} (deleted once archived) are taken from "
                            "the published tiles")
        for i in range(archived):
            yield tiles.leaf(i)
    expected = archived + 1
    reader = con.execute("SELECT seq, hash FROM entries WHERE seq >= ? ORDER BY seq",
                         [expected])
    while rows := reader.fetchmany(BATCH):
        for seq, digest in rows:
            if seq != expected:
                return  # a gap: the chain check names it; the tree stops here
            expected += 1
            yield leaf_hash(bytes(digest))
    with contextlib.suppress(Exception):  # a damaged journal: the chain check reports it
        for record in journal.read(journal.journal_dir(ledger)):
            if record.seq < expected:
                continue
            if record.seq != expected:
                return
            expected += 1
            yield leaf_hash(record.hash)


def _compare(leaves: Iterator[bytes | None], main: _Head, heads: dict[int, _Head],
             tiles: _Tiles, report: ExtensionReport) -> None:
    """Fold the ledger's leaves, compare the roots at every reference size and the leaves
    with the tiles, and say what differs."""
    last = max(heads)
    frontier = Frontier()
    matches: dict[int, bool] = {}
    first_unlike: int | None = None  # first leaf that differs from its tile
    for leaf in leaves:
        if leaf is None or frontier.size >= last:
            break
        i = frontier.size
        if first_unlike is None and i < main.size:
            published = tiles.leaf(i)
            if published is not None and published != leaf:
                first_unlike = i
        frontier.append(leaf)
        if frontier.size in heads:
            matches[frontier.size] = frontier.root() == heads[frontier.size].root
    report.ledger_records = frontier.size
    if frontier.size < main.size:
        report.problems.append(Problem(frontier.size + 1, (
            f"the ledger ends at seq {frontier.size}, and checkpoint {main.size} covers "
            f"records 1..{main.size}: records {frontier.size + 1}..{main.size} are missing "
            "(the ledger was truncated, or rolled back to an older copy)")))
    bad = sorted(size for size, same in matches.items() if not same)
    if not bad:
        report.extends = frontier.size >= main.size
        report.tiles = "not needed" if tiles.present else "none published"
        return
    _name_first_difference(bad[0], matches, first_unlike, main, tiles, report)


def _name_first_difference(bad: int, matches: dict[int, bool], first_unlike: int | None,
                           main: _Head, tiles: _Tiles, report: ExtensionReport) -> None:
    if first_unlike is not None and tiles.authentic(main.root):
        seq = first_unlike + 1
        report.tiles = "used: they fold into the checkpoint's root"
        report.problems.append(Problem(seq, (
            f"record seq {seq} no longer matches the published tree: its hash differs from "
            f"leaf {first_unlike} of {tile_path(0, first_unlike // TILE_WIDTH)} (the record, "
            "or the chain before it, was rewritten)")))
        return
    if tiles.present:
        report.tiles = "not used: they do not fold into the checkpoint's root"
    else:
        report.tiles = "none published"
    good = max([size for size, same in matches.items() if same and size < bad], default=0)
    where = "checkpoint" if bad == main.size else "published checkpoint"
    report.problems.append(Problem(good + 1, (
        f"records 1..{bad} no longer give the root of {where} {bad}: the first record that "
        f"differs is one of seq {good + 1}..{bad} (records rewritten"
        + (f"; records 1..{good} still match checkpoint {good}" if good else "")
        + "). Published tiles would name it exactly")))




