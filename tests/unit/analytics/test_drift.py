"""Drift of ledger windows: a real ledger written by LedgerWriter (records carrying the
real credit model's inputs and outputs and an `age_band` request parameter), read through a
read-only DuckDB connection; scipy/numpy on the very arrays that were recorded are the
oracle."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import scipy.stats as ss
from conftest import CreditModel
from scipy.spatial.distance import jensenshannon

from mlwitness.analytics.baseline import Baseline, build_baseline
from mlwitness.analytics.drift import DriftReport, FeatureDrift, Thresholds, Window, drift_report
from mlwitness.codec import encode_inputs, tensor_from_array
from mlwitness.errors import InvalidInput
from mlwitness.inference.minimise import Minimiser
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import Tabulator
from mlwitness.ledger.writer import LedgerWriter, WriterOptions
from mlwitness.model.runtime import OnnxModel
from mlwitness.protocol import inference as pb

TOL = {"rel": 1e-9, "abs": 1e-9}
SECOND = 1_000_000


@dataclass
class Fed:
    """What one window's records carried, as the ledger stores it (float64 of float32)."""

    since_us: int
    until_us: int
    x: np.ndarray  # [n, 6]
    bands: np.ndarray  # per row
    label: np.ndarray
    p1: np.ndarray
    record_bands: np.ndarray  # per record: a request parameter counts once per request


@dataclass
class Ledger:
    path: Path
    baseline: Baseline
    features: tuple[str, ...]
    windows: dict[str, Fed]
    model_sha256: str


def feed(writer: LedgerWriter, model: OnnxModel, data: dict[str, np.ndarray], features: Any,
         t0: int, model_name: str = "credit", batch: int = 25) -> Fed:
    """One record per `batch` rows of one age band (a request's parameters are per request)."""
    x32 = np.column_stack([data[f] for f in features]).astype(np.float32)
    xs, bands, labels, p1s, record_bands = [], [], [], [], []
    t = t0
    for band in sorted(set(data["age_band"].tolist())):
        rows = np.flatnonzero(data["age_band"] == band)
        for start in range(0, rows.size, batch):
            x = x32[rows[start:start + batch]]
            inputs = [tensor_from_array("input", x)]
            outputs = model.run(inputs)
            writer.append_blocking(Record(
                request_id=f"r{t}", received_us=t, responded_us=t + 10, model_name=model_name,
                model_sha256=model.sha256, inputs=inputs, outputs=outputs,
                parameters={"age_band": band},
            ))
            t += 1
            xs.append(x.astype(np.float64))
            bands += [band] * len(x)
            record_bands.append(band)
            labels.append(outputs[0].array.astype(np.float64))
            p1s.append(outputs[1].array[:, 1].astype(np.float64))
    return Fed(t0, t, np.vstack(xs), np.array(bands, object), np.concatenate(labels),
               np.concatenate(p1s), np.array(record_bands, object))


@pytest.fixture(scope="module")
def ledger(credit_model: CreditModel, tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    builder = credit_model.builder
    features = builder.FEATURES
    baseline = build_baseline(credit_model.path.parent / "train.csv", model=credit_model.path,
                              label="approved")
    model = OnnxModel(credit_model.path.read_bytes())
    path = tmp_path_factory.mktemp("drift") / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="write"),
                          tabulator=Tabulator({"input": list(features)}))
    writer.open()
    shifted = builder.make_dataset(3000, 102)
    shifted["income"] = np.round(shifted["income"] * 1.6, 2)
    shifted["fico"] = np.clip(shifted["fico"] - 60, 300, 850)
    shifted["age"] = np.minimum(shifted["age"] + 15, 90)
    shifted["age_band"] = builder.age_band(shifted["age"])
    windows = {
        "in_distribution": feed(writer, model, builder.make_dataset(3000, 101), features,
                                1 * SECOND),
        "shifted": feed(writer, model, shifted, features, 2 * SECOND),
        "in_distribution_2": feed(writer, model, builder.make_dataset(2500, 103), features,
                                  3 * SECOND),
    }
    # Noise the windows must ignore: refused requests, and another model's traffic.
    writer.append_blocking(Record(request_id="refused", received_us=SECOND + 999_000,
                                  model_name="credit", status="INVALID_ARGUMENT",
                                  inputs=[tensor_from_array("input", np.full((5, 6), 1e9,
                                                                             np.float32))]))
    other = np.random.default_rng(5).normal(size=(40, 3)).astype(np.float32)
    writer.append_blocking(Record(request_id="other", received_us=SECOND + 999_500,
                                  model_name="other", model_sha256="f" * 64,
                                  inputs=[tensor_from_array("x", other)],
                                  outputs=[tensor_from_array("y", other[:, 0])]))
    writer.sync()
    writer.close()
    return Ledger(path, baseline, tuple(features), windows, model.sha256)


