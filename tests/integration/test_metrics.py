"""Prometheus metrics end to end: a real sidecar with `--metrics-port`, traffic from
tritonclient, and plain HTTP scrapes of /metrics parsed with prometheus_client's own parser.
Counters are compared before and after a known number of calls; gauges against the audit
API and against what the client received.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from monitoring_support import (
    MODEL_NAME,
    MonitoredSidecar,
    MonitoringKit,
    Scrape,
    Start,
    edited,
    monitoring_kit,
    sidecar_pool,
    violation_deltas,
    wait_for,
    wilson,
)

from mlwitness.metrics import DOCUMENTED
from mlwitness.protocol import audit_pb2 as apb

INCOME = 0
DRIFT_STATISTICS = ("psi", "ks_statistic", "js_distance", "wasserstein")


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory, credit_model: Any) -> MonitoringKit:
    return monitoring_kit(tmp_path_factory, credit_model)


@pytest.fixture
def start(kit: MonitoringKit, tmp_path: Path) -> Iterator[Start]:
    with sidecar_pool(kit, tmp_path) as start:
        yield start


def documented_name(sample: str) -> str:
    """The documented metric a sample belongs to (histogram parts, `_created` twins)."""
    for suffix in ("_bucket", "_count", "_sum"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in DOCUMENTED:
            return sample.removesuffix(suffix)
    if sample.endswith("_created"):
        base = sample.removesuffix("_created")
        return base + "_total" if base + "_total" in DOCUMENTED else base
    return sample


def send_with_violations(side: MonitoredSidecar, kit: MonitoringKit) -> dict[str, Any]:
    """20 clean calls, 3 with an income above the guard, 2 with an unseen age band."""
    x, bands = kit.in_range(110, seed=71)
    for i in range(20):
        rows = slice(5 * i, 5 * i + 5)
        side.infer(x[rows], f"clean-{i}", {"age_band": "26-40"})
    for i in range(3):
        rich = x[100 + 2 * i:102 + 2 * i].copy()
        rich[1, INCOME] = 1e6
        side.call(rich, f"rich-{i}", {"age_band": str(bands[100 + 2 * i])})
    for i in range(2):
        side.call(x[106 + 2 * i:108 + 2 * i], f"unseen-{i}", {"age_band": "100+"})
    return {"calls": 25, "rows": 110,
            "violations": {("features.income", "income", "above_max"): 3.0,
                           ("features.age_band", "age_band", "unseen_category"): 2.0}}


# ── 6. counters move by exactly what was sent ──────────────────────────────────────────


def test_requests_latency_violations_and_ledger_counters_move(kit: MonitoringKit,
                                                              start: Start) -> None:
    side = start(guards=kit.guards_path, guard_mode="observe")
    side.running.sync()
    before = side.scrape()
    assert before.value("mlwitness_ledger_healthy") == 1.0
    # the start-up records: the --features names, then the guards
    assert before.value("mlwitness_ledger_records_total") == 2.0
    sent = send_with_violations(side, kit)
    side.running.sync()
    after = side.scrape()
    n = sent["calls"]
    assert all(c.error is None for c in side.calls)  # observe: every call answered

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("mlwitness_requests_total", model=MODEL_NAME, status="OK") == n
    assert [dict(k) for k in after.labelled("mlwitness_requests_total")] == [
        {"model": MODEL_NAME, "status": "OK"}]
    assert grew("mlwitness_request_latency_seconds_count", model=MODEL_NAME) == n
    assert grew("mlwitness_request_latency_seconds_bucket", model=MODEL_NAME, le="+Inf") == n
    assert 0 < grew("mlwitness_request_latency_seconds_sum", model=MODEL_NAME) < n * 5.0
    assert violation_deltas(before, after) == sent["violations"]

    assert grew("mlwitness_ledger_records_total") == n
    infer = side.running.query("SELECT count(*) FROM entries WHERE kind = 'infer'")
    assert infer == [(n,)]
    total = side.running.query("SELECT count(*) FROM entries")[0][0]
    assert after.value("mlwitness_ledger_records_total") == total
    assert after.value("mlwitness_ledger_loaded_total") == total  # synced: all in DuckDB
    assert after.value("mlwitness_ledger_backlog") == 0.0
    assert 1 <= grew("mlwitness_ledger_flushes_total") <= n
    assert grew("mlwitness_ledger_flush_seconds_total") > 0
    assert after.value("mlwitness_ledger_load_seconds_total") > 0
    assert 1 <= after.value("mlwitness_ledger_last_commit_batch") <= n

    # The suggested rate guard (min_samples 100) now judges the 110 decisions.
    approved = sum(int(c.labels.sum()) for c in side.calls)
    (rate,) = kit.guards()["rates"]
    low, high = wilson(approved, sent["rows"], rate["confidence"])
    guard = rate["name"]
    assert after.value("mlwitness_rate_estimate", guard=guard) == pytest.approx(
        approved / sent["rows"], abs=1e-12)
    assert after.value("mlwitness_rate_interval_low", guard=guard) == pytest.approx(low, abs=1e-9)
    assert after.value("mlwitness_rate_interval_high", guard=guard) == pytest.approx(
        high, abs=1e-9)
    assert after.get("mlwitness_rate_breach", guard=guard) == 0.0
    assert side.scrape().value("mlwitness_requests_total", model=MODEL_NAME,
                               status="OK") == n  # scraping is not a call
    side.stop_and_verify()


def test_refused_calls_are_counted_under_their_status(kit: MonitoringKit,
                                                      start: Start) -> None:
    side = start(guards=kit.guards_path, guard_mode="enforce")
    before = side.scrape()
    x, _ = kit.in_range(7, seed=73)
    for i in range(4):
        side.infer(x[i:i + 1], f"ok-{i}")
    for i in range(3):
        rich = x[4 + i:5 + i].copy()
        rich[0, INCOME] = 2e6
        assert side.call(rich, f"refused-{i}").error is not None
    after = side.scrape()
    assert after.value("mlwitness_requests_total", model=MODEL_NAME, status="OK") == 4
    assert after.value("mlwitness_requests_total", model=MODEL_NAME,
                       status="INVALID_ARGUMENT") == 3
    assert after.value("mlwitness_request_latency_seconds_count", model=MODEL_NAME) == 7
    assert violation_deltas(before, after) == {("features.income", "income", "above_max"): 3}
    assert (after.value("mlwitness_ledger_records_total")
            - before.value("mlwitness_ledger_records_total")) == 7
    statuses = side.running.query("SELECT status, count(*) FROM entries WHERE kind = 'infer' "
                                  "GROUP BY status ORDER BY status")
    assert statuses == [("INVALID_ARGUMENT", 3), ("OK", 4)]
    side.stop_and_verify()


def rate_gauges(scrape: Scrape) -> dict[str, dict[str, float]]:
    """{metric: {guard: value}} of the four rate-guard gauges."""
    names = ("mlwitness_rate_estimate", "mlwitness_rate_interval_low",
             "mlwitness_rate_interval_high", "mlwitness_rate_breach")
    return {name: {dict(k)["guard"]: v for k, v in scrape.labelled(name).items()}
            for name in names if scrape.labelled(name)}


def test_rate_gauges_follow_the_guards_in_force(kit: MonitoringKit, start: Start,
                                                tmp_path: Path) -> None:
    small = ("window = 1000", "window = 50"), ("min_samples = 100", "min_samples = 20")
    (rate,) = kit.guards()["rates"]
    guard = rate["name"]
    tight = edited(kit.guards_text(), *small, (f"max = {rate['max']!r}", "max = 0.2"))
    path = tmp_path / "guards.toml"
    path.write_text(tight)
    side = start(guards=path, guard_mode="observe")
    assert rate_gauges(side.scrape()) == {"mlwitness_rate_breach": {guard: 0.0}}
    x, _ = kit.in_range(100, seed=83)
    calls = side.send(x, "tight", batch=10)
    last = np.concatenate([c.labels for c in calls])[-50:]
    assert last.mean() > 0.3  # far above the 0.2 bound: a breach
    gauges = rate_gauges(side.scrape())
    assert gauges["mlwitness_rate_breach"] == {guard: 1.0}
    assert gauges["mlwitness_rate_estimate"] == {guard: pytest.approx(last.mean(), abs=1e-12)}

    # New bounds: the window restarts, so the old breach and estimate are gone.
    loose = edited(kit.guards_text(), *small)
    side.stub.SetGuards(apb.SetGuardsRequest(toml=loose), timeout=30)
    assert rate_gauges(side.scrape()) == {"mlwitness_rate_breach": {guard: 0.0}}
    calls = side.send(x[:60], "loose", batch=10)
    last = np.concatenate([c.labels for c in calls])[-50:]
    low, high = wilson(int(last.sum()), 50, rate["confidence"])
    gauges = rate_gauges(side.scrape())
    assert gauges["mlwitness_rate_breach"] == {guard: 0.0}
    assert gauges["mlwitness_rate_estimate"] == {guard: pytest.approx(last.mean(), abs=1e-12)}
    assert gauges["mlwitness_rate_interval_low"] == {guard: pytest.approx(low, abs=1e-9)}
    assert gauges["mlwitness_rate_interval_high"] == {guard: pytest.approx(high, abs=1e-9)}

    # No rate guard any more: no rate gauge either (an alert on a stale 1 would never clear).
    side.stub.SetGuards(apb.SetGuardsRequest(toml="version = 1\n"), timeout=30)
    side.send(x[:20], "unbounded", batch=10)
    assert rate_gauges(side.scrape()) == {}
    side.stop_and_verify()


def test_time_window_rate_gauges_age_without_traffic(kit: MonitoringKit, start: Start,
                                                     tmp_path: Path) -> None:
    (rate,) = kit.guards()["rates"]
    guard = rate["name"]
    path = tmp_path / "guards.toml"
    path.write_text(edited(kit.guards_text(), ("window = 1000", "window_seconds = 1.0"),
                           ("min_samples = 100", "min_samples = 20"),
                           (f"max = {rate['max']!r}", "max = 0.2")))
    side = start(guards=path, guard_mode="observe")
    x, _ = kit.in_range(60, seed=89)
    started = time.monotonic()
    calls = side.send(x, "burst", batch=20)
    labels = np.concatenate([c.labels for c in calls])
    assert labels.mean() > 0.3
    gauges = rate_gauges(side.scrape())
    assert gauges["mlwitness_rate_breach"] == {guard: 1.0}
    assert gauges["mlwitness_rate_estimate"] == {guard: pytest.approx(labels.mean(), abs=1e-12)}

    # One second later, with no traffic, the window is empty: no breach, no estimate.
    def aged() -> dict[str, dict[str, float]] | None:
        gauges = rate_gauges(side.scrape())
        return gauges if "mlwitness_rate_estimate" not in gauges else None

    gauges = wait_for(aged, timeout=3.0, interval=0.1, what="the time window to empty")
    assert time.monotonic() - started >= 1.0  # not before the decisions were 1 s old
    assert gauges == {"mlwitness_rate_breach": {guard: 0.0}}  # no stale interval either
    (now,) = side.stub.Violations(apb.ViolationsRequest(), timeout=30).rates_now
    assert (now.state, now.n) == ("insufficient", 0)
    side.stop_and_verify()


# ── drift gauges ───────────────────────────────────────────────────────────────────────


def test_drift_gauges_appear_after_the_interval_and_match_the_audit_api(
    kit: MonitoringKit, start: Start
) -> None:
    side = start(baseline=kit.baseline_path, drift_interval=1.5, drift_window=600.0)
    assert not side.scrape().labelled("mlwitness_drift_detected")  # none computed yet
    x, bands = kit.applicants(1000, seed=79)
    x[:, INCOME] *= 1.5
    for band in kit.bands:
        side.send(x[bands == band], f"shifted-{band}", batch=50, parameters={"age_band": band})
    answer = side.stub.Drift(apb.DriftRequest(), timeout=60)  # the whole ledger
    report = {(f["name"], f["kind"]): f for f in json.loads(answer.report_json)["features"]}
    assert answer.window_rows == 1000 and "income" in answer.drifted
    psi = report[("income", "numeric")]["statistics"]["psi"]

    def current() -> Scrape | None:
        scrape = side.scrape()
        return scrape if scrape.get("mlwitness_drift_score", feature="income", kind="numeric",
                                    statistic="psi") == psi else None

    scrape = wait_for(current, timeout=6.0, interval=0.1, what="drift gauges of all traffic")
    for feature in kit.features:
        statistics = report[(feature, "numeric")]["statistics"]
        for statistic in DRIFT_STATISTICS:
            assert scrape.get("mlwitness_drift_score", feature=feature, kind="numeric",
                              statistic=statistic) == statistics[statistic], (feature, statistic)
        drifted = 1.0 if feature in answer.drifted else 0.0
        assert scrape.get("mlwitness_drift_detected", feature=feature, kind="numeric") == drifted
    assert scrape.get("mlwitness_drift_detected", feature="income", kind="numeric") == 1.0
    assert scrape.get("mlwitness_drift_detected", feature="fico", kind="numeric") == 0.0
    band = report[("age_band", "categorical")]["statistics"]
    assert scrape.get("mlwitness_drift_score", feature="age_band", kind="categorical",
                      statistic="chi2_pvalue") == band["chi2_pvalue"]
    assert scrape.get("mlwitness_drift_score", feature="age_band", kind="categorical",
                      statistic="linf") == band["linf"]
    # The label is judged as numbers and as categories: two series, each its own verdict.
    for kind in ("numeric", "categorical"):
        label = report[("label", kind)]
        assert scrape.get("mlwitness_drift_detected", feature="label", kind=kind) == (
            1.0 if label["verdict"] == "drift" else 0.0), kind
    assert scrape.get("mlwitness_drift_score", feature="label", kind="numeric",
                      statistic="psi") == report[("label", "numeric")]["statistics"]["psi"]
    assert scrape.get("mlwitness_drift_score", feature="label", kind="categorical",
                      statistic="psi") is None
    side.stop_and_verify()


# ── every documented metric is exported, and nothing undocumented ──────────────────────


def test_every_documented_metric_is_exported(kit: MonitoringKit, start: Start,
                                             tmp_path: Path) -> None:
    path = tmp_path / "guards.toml"
    path.write_text(edited(kit.guards_text(), ("min_samples = 100", "min_samples = 10")))
    witness = tmp_path / "witness"  # checkpoints published: their gauges have values
    witness.mkdir()
    side = start(guards=path, guard_mode="observe", baseline=kit.baseline_path, drift_interval=0.3,
                 checkpoint_interval=0.2, checkpoint_dir=witness)
    send_with_violations(side, kit)

    def complete() -> Scrape | None:
        scrape = side.scrape()
        exported = {documented_name(s) for s in scrape.names()}
        return scrape if set(DOCUMENTED) <= exported else None

    scrape = wait_for(complete, timeout=5.0, interval=0.1, what="every documented metric")
    exported = {documented_name(s) for s in scrape.names() if s.startswith("mlwitness_")}
    assert exported == set(DOCUMENTED)
    for name, help_text in DOCUMENTED.items():
        family = name.removesuffix("_total")
        assert f"# HELP {family}" in scrape.text and help_text in scrape.text, name
    side.stop_and_verify()
