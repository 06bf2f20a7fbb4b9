"""Guards end to end: a guard file suggested from a real baseline of the credit training CSV,
a real sidecar enforcing or observing it, tritonclient as the caller, the audit API and the
`mlwitness` command as the auditor, the ledger (and `mlwitness verify`) as the evidence.

Expected violations are read from the guard file with tomllib and judged here from the
values the client sent (or onnxruntime's own outputs); expected rate states come from
scipy's Wilson interval over the decisions the client received.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from monitoring_support import (
    MonitoredSidecar,
    MonitoringKit,
    Start,
    edited,
    grpc_code,
    monitoring_kit,
    now_us,
    rate_states,
    sidecar_pool,
    violation_deltas,
    wait_for,
)

from mlwitness.codec import tensor_from_array
from mlwitness.guards.checks import InlineChecks
from mlwitness.guards.file import loads_guards
from mlwitness.ledger.rows import Tabulator
from mlwitness.protocol import audit_pb2 as apb

INCOME, DEBT_RATIO, FICO = 0, 1, 2
OUTPUTS = ("label", "probabilities_0", "probabilities_1")
RELOAD_S = 2.5  # the sidecar checks the guard file every second


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory, credit_model: Any) -> MonitoringKit:
    return monitoring_kit(tmp_path_factory, credit_model)


@pytest.fixture
def start(kit: MonitoringKit, tmp_path: Path) -> Iterator[Start]:
    with sidecar_pool(kit, tmp_path) as start:
        yield start


# ── the guard file as a person reads it ────────────────────────────────────────────────


def canonical_sha256(config: dict[str, Any]) -> str:
    """The guard version id as documented: SHA-256 of the config's canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def category(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def judge(section: str, guards: dict[str, Any], rows: list[dict[str, float]]
          ) -> list[dict[str, Any]]:
    """Violations of a guard-file section by these rows (row order, then column order), as
    the record's JSON should list them."""
    found = []
    for r, row in enumerate(rows):
        for column, value in row.items():
            g = guards.get(column)
            if g is None:
                continue
            where = {"row": r, "column": column, "guard": f"{section}.{column}"}
            if math.isnan(value):
                if not g.get("allow_nan", False):
                    found.append({**where, "value": "nan", "kind": "nan", "bound": None})
            elif "allowed" in g:
                if category(value) not in g["allowed"]:
                    found.append({**where, "value": value, "kind": "unseen_category",
                                  "bound": sorted(g["allowed"])})
            elif value < g.get("min", -math.inf):
                found.append({**where, "value": value, "kind": "below_min", "bound": g["min"]})
            elif value > g.get("max", math.inf):
                found.append({**where, "value": value, "kind": "above_max", "bound": g["max"]})
    return found


def input_rows(kit: MonitoringKit, x: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(kit.features, map(float, row), strict=True))
            for row in x.astype(np.float32)]


def output_rows(outputs: dict[str, np.ndarray]) -> list[dict[str, float]]:
    label, probabilities = outputs["label"], outputs["probabilities"]
    return [{"label": float(label[i]), "probabilities_0": float(probabilities[i, 0]),
             "probabilities_1": float(probabilities[i, 1])} for i in range(len(label))]


def show(bound: float) -> str:
    return f"{bound:g}"


def refusal_message(parts: list[str]) -> str:
    more = f"; and {len(parts) - 3} more" if len(parts) > 3 else ""
    return "refused by guards: " + "; ".join(parts[:3]) + more


def verdict(sha: str, violations: list[dict[str, Any]], *, refused: bool = False
            ) -> dict[str, Any]:
    """A record's `violations` JSON as the checks write it: every violation listed (up to
    100), counted by guard, column and kind, and whether the call was refused for them."""
    counted: dict[tuple[str, str, str], int] = {}
    for v in violations:
        key = (v["guard"], v["column"], v["kind"])
        counted[key] = counted.get(key, 0) + 1
    out: dict[str, Any] = {"guards": sha, "violations": violations, "counts": [
        {"guard": g, "column": c, "kind": k, "n": n} for (g, c, k), n in sorted(counted.items())]}
    if refused:
        out["refused"] = True
    return out


def startup_guards(side: MonitoredSidecar) -> dict[str, Any]:
    (record,) = side.admin_records("guards")
    assert record["peer"] == "startup"
    return record