@pytest.fixture
def con(ledger: Ledger) -> Any:
    connection = duckdb.connect(str(ledger.path), read_only=True)
    yield connection
    connection.close()


def report_for(con: Any, ledger: Ledger, window: str, reference: Any = None,
               **kwargs: Any) -> DriftReport:
    fed = ledger.windows[window]
    return drift_report(con, ledger.baseline if reference is None else reference,
                        since_us=fed.since_us, until_us=fed.until_us, model="credit", **kwargs)


def entry(report: DriftReport, name: str, kind: str = "numeric") -> FeatureDrift:
    return next(f for f in report.features if f.name == name and f.kind == kind)


def test_in_distribution_window_does_not_drift(con: Any, ledger: Ledger) -> None:
    report = report_for(con, ledger, "in_distribution")
    assert report.rows == 3000
    assert report.verdict == "ok"
    assert {(f.name, f.kind, f.verdict) for f in report.features} == {
        *((name, "numeric", "ok") for name in ledger.features),
        ("age_band", "categorical", "ok"), ("label", "numeric", "ok"),
        ("label", "categorical", "ok"), ("probabilities_0", "numeric", "ok"),
        ("probabilities_1", "numeric", "ok"),
    }
    assert max(entry(report, f).statistics["psi"] for f in ledger.features) < 0.05


def test_shifted_window_exceeds_thresholds(con: Any, ledger: Ledger) -> None:
    report = report_for(con, ledger, "shifted")
    t = Thresholds()
    assert report.verdict == "drift"
    for name in ("income", "fico", "age"):
        drifted = entry(report, name)
        assert drifted.verdict == "drift"
        assert drifted.statistics["psi"] > t.psi
        assert drifted.statistics["ks_pvalue"] < t.ks_pvalue
        assert drifted.statistics["ks_statistic"] > t.ks_statistic
        assert set(drifted.reasons) == {"psi", "ks", "js"}
    assert entry(report, "income").statistics["mean_shift_in_std"] > 0.5
    assert entry(report, "debt_ratio").verdict == "ok"  # untouched feature
    band = entry(report, "age_band", "categorical")
    assert band.verdict == "drift" and band.statistics["linf"] > t.linf
    assert entry(report, "probabilities_1").verdict == "drift"  # prediction drift


