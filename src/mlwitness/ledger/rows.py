"""Decoded tensors → per-row columns for SQL.

A request's tabular tensors (numeric or BYTES, shape [N] or [N, k] with a small k, all
with the same N) become N rows; each row maps column names to values: `income` →
52000.0. A [N] or [N, 1] tensor gives one column named after the tensor; [N, k] gives k
columns, named by the configured feature names for that tensor or `name_0 … name_{k-1}`.
Other tensors (images, sequences) stay in the request/response bytes only.

`record_table` turns a batch of chained records (their fields and decoded tensors) into
the Arrow table the ledger writer inserts into `entries`. **Derived data may fail; the
record may not.** The decoded columns (inputs, outputs, parameters) are derived from the
request and response bytes, which the record keeps: a record whose columns cannot be built
(its tensors do not decode or tabulate, or they claim more than MAX_VALUES_PER_RECORD
values) is tabulated with empty decoded columns and noted in the
table (`undecoded`), so that one call can never stop the ledger's loads.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa

from mlwitness.ledger.record import Record

MAX_COLUMNS_PER_TENSOR = 256
MAX_PLANS = 256  # row layouts a Tabulator remembers (batch sizes are part of the layout)
# The most values (row count × columns) a record's tensors may claim for its decoded
# columns; a record beyond it keeps its bytes and gets empty decoded columns. It caps rows
# too: every tabulated row holds a value. A value costs the loader ~40 bytes of Arrow (a
# float or text and its column name) and DuckDB as much again: a million values is 10,000
# rows of 100 features, far beyond a tabular model's batch, and bounds the memory one call
# can make the loader and the table builder take.
MAX_VALUES_PER_RECORD = 1_000_000
# The `entries` columns derived from a record's bytes, and the schema metadata key under
# which `record_table` lists the records it left them empty for.
DECODED_COLUMNS = ("inputs", "inputs_text", "outputs", "outputs_text", "parameters")
UNDECODED_KEY = b"mlwitness.undecoded"


@dataclass(frozen=True)
class Rows:
    """N rows of named numeric and text columns."""

    n: int
    num_names: tuple[str, ...]
    num_values: np.ndarray  # float64 [n, len(num_names)]
    text_names: tuple[str, ...]
    text_values: np.ndarray  # object (str) [n, len(text_names)]


EMPTY = Rows(0, (), np.zeros((0, 0)), (), np.zeros((0, 0), dtype=object))


@dataclass(frozen=True)
class Tabulator:
    """Turns a request's (or response's) tensors into Rows, naming columns."""

    feature_names: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # tensor layout (names, dtypes, shapes) -> how it becomes rows: the guard path asks
    # twice per call for the same few layouts, so the names are worked out once
    _plans: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False,
                                     compare=False)

    def column_names(self, name: str, width: int, shape_rank: int) -> list[str]:
        configured = self.feature_names.get(name)
        if configured is not None and len(configured) == width:
            return list(configured)
        if shape_rank == 1 or width == 1:
            return [name]
        return [f"{name}_{j}" for j in range(width)]

    def columns_of(self, name: str, shape: Sequence[int]) -> list[str]:
        """The SQL columns a tensor of this name and shape becomes (-1 dims allowed)."""
        width = shape[1] if len(shape) == 2 and shape[1] > 0 else 1
        return self.column_names(name, width, len(shape))

    def rows(self, tensors: Sequence) -> Rows:
        key = tuple((t.name, t.array.dtype, t.array.shape) for t in tensors)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = self._plan(tensors)
        if plan is None or not tensors:
            return EMPTY
        n, parts, num_names, text_names = plan
        num_cols: list[np.ndarray] = []
        text_cols: list[np.ndarray] = []
        for index, width, text in parts:
            matrix = tensors[index].array.reshape(n, width)
            if text:
                text_cols.append(_as_text(matrix))
            else:
                num_cols.append(matrix.astype(np.float64, copy=False))
        return Rows(n, num_names, _stack(num_cols, n, np.float64), text_names,
                    _stack(text_cols, n, object))

    def _plan(self, tensors: Sequence) -> tuple | None:
        """(n, [(tensor index, width, is text)], numeric names, text names), or None."""
        layout = tabular(tensors)
        if layout is None:
            return None
        n, parts = layout
        index = {id(t): i for i, t in enumerate(tensors)}
        num_names: list[str] = []
        text_names: list[str] = []
        steps = []
        for tensor, matrix in parts:
            names = self.column_names(tensor.name, matrix.shape[1], tensor.array.ndim)
            text = matrix.dtype == object
            (text_names if text else num_names).extend(names)
            steps.append((index[id(tensor)], matrix.shape[1], text))
        return n, steps, _unique(tuple(num_names)), _unique(tuple(text_names))


    def map_columns(self, calls: Sequence[Sequence | None]) -> tuple[pa.Array, pa.Array]:
        """The `entries` columns of many calls' tensors: (numeric, text), each a
        LIST(MAP(VARCHAR, ...)) array with one list of row maps per call. The loader's hot
        path: a run of consecutive calls whose tensors share names, dtypes and row shapes
        (the usual traffic of one model) is built with a few numpy operations, not a Python
        loop per call, so the loader holds the GIL briefly."""
        numeric: list[pa.Array] = []
        text: list[pa.Array] = []
        run: list[Sequence] = []
        key: tuple | None = None
        for tensors in calls:
            this = _layout_key(tensors) if tensors else None
            if run and this != key:
                self._add_run(run, numeric, text)
                run = []
            key = this
            if this is None:
                rows = [self.rows(tensors) if tensors else EMPTY]
                numeric.append(_list_of_maps(rows, text=False))
                text.append(_list_of_maps(rows, text=True))
            else:
                run.append(tensors)  # type: ignore[arg-type]
        if run:
            self._add_run(run, numeric, text)
        return _concat(numeric, pa.float64()), _concat(text, pa.string())

    def _add_run(self, run: list[Sequence], numeric: list[pa.Array], text: list[pa.Array]) -> None:
        merged = [
            replace_array(first, np.concatenate([tensors[i].array for tensors in run]))
            for i, first in enumerate(run[0])
        ]
        rows = self.rows(merged)
        sizes = np.fromiter((tensors[0].array.shape[0] for tensors in run), np.int64, len(run))
        if rows.n != int(sizes.sum()):  # not one table after all: call by call
            per_call = [self.rows(tensors) for tensors in run]
            numeric.append(_list_of_maps(per_call, text=False))
            text.append(_list_of_maps(per_call, text=True))
            return
        list_offsets = pa.array(np.concatenate(([0], np.cumsum(sizes))), pa.int32())
        numeric.append(_uniform_maps(list_offsets, rows.n, rows.num_names,
                                     rows.num_values, pa.float64()))
        text.append(_uniform_maps(list_offsets, rows.n, rows.text_names,
                                  rows.text_values, pa.string()))


# ── column names on the chain ─────────────────────────────────────────────────────────
# The names `--features` gives a tensor's columns are not in a call's bytes. The sidecar
# announces them in an admin record whenever they differ from the last announcement, so
# the chain says which names the records after it use (and verify derives those).

FEATURES_ACTION = "features"


def features_detail(feature_names: Mapping[str, Sequence[str]]) -> str:
    """The `detail` of the admin record announcing a Tabulator's configured names: its
    tensor and their names, or tensor "" and no names when there are none."""
    if len(feature_names) > 1:
        raise ValueError("the column names of one tensor are announced, not of several")
    tensor, names = next(iter(feature_names.items()), ("", ()))
    return json.dumps({"action": FEATURES_ACTION, "tensor": tensor, "names": list(names)},
                      sort_keys=True)


def announced_names(record: Record) -> dict[str, tuple[str, ...]] | None:
    """The configured column names an admin record announces ({} for none), or None when
    it is no such announcement."""
    if record.kind != "admin" or FEATURES_ACTION not in record.detail:
        return None
    try:
        detail = json.loads(record.detail)
    except ValueError:
        return None
    if not isinstance(detail, dict) or detail.get("action") != FEATURES_ACTION:
        return None
    tensor, names = detail.get("tensor"), detail.get("names")
    if not (isinstance(tensor, str) and isinstance(names, list)
            and all(isinstance(name, str) for name in names)):
        return None
    return {tensor: tuple(names)} if tensor and names else {}


def _layout_key(tensors: Sequence) -> tuple | None:
    """Names, datatypes and row shapes of a call's tensors when every one is a table of the
    same row count (so calls can be stacked); else None. Read from each Tensor's declared
    `datatype` and `shape`, which its constructor checked against the array: numpy's own
    attributes cost three times as much, once per call on the loader's hot path."""
    first = tensors[0].shape
    n = first[0] if first else 0
    if n == 0:
        return None
    key = []
    for tensor in tensors:
        shape = tensor.shape
        if not 0 < len(shape) < 3 or shape[0] != n or 0 in shape:
            return None
        key.append((tensor.name, tensor.datatype, shape[1:]))
    return tuple(key)