def violation_counts(report: apb.ViolationsResponse) -> set[tuple[str, str, str, int, int]]:
    return {(v.guard, v.column, v.kind, v.count, v.refused) for v in report.violations}


# ── 1. suggested guards catch bad inputs, in both modes ────────────────────────────────


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_suggested_guards_catch_out_of_range_nan_and_unseen_category(
    kit: MonitoringKit, start: Start, mode: str
) -> None:
    guards = kit.guards()
    features = guards["features"]
    assert set(features) == {*kit.features, "age_band"}  # every column, and the band
    side = start(guards=kit.guards_path, guard_mode=mode)
    since = now_us()
    good, bands = kit.in_range(220, seed=31)

    # In-range traffic, with the applicants' true age bands: no violation, in either mode.
    clean = []
    for band in kit.bands:
        rows = good[:200][bands[:200] == band]
        for i, start in enumerate(range(0, len(rows), 25)):
            clean.append(side.call(rows[start:start + 25], f"clean-{band}-{i}",
                                   {"age_band": band}))

    out_of_range = good[200:204].copy()
    out_of_range[1, INCOME] = 1e6
    out_of_range[3, FICO] = 300.0
    with_nan = good[204:207].copy()
    with_nan[2, DEBT_RATIO] = np.nan
    unseen = good[207:209]
    bad = {
        "out-of-range": side.call(out_of_range, "out-of-range", {"age_band": "26-40"}),
        "nan": side.call(with_nan, "nan", {"age_band": "41-60"}),
        "unseen": side.call(unseen, "unseen", {"age_band": "17-"}),
    }
    until = now_us()

    income, fico = features["income"]["max"], features["fico"]["min"]
    assert income < 1e6 and fico > 300.0  # the file's bounds do exclude these values
    expected_inputs = {
        "out-of-range": [
            {"row": 1, "column": "income", "value": 1e6, "kind": "above_max",
             "bound": income, "guard": "features.income"},
            {"row": 3, "column": "fico", "value": 300.0, "kind": "below_min", "bound": fico,
             "guard": "features.fico"},
        ],
        "nan": [{"row": 2, "column": "debt_ratio", "value": "nan", "kind": "nan",
                 "bound": None, "guard": "features.debt_ratio"}],
        "unseen": [{"row": None, "column": "age_band", "value": "17-",
                    "kind": "unseen_category", "bound": sorted(features["age_band"]["allowed"]),
                    "guard": "features.age_band"}],
    }
    # The reference judge agrees on the numeric rows (the parameter is not a row).
    for name, x in (("out-of-range", out_of_range), ("nan", with_nan)):
        assert judge("features", features, input_rows(kit, x)) == expected_inputs[name]
    messages = {
        "out-of-range": refusal_message([
            f"row 1: income = 1000000 is above max {show(income)} (guard features.income)",
            f"row 3: fico = 300 is below min {show(fico)} (guard features.fico)"]),
        "nan": refusal_message(["row 2: debt_ratio = NaN is not allowed "
                                "(guard features.debt_ratio has allow_nan = false)"]),
        "unseen": refusal_message(["request parameter: age_band = '17-' is not an allowed "
                                   "value ['18-25', '26-40', '41-60', '61+'] "
                                   "(guard features.age_band)"]),
    }

    started = startup_guards(side)
    sha = started["sha256"]
    assert started["mode"] == mode and started["source"] == str(kit.guards_path)
    assert canonical_sha256(started["config"]) == sha  # the full config, hashing to its id
    for name, g in features.items():
        assert {k: started["config"]["features"][name][k] for k in g} == g

    assert len(clean) == 9 and sum(len(c.x) for c in clean) == 200
    for call in clean:
        assert call.error is None, call.error
        np.testing.assert_array_equal(call.labels, kit.run_model(call.x)["label"])
        entry = side.entry(call.request_id)
        assert (entry["status"], entry["violations"]) == ("OK", {"guards": sha})
        assert entry["parameters"] == call.parameters

    for name, call in bad.items():
        entry = side.entry(name)
        assert entry["parameters"] == call.parameters
        if mode == "enforce":
            assert call.outputs is None and call.error is not None
            assert grpc_code(call.error) == "INVALID_ARGUMENT"
            assert call.error.message() == messages[name]
            assert (entry["status"], entry["message"]) == ("INVALID_ARGUMENT", messages[name])
            assert entry["violations"] == verdict(sha, expected_inputs[name], refused=True)
            assert entry["output_rows"] in (None, 0)  # refused before the model ran
        else:
            assert call.error is None, call.error
            direct = kit.run_model(call.x)
            np.testing.assert_array_equal(call.outputs["probabilities"], direct["probabilities"])
            expected_outputs = judge("outputs", guards["outputs"], output_rows(direct))
            assert entry["status"] == "OK" and entry["message"] == ""
            assert entry["violations"] == verdict(sha, expected_inputs[name] + expected_outputs)
    if mode == "observe":  # a NaN input gives NaN probabilities: the output guards see it
        assert [v["column"] for v in side.entry("nan")["violations"]["violations"]] == [
            "debt_ratio", "probabilities_0", "probabilities_1"]

    report = side.stub.Violations(apb.ViolationsRequest(since_us=since, until_us=until),
                                  timeout=30)
    refused = 1 if mode == "enforce" else 0
    expected = {("features.income", "income", "above_max", 1, refused),
                ("features.fico", "fico", "below_min", 1, refused),
                ("features.debt_ratio", "debt_ratio", "nan", 1, refused),
                ("features.age_band", "age_band", "unseen_category", 1, refused)}
    if mode == "observe":
        expected |= {("outputs.probabilities_0", "probabilities_0", "nan", 1, 0),
                     ("outputs.probabilities_1", "probabilities_1", "nan", 1, 0)}
    assert (report.calls, report.calls_with_violations, report.refused) == (
        len(clean) + 3, 3, 3 * refused)
    assert violation_counts(report) == expected
    assert list(report.rate_breaches) == []
    side.stop_and_verify()


