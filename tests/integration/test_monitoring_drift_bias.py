"""Drift and bias end to end: a sidecar serving the credit model with a baseline of its
training CSV, traffic sent with tritonclient in four windows, and the questions asked
through the audit API (generated stub) and the `mlwitness audit` command.

The oracle is scipy and numpy on the values the client sent (float32, widened to float64
as the ledger records them) and on the answers the client received:

    window      traffic                                        question
    in_dist     fresh applicants, their true age band          no drift
    shifted     fresh applicants, income × 1.5                 drift in income only
    null_bias   fresh applicants, age band drawn at random     no bias
    biased      age band picked from the model's decision      disparity

A call's request parameters are the same for all its rows, so rows are sent grouped by
age band.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import scipy.stats as ss
from monitoring_support import (
    MonitoredSidecar,
    MonitoringKit,
    monitoring_kit,
    now_us,
    start_monitored,
)
from scipy.spatial.distance import jensenshannon

from mlwitness.protocol import audit_pb2 as apb

TOL = {"rel": 1e-9, "abs": 1e-12}
ROWS = 1000
BATCH = 10  # rows per call: age_band, a request parameter, is counted once per call
INCOME = 0
PSI_EPSILON = 1e-4  # documented floor of empty bins (mlwitness.analytics.stats.psi)
# Documented default thresholds (mlwitness.analytics.drift.Thresholds, bias.BiasThresholds).
PSI, KS_P, KS_D, JS, CHI2_P, LINF = 0.2, 0.01, 0.1, 0.1, 0.01, 0.1


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory, credit_model: Any) -> MonitoringKit:
    return monitoring_kit(tmp_path_factory, credit_model)


@dataclass
class Sent:
    """One window of traffic as the client sent and received it, row by row."""

    since_us: int
    until_us: int
    x: list[np.ndarray] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    record_bands: list[str] = field(default_factory=list)  # one per call
    labels: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)

    @property
    def features(self) -> np.ndarray:
        """[n, 6] as recorded: float32 widened to float64."""
        return np.vstack(self.x).astype(np.float32).astype(np.float64)

    @property
    def label(self) -> np.ndarray:
        return np.concatenate(self.labels).astype(np.float64)

    @property
    def p1(self) -> np.ndarray:
        return np.vstack(self.probabilities)[:, 1].astype(np.float64)

    def table(self) -> tuple[list[str], np.ndarray]:
        """Groups (sorted) and [[approved, declined], …] counted from what was sent/received."""
        groups = sorted(set(self.bands))
        label = self.label
        bands = np.array(self.bands)
        rows = [[int((label[bands == g] == 1).sum()), int((label[bands == g] != 1).sum())]
                for g in groups]
        return groups, np.array(rows)


@dataclass
class Traffic:
    side: MonitoredSidecar
    kit: MonitoringKit
    windows: dict[str, Sent]


def send_window(side: MonitoredSidecar, name: str, x: np.ndarray, bands: np.ndarray) -> Sent:
    sent = Sent(now_us(), 0)
    for band in sorted(set(bands.tolist())):
        rows = x[bands == band]
        for i, start in enumerate(range(0, len(rows), BATCH)):
            chunk = rows[start:start + BATCH]
            out = side.infer(chunk, f"{name}-{band}-{i}", {"age_band": band})
            sent.x.append(chunk)
            sent.bands += [band] * len(chunk)
            sent.record_bands.append(band)
            sent.labels.append(out["label"])
            sent.probabilities.append(out["probabilities"])
    sent.until_us = now_us()
    return sent


@pytest.fixture(scope="module")
def traffic(kit: MonitoringKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    side = start_monitored(kit, tmp_path_factory.mktemp("drift-bias") / "ledger.duckdb",
                           baseline=kit.baseline_path)
    try:
        windows = {}
        x, bands = kit.applicants(ROWS, seed=101)
        windows["in_dist"] = send_window(side, "in-dist", x, bands)
        x, bands = kit.applicants(ROWS, seed=202)
        x[:, INCOME] *= 1.5
        windows["shifted"] = send_window(side, "shifted", x, bands)
        rng = np.random.default_rng(303)
        x, _ = kit.applicants(ROWS, seed=303)
        windows["null_bias"] = send_window(side, "null", x, rng.choice(kit.bands, size=ROWS))
        rng = np.random.default_rng(404)
        x, _ = kit.applicants(ROWS, seed=404)
        approved = kit.run_model(x)["label"] == 1  # the decision, known before sending
        young = rng.random(ROWS) < np.where(approved, 0.8, 0.3)
        windows["biased"] = send_window(side, "biased", x, np.where(young, "26-40", "61+"))
    except BaseException:
        side.stop()
        raise
    yield Traffic(side, kit, windows)
    side.stop_and_verify()  # `mlwitness verify` on the ledger after all the questions


# ── reference statistics ───────────────────────────────────────────────────────────────


def counts_in(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin i holds edges[i] <= v < edges[i+1] (edges run -inf … +inf)."""
    return np.bincount(np.searchsorted(edges[1:-1], values, side="right"),
                       minlength=len(edges) - 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    p = np.maximum(expected / expected.sum(), PSI_EPSILON)
    q = np.maximum(actual / actual.sum(), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def edges_of(profile: dict[str, Any]) -> np.ndarray:
    return np.array([{"-Infinity": -math.inf, "Infinity": math.inf}.get(e, e)
                     for e in profile["edges"]], dtype=np.float64)


def numeric_reference(values: np.ndarray, reference: np.ndarray, edges: np.ndarray,
                      reference_counts: np.ndarray) -> dict[str, Any]:
    """What the drift report must say about one numeric column."""
    ks = ss.ks_2samp(values, reference, method="asymp")
    counts = counts_in(values, edges)
    return {
        "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
        "wasserstein": float(ss.wasserstein_distance(values, reference)),
        "psi": psi(reference_counts, counts),
        "js_distance": float(jensenshannon(reference_counts, counts, base=2)),
        "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
        "counts": counts.tolist(),
    }


def verdict(s: dict[str, Any]) -> bool:
    return (s["psi"] > PSI or (s["ks_pvalue"] < KS_P and s["ks_statistic"] > KS_D)
            or s["js_distance"] > JS)


def drift(side: MonitoredSidecar, window: Sent, reference: Sent | None = None,
          features: list[str] | None = None) -> tuple[apb.DriftResponse, dict[str, Any]]:
    request = apb.DriftRequest(since_us=window.since_us, until_us=window.until_us,
                               features=features or [])
    if reference is not None:
        request.reference_since_us = reference.since_us
        request.reference_until_us = reference.until_us
    answer = side.stub.Drift(request, timeout=60)
    return answer, json.loads(answer.report_json)


def entries(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["name"], f["kind"]): f for f in report["features"]}


def assert_numeric(entry: dict[str, Any], expected: dict[str, Any]) -> None:
    s = entry["statistics"]
    assert s["counts"] == expected["counts"]
    for key in ("ks_statistic", "ks_pvalue", "wasserstein", "psi", "js_distance", "mean",
                "std"):
        assert s[key] == pytest.approx(expected[key], **TOL), key
    assert entry["verdict"] == ("drift" if verdict(expected) else "ok")


# ── 3. drift ───────────────────────────────────────────────────────────────────────────


def test_in_distribution_window_does_not_drift(traffic: Traffic) -> None:
    window = traffic.windows["in_dist"]
    answer, report = drift(traffic.side, window)
    assert (answer.drift, list(answer.drifted), answer.window_rows) == (False, [], ROWS)
    assert report["verdict"] == "ok"
    assert {f["verdict"] for f in report["features"]} == {"ok"}
    names = {f["name"] for f in report["features"]}
    assert names == {*traffic.kit.features, "age_band", "label", "probabilities_0",
                     "probabilities_1"}


def test_shifted_window_drifts_in_income_and_not_in_other_inputs(traffic: Traffic) -> None:
    answer, report = drift(traffic.side, traffic.windows["shifted"])
    assert answer.drift and report["verdict"] == "drift"
    assert "income" in answer.drifted
    untouched = [f for f in traffic.kit.features if f != "income"] + ["age_band"]
    assert not set(untouched) & set(answer.drifted)
    income = entries(report)[("income", "numeric")]
    assert income["verdict"] == "drift" and income["count"] == ROWS
    s = income["statistics"]
    assert s["psi"] > PSI and s["ks_pvalue"] < KS_P and s["ks_statistic"] > KS_D
    assert s["mean_shift"] > 0.4 * s["reference_mean"]  # × 1.5, as sent


@pytest.mark.parametrize("name", ["in_dist", "shifted"])
def test_drift_statistics_equal_scipy_on_the_values_sent(traffic: Traffic, name: str) -> None:
    window, baseline = traffic.windows[name], traffic.kit.baseline()
    answer, report = drift(traffic.side, window)
    assert report["reference"]["sha256"] in answer.reference
    found = entries(report)
    x = window.features
    for j, feature in enumerate(traffic.kit.features):
        profile = baseline["columns"][feature]["numeric"]
        expected = numeric_reference(x[:, j], np.array(profile["sample"]), edges_of(profile),
                                     np.array(profile["counts"]))
        assert_numeric(found[(feature, "numeric")], expected)
        s = found[(feature, "numeric")]["statistics"]
        assert s["mean_shift"] == pytest.approx(expected["mean"] - profile["mean"], **TOL)
        assert s["std_shift"] == pytest.approx(expected["std"] - profile["std"], **TOL)
    profile = baseline["outputs"]["probabilities_1"]["numeric"]  # prediction drift, numeric
    assert_numeric(found[("probabilities_1", "numeric")], numeric_reference(
        window.p1, np.array(profile["sample"]), edges_of(profile), np.array(profile["counts"])))

    # Categorical: the age band (a request parameter) and the decision, by χ² and L∞.
    for column, observed_by in (("age_band", window.record_bands),
                                ("label", [str(int(v)) for v in window.label])):
        reference = (baseline["columns"] if column == "age_band" else
                     baseline["outputs"])[column]["categorical"]
        categories = sorted(reference)
        observed = np.array([observed_by.count(c) for c in categories], np.float64)
        ref = np.array([reference[c] for c in categories], np.float64)
        chi2 = ss.chisquare(observed, f_exp=ref / ref.sum() * observed.sum())
        linf = float(np.max(np.abs(ref / ref.sum() - observed / observed.sum())))
        entry = found[(column, "categorical")]
        s = entry["statistics"]
        assert {c: v["count"] for c, v in s["categories"].items()} == dict(
            zip(categories, observed.astype(int).tolist(), strict=True))
        assert s["chi2_statistic"] == pytest.approx(float(chi2.statistic), **TOL)
        assert s["chi2_pvalue"] == pytest.approx(float(chi2.pvalue), **TOL)
        assert s["linf"] == pytest.approx(linf, **TOL)
        drifted = float(chi2.pvalue) < CHI2_P and linf > LINF
        assert entry["verdict"] == ("drift" if drifted else "ok")
    assert sorted(answer.drifted) == sorted(
        f["name"] for f in report["features"] if f["verdict"] == "drift")


def test_window_against_window(traffic: Traffic) -> None:
    reference, shifted = traffic.windows["in_dist"], traffic.windows["shifted"]
    numeric = list(traffic.kit.features)
    answer, report = drift(traffic.side, shifted, reference=reference, features=numeric)
    assert report["reference"]["kind"] == "window"
    assert (report["reference"]["since_us"], report["reference"]["until_us"]) == (
        reference.since_us, reference.until_us)
    assert answer.drift and "income" in answer.drifted
    assert not set(numeric[1:]) & set(answer.drifted)
    found = entries(report)
    ref_x, x = reference.features, shifted.features
    for j, feature in enumerate(numeric):
        entry = found[(feature, "numeric")]
        assert entry["reference_count"] == ROWS
        edges = np.array(entry["statistics"]["edges"], dtype=np.float64)
        interior = np.unique(np.quantile(ref_x[:, j], np.arange(1, 10) / 10))
        np.testing.assert_array_equal(edges[1:-1], interior)  # the reference's deciles
        expected = numeric_reference(x[:, j], ref_x[:, j], edges,
                                     counts_in(ref_x[:, j], edges))
        assert entry["statistics"]["reference_counts"] == counts_in(ref_x[:, j], edges).tolist()
        assert_numeric(entry, expected)

    # Two in-distribution windows do not drift against each other.
    answer, report = drift(traffic.side, traffic.windows["null_bias"], reference=reference,
                           features=numeric)
    assert (answer.drift, list(answer.drifted)) == (False, [])
    assert {f["verdict"] for f in report["features"]} == {"ok"}


def test_drift_cli_reports_what_the_api_does(traffic: Traffic) -> None:
    window = traffic.windows["shifted"]
    _, report = drift(traffic.side, window)
    args = ["--since", str(window.since_us), "--until", str(window.until_us)]
    shown = traffic.side.audit_cli("drift", "--json", *args)
    assert shown.returncode == 0, shown.stderr
    cli_report = json.loads(shown.stdout)
    assert cli_report["features"] == report["features"]
    assert cli_report["rows"] == ROWS
    table = traffic.side.audit_cli("drift", *args)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith(f"{ROWS} decision rows vs baseline ")
    assert "DRIFT in " in table.stdout and "income" in table.stdout.splitlines()[0]
    later = str(window.until_us + 3600 * 10**6)  # a window nothing was sent in
    empty = traffic.side.audit_cli("drift", "--since", later)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.startswith("0 decision rows vs baseline ")
    assert empty.stdout.splitlines()[0].endswith(": NO_DATA")  # not "no drift"


# ── 4. bias ────────────────────────────────────────────────────────────────────────────


def bias(side: MonitoredSidecar, window: Sent) -> tuple[apb.BiasResponse, dict[str, Any]]:
    answer = side.stub.Bias(apb.BiasRequest(attribute="age_band", favorable="label=1",
                                            since_us=window.since_us, until_us=window.until_us),
                            timeout=60)
    return answer, json.loads(answer.report_json)


def assert_groups_match(answer: apb.BiasResponse, report: dict[str, Any], window: Sent
                        ) -> np.ndarray:
    groups, table = window.table()
    assert [g.group for g in answer.groups] == groups
    assert report["table"] == table.tolist()
    assert [(g.n, g.favorable) for g in answer.groups] == [
        (int(a + d), int(a)) for a, d in table]
    rates = table[:, 0] / table.sum(axis=1)
    best = int(np.argmax(rates))
    assert answer.privileged == groups[best]
    for g, rate in zip(answer.groups, rates, strict=True):
        assert g.rate == pytest.approx(rate, **TOL)
        assert g.disparate_impact == pytest.approx(rate / rates[best], **TOL)
        assert g.statistical_parity_difference == pytest.approx(rate - rates[best], **TOL)
    chi2 = ss.chi2_contingency(table, correction=False)
    assert answer.chi2 == pytest.approx(float(chi2.statistic), **TOL)
    assert answer.chi2_pvalue == pytest.approx(float(chi2.pvalue), **TOL)
    assert answer.dof == int(chi2.dof)
    assert report["rows"] == ROWS and report["attribute_source"] == "parameters"
    return table


def test_bias_finds_an_injected_dependence(traffic: Traffic) -> None:
    window = traffic.windows["biased"]
    answer, report = bias(traffic.side, window)
    table = assert_groups_match(answer, report, window)
    assert [g.group for g in answer.groups] == ["26-40", "61+"]
    fisher = ss.fisher_exact(table)
    assert answer.has_fisher
    assert answer.fisher_odds_ratio == pytest.approx(float(fisher.statistic), **TOL)
    assert answer.fisher_pvalue == pytest.approx(float(fisher.pvalue), **TOL)
    assert answer.fisher_pvalue < 1e-6
    assert (answer.biased, answer.verdict) == (True, "disparity")
    assert min(g.disparate_impact for g in answer.groups) < 0.8


def test_bias_does_not_find_a_null_dependence(traffic: Traffic) -> None:
    window = traffic.windows["null_bias"]
    answer, report = bias(traffic.side, window)
    assert_groups_match(answer, report, window)
    assert len(answer.groups) == 4 and not answer.has_fisher and answer.dof == 3
    assert answer.chi2_pvalue > 0.01
    assert answer.biased is False and answer.verdict != "disparity"


def test_bias_cli_reports_what_the_api_does(traffic: Traffic) -> None:
    window = traffic.windows["biased"]
    _, report = bias(traffic.side, window)
    args = ["--attribute", "age_band", "--favorable", "label=1", "--since",
            str(window.since_us), "--until", str(window.until_us)]
    shown = traffic.side.audit_cli("bias", "--json", *args)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == report
    table = traffic.side.audit_cli("bias", *args)
    assert table.returncode == 0, table.stderr
    assert "by age_band (reference group 26-40): DISPARITY" in table.stdout


def test_bias_on_a_numeric_input_grouped_by_bins_through_api_and_cli(traffic: Traffic
                                                                     ) -> None:
    window = traffic.windows["null_bias"]
    answer = traffic.side.stub.Bias(apb.BiasRequest(
        attribute="age", favorable="label=1", since_us=window.since_us,
        until_us=window.until_us, bins=[26, 41, 61]), timeout=60)
    assert [g.group for g in answer.groups] == ["<26", "[26, 41)", "[41, 61)", ">=61"]
    age = window.features[:, traffic.kit.features.index("age")]
    assert [g.n for g in answer.groups] == np.bincount(np.digitize(age, [26, 41, 61]),
                                                       minlength=4).tolist()
    shown = traffic.side.audit_cli("bias", "--attribute", "age", "--favorable", "label=1",
                                   "--since", str(window.since_us), "--until",
                                   str(window.until_us), "--bins", "26,41,61", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [g["group"] for g in json.loads(shown.stdout)["groups"]] == [
        g.group for g in answer.groups]
    bad = traffic.side.audit_cli("bias", "--attribute", "age", "--favorable", "label=1",
                                 "--bins", "26,forty")
    assert bad.returncode == 2 and "expected numbers like 25,40,60" in bad.stderr


def test_the_ledger_verifies_through_the_audit_api(traffic: Traffic) -> None:
    answer = traffic.side.stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=60)
    assert answer.ok and list(answer.problems) == []
    infer = traffic.side.running.query(
        "SELECT count(*), sum(len(inputs)) FROM entries WHERE kind = 'infer'")
    assert infer == [(len(traffic.side.calls), 4 * ROWS)]