def replace_array(tensor: Any, array: np.ndarray) -> Any:
    """A copy of a codec Tensor holding `array` (shape follows the array)."""
    return type(tensor)(tensor.name, tensor.datatype, tuple(array.shape), array)


def tabular(tensors: Sequence) -> tuple[int, list[tuple[Any, np.ndarray]]] | None:
    """The tabular part of a request: (N, [(tensor, [N, k] matrix view), ...]) in tensor
    order, or None. Numeric and BYTES tensors of rank 1 or 2 sharing the first tensor's N.
    A tensor without elements is not tabular, whatever rows its shape claims ([N, 0]): it
    has no column, and rows of nothing would cost memory for each claimed row."""
    n: int | None = None
    parts: list[tuple[Any, np.ndarray]] = []
    for tensor in tensors:
        array = tensor.array
        if array.ndim not in (1, 2) or array.size == 0:
            continue
        if array.ndim == 2 and array.shape[1] > MAX_COLUMNS_PER_TENSOR:
            continue
        if array.dtype != object and array.dtype.kind not in "biuf":
            continue
        if n is None:
            n = array.shape[0]
        elif array.shape[0] != n:
            continue
        parts.append((tensor, array.reshape(n, -1)))
    return None if n is None else (n, parts)


def numeric_layout(tensors: Sequence) -> list[tuple[int, int]]:
    """(index into `tensors`, column) of every numeric column, in the order `Tabulator.rows`
    lists them — so the k-th name of a stored row addresses the k-th entry here."""
    layout = tabular(tensors)
    if layout is None:
        return []
    index = {id(t): i for i, t in enumerate(tensors)}
    return [
        (index[id(tensor)], col)
        for tensor, matrix in layout[1]
        if matrix.dtype != object
        for col in range(matrix.shape[1])
    ]