# ── output guards, from a hand-edited file ─────────────────────────────────────────────


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_hand_edited_output_bound_catches_outputs(kit: MonitoringKit, start: Start,
                                                  tmp_path: Path, mode: str) -> None:
    text = edited(kit.guards_text(), ("[outputs.probabilities_1]\nmin = 0.0\nmax = 1.0",
                                      "[outputs.probabilities_1]\nmin = 0.0\nmax = 0.5"))
    path = tmp_path / "guards.toml"
    path.write_text(text)
    side = start(guards=path, guard_mode=mode)
    x, _ = kit.in_range(20, seed=47)
    direct = kit.run_model(x)
    p1 = direct["probabilities"][:, 1]
    expected = judge("outputs", {"probabilities_1": {"min": 0.0, "max": 0.5}},
                     output_rows(direct))
    approved = [int(i) for i in np.flatnonzero(p1 > 0.5)]
    assert [v["row"] for v in expected] == approved and 3 < len(approved) < len(x)
    assert judge("features", kit.guards()["features"], input_rows(kit, x)) == []

    call = side.call(x, "tight-output")
    entry = side.entry("tight-output")
    sha = startup_guards(side)["sha256"]
    assert entry["violations"] == verdict(sha, expected, refused=mode == "enforce")
    if mode == "enforce":
        message = refusal_message([
            f"row {r}: probabilities_1 = {float(p1[r])!r} is above max 0.5 "
            "(guard outputs.probabilities_1)" for r in approved])
        assert call.error is not None and grpc_code(call.error) == "INVALID_ARGUMENT"
        assert call.error.message() == message
        assert (entry["status"], entry["message"]) == ("INVALID_ARGUMENT", message)
    else:
        assert call.error is None
        np.testing.assert_array_equal(call.outputs["probabilities"], direct["probabilities"])
        assert entry["status"] == "OK"
    assert entry["input_rows"] == len(x) and entry["output_rows"] == len(x)  # the model ran
    side.stop_and_verify()


# ── 2. rate bounds: shifted traffic breaches, in-distribution traffic does not ─────────


def creditworthy(kit: MonitoringKit, x: np.ndarray) -> np.ndarray:
    """The same applicants, far more creditworthy, still inside the training ranges."""
    columns = kit.baseline()["columns"]
    shifted = x.copy()
    shifted[:, INCOME] = np.minimum(x[:, INCOME] * 2.0, columns["income"]["numeric"]["max"])
    shifted[:, DEBT_RATIO] = x[:, DEBT_RATIO] * 0.3
    shifted[:, FICO] = np.minimum(x[:, FICO] + 60.0, columns["fico"]["numeric"]["max"])
    return shifted


