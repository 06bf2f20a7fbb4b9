"""The loader's vectorized columns equal the call-by-call tabulation, whatever the mix of
layouts, batch sizes, text and undecoded calls in one load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pytest

from mlwitness.codec import Tensor
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import (
    DECODED_COLUMNS,
    EMPTY,
    MAX_VALUES_PER_RECORD,
    Tabulator,
    _list_of_maps,
    arrow_columns,
    record_table,
    undecoded,
)

TABULATOR = Tabulator({"x": ["age", "income", "debt"]})


def fp32(name: str, rows: list[list[float]]) -> Tensor:
    array = np.asarray(rows, dtype=np.float32)
    return Tensor(name, "FP32", tuple(array.shape), array)


def text(name: str, values: list[bytes]) -> Tensor:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return Tensor(name, "BYTES", (len(values),), array)


def one_by_one(calls: list) -> tuple[list, list]:
    """The reference: each call tabulated on its own."""
    rows = [TABULATOR.rows(tensors) if tensors else EMPTY for tensors in calls]
    return (_list_of_maps(rows, text=False).to_pylist(),
            _list_of_maps(rows, text=True).to_pylist())


MIXED = [
    [fp32("x", [[30, 52000, 1.5]])],
    [fp32("x", [[41, 61000, 0.5]])],
    [fp32("x", [[1, 2, 3], [4, 5, 6], [7, 8, 9]])],  # same layout, three rows
    None,  # nothing decoded (e.g. a refused call)
    [fp32("x", [[50, 1, 2]])],
    [],
    [fp32("x", [[1, 2, 3]]), text("band", [b"26-40"])],
    [fp32("x", [[4, 5, 6]]), text("band", [b"41-60"])],
    [Tensor("img", "FP32", (1, 2, 2), np.zeros((1, 2, 2), np.float32))],  # not tabular
    [fp32("z", [[1.0, 2.0]]), fp32("w", [[3.0]])],
    [fp32("z", [[1.0, 2.0], [5.0, 6.0]]), fp32("w", [[3.0]])],  # rows disagree: call by call
]


@pytest.mark.parametrize("calls", [
    MIXED,
    MIXED[:2],
    [MIXED[0]] * 500,
    [MIXED[6]] * 3,
    [None, None],
    [],
], ids=["mixed", "two", "500-uniform", "with-text", "undecoded", "empty"])
def test_vectorized_columns_equal_call_by_call(calls: list) -> None:
    numeric, texts = TABULATOR.map_columns(calls)
    assert len(numeric) == len(texts) == len(calls)
    assert (numeric.to_pylist(), texts.to_pylist()) == one_by_one(calls)


def test_values_and_names_land_where_sql_expects_them() -> None:
    columns = arrow_columns([MIXED[2], MIXED[6]], [None, MIXED[9]], TABULATOR)
    inputs = columns["inputs"].to_pylist()
    assert [dict(m)["income"] for m in inputs[0]] == [2.0, 5.0, 8.0]
    assert dict(inputs[1][0]) == {"age": 1.0, "income": 2.0, "debt": 3.0}
    assert [dict(m) for m in columns["inputs_text"].to_pylist()[1]] == [{"band": "26-40"}]
    assert columns["outputs"].to_pylist()[0] == []
    assert dict(columns["outputs"].to_pylist()[1][0]) == {"z_0": 1.0, "z_1": 2.0, "w": 3.0}
    assert columns["inputs"].type == pa.list_(pa.map_(pa.string(), pa.float64()))


# ── derived data may fail; the record may not ──────────────────────────────────────────


def record(seq: int, inputs: list | None, outputs: list | None = None,
           parameters: dict | None = None) -> Record:
    return Record(seq=seq, request_id=f"r{seq}", inputs=inputs, outputs=outputs,
                  parameters=parameters)


def decoded(table: pa.Table, seq: int) -> dict:
    row = table.filter(pa.compute.equal(table.column("seq"), seq)).to_pylist()[0]
    return {name: row[name] for name in DECODED_COLUMNS}


NOTHING = {"inputs": [], "inputs_text": [], "outputs": [], "outputs_text": [],
           "parameters": None}


@pytest.mark.parametrize("rows", [2**40, 2**22])
def test_a_tensor_without_elements_claims_no_rows(rows: int) -> None:
    # [2**40, 0] decodes (zero elements) and once made the whole load fail: its row count
    # overflowed Arrow's offsets. Smaller ones made a row map per claimed row (2 GiB).
    empty = Tensor("x", "FP32", (rows, 0), np.zeros((rows, 0), np.float32))
    table = record_table([record(1, [empty], parameters={"k": "v"}),
                          record(2, [fp32("x", [[1, 2, 3]])])], TABULATOR)
    assert decoded(table, 1) == {**NOTHING, "parameters": [("k", "v")]}
    assert decoded(table, 2)["inputs"] == [[("age", 1.0), ("income", 2.0), ("debt", 3.0)]]
    assert undecoded(table) == []  # no rows to build is not a failure


def test_a_tensor_without_elements_beside_a_table_leaves_its_rows_alone() -> None:
    rows = TABULATOR.rows([Tensor("e", "FP32", (7, 0), np.zeros((7, 0), np.float32)),
                           fp32("x", [[1, 2, 3], [4, 5, 6]])])
    assert (rows.n, rows.num_names) == (2, ("age", "income", "debt"))


def test_a_record_over_the_value_cap_is_tabulated_without_its_tensors() -> None:
    width = 4
    over = MAX_VALUES_PER_RECORD // width + 1
    big = Tensor("x", "FP32", (over, width), np.zeros((over, width), np.float32))
    table = record_table([record(1, [fp32("z", [[1.0, 2.0]])]),
                          record(2, [big], [fp32("y", [[0.5]])], {"segment": "a"}),
                          record(3, [fp32("z", [[3.0, 4.0]])])], TABULATOR)
    assert decoded(table, 2) == {**NOTHING, "parameters": [("segment", "a")]}
    assert decoded(table, 1)["inputs"] == [[("z_0", 1.0), ("z_1", 2.0)]]
    assert decoded(table, 3)["inputs"] == [[("z_0", 3.0), ("z_1", 4.0)]]
    ((seq, why),) = undecoded(table)
    assert seq == 2 and f"claim {over * width + 1} values" in why
    # the record fields are all there
    assert table.column("request_id").to_pylist() == ["r1", "r2", "r3"]


def test_a_record_whose_columns_cannot_be_built_gets_empty_ones_the_rest_theirs() -> None:
    # A text value Arrow cannot hold (a lone surrogate) fails the whole batch's columns.
    bad = np.empty(1, dtype=object)
    bad[0] = "\ud800"
    table = record_table([record(1, [fp32("z", [[1.0, 2.0]])], parameters={"p": "1"}),
                          record(2, [Tensor("t", "BYTES", (1,), bad)], parameters={"p": "2"}),
                          record(3, None, [fp32("y", [[0.5]])])], TABULATOR)
    assert decoded(table, 2) == NOTHING
    alone = record_table([record(1, [fp32("z", [[1.0, 2.0]])], parameters={"p": "1"}),
                          record(3, None, [fp32("y", [[0.5]])])], TABULATOR)
    assert [decoded(table, s) for s in (1, 3)] == [decoded(alone, s) for s in (1, 3)]
    assert decoded(table, 1)["inputs"] == [[("z_0", 1.0), ("z_1", 2.0)]]
    ((seq, why),) = undecoded(table)
    assert seq == 2 and "could not be built (UnicodeEncodeError" in why


def test_a_decoder_that_fails_leaves_that_record_undecoded() -> None:
    def decoder(rec: Record) -> tuple[list, list, dict]:
        if rec.seq == 2:
            raise MemoryError("no room for its tensors")
        return [fp32("z", [[float(rec.seq), 0.0]])], [], {}

    table = record_table([record(1, None), record(2, None), record(3, None)], TABULATOR,
                         decoder)
    assert decoded(table, 2) == NOTHING
    assert [decoded(table, s)["inputs"] for s in (1, 3)] == [[[("z_0", 1.0), ("z_1", 0.0)]],
                                                             [[("z_0", 3.0), ("z_1", 0.0)]]]
    assert undecoded(table) == [(2, "its tensors could not be decoded (MemoryError: no room "
                                    "for its tensors)")]


def test_column_names_stay_distinct_whatever_the_tensors_are_called() -> None:
    # A caller names tensors: "a" [N, 2] gives a_0 and a_1; then "a_0" becomes a_0#1, and
    # a tensor called "a_0#1" must not make the same key twice (DuckDB refuses such a map).
    tensors = [fp32("a", [[1.0, 2.0]]), fp32("a_0", [[3.0]]), fp32("a_0#1", [[4.0]])]
    names = Tabulator().rows(tensors).num_names
    assert len(set(names)) == len(names) == 4
    assert names[:2] == ("a_0", "a_1") and "a_0#1" in names