def _as_text(matrix: np.ndarray) -> np.ndarray:
    out = np.empty(matrix.shape, dtype=object)
    for index, value in np.ndenumerate(matrix):
        out[index] = (
            value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
        )
    return out


def _stack(columns: list[np.ndarray], n: int, dtype: Any) -> np.ndarray:
    if len(columns) == 1:  # the common case: one tabular tensor, no copy
        return columns[0]
    return np.concatenate(columns, axis=1) if columns else np.zeros((n, 0), dtype=dtype)


@functools.lru_cache(maxsize=256)
def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    """Names made distinct: a repeated name becomes `name#1`, `name#2`, … skipping any
    name already taken (a tensor may itself be called `a#1`). DuckDB refuses a map with a
    key twice, and a caller chooses tensor names."""
    taken = set(names)
    seen: set[str] = set()
    result = []
    for name in names:
        if name in seen:
            count = 1
            while f"{name}#{count}" in taken:
                count += 1
            name = f"{name}#{count}"
            taken.add(name)
        seen.add(name)
        result.append(name)
    return tuple(result)


def _list_of_maps(per_record: Sequence[Rows], text: bool) -> pa.Array:
    list_offsets = [0]
    map_offsets = [0]
    keys: list[str] = []
    values: list[np.ndarray] = []
    for rows in per_record:
        names = rows.text_names if text else rows.num_names
        matrix = rows.text_values if text else rows.num_values
        width = len(names)
        list_offsets.append(list_offsets[-1] + rows.n)
        if rows.n:
            base = map_offsets[-1]
            map_offsets.extend(base + width * (i + 1) for i in range(rows.n))
            keys.extend(names * rows.n)
            values.append(matrix.reshape(-1))
    item_type = pa.string() if text else pa.float64()
    if values:
        flat = np.concatenate(values)
        items = pa.array(flat.tolist() if text else flat, type=item_type)
    else:
        items = pa.array([], type=item_type)
    maps = pa.MapArray.from_arrays(
        pa.array(map_offsets, type=pa.int32()), pa.array(keys, type=pa.string()), items
    )
    return pa.ListArray.from_arrays(pa.array(list_offsets, type=pa.int32()), maps)


