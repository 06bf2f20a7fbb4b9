"""The loader's vectorized columns equal the call-by-call tabulation, whatever the mix of
layouts, batch sizes, text and undecoded calls in one load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mlwitness.codec import Tensor
from mlwitness.ledger.rows import EMPTY, Tabulator, _list_of_maps, arrow_columns

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
