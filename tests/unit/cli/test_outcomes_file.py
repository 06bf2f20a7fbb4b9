"""`mlwitness outcomes import` reading its file: ids kept as written, empty label values
skipped, observation times in the forms a file holds them, line numbers for messages."""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlwitness.cli.outcomes import outcomes_of, read_table
from mlwitness.errors import InvalidInput


def args(**given: object) -> argparse.Namespace:
    values: dict[str, object] = dict(id_column="application_id", seq_column=None,
                                     label=["defaulted"], row_column=None,
                                     observed_column=None, observed_at=None)
    values.update(given)
    return argparse.Namespace(**values)


def test_a_csv_file_keeps_ids_as_written_and_skips_rows_without_a_value(
        tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text("application_id,defaulted,status,observed\n"
                    "000042,1,late,2027-03-01\n"
                    "000043,,,\n"
                    "000044,0,current,2027-03-02T12:00:00+02:00\n")
    items = outcomes_of(read_table(path, ("application_id",)),
                        args(label=["defaulted", "status"], observed_column="observed"))
    assert [i.decision.request_id for i in items] == ["000042", "000044"]
    assert [i.line for i in items] == [2, 4]
    assert [(v.name, v.WhichOneof("kind")) for v in items[0].values] == [
        ("defaulted", "number"), ("status", "text")]
    assert items[0].observed_us == 1_803_859_200_000_000
    assert items[1].observed_us == 1_803_859_200_000_000 + 86_400_000_000 + 36_000_000_000


def test_a_parquet_file_with_seqs_timestamps_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.parquet"
    pq.write_table(pa.table({
        "seq": ["seq:7", "8"], "row": [1, 0], "defaulted": [1.0, float("nan")],
        "observed": pa.array([1_803_859_200_000_000, 0], pa.timestamp("us"))}), path)
    items = outcomes_of(read_table(path), args(id_column=None, seq_column="seq",
                                               row_column="row", observed_column="observed"))
    assert [(i.decision.seq, i.row, i.observed_us) for i in items] == [
        (7, 1, 1_803_859_200_000_000)]  # NaN is no value


def test_what_the_file_lacks_is_named(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text("id,defaulted,when\nx,1,next tuesday\n")
    table = read_table(path)
    with pytest.raises(InvalidInput, match="--id-column 'application_id' is not a column"):
        outcomes_of(table, args())
    with pytest.raises(InvalidInput, match="row 1: cannot read time 'next tuesday'"):
        outcomes_of(table, args(id_column="id", observed_column="when"))
    with pytest.raises(InvalidInput, match="--id-column .* or --seq-column"):
        outcomes_of(table, args(id_column="id", seq_column="id"))