def _uniform_maps(list_offsets: pa.Array, n: int, names: tuple[str, ...],
                  matrix: np.ndarray, item_type: pa.DataType) -> pa.Array:
    """LIST(MAP) for calls whose rows all have the same column names: row r's map holds
    `names` with the values of matrix[r]; `list_offsets` splits the rows between calls."""
    width = len(names)
    map_offsets = pa.array(np.arange(n + 1, dtype=np.int64) * width, pa.int32())
    keys = pa.array(names, pa.string()).take(pa.array(np.tile(np.arange(width), n)))
    flat = matrix.reshape(-1)
    items = pa.array(flat.tolist() if item_type == pa.string() else flat, type=item_type)
    maps = pa.MapArray.from_arrays(map_offsets, keys, items)
    return pa.ListArray.from_arrays(list_offsets, maps)


def _concat(chunks: list[pa.Array], item_type: pa.DataType) -> pa.Array:
    if not chunks:
        return pa.array([], pa.list_(pa.map_(pa.string(), item_type)))
    return chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def arrow_columns(inputs: Sequence[Sequence | None], outputs: Sequence[Sequence | None],
                  tabulator: Tabulator) -> dict[str, pa.Array]:
    """The four decoded columns of the `entries` table for a batch of records, from each
    record's input and output tensors (None: nothing decoded)."""
    numeric_in, text_in = tabulator.map_columns(inputs)
    numeric_out, text_out = tabulator.map_columns(outputs)
    return {"inputs": numeric_in, "inputs_text": text_in,
            "outputs": numeric_out, "outputs_text": text_out}


# Record fields stored in `entries` as they are, with their Arrow types.
_RECORD_COLUMNS = (
    ("seq", pa.int64()), ("kind", pa.string()), ("request_id", pa.string()),
    ("received_us", pa.int64()), ("responded_us", pa.int64()), ("model_name", pa.string()),
    ("model_version", pa.string()), ("model_sha256", pa.string()), ("env_id", pa.string()),
    ("peer", pa.string()), ("metadata", pa.string()), ("status", pa.string()),
    ("message", pa.string()), ("violations", pa.string()), ("detail", pa.string()),
    ("request", pa.binary()), ("response", pa.binary()), ("prev_hash", pa.binary()),
    ("hash", pa.binary()), ("format", pa.int8()),
)

# Decodes a record's request/response bytes into tensors when they are not in memory
# (records replayed from the journal at start-up): (inputs, outputs, request parameters).
TensorDecoder = Callable[[Record], tuple[list[Any], list[Any], dict[str, str]]]


def record_table(
    records: list[Record], tabulator: Tabulator, decoder: TensorDecoder | None = None
) -> pa.Table:
    """The `entries` rows of chained records, as one Arrow table. Each record's in-memory
    tensors are released once tabulated (its request and response bytes stay). Never fails
    for a record's derived data: a record whose decoded columns cannot be built gets empty
    ones, and is listed with the reason in the table's schema metadata (`undecoded`)."""
    decoded: list[tuple[Any, Any, Any]] = []
    notes: list[tuple[int, str]] = []
    for record in records:
        ins, outs, params = record.inputs, record.outputs, record.parameters
        record.inputs = record.outputs = record.parameters = None
        if ins is None and outs is None and decoder is not None:
            try:
                ins, outs, params = decoder(record)
            except Exception as exc:  # derived data: the record goes in without it
                ins = outs = params = None
                notes.append((record.seq, f"its tensors could not be decoded ({_why(exc)})"))
        decoded.append((ins, outs, params))
    columns = {
        name: pa.array(list(map(attrgetter(name), records)), kind)
        for name, kind in _RECORD_COLUMNS
    }
    # A format-2 record's salt (a format-1 record, from a journal an older version left,
    # has none). `payload_commitment` and `erased_by` stay NULL until an erasure.
    columns["salt"] = pa.array([record.salt or None for record in records], pa.binary())
    columns.update(decoded_columns([record.seq for record in records], decoded, tabulator,
                                   notes))
    table = pa.table(columns)
    if notes:
        table = table.replace_schema_metadata({UNDECODED_KEY: json.dumps(notes)})
    return table