@pytest.mark.parametrize("window", ["in_distribution", "shifted"])
def test_every_statistic_matches_scipy_on_the_recorded_values(
    con: Any, ledger: Ledger, window: str
) -> None:
    fed = ledger.windows[window]
    report = report_for(con, ledger, window)
    columns = {**{f: fed.x[:, j] for j, f in enumerate(ledger.features)},
               "label": fed.label, "probabilities_1": fed.p1}
    for name, values in columns.items():
        role = "input" if name in ledger.features else "output"
        profile = (ledger.baseline.columns if role == "input" else ledger.baseline.outputs)[name]
        assert profile.numeric is not None
        ref = np.array(profile.numeric.sample)
        edges = np.array(profile.numeric.edges)
        counts = np.bincount(np.searchsorted(edges, values, side="right") - 1,
                             minlength=edges.size - 1)
        ref_counts = np.array(profile.numeric.counts)
        p, q = ref_counts / ref_counts.sum(), counts / counts.sum()
        p, q = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
        ks = ss.ks_2samp(values, ref, method="asymp")
        s = entry(report, name).statistics
        assert entry(report, name).count == values.size
        assert s["counts"] == counts.tolist()  # binned in SQL, counted by numpy here
        assert s["reference_counts"] == ref_counts.tolist()
        assert s["psi"] == pytest.approx(np.sum((q - p) * np.log(q / p)), **TOL)
        assert s["js_distance"] == pytest.approx(jensenshannon(ref_counts, counts, base=2),
                                                 **TOL)
        assert s["ks_statistic"] == pytest.approx(ks.statistic, **TOL)
        assert s["ks_pvalue"] == pytest.approx(ks.pvalue, **TOL)
        assert s["wasserstein"] == pytest.approx(ss.wasserstein_distance(values, ref), **TOL)
        mean, std = np.mean(values), np.std(values, ddof=1)
        ref_mean, ref_std = profile.numeric.mean, profile.numeric.std
        assert s["mean_shift"] == pytest.approx(mean - ref_mean, **TOL)
        assert s["mean_shift_in_std"] == pytest.approx((mean - ref_mean) / ref_std, **TOL)
        assert s["std_shift"] == pytest.approx(std - ref_std, **TOL)
        assert s["std_shift_in_std"] == pytest.approx((std - ref_std) / ref_std, **TOL)

    for name, values, freq in (
        ("age_band", fed.record_bands, ledger.baseline.columns["age_band"].categorical),
        ("label", fed.label.astype(int).astype(str),
         ledger.baseline.outputs["label"].categorical),
    ):
        assert freq is not None
        categories = sorted(set(freq) | set(values.tolist()))
        observed = np.array([np.sum(values == c) for c in categories], np.float64)
        expected = np.array([freq.get(c, 0) for c in categories], np.float64)
        chi2 = ss.chisquare(observed, f_exp=expected / expected.sum() * observed.sum())
        s = entry(report, name, "categorical").statistics
        assert {c: v["count"] for c, v in s["categories"].items()} == dict(
            zip(categories, observed.astype(int).tolist(), strict=True))
        assert s["chi2_statistic"] == pytest.approx(chi2.statistic, **TOL)
        assert s["chi2_pvalue"] == pytest.approx(chi2.pvalue, **TOL)
        assert s["linf"] == pytest.approx(
            np.max(np.abs(observed / observed.sum() - expected / expected.sum())), **TOL)


def test_window_against_window(con: Any, ledger: Ledger) -> None:
    ref = ledger.windows["in_distribution"]
    reference = Window(ref.since_us, ref.until_us)
    shifted = report_for(con, ledger, "shifted", reference)
    assert shifted.reference == {"kind": "window", "since_us": ref.since_us,
                                 "until_us": ref.until_us, "model": "credit"}
    assert shifted.verdict == "drift"
    assert entry(shifted, "income").verdict == "drift"
    assert entry(shifted, "age_band", "categorical").verdict == "drift"
    assert report_for(con, ledger, "in_distribution_2", reference).verdict == "ok"

    fed = ledger.windows["shifted"]
    for j, name in enumerate(ledger.features):
        a, b = fed.x[:, j], ref.x[:, j]
        edges = np.concatenate([[-np.inf], np.unique(np.quantile(b, np.arange(1, 10) / 10)),
                                [np.inf]])
        s = entry(shifted, name).statistics
        assert s["edges"] == edges.tolist()
        assert s["reference_counts"] == np.bincount(
            np.searchsorted(edges, b, side="right") - 1, minlength=edges.size - 1).tolist()
        ks = ss.ks_2samp(a, b, method="asymp")
        assert (s["ks_statistic"], s["ks_pvalue"]) == (
            pytest.approx(ks.statistic, **TOL), pytest.approx(ks.pvalue, **TOL))
        assert s["wasserstein"] == pytest.approx(ss.wasserstein_distance(a, b), **TOL)
        assert s["reference_std"] == pytest.approx(np.std(b, ddof=1), **TOL)


