"""Baselines: profiles of a real CSV/Parquet training set and of the real model on it;
numpy and onnxruntime (run directly) are the oracles; storage in a real DuckDB file."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import onnxruntime as ort
import pytest
from conftest import CreditModel
from onnx import TensorProto, helper

from mlwitness.analytics import stats
from mlwitness.analytics.baseline import (
    Baseline,
    build_baseline,
    load_baseline,
    store_baseline,
)
from mlwitness.errors import DataLoss, InvalidInput, RecordNotFound
from mlwitness.guards.suggestions import suggest
from mlwitness.ledger import schema
from mlwitness.ledger.writer import LedgerWriter

REL = 1e-12


@pytest.fixture(scope="module")
def train_csv(credit_model: CreditModel) -> Path:
    return credit_model.path.parent / "train.csv"


@pytest.fixture(scope="module")
def baseline(train_csv: Path, credit_model: CreditModel) -> Baseline:
    return build_baseline(train_csv, model=credit_model.path, label="approved")


def read_columns(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {name: [row[name] for row in rows] for name in rows[0]}


def test_numeric_statistics_equal_numpy(baseline: Baseline, train_csv: Path) -> None:
    columns = read_columns(train_csv)
    assert baseline.n_rows == len(columns["income"])
    assert baseline.settings["feature_dtype"] == "FP32"  # the credit model's input
    for name in ("income", "debt_ratio", "fico", "age", "years_employed", "open_loans"):
        # profiled as the model receives them: each value rounded to float32
        x = np.array([float(v) for v in columns[name]]).astype(np.float32).astype(np.float64)
        profile = baseline.columns[name]
        num = profile.numeric
        assert num is not None
        assert (profile.count, profile.missing) == (x.size, 0)
        assert (num.min, num.max) == (x.min(), x.max())
        assert num.mean == pytest.approx(np.mean(x), rel=REL)
        assert num.std == pytest.approx(np.std(x, ddof=1), rel=REL)
        expected_q = np.quantile(x, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99], method="linear")
        assert list(num.quantiles) == ["p1", "p5", "p25", "p50", "p75", "p95", "p99"]
        assert list(num.quantiles.values()) == pytest.approx(expected_q, rel=REL)
        interior = np.unique(np.quantile(x, np.arange(1, 10) / 10))
        assert num.edges == [-math.inf, *interior.tolist(), math.inf]
        bins = np.searchsorted(np.array(num.edges), x, side="right") - 1
        assert num.counts == np.bincount(bins, minlength=len(num.edges) - 1).tolist()
        assert num.sample == sorted(x.tolist())  # 2,000 rows <= sample_size: every value
        assert profile.categorical is None


def test_text_column_frequencies_and_label_class_rates(baseline: Baseline, train_csv: Path
                                                        ) -> None:
    columns = read_columns(train_csv)
    band = baseline.columns["age_band"]
    assert band.numeric is None
    assert band.categorical == dict(Counter(columns["age_band"]))
    assert (band.count, band.missing) == (len(columns["age_band"]), 0)
    assert baseline.label == "approved"
    assert baseline.columns["approved"].categorical == dict(Counter(columns["approved"]))
    assert baseline.feature_names == ["income", "debt_ratio", "fico", "age", "years_employed",
                                      "open_loans"]


def test_model_outputs_profiled_under_ledger_column_names(
    baseline: Baseline, credit_model: CreditModel, train_csv: Path
) -> None:
    columns = read_columns(train_csv)
    x = np.column_stack([np.array(columns[f], dtype=np.float64)
                         for f in baseline.feature_names]).astype(np.float32)
    session = ort.InferenceSession(str(credit_model.path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"input": x})
    assert sorted(baseline.outputs) == ["label", "probabilities_0", "probabilities_1"]
    assert baseline.outputs["label"].categorical == {
        str(k): v for k, v in Counter(label.tolist()).items()}
    assert baseline.outputs["label"].numeric is not None  # also numeric
    p1 = probabilities[:, 1].astype(np.float64)
    num = baseline.outputs["probabilities_1"].numeric
    assert num is not None and baseline.outputs["probabilities_1"].categorical is None
    assert num.mean == pytest.approx(np.mean(p1), rel=1e-12)
    assert num.sample == sorted(p1.tolist())
    assert baseline.model == {"file": credit_model.path.name, "input": "input",
                              "sha256": hashlib.sha256(credit_model.path.read_bytes())
                              .hexdigest()}


def test_large_column_is_sampled_with_the_seed(train_csv: Path) -> None:
    a = build_baseline(train_csv, sample_size=300, seed=1)
    b = build_baseline(train_csv, sample_size=300, seed=1)
    c = build_baseline(train_csv, sample_size=300, seed=2)
    values = Counter(float(v) for v in read_columns(train_csv)["income"])
    sample = a.columns["income"].numeric.sample  # type: ignore[union-attr]
    assert len(sample) == 300 and sample == sorted(sample)
    assert not Counter(sample) - values  # drawn from the column, without replacement
    assert sample == b.columns["income"].numeric.sample  # type: ignore[union-attr]
    assert sample != c.columns["income"].numeric.sample  # type: ignore[union-attr]
    assert a.columns["income"].count == 2000  # statistics still use every row


def test_missing_values_are_counted_and_left_out(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("x,y,kind\n1.5,2,a\n,3,\nnan,4,b\n2.5,,a\ninf,5,a\n")
    profile = build_baseline(path)
    x = profile.columns["x"]
    assert (x.count, x.missing) == (2, 3)  # NULL, NaN and inf are missing
    assert x.numeric is not None and x.numeric.mean == 2.0 and x.numeric.sample == [1.5, 2.5]
    assert (profile.columns["y"].count, profile.columns["y"].missing) == (4, 1)
    assert profile.columns["kind"].categorical == {"a": 3, "b": 1}
    assert profile.columns["kind"].missing == 1
    assert profile.feature_names == ["x", "y"]


def test_parquet_gives_the_same_profile_as_csv(train_csv: Path, tmp_path: Path) -> None:
    parquet = tmp_path / "train.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_csv_auto('{train_csv}')) TO '{parquet}' "
                "(FORMAT parquet)")
    con.close()
    from_csv, from_parquet = build_baseline(train_csv), build_baseline(parquet)
    assert from_parquet.source["format"] == "parquet"
    assert from_parquet.columns == from_csv.columns


def test_feature_count_must_match_the_model_input(train_csv: Path, credit_model: CreditModel
                                                  ) -> None:
    with pytest.raises(InvalidInput, match="takes 6 columns but 2 features"):
        build_baseline(train_csv, model=credit_model.path, features=["income", "fico"])
    with pytest.raises(InvalidInput, match="label column 'nope'"):
        build_baseline(train_csv, label="nope")
    with pytest.raises(InvalidInput, match="does not exist"):
        build_baseline(train_csv.with_name("missing.csv"))


def test_json_is_canonical_and_round_trips(baseline: Baseline, train_csv: Path) -> None:
    text = baseline.to_json()

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    document = json.loads(text, parse_constant=no_constants)
    assert text == json.dumps(document, sort_keys=True, separators=(",", ":"))
    assert document["columns"]["income"]["numeric"]["edges"][0] == "-Infinity"
    assert baseline.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert baseline.source == {"file": "train.csv", "format": "csv",
                               "sha256": hashlib.sha256(train_csv.read_bytes()).hexdigest()}
    again = Baseline.from_json(text)
    assert again == baseline and again.sha256 == baseline.sha256
    assert again.columns["income"].numeric.edges[-1] == math.inf  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match="not a baseline"):
        Baseline.from_json('{"format": "something else"}')


def test_store_and_load_by_hash_prefix_or_name(baseline: Baseline, tmp_path: Path,
                                               train_csv: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    other = build_baseline(train_csv, bins=5)
    con = schema.connect(path)  # a ledger file: the baselines table is part of its schema
    assert store_baseline(con, baseline, "credit") == baseline.sha256
    assert store_baseline(con, baseline, "renamed") == baseline.sha256  # idempotent
    store_baseline(con, other, "credit-5-bins")
    con.close()

    ro = duckdb.connect(str(path), read_only=True)
    assert load_baseline(ro, baseline.sha256) == baseline
    assert load_baseline(ro, baseline.sha256[:10].upper()) == baseline
    assert load_baseline(ro, "credit") == baseline
    assert load_baseline(ro, "credit-5-bins") == other
    assert ro.execute("SELECT name FROM baselines WHERE sha256 = ?",
                      [baseline.sha256]).fetchall() == [("credit",)]
    with pytest.raises(RecordNotFound):
        load_baseline(ro, "unknown")
    ro.close()

    con = duckdb.connect(str(path))
    con.execute("UPDATE baselines SET json = replace(json, '\"n_rows\":2000', "
                "'\"n_rows\":2001') WHERE name = 'credit'")
    with pytest.raises(DataLoss):
        load_baseline(con, "credit")
    con.close()
    with pytest.raises(RecordNotFound):
        load_baseline(duckdb.connect(), "credit")  # no baselines table at all


def test_quantile_edges_are_the_stats_ones(baseline: Baseline, train_csv: Path) -> None:
    x = np.array([float(v) for v in read_columns(train_csv)["fico"]])
    edges = stats.quantile_edges(x, 10)
    num = baseline.columns["fico"].numeric
    assert num is not None
    assert num.edges == edges.tolist()
    assert num.counts == stats.bin_counts(x, edges).tolist()


def test_stored_through_the_ledger_writer(baseline: Baseline, tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "ledger.duckdb")
    writer.open()
    try:
        sha = writer.write(lambda con: store_baseline(con, baseline, "credit"))
        assert load_baseline(writer.cursor(), "credit").sha256 == sha == baseline.sha256
    finally:
        writer.close()
    with duckdb.connect(str(tmp_path / "ledger.duckdb"), read_only=True) as con:
        assert load_baseline(con, sha[:8]) == baseline


def test_values_too_large_to_profile_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text("a,b\n1e300,1\n-1e300,2\n1e300,3\n")
    with pytest.raises(InvalidInput, match="a: values up to 1e\\+300 are too large"):
        build_baseline(path)


def test_only_integer_outputs_are_profiled_as_categories(tmp_path: Path) -> None:
    """A float output that was exactly 0/1 on the training set (a tree's pure leaves) is
    still a probability: profiled as categories, `guards suggest` would make every real
    probability an 'unseen category'."""

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["zero"], value=helper.make_tensor(
            "zero", TensorProto.FLOAT, [], [0.0])),
         helper.make_node("Greater", ["x", "zero"], ["positive"]),
         helper.make_node("Cast", ["positive"], ["p"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["positive"], ["label"], to=TensorProto.INT64)],
        "pure_leaves", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1])])
    model = tmp_path / "pure.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                        ir_version=8).SerializeToString())
    data = tmp_path / "train.csv"
    data.write_text("x\n" + "".join(f"{v}\n" for v in (-2.0, -1.0, 1.0, 2.0, 3.0)))
    built = build_baseline(data, model=model)
    assert built.outputs["p"].categorical is None
    assert built.outputs["label"].categorical == {"0": 2, "1": 3}
    config = suggest(json.loads(built.to_json()))
    assert config.outputs["p"].allowed is None and config.outputs["label"].allowed is not None


# ── joint rows: the reference set of `audit explain` ──────────────────────────────────


def test_baseline_keeps_a_seeded_sample_of_whole_feature_rows(train_csv: Path) -> None:
    features = ["income", "debt_ratio", "fico"]
    built = build_baseline(train_csv, features=features, feature_dtype="FP32",
                           reference_rows=50, seed=3)
    columns = read_columns(train_csv)
    table = np.array([[float(v) for v in columns[f]] for f in features]).T
    table = table.astype(np.float32).astype(np.float64)  # rounded like the features
    pick = np.sort(np.random.default_rng((3, 1)).choice(len(table), size=50, replace=False))
    assert built.rows == table[pick].tolist()  # whole rows, in file order
    assert built.settings["reference_rows"] == 50
    again = Baseline.from_json(built.to_json())
    assert again.rows == built.rows and again.sha256 == built.sha256
    assert json.loads(built.to_json())["format"] == "mlwitness.baseline/2"
    assert build_baseline(train_csv, features=features, reference_rows=50, seed=3).rows \
        != build_baseline(train_csv, features=features, reference_rows=50, seed=4).rows
    every = build_baseline(train_csv, features=features, feature_dtype="FP32",
                           reference_rows=5000)
    assert every.rows == table.tolist()  # fewer rows than asked: all of them


def test_rows_with_a_missing_feature_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("x,y\n1,2\n,3\n4,nan\n5,6\n")
    assert build_baseline(path).rows == [[1.0, 2.0], [5.0, 6.0]]


def test_a_baseline_without_rows_keeps_the_format_1_document_and_hash(train_csv: Path) -> None:
    """Baselines stored before rows were kept must load: load_baseline checks the stored
    SHA-256 against the document written again."""
    plain = build_baseline(train_csv, reference_rows=0)
    document = json.loads(plain.to_json())
    assert document["format"] == "mlwitness.baseline/1"
    assert "rows" not in document and "reference_rows" not in document["settings"]
    old = plain.to_json()
    assert Baseline.from_json(old).to_json() == old
    with pytest.raises(InvalidInput, match="must not be negative"):
        build_baseline(train_csv, reference_rows=-1)