def test_rate_bound_breach_after_shifted_traffic_and_not_before(
    kit: MonitoringKit, start: Start, tmp_path: Path
) -> None:
    text = edited(kit.guards_text(), ("window = 1000", "window = 200"),
                  ("min_samples = 100", "min_samples = 50"))
    path = tmp_path / "guards.toml"
    path.write_text(text)
    (rate,) = kit.guards()["rates"]
    assert (rate["output"], rate["equals"]) == ("label", "1")
    judged = dict(window=200, min_samples=50, low=rate["min"], high=rate["max"],
                  confidence=rate["confidence"])
    side = start(guards=path, guard_mode="observe")
    x, _ = kit.in_range(500, seed=53)

    since = now_us()
    calm = side.send(x[:300], "calm", batch=10)
    middle = now_us()
    calm_report = side.stub.Violations(apb.ViolationsRequest(), timeout=30)
    calm_scrape = side.scrape()
    shifted = side.send(creditworthy(kit, x[300:]), "shifted", batch=10)
    until = now_us()

    states = rate_states([c.labels for c in calm + shifted], **judged)
    calm_rate = sum(int(c.labels.sum()) for c in calm) / 300
    shifted_rate = sum(int(c.labels.sum()) for c in shifted) / 200
    assert rate["min"] < calm_rate < rate["max"] < shifted_rate
    assert [s.state for s in states[:30]] == ["insufficient"] * 4 + ["ok"] * 26
    first = next(i for i, s in enumerate(states) if s.state == "breach_high")
    assert first >= 30 and all(s.state == "breach_high" for s in states[first:])
    breach_call, breach_state, final = (calm + shifted)[first], states[first], states[-1]

    # Before the shift: no breach recorded, the live window is ok, the metric is 0.
    assert list(calm_report.rate_breaches) == [] and calm_report.calls == 30
    (now,) = calm_report.rates_now
    assert (now.guard, now.state, now.n) == ("label_1_rate", "ok", 200)
    assert now.estimate == pytest.approx(states[29].estimate, abs=1e-12)
    assert calm_scrape.value("mlwitness_rate_breach", guard="label_1_rate") == 0.0
    assert side.stub.Violations(apb.ViolationsRequest(since_us=since, until_us=middle),
                                timeout=30).rate_breaches == []

    # After it: one breach, recorded on the call where it began.
    report = side.stub.Violations(apb.ViolationsRequest(since_us=since, until_us=until),
                                  timeout=30)
    (breach,) = report.rate_breaches
    entry = side.entry(breach_call.request_id)
    assert (breach.seq, breach.guard, breach.state, breach.n) == (
        entry["seq"], "label_1_rate", "breach_high", breach_state.n)
    assert breach.estimate == pytest.approx(breach_state.estimate, abs=1e-12)
    assert (breach.low, breach.high) == pytest.approx((breach_state.low, breach_state.high),
                                                      abs=1e-9)
    assert (breach.min, breach.max) == (rate["min"], rate["max"])
    assert breach.low > rate["max"]
    (recorded,) = entry["violations"]["rate_breaches"]
    assert (recorded["guard"], recorded["state"], recorded["n"], recorded["successes"]) == (
        "label_1_rate", "breach_high", breach_state.n, breach_state.successes)
    others = side.running.query(
        "SELECT count(*) FROM entries WHERE kind = 'infer' AND violations LIKE "
        "'%rate_breaches%'")
    assert others == [(1,)]
    assert report.violations == [] and report.calls_with_violations == 0

    (now,) = report.rates_now
    assert (now.state, now.n) == ("breach_high", 200)
    assert now.estimate == pytest.approx(final.estimate, abs=1e-12)
    assert (now.low, now.high) == pytest.approx((final.low, final.high), abs=1e-9)

    scrape = side.scrape()
    assert scrape.value("mlwitness_rate_breach", guard="label_1_rate") == 1.0
    assert scrape.value("mlwitness_rate_estimate", guard="label_1_rate") == pytest.approx(
        final.estimate, abs=1e-12)
    assert scrape.value("mlwitness_rate_interval_low", guard="label_1_rate") == pytest.approx(
        final.low, abs=1e-9)
    assert scrape.value("mlwitness_rate_interval_high", guard="label_1_rate") == pytest.approx(
        final.high, abs=1e-9)

    shown = side.audit_cli("violations", "--json", "--since", str(since), "--until", str(until))
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert [(int(b["seq"]), b["state"]) for b in data["rate_breaches"]] == [
        (entry["seq"], "breach_high")]
    assert data["rates_now"][0]["state"] == "breach_high"
    table = side.audit_cli("violations")
    assert table.returncode == 0, table.stderr
    assert f"rate breach at seq {entry['seq']}" in table.stdout
    assert "label_1_rate breach_high" in table.stdout
    side.stop_and_verify()