def test_empty_window_is_a_clear_result(con: Any, ledger: Ledger) -> None:
    report = drift_report(con, ledger.baseline, since_us=50 * SECOND)
    assert (report.rows, report.verdict) == (0, "no_data")
    assert {f.verdict for f in report.features} == {"no_data"}
    assert all(f.statistics == {} and f.count == 0 for f in report.features)
    json.dumps(report.to_dict(), allow_nan=False)
    windowed = drift_report(con, Window(50 * SECOND, 60 * SECOND), since_us=SECOND)
    assert windowed.features == [] and windowed.verdict == "no_reference"


def test_filters_by_time_model_and_status(con: Any, ledger: Ledger) -> None:
    first = ledger.windows["in_distribution"]
    every = drift_report(con, ledger.baseline, since_us=first.since_us, until_us=2 * SECOND)
    assert every.rows == 3000 + 40  # the other model's rows; never the refused request
    by_sha = drift_report(con, ledger.baseline, since_us=first.since_us,
                          until_us=2 * SECOND, model=ledger.model_sha256[:12])
    assert by_sha.rows == 3000
    other = drift_report(con, ledger.baseline, model="other")
    assert other.rows == 40
    income = entry(other, "income")  # the other model has no such feature
    assert (income.verdict, income.count, income.missing) == ("no_data", 0, 40)
    half = drift_report(con, ledger.baseline, since_us=first.since_us,
                        until_us=first.since_us + 1, model="credit")
    assert half.rows == 25  # [since, until): exactly the first record


def test_feature_selection_and_thresholds(con: Any, ledger: Ledger) -> None:
    report = report_for(con, ledger, "shifted", features=["income", "age_band"], outputs=[])
    assert [(f.name, f.kind) for f in report.features] == [
        ("income", "numeric"), ("age_band", "categorical")]
    lenient = report_for(con, ledger, "shifted", thresholds=Thresholds(
        psi=100, ks_statistic=1, js=1, linf=1))
    assert lenient.verdict == "ok"
    with pytest.raises(InvalidInput, match="nope"):
        report_for(con, ledger, "shifted", features=["nope"])
    tiny = drift_report(con, ledger.baseline, since_us=SECOND, until_us=SECOND + 1,
                        model="credit")
    assert {f.verdict for f in tiny.features} == {"insufficient_data"}  # 25 < 30 rows
    assert not math.isnan(entry(tiny, "income").statistics["psi"])
    assert tiny.verdict == "insufficient_data"  # nothing judged is not "ok"


def test_columns_restricts_inputs_and_outputs_alike(con: Any, ledger: Ledger) -> None:
    report = report_for(con, ledger, "shifted", columns=["income", "probabilities_1"])
    assert [(f.name, f.role) for f in report.features] == [
        ("income", "input"), ("probabilities_1", "output")]
    with pytest.raises(InvalidInput, match=r"columns \['nope'\] are not in the reference"):
        report_for(con, ledger, "shifted", columns=["nope"])


