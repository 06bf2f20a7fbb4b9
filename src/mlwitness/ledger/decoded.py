"""A record's decoded columns, derived again from its hashed bytes and compared.

`entries.inputs`, `inputs_text`, `outputs`, `outputs_text` and `parameters` are what SQL,
`audit show`, drift and bias read, yet they are not hashed: the writer derives them from
the request and response bytes, which are. `DecodedCheck` derives them again with the
writer's own code (`tensors.decode_record_tensors`, `rows.decoded_columns`), a batch of
records at a time, and compares them with what is stored: keys and row layout exactly,
numbers bit for bit (any NaN equals any NaN), text exactly, NULL only where NULL.

Ledgers written before every decoded column was a function of the hashed bytes hold two
kinds of values that are not; they are counted as not covered by the chain instead of
compared (when the record's hashed fields say it is such a call):

* the outputs of a call refused after the model ran (an output guard refused it, or the
  caller's deadline passed during the run) that keeps no withheld response in `detail`
  (ledger/tensors.py): the writer tabulated them from memory;
* the request parameters of a call whose request bytes the minimiser dropped because its
  inputs could not be decoded (it now keeps the request without its inputs).

A record whose decoded columns the writer could not build, or DuckDB refused, is loaded
with none (ledger/writer.py; where its bytes alone decide that, as for the cap on values,
they are derived empty here too): its columns stored empty are counted as not covered,
being what the writer stores then; any other difference fails.

Column names of a tensor named by `--features` are not in a call's bytes: the sidecar
announces them in an admin record (rows.features_detail) whenever they change, and the
records after it are derived with the names it announces. In an older ledger, before any
announcement, the first naming seen for a tensor is taken as its configuration (and
reported); a record that names that tensor's columns in any other way fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator, announced_names, decoded_columns, tabular
from mlwitness.ledger.tensors import WITHHELD_RESPONSE, decode_record_tensors

COLUMNS = ("inputs", "inputs_text", "outputs", "outputs_text", "parameters")
_OUTPUT_SIDE = {"inputs": False, "inputs_text": False, "outputs": True, "outputs_text": True}
MAX_LEARNED = 16  # tensors whose column names a ledger may configure (--features)

WITHHELD = "outputs of a call refused after the model ran (no response was sent)"
DROPPED = "parameters of a request whose bytes the minimiser dropped"
EMPTIED = ("decoded columns left empty at load (the writer could not build or store them; "
           "the bytes hold them)")
LISTED = 20  # seqs kept of each kind of record not covered


@dataclass
class Mismatch:
    seq: int
    columns: list[str]


@dataclass
class NotCovered:
    """Records of one kind whose stored values the chain does not cover."""

    records: int = 0
    first_seqs: list[int] = field(default_factory=list)

    def add(self, seq: int) -> None:
        self.records += 1
        if len(self.first_seqs) < LISTED:
            self.first_seqs.append(seq)


@dataclass
class DecodedCheck:
    """Compares batches of stored records with their bytes; keeps what it learned and
    counted across batches (a whole ledger is checked in one pass)."""

    feature_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # learned
    named_at: dict[str, int] = field(default_factory=dict)  # tensor -> first seq so named
    # The column names last announced on the chain; None until an announcement is seen
    # (until then, in older ledgers, they are learned)
    announced: dict[str, tuple[str, ...]] | None = None
    checked: int = 0
    uncovered: dict[str, NotCovered] = field(default_factory=dict)  # by why

    def check(self, records: list[Record], stored: pa.RecordBatch) -> list[Mismatch]:
        """Records whose stored decoded columns are not those their bytes give (except
        columns not covered by the chain, which are counted). The records after an
        announcement of column names are derived with those names."""
        found: list[Mismatch] = []
        start = 0
        for index, record in enumerate(records):
            names = announced_names(record)
            if names is not None:
                found += self._check(records[start:index + 1],
                                     stored.slice(start, index + 1 - start))
                start, self.announced = index + 1, names
        if start < len(records):
            found += self._check(records[start:], stored.slice(start))
        return found

    def _check(self, records: list[Record], stored: pa.RecordBatch) -> list[Mismatch]:
        stored_columns = {name: stored.column(name) for name in COLUMNS}
        derived = [_decode(record) for record in records]
        seqs = [record.seq for record in records]
        differs: dict[str, np.ndarray] = {}
        if self.announced is not None:
            expected = _derive(seqs, derived, Tabulator(self.announced))
            for name in COLUMNS:
                differs[name] = _differing(stored_columns[name], expected[name])[0]
        else:
            for _ in range(MAX_LEARNED + 1):
                expected = _derive(seqs, derived, Tabulator(dict(self.feature_names)))
                names_only = {}
                for name in COLUMNS:
                    differs[name], names_only[name] = _differing(stored_columns[name],
                                                                 expected[name])
                if not self._learn(records, derived, stored_columns, names_only):
                    break
        self.checked += len(records)
        found: list[Mismatch] = []
        bad = np.zeros(len(records), dtype=bool)
        for name in COLUMNS:
            bad |= differs[name]
        for index in np.flatnonzero(bad):
            record = records[index]
            allowed = _not_covered(record)
            if _emptied(stored_columns, int(index)):
                allowed = dict.fromkeys(COLUMNS, EMPTIED)
            columns = [name for name in COLUMNS if differs[name][index]]
            reasons = {allowed[c] for c in columns if c in allowed}
            columns = [c for c in columns if c not in allowed]
            if columns:
                found.append(Mismatch(record.seq, columns))
            else:
                for why in sorted(reasons):
                    self.uncovered.setdefault(why, NotCovered()).add(record.seq)
        return found

    def _learn(self, records: list[Record], derived: list[tuple[list, list, dict]],
               stored: dict[str, pa.Array], names_only: dict[str, np.ndarray]) -> bool:
        """Take the column names of the first record whose tabulated columns differ from
        the derived ones in their names alone as configured names (`--features`) of the
        tensors concerned; True if that named a tensor not named before."""
        for name, outputs in _OUTPUT_SIDE.items():
            for index in np.flatnonzero(names_only[name]):
                rows = stored[name][int(index)].as_py()
                if not rows:
                    continue
                keys = [key for key, _ in rows[0]]
                inputs_of, outputs_of, _ = derived[index]
                learned = _names(outputs_of if outputs else inputs_of, keys,
                                 text=name.endswith("_text"))
                new = {t: n for t, n in learned.items() if t not in self.feature_names}
                if new and len(self.feature_names) + len(new) <= MAX_LEARNED:
                    self.feature_names.update(new)
                    for tensor in new:
                        self.named_at[tensor] = records[int(index)].seq
                    return True
        return False


def _decode(record: Record) -> tuple[list, list, dict[str, str]]:
    """What the bytes hold; nothing for bytes the decoder fails on (the writer could not
    have stored anything for them either), so one odd record never stops verification."""
    try:
        return decode_record_tensors(record)
    except Exception:
        return [], [], {}


def _derive(seqs: list[int], decoded: list[tuple[list, list, dict[str, str]]],
            tabulator: Tabulator) -> dict[str, pa.Array]:
    """The decoded columns the writer builds from records with these tensors and
    parameters: its own `decoded_columns` (`record_table` itself also builds the 19 record
    columns, which would double the cost)."""
    return decoded_columns(seqs, decoded, tabulator, [])


def _emptied(stored: dict[str, pa.Array], index: int) -> bool:
    """Whether a record's decoded columns are stored empty, as the writer loads a record
    whose columns DuckDB refused (rows.without_decoded)."""
    return all(not stored[name][index].as_py() for name in COLUMNS[:4]) and (
        not stored["parameters"][index].is_valid)


def _names(tensors: list, keys: list[str], *, text: bool) -> dict[str, tuple[str, ...]]:
    """The configured column names that `keys` (a stored row's, in order) give each 2-D
    tensor whose columns they name otherwise than by default."""
    layout = tabular(tensors)
    if layout is None:
        return {}
    parts = [(tensor, matrix.shape[1]) for tensor, matrix in layout[1]
             if (matrix.dtype == object) == text]
    if sum(width for _, width in parts) != len(keys):
        return {}
    default = Tabulator()
    names: dict[str, tuple[str, ...]] = {}
    at = 0
    for tensor, width in parts:
        mine = tuple(keys[at:at + width])
        at += width
        if tensor.array.ndim == 2 and list(mine) != default.column_names(
                tensor.name, width, 2):
            names[tensor.name] = mine
    return names


def _not_covered(record: Record) -> dict[str, str]:
    """Columns of this record that its bytes do not determine, each with why."""
    if record.kind != "infer":
        return {}
    out: dict[str, str] = {}
    if (record.status != "OK" and not record.response and record.request
            and WITHHELD_RESPONSE not in _detail(record) and _ran(record)):
        out["outputs"] = out["outputs_text"] = WITHHELD
    if not record.request and _detail(record).get("minimised", "") in (
            "request dropped: undecodable inputs",):
        out["parameters"] = DROPPED
    return out


def _ran(record: Record) -> bool:
    """Whether a refused call's model had run: its deadline passed during the run, or an
    output guard refused it."""
    if record.status == "DEADLINE_EXCEEDED":
        return True
    try:
        verdict = json.loads(record.violations) if record.violations else {}
    except ValueError:
        return False
    if not isinstance(verdict, dict) or verdict.get("refused") is not True:
        return False
    counted = verdict.get("counts") or verdict.get("violations") or []
    return any(isinstance(c, dict) and str(c.get("guard", "")).startswith("outputs.")
               for c in counted)


def _detail(record: Record) -> dict[str, Any]:
    try:
        detail = json.loads(record.detail) if record.detail else {}
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


# ── comparing Arrow columns, record by record, without a Python loop ──────────────────


def _differing(stored: pa.Array, expected: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per record: (differs in anything, differs in map keys alone). Both columns are
    LIST(MAP) (one list of row maps per record: entries in column order, which replay
    relies on) or MAP (the request parameters, one map per record: in no meaningful order,
    since the minimiser's re-encoding of a request reorders them)."""
    n = len(stored)
    records = np.arange(n)
    if isinstance(stored.type, pa.MapType):
        return _maps_differing(_Maps.by_key(stored), _Maps.by_key(expected), records, records)
    bad = _validity(stored) != _validity(expected)
    same, s_rows, e_rows, owner = _children(_offsets(stored), _offsets(expected),
                                            records, records)
    bad |= ~same
    row_bad, row_keys = _maps_differing(_Maps.of(stored.values), _Maps.of(expected.values),
                                        s_rows, e_rows)
    bad |= _any_by(owner, row_bad, n)
    keys = _any_by(owner, row_keys, n)
    return bad | keys, keys & ~bad


@dataclass(frozen=True)
class _Maps:
    """A MAP column's parts: validity and entry offsets per map, then keys and values."""

    valid: np.ndarray
    offsets: np.ndarray
    keys: pa.Array
    items: pa.Array

    @classmethod
    def of(cls, maps: pa.Array) -> _Maps:
        return cls(_validity(maps), _offsets(maps), maps.keys, maps.items)

    @classmethod
    def by_key(cls, maps: pa.Array) -> _Maps:
        """With each map's entries in key order."""
        offsets = _offsets(maps)
        first, last = int(offsets[0]), int(offsets[-1])
        keys, items = maps.keys[first:last], maps.items[first:last]
        owner = np.repeat(np.arange(len(maps)), np.diff(offsets))
        order = pc.sort_indices(pa.table({"owner": owner, "key": keys}),
                                sort_keys=[("owner", "ascending"), ("key", "ascending")])
        return cls(_validity(maps), offsets - first, keys.take(order), items.take(order))


def _maps_differing(stored: _Maps, expected: _Maps, s_at: np.ndarray,
                    e_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For maps stored[s_at[i]] against expected[e_at[i]]: (values, count or NULL differ;
    keys differ)."""
    n = len(s_at)
    bad = stored.valid[s_at] != expected.valid[e_at]
    same, s_entries, e_entries, owner = _children(stored.offsets, expected.offsets, s_at, e_at)
    bad |= ~same
    s_pick, e_pick = pa.array(s_entries), pa.array(e_entries)
    key_bad = ~_equal(stored.keys.take(s_pick), expected.keys.take(e_pick))
    value_bad = ~_equal(stored.items.take(s_pick), expected.items.take(e_pick))
    bad |= _any_by(owner, value_bad, n)
    return bad, _any_by(owner, key_bad, n)


def _equal(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Element-wise: equal, or both NULL. Floats bit for bit, but any NaN equals any NaN
    (NaN payloads are not what an auditor reads)."""
    a_valid, b_valid = _validity(a), _validity(b)
    if pa.types.is_floating(a.type) and pa.types.is_floating(b.type):
        x = a.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        y = b.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        same = (x.view(np.int64) == y.view(np.int64)) | (np.isnan(x) & np.isnan(y))
    else:
        if a.type != b.type:
            b = b.cast(a.type)
        same = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
    return (same & a_valid & b_valid) | (~a_valid & ~b_valid)


def _children(s_offsets: np.ndarray, e_offsets: np.ndarray, s_at: np.ndarray,
              e_at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lists stored[s_at[i]] and expected[e_at[i]] given by their offsets: (same length,
    per i; then for the lists of the same length, their children pairwise: stored child
    index, expected child index, i)."""
    s_len = s_offsets[s_at + 1] - s_offsets[s_at]
    e_len = e_offsets[e_at + 1] - e_offsets[e_at]
    same = s_len == e_len
    lengths = s_len[same]
    owner = np.repeat(np.flatnonzero(same), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    s_child = np.repeat(s_offsets[s_at[same]], lengths) + within
    e_child = np.repeat(e_offsets[e_at[same]], lengths) + within
    return same, s_child, e_child, owner


def _offsets(array: pa.Array) -> np.ndarray:
    """Offsets into `array.values` (which ignores a slice's start; these do not)."""
    return np.asarray(array.offsets, dtype=np.int64)


def _validity(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


def _any_by(owner: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    """Per owner 0..n-1: whether any of its flags is set."""
    if not len(flags):
        return np.zeros(n, dtype=bool)
    return np.bincount(owner[flags], minlength=n) > 0