# ── 5. guards change at run time ───────────────────────────────────────────────────────


def guard_sha(side: MonitoredSidecar) -> str:
    return side.stub.GetGuards(apb.GetGuardsRequest(), timeout=30).sha256


def test_guards_replaced_through_the_api_and_by_editing_the_file(
    kit: MonitoringKit, start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mlwitness")
    path = tmp_path / "guards.toml"
    path.write_text(kit.guards_text())
    side = start(guards=path, guard_mode="observe")
    x, bands = kit.in_range(4, seed=61)
    income = x[:1].copy()
    income[0, INCOME] = 150_000.0  # inside the suggested bounds, outside the tightened ones
    first = startup_guards(side)["sha256"]
    state = side.stub.GetGuards(apb.GetGuardsRequest(), timeout=30)
    assert (state.active, state.sha256, state.mode) == (True, first, "observe")
    side.infer(income, "before")
    assert side.entry("before")["violations"] == {"guards": first}

    # SetGuards: a new version, on the ledger before it judges anything.
    features = kit.guards()["features"]
    api_text = edited(kit.guards_text(), (f"max = {features['income']['max']!r}\n",
                                          "max = 100000.0\n"))
    replaced = side.stub.SetGuards(apb.SetGuardsRequest(toml=api_text), timeout=30)
    assert replaced.active and replaced.sha256 != first
    second = replaced.sha256
    assert guard_sha(side) == second
    admin = side.admin_records("guards")
    assert [a["sha256"] for a in admin] == [first, second]
    api_config = admin[1]["config"]
    assert canonical_sha256(api_config) == second
    assert api_config["features"]["income"]["max"] == 100000.0
    assert admin[1]["source"] == "audit API" and "127.0.0.1" in admin[1]["peer"]
    shown = side.stub.GetGuards(apb.GetGuardsRequest(), timeout=30)
    assert "max = 100000.0" in shown.toml
    again = side.stub.SetGuards(apb.SetGuardsRequest(toml=shown.toml), timeout=30)
    assert again.sha256 == second  # the TOML GetGuards shows is the same version
    side.infer(income, "after-api")
    assert side.entry("after-api")["violations"] == verdict(second, [
        {"row": 0, "column": "income", "value": 150000.0, "kind": "above_max",
         "bound": 100000.0, "guard": "features.income"}])

    # Invalid guards are refused and change nothing.
    broken = "version = 1\n[features.income\nmin = 0\n"
    with pytest.raises(grpc.RpcError) as info:
        side.stub.SetGuards(apb.SetGuardsRequest(toml=broken), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not valid TOML" in info.value.details()
    inverted = "version = 1\n[features.income]\nmin = 10.0\nmax = 1.0\n"
    with pytest.raises(grpc.RpcError) as info:
        side.stub.SetGuards(apb.SetGuardsRequest(toml=inverted), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "features.income: min 10 is greater than max 1" in info.value.details()
    assert guard_sha(side) == second
    assert [a["sha256"] for a in side.admin_records("guards")] == [first, second, second]
    side.infer(income, "after-invalid")
    assert side.entry("after-invalid")["violations"]["guards"] == second

    # Editing the file: picked up within the watch interval, and recorded.
    file_text = edited(kit.guards_text(), (f"min = {features['fico']['min']!r}\n",
                                           "min = 700.0\n"))
    path.write_text(file_text)
    written = time.monotonic()
    third = wait_for(lambda: (sha := guard_sha(side)) != second and sha, timeout=RELOAD_S,
                     interval=0.05, what="guard file reload")
    assert time.monotonic() - written < RELOAD_S
    admin = side.admin_records("guards")
    assert [a["sha256"] for a in admin] == [first, second, second, third]
    assert (admin[3]["source"], admin[3]["peer"]) == (str(path), "file reload")
    assert admin[3]["config"]["features"]["fico"]["min"] == 700.0
    assert canonical_sha256(admin[3]["config"]) == third
    low_fico = x[1:2].copy()
    low_fico[0, FICO] = 650.0
    side.infer(low_fico, "after-file", {"age_band": str(bands[1])})
    assert side.entry("after-file")["violations"] == verdict(third, [
        {"row": 0, "column": "fico", "value": 650.0, "kind": "below_min", "bound": 700.0,
         "guard": "features.fico"}])

    # A broken file is not loaded: the guards in force stay.
    caplog.clear()
    path.write_text(file_text + "\n[features.oops\n")
    wait_for(lambda: any("not reloaded" in r.getMessage() for r in caplog.records),
             timeout=RELOAD_S, what="the sidecar to reject the broken file")
    assert guard_sha(side) == third
    assert len(side.admin_records("guards")) == 4

    # The CLI shows the guards in force, and --set replaces them.
    shown = side.audit_cli("guards")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"# guards {third} (observe)")
    new_file = tmp_path / "CLI-GUARDS.JSON"  # the suggested guards again, as JSON
    new_file.write_text(json.dumps(kit.guards()))
    set_by_cli = side.audit_cli("guards", "--set", str(new_file), "--json")
    assert set_by_cli.returncode == 0, set_by_cli.stderr
    assert json.loads(set_by_cli.stdout)["sha256"] == first
    assert [a["sha256"] for a in side.admin_records("guards")] == [
        first, second, second, third, first]
    side.infer(income, "after-cli")
    assert side.entry("after-cli")["violations"] == {"guards": first}
    # Every attempt to change the guards, refused ones included, is in the audit trail.
    attempts = side.running.query(
        "SELECT status FROM entries WHERE kind = 'audit' AND "
        "json_extract_string(detail, '$.rpc') = 'SetGuards' ORDER BY seq")
    assert [a for (a,) in attempts] == ["OK", "OK", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "OK"]
    # Each call names the version the latest guards record before it put in force.
    in_force, judged = None, []
    for kind, detail, violations in side.running.query(
            "SELECT kind, detail, violations FROM entries WHERE kind <> 'audit' ORDER BY seq"):
        if kind == "admin" and json.loads(detail)["action"] == "guards":
            in_force = json.loads(detail)["sha256"]
        elif kind == "infer":
            judged.append(json.loads(violations)["guards"] == in_force)
    assert judged == [True] * 5
    side.stop_and_verify()


def test_set_guards_without_guards_is_a_failed_precondition(kit: MonitoringKit,
                                                            start: Start) -> None:
    side = start()
    with pytest.raises(grpc.RpcError) as info:
        side.stub.SetGuards(apb.SetGuardsRequest(toml=kit.guards_text()), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--guards" in info.value.details()
    assert side.stub.GetGuards(apb.GetGuardsRequest(), timeout=30).active is False
    shown = side.audit_cli("guards")
    assert (shown.returncode, shown.stdout.strip()) == (0, "no guards in force")
    x, _ = kit.in_range(3, seed=67)
    side.infer(x, "unguarded")
    assert side.entry("unguarded")["violations"] is None
    assert side.admin_records("guards") == []
    side.stop_and_verify()


# ── many violations, minimised inputs, malformed calls, a guard change mid-call ─────────


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_a_batch_of_thousands_of_violations_is_counted_exactly_and_listed_briefly(
    kit: MonitoringKit, start: Start, mode: str
) -> None:
    side = start(guards=kit.guards_path, guard_mode=mode)
    x, _ = kit.in_range(3000, seed=61)
    x[:, INCOME] = 1e9  # every row above max income
    x[::2, FICO] = 1.0  # every other row below min fico
    before = side.scrape()
    outcome = side.call(x, "flood", {"age_band": "26-40"})
    entry = side.entry("flood")
    v = entry["violations"]
    assert len(v["violations"]) == 100 and v["unlisted"] == 4500 - 100
    assert v["violations"][:3] == [
        {"row": 0, "column": "income", "value": 1e9, "kind": "above_max",
         "bound": kit.guards()["features"]["income"]["max"], "guard": "features.income"},
        {"row": 0, "column": "fico", "value": 1.0, "kind": "below_min",
         "bound": kit.guards()["features"]["fico"]["min"], "guard": "features.fico"},
        {"row": 1, "column": "income", "value": 1e9, "kind": "above_max",
         "bound": kit.guards()["features"]["income"]["max"], "guard": "features.income"}]
    assert v["counts"] == [
        {"guard": "features.fico", "column": "fico", "kind": "below_min", "n": 1500},
        {"guard": "features.income", "column": "income", "kind": "above_max", "n": 3000}]
    assert len(json.dumps(v)) < 30_000
    if mode == "enforce":
        assert outcome.error is not None and grpc_code(outcome.error) == "INVALID_ARGUMENT"
        assert outcome.error.message().endswith("; and 4497 more")
    else:
        assert outcome.error is None
    report = side.stub.Violations(apb.ViolationsRequest(), timeout=30)
    refused = 1 if mode == "enforce" else 0
    assert violation_counts(report) >= {
        ("features.income", "income", "above_max", 3000, refused),
        ("features.fico", "fico", "below_min", 1500, refused)}
    assert (report.calls_with_violations, report.refused) == (1, refused)
    deltas = {k: v for k, v in violation_deltas(before, side.scrape()).items()
              if k[0].startswith("features.")}
    assert deltas == {("features.income", "income", "above_max"): 3000.0,
                      ("features.fico", "fico", "below_min"): 1500.0}


def test_minimised_inputs_are_judged_but_their_values_never_stored_or_echoed(
    kit: MonitoringKit, start: Start
) -> None:
    """`--redact-inputs input --hash-inputs age_band`: the guards still judge the values
    (enforce refuses), but neither the refusal message nor the record holds them."""
    side = start(guards=kit.guards_path, guard_mode="enforce", redact_inputs=["input"],
                 hash_inputs=["age_band"], hash_inputs_unkeyed=True)
    x, _ = kit.in_range(2, seed=62)
    x[1, INCOME] = 987654321.0
    outcome = side.call(x, "private", {"age_band": "Jane Doe 1970"})
    assert outcome.error is not None and grpc_code(outcome.error) == "INVALID_ARGUMENT"
    message = outcome.error.message()
    assert "row 1: income (withheld: a minimised input) is above max" in message
    assert "request parameter: age_band (withheld: a minimised input) is not an allowed" \
        in message
    rows = side.running.query(
        "SELECT message, violations, request, detail FROM entries WHERE request_id = 'private'")
    stored = repr(rows)
    for secret in ("987654321", "9.87654321e+08", "Jane Doe"):
        assert secret not in stored and secret not in message
    found = {(v["column"], v["kind"], v.get("withheld")) for v in
             json.loads(rows[0][1])["violations"]}
    assert found == {("income", "above_max", True), ("age_band", "unseen_category", True)}


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_a_malformed_call_is_refused_as_malformed_before_any_guard_judges_it(
    kit: MonitoringKit, start: Start, mode: str
) -> None:
    side = start(guards=kit.guards_path, guard_mode=mode)
    x = np.full((1, len(kit.features) + 1), 1e9, np.float32)  # one column too many
    outcome = side.call(x, "wide")
    assert outcome.error is not None and grpc_code(outcome.error) == "INVALID_ARGUMENT"
    assert "has shape [1, 7]" in outcome.error.message()
    assert "refused by guards" not in outcome.error.message()
    assert side.entry("wide")["violations"] is None
    report = side.stub.Violations(apb.ViolationsRequest(), timeout=30)
    assert (report.calls_with_violations, report.refused) == (0, 0)


def test_a_call_is_judged_whole_by_the_guard_version_that_checked_its_inputs(
    kit: MonitoringKit,
) -> None:
    """InlineChecks, directly: guards replaced between a call's input and output checks
    (a file reload or SetGuards while the model ran) do not judge its outputs."""
    first = loads_guards("version = 1\n[outputs.probabilities_1]\nmax = 1.0\n")
    second = loads_guards("version = 1\n[outputs.probabilities_1]\nmax = -1.0\n")
    checks = InlineChecks(first, "enforce", Tabulator({"input": list(kit.features)}))
    x, _ = kit.in_range(3, seed=63)
    inputs = [tensor_from_array("input", x)]
    outputs = [tensor_from_array(k, v) for k, v in kit.run_model(x).items()]
    verdict = checks.before(inputs, None)
    checks.replace(second)
    found = checks.after(verdict, outputs)
    assert not found and verdict.guards_sha256 == first.sha256
    checks.refuse(verdict, found.counts)  # nothing to refuse
    later = checks.before(inputs, None)
    assert later.guards_sha256 == second.sha256
    assert checks.after(later, outputs).total == 3