def test_a_window_reference_is_tested_as_a_sample_and_must_be_big_enough(
    con: Any, ledger: Ledger
) -> None:
    """A reference window is a sample as much as the tested window: χ² of the 2×k table
    (scipy's chi2_contingency), not goodness of fit to its proportions taken as exact. A
    150-row reference gave false drift on the same distribution before."""
    ref, tested = ledger.windows["in_distribution"], ledger.windows["in_distribution_2"]
    # records go band by band: compare the youngest band's first 6 records (150 rows)
    # with all of its records in another window of the same distribution
    young = str(sorted(set(tested.record_bands.tolist()))[0])
    assert set(ref.record_bands[:6].tolist()) == {young}
    small = Window(ref.since_us, ref.since_us + 6)
    records = int(np.sum(tested.record_bands == young))
    report = drift_report(con, small, since_us=tested.since_us,
                          until_us=tested.since_us + records, model="credit")
    assert report.rows > 250
    assert report.verdict == "ok", [(f.name, f.verdict, f.reasons) for f in report.features]
    for name in ledger.features:
        s = entry(report, name).statistics
        table = np.array([s["reference_counts"], s["counts"]])
        table = table[:, table.sum(axis=0) > 0]
        expected = ss.chi2_contingency(table, correction=False)
        assert s["binned_chi2_pvalue"] == pytest.approx(expected.pvalue, **TOL)
    band = entry(report, "age_band", "categorical")  # 6 records name a band: too few
    assert (band.verdict, band.reference_count) == ("insufficient_data", 6)
    assert band.statistics["chi2_test"] == "two_sample"
    assert band.statistics["counted_per"] == "record"


def test_report_is_json(con: Any, ledger: Ledger) -> None:
    document = report_for(con, ledger, "shifted").to_dict()
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text)["features"][0]["statistics"]["edges"][0] == "-Infinity"
    assert document["thresholds"] == {"psi": 0.2, "ks_pvalue": 0.01, "ks_statistic": 0.1,
                                      "js": 0.1, "chi2_pvalue": 0.01, "linf": 0.1,
                                      "min_count": 30}
    assert document["reference"]["sha256"] == ledger.baseline.sha256


def test_analytics_modules_import_neither_grpc_nor_scipy_eagerly() -> None:
    code = ("import sys, mlwitness.analytics.baseline, mlwitness.analytics.drift, "
            "mlwitness.analytics.bias; "
            "print(sorted(m for m in ('grpc', 'scipy', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_decimal_ties_sent_as_fp32_do_not_drift_against_their_own_training_set(
    tmp_path: Path,
) -> None:
    """Rate tiers like 0.7 are float32(0.7) < 0.7 on the ledger. Profiled as the model
    receives them (FP32), unchanged traffic is `ok`; profiled as float64 text, the ties
    land on the wrong side of their bin edges and the same traffic 'drifts'."""
    rng = np.random.default_rng(5)
    tiers = np.array([0.05, 0.07, 0.1, 0.3, 0.7])
    train = tmp_path / "train.csv"
    n = 20_000
    train.write_text("rate,util\n" + "".join(
        f"{a},{b}\n" for a, b in zip(rng.choice(tiers, n), np.round(rng.uniform(0, 1, n), 2),
                                     strict=True)))
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="write"),
                          tabulator=Tabulator({"input": ["rate", "util"]}))
    writer.open()
    for i in range(10):
        x = np.column_stack([rng.choice(tiers, 500),
                             np.round(rng.uniform(0, 1, 500), 2)]).astype(np.float32)
        writer.append_blocking(Record(request_id=f"t{i}", received_us=(i + 1) * SECOND,
                                      model_name="tiers", inputs=[tensor_from_array("input", x)]))
    writer.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        as_sent = drift_report(con, build_baseline(train, feature_dtype="FP32"))
        as_text = drift_report(con, build_baseline(train, feature_dtype="FP64"))
    finally:
        con.close()
    assert as_sent.verdict == "ok", [(f.name, f.verdict, f.reasons) for f in as_sent.features]
    assert entry(as_text, "rate").verdict == "drift"  # what FP64 profiling got wrong