def decoded_columns(seqs: Sequence[int], decoded: Sequence[tuple[Any, Any, Any]],
                    tabulator: Tabulator, notes: list[tuple[int, str]]) -> dict[str, pa.Array]:
    """The decoded columns of records from their (inputs, outputs, parameters), as the
    ledger stores them (and `mlwitness verify` derives them again): no rows for tensors
    claiming more than MAX_VALUES_PER_RECORD values, empty columns for a record whose
    columns cannot be built; each such record noted in `notes` as (seq, why)."""
    tensors_in: list[Any] = []
    tensors_out: list[Any] = []
    parameters: list[Any] = []
    for seq, (ins, outs, params) in zip(seqs, decoded, strict=True):
        claimed = _values(ins) + _values(outs) if ins or outs else 0
        if claimed > MAX_VALUES_PER_RECORD:
            notes.append((seq, f"its tensors claim {claimed} values, more than the "
                               f"{MAX_VALUES_PER_RECORD} a record's decoded columns hold"))
            ins = outs = None
        tensors_in.append(ins)
        tensors_out.append(outs)
        parameters.append(list(params.items()) if params else None)
    try:
        return _decoded_columns(tensors_in, tensors_out, parameters, tabulator)
    except Exception:  # some record's columns cannot be built: find it, build the rest
        return _decoded_one_by_one(seqs, tensors_in, tensors_out, parameters, tabulator,
                                   notes)


def undecoded(table: pa.Table) -> list[tuple[int, str]]:
    """(seq, why) of the records `record_table` left without decoded columns."""
    noted = (table.schema.metadata or {}).get(UNDECODED_KEY)
    return [(int(seq), str(why)) for seq, why in json.loads(noted)] if noted else []


def without_decoded(table: pa.Table, rows: Sequence[int] | None = None) -> pa.Table:
    """`table` with the decoded columns of the given rows (None: all) emptied, as for a
    record without tensors (no row maps, no parameters); the record fields stay."""
    cleared = pa.table({name: (_empty_column(table.schema.field(name).type, table.num_rows)
                               if name in DECODED_COLUMNS else table.column(name))
                        for name in table.column_names})
    if rows is None:
        return cleared
    pieces, at = [], 0
    for row in sorted(set(rows)):
        pieces += [table.slice(at, row - at), cleared.slice(row, 1)]
        at = row + 1
    pieces.append(table.slice(at))
    return pa.concat_tables(pieces).replace_schema_metadata(None)


def _empty_column(kind: pa.DataType, n: int) -> pa.Array:
    if pa.types.is_list(kind):
        return pa.array([[]] * n, kind)
    return pa.nulls(n, kind)


def _values(tensors: Sequence | None) -> int:
    """How many values the tensors that could be tabulated (rank 0 to 2) claim, read from
    their shapes. Each of a record's rows holds at least one value (tensors without
    elements are not tabulated), so this bounds its rows too."""
    total = 0
    for tensor in tensors or ():
        shape = tensor.shape
        if len(shape) < 3:
            total += math.prod(shape)
    return total


def _decoded_columns(tensors_in: list[Any], tensors_out: list[Any], parameters: list[Any],
                     tabulator: Tabulator) -> dict[str, pa.Array]:
    columns = arrow_columns(tensors_in, tensors_out, tabulator)
    columns["parameters"] = pa.array(parameters, pa.map_(pa.string(), pa.string()))
    return columns


def _decoded_one_by_one(seqs: Sequence[int], tensors_in: list[Any], tensors_out: list[Any],
                        parameters: list[Any], tabulator: Tabulator,
                        notes: list[tuple[int, str]]) -> dict[str, pa.Array]:
    """The decoded columns record by record; a record whose columns fail gets empty ones
    and a note."""
    parts: list[dict[str, pa.Array]] = []
    for seq, ins, outs, params in zip(seqs, tensors_in, tensors_out, parameters, strict=True):
        try:
            parts.append(_decoded_columns([ins], [outs], [params], tabulator))
        except Exception as exc:
            notes.append((seq, f"its decoded columns could not be built ({_why(exc)})"))
            parts.append(_decoded_columns([None], [None], [None], tabulator))
    return {name: pa.concat_arrays([part[name] for part in parts]) for name in DECODED_COLUMNS}


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"