def minimised_drift(tmp_path: Path, train: Path, tabulator: Tabulator, minimiser: Any,
                    calls: list[tuple[list[Any], dict[str, str]]]) -> DriftReport:
    """Drift against `train`'s baseline of a ledger of these calls ((inputs, parameters)
    each), recorded as the sidecar would with `minimiser` applied."""
    path = tmp_path / "ledger.duckdb"
    writer = LedgerWriter(path, WriterOptions(durability="write"), tabulator=tabulator)
    writer.open()
    for i, (inputs, parameters) in enumerate(calls):
        request = pb.ModelInferRequest(model_name="m")
        for key, value in parameters.items():
            request.parameters[key].string_param = value
        encode_inputs(request, inputs, raw=True)
        record = Record(request_id=f"r{i}", received_us=(i + 1) * SECOND, model_name="m",
                        inputs=inputs, parameters=parameters or None,
                        request=request.SerializeToString())
        minimiser.apply(record)
        writer.append_blocking(record)
    writer.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        return drift_report(con, build_baseline(train))
    finally:
        con.close()


def test_a_minimised_parameter_is_not_judged_against_its_plain_training_values(
    tmp_path: Path,
) -> None:
    """--hash-inputs age_band stores hashes: against the baseline's plain bands every
    value would be 'unseen' and the column would always drift. It is reported as
    `minimised` instead, and the report judges the rest."""
    rng = np.random.default_rng(0)
    bands = np.array(["18-25", "26-40", "41-60", "61+"])
    train = tmp_path / "train.csv"
    train.write_text("x,age_band\n" + "".join(
        f"{a:.5f},{b}\n" for a, b in zip(rng.normal(size=3000), rng.choice(bands, 3000),
                                         strict=True)))
    minimiser = Minimiser(redact=[], hashed=["age_band"], key=b"k" * 32)
    calls = [([tensor_from_array("input", rng.normal(size=(1, 1)).astype(np.float32))],
              {"age_band": str(rng.choice(bands))}) for _ in range(200)]
    report = minimised_drift(tmp_path, train, Tabulator({"input": ["x"]}), minimiser, calls)
    assert [(f.name, f.verdict) for f in report.features] == [
        ("x", "ok"), ("age_band", "minimised")]
    assert report.verdict == "ok"


def test_a_minimised_tensor_of_several_named_columns_is_minimised_in_each(
    tmp_path: Path,
) -> None:
    """--hash-inputs cat, a [N, 2] BYTES tensor whose columns --features names city and
    job: the record's detail names the columns, and drift reports each as minimised."""
    rng = np.random.default_rng(1)
    cities, jobs = np.array(["a", "b", "c"]), np.array(["x", "y"])
    train = tmp_path / "train.csv"
    train.write_text("v,city,job\n" + "".join(
        f"{rng.normal():.4f},{rng.choice(cities)},{rng.choice(jobs)}\n" for _ in range(2000)))
    tabulator = Tabulator({"input": ["v"], "cat": ["city", "job"]})
    minimiser = Minimiser(redact=[], hashed=["cat"], key=b"k" * 32, tabulator=tabulator)
    calls = []
    for _ in range(60):
        cat = np.array([[rng.choice(cities).encode(), rng.choice(jobs).encode()]
                        for _ in range(5)], dtype=object)
        calls.append(([tensor_from_array("input", rng.normal(size=(5, 1)).astype(np.float32)),
                       tensor_from_array("cat", cat)], {}))
    report = minimised_drift(tmp_path, train, tabulator, minimiser, calls)
    assert {f.name: f.verdict for f in report.features} == {
        "v": "ok", "city": "minimised", "job": "minimised"}
    assert report.verdict == "ok"


def test_each_column_is_listed_once_per_kind_even_when_asked_for_twice(
    con: Any, ledger: Ledger
) -> None:
    report = report_for(con, ledger, "in_distribution", features=["income", "income"],
                        outputs=["label", "label"])
    assert [(f.name, f.role, f.kind) for f in report.features] == [
        ("income", "input", "numeric"), ("label", "output", "numeric"),
        ("label", "output", "categorical")]
