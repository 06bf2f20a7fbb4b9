"""`mlwitness audit …`: the real command in a subprocess against a real audit port.

Readable tables by default, the API's answer as JSON with `--json` (parsed and checked
here), exit codes: 0 on success, 1 when a replay differs (or verify fails), 2 on errors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from audit_support import (
    AuditedSidecar,
    AuditLedger,
    credit_output_rows,
    credit_run,
    run_cli,
)
from json_shape import shape_problems
from sidecar import mlwitness_command

from mlwitness.analytics.bias import BiasReport
from mlwitness.analytics.drift import DriftReport
from mlwitness.protocol import audit_pb2 as apb


def cli(side: AuditedSidecar, *args: str, code: int = 0) -> str:
    result = run_cli(side.audit_address, *args)
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout


def cli_json(side: AuditedSidecar, *args: str, code: int = 0) -> object:
    return json.loads(cli(side, *args, "--json", code=code))


def row_values(row: dict) -> dict[str, float]:
    """A Row as MessageToDict prints it."""
    return {v["name"]: v.get("number", v.get("text")) for v in row.get("values", [])}


def iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def test_show_prints_the_record_and_its_json(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    entry = audit_ledger.entries["a05"]
    table = cli(audit_sidecar, "show", "a05")
    assert f"seq {entry.seq}  request id a05  (infer)" in table
    assert f"sha256 {audit_ledger.models.sha_v1}" in table
    assert "status        OK" in table and "input[4]" in table and "income=" in table

    data = cli_json(audit_sidecar, "show", "a05")
    assert isinstance(data, dict)
    assert (int(data["seq"]), data["request_id"], data["status"]) == (entry.seq, "a05", "OK")
    x = audit_ledger.call("a05").x
    assert [row_values(r) for r in data["inputs"]] == [
        dict(zip(audit_ledger.models.features, map(float, row), strict=True)) for row in x]
    assert cli_json(audit_sidecar, "show", f"seq:{entry.seq}") == data


def test_records_filters_limit_and_json(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    bob = cli_json(audit_sidecar, "records", "--metadata", "bob")
    assert isinstance(bob, list)
    assert [r["request_id"] for r in bob] == [f"a{i:02d}" for i in range(22, -1, -3)]
    newest = cli_json(audit_sidecar, "records", "--limit", "5")
    assert [r["request_id"] for r in newest] == ["b07", "b06", "b05", "b04", "b03"]
    assert newest[0]["batch_size"] == 3 and newest[0]["model_name"] == "credit_v2"

    since, until = audit_ledger.entries["a20"].received_us, audit_ledger.entries["b01"].received_us
    window = cli_json(audit_sidecar, "records", "--since", iso(since), "--until", iso(until))
    assert [r["request_id"] for r in window] == [
        "b00", "bad1", "bad0", "a-typed", "a23", "a22", "a21", "a20"]
    same = cli_json(audit_sidecar, "records", "--since", str(since), "--until", str(until))
    assert same == window  # µs since the epoch work too

    table = cli(audit_sidecar, "records", "--status", "INVALID_ARGUMENT",
                "--model", audit_ledger.models.sha_v1[:8])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["seq", "received", "(UTC)"]
    assert [line.split()[3] for line in lines[2:]] == ["bad1", "bad0"]


def test_replay_exits_0_when_identical_and_1_on_a_differing_candidate(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    table = cli(audit_sidecar, "replay", "a16")
    assert "BIT-IDENTICAL" in table and "environment: same as when recorded" in table

    candidate = str(audit_ledger.models.v2)
    table = cli(audit_sidecar, "replay", "a16", "--candidate", candidate, code=1)
    assert "DIFFERENT" in table and "decisions changed (label) in rows [3, 8]" in table
    assert f"replayed on    {audit_ledger.models.sha_v2}" in table

    # a model already in the ledger's store, by a prefix of its hash
    stored = f"sha256:{audit_ledger.models.sha_v2[:10]}"
    assert f"replayed on    {audit_ledger.models.sha_v2}" in cli(
        audit_sidecar, "replay", "a16", "--candidate", stored, code=1)

    data = cli_json(audit_sidecar, "replay", "a16", "--candidate", candidate, code=1)
    assert isinstance(data, dict)
    assert data["bit_identical"] is False and data["decisions_changed"] == [3, 8]
    new = credit_run(audit_ledger.models.v2, audit_ledger.call("a16").x)
    assert [row_values(r) for r in data["replayed_outputs"]] == credit_output_rows(new)
    assert cli_json(audit_sidecar, "replay", "a16")["bit_identical"] is True  # type: ignore[index]


def test_whatif_by_name_and_index(audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger) -> None:
    data = cli_json(audit_sidecar, "whatif", "a05", "--set", "income=45000", "--set", "1=0.2",
                    "--row", "4")
    assert isinstance(data, dict)
    x = audit_ledger.call("a05").x.copy()
    x[4, 0], x[4, 1] = 45000, 0.2
    assert [row_values(r) for r in data["counterfactual_outputs"]] == credit_output_rows(
        credit_run(audit_ledger.models.v1, x))
    assert row_values(data["counterfactual_inputs"][4])["debt_ratio"] == float(np.float32(0.2))

    table = cli(audit_sidecar, "whatif", "a04", "--set", "fico=400", "--all-rows")
    assert "what-if on seq" in table and "decision (label) changed in rows" in table


def test_sensitivity_linear_log_values_and_threshold(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    data = cli_json(audit_sidecar, "sensitivity", "a05", "--feature", "fico", "--from", "300",
                    "--to", "850", "--steps", "12", "--row", "4")
    assert isinstance(data, dict)
    assert [p["value"] for p in data["points"]] == np.linspace(300, 850, 12).tolist()
    x = np.repeat(audit_ledger.call("a05").x[4:5], 12, axis=0)
    x[:, 2] = np.linspace(300, 850, 12)
    labels = credit_run(audit_ledger.models.v1, x)["label"]
    assert [p["decision"] for p in data["points"]] == [str(v) for v in labels]
    assert len(data["flips"]) == int(np.sum(labels[1:] != labels[:-1])) >= 1

    log = cli_json(audit_sidecar, "sensitivity", "a05", "--feature", "income", "--from", "1000",
                   "--to", "1000000", "--steps", "4", "--scale", "log")
    assert [p["value"] for p in log["points"]] == pytest.approx([1e3, 1e4, 1e5, 1e6])  # type: ignore[index]
    given = cli_json(audit_sidecar, "sensitivity", "a05", "--feature", "1", "--values", "0.9",
                     "0.1", "0.5")
    assert [p["value"] for p in given["points"]] == [0.9, 0.1, 0.5]  # type: ignore[index]
    assert given["feature"] == "debt_ratio"  # type: ignore[index]

    table = cli(audit_sidecar, "sensitivity", "a05", "--feature", "fico", "--from", "500",
                "--to", "800", "--steps", "16", "--row", "4", "--output", "probabilities_1",
                "--threshold", "0.3")
    assert "decision = probabilities_1 >= 0.3" in table and "flip: " in table


def test_replay_range_streams_changes_and_a_summary(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    out = cli(audit_sidecar, "replay-range", "--candidate", str(audit_ledger.models.v2),
              "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    changed = [line["changed"] for line in lines if "changed" in line]
    assert [(c["request_id"], c["row"]) for c in changed] == [
        (r, i) for r, i, _, _ in audit_ledger.changed_rows()]
    summary = lines[-1]["summary"]
    assert (int(summary["records"]), int(summary["identical"]), int(summary["changed"]),
            int(summary["failed"]), int(summary["decisions_changed"])) == (33, 8, 25, 0, 6)

    since = audit_ledger.entries["b00"].received_us
    table = cli(audit_sidecar, "replay-range", "--since", iso(since))
    assert "replayed 8 records (24 rows) on each record's own model" in table
    assert "identical 8  changed 0  failed 0  decisions changed 0" in table


def test_verify(audit_sidecar: AuditedSidecar) -> None:
    assert cli(audit_sidecar, "verify").startswith("OK: ")
    data = cli_json(audit_sidecar, "verify")
    assert data["ok"] is True and int(data["records"]) >= 35  # type: ignore[index]


def test_verify_against_a_published_head(audit_sidecar: AuditedSidecar) -> None:
    ((digest,),) = audit_sidecar.query("SELECT hash FROM entries WHERE seq = 10")
    published = bytes(digest).hex()
    assert cli(audit_sidecar, "verify", "--expect-head", f"10:{published}").startswith("OK: ")
    other = "0" * 64
    out = cli(audit_sidecar, "verify", "--expect-head", f"10:{other}", code=1)
    assert out.startswith("FAILED at seq 10") and "hash at seq 10 differs" in out
    for head, words in (("10:xyz", "INVALID_ARGUMENT: expected head: the hash must be 64 hex"),
                        ("ten", "--expect-head must be SEQ:HASH"),
                        ("99999999999999999999:" + other, "--expect-head must be SEQ:HASH")):
        result = run_cli(audit_sidecar.audit_address, "verify", f"--expect-head={head}")
        assert result.returncode == 2, result.stdout + result.stderr
        assert words in result.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["show", "ghost"], ["NOT_FOUND", "'ghost'"]),
    (["replay", "bad0"], ["FAILED_PRECONDITION", "not answered"]),
    (["whatif", "a05", "--set", "salary=1"], ["INVALID_ARGUMENT", "unknown feature 'salary'"]),
    (["whatif", "a05", "--set", "income"], ["FEATURE=VALUE"]),
    (["whatif", "a05", "--set", "income=lots"], ["'lots' is not a number"]),
    (["sensitivity", "a05", "--feature", "fico", "--from", "1", "--to", "2", "--steps", "1"],
     ["--steps", "must be at least 2, got 1"]),  # refused before asking (0 is "default")
    (["sensitivity", "a05", "--feature", "fico", "--from", "1", "--to", "2", "--steps",
      "20000"], ["INVALID_ARGUMENT", "steps"]),
    (["replay-range", "--max-listed", "0"], ["--max-listed", "must be at least 1"]),
    (["records", "--since", "last tuesday"], ["cannot read time"]),
    (["show", "seq:abc"], ["after 'seq:' comes a sequence number"]),
])
def test_errors_exit_2_with_the_reason(audit_sidecar: AuditedSidecar, args: list[str],
                                       words: list[str]) -> None:
    result = run_cli(audit_sidecar.audit_address, *args)
    assert result.returncode == 2 and result.stdout == ""
    for word in words:
        assert word in result.stderr


def test_target_from_the_environment(audit_sidecar: AuditedSidecar, tmp_path: Path) -> None:
    env = {**os.environ, "MLWITNESS_AUDIT_TARGET": audit_sidecar.audit_address}
    result = subprocess.run([*mlwitness_command(), "audit", "show", "b00", "--json"],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["request_id"] == "b00"


def test_connection_options_work_before_or_after_the_command(
    audit_sidecar: AuditedSidecar
) -> None:
    target = audit_sidecar.audit_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWITNESS_")}
    for args in (["audit", "--target", target, "--json", "show", "b00"],
                 ["audit", "show", "b00", "--target", target, "--json"],
                 ["audit", "--json", "show", "b00", "--target", target]):
        result = subprocess.run([*mlwitness_command(), *args], capture_output=True, text=True,
                                timeout=60, env=env, check=False)
        assert result.returncode == 0, (args, result.stderr)
        assert json.loads(result.stdout)["request_id"] == "b00"
    # given after the command, it wins over the one before
    late = subprocess.run([*mlwitness_command(), "audit", "--target", "127.0.0.1:1",
                           "--timeout", "5", "show", "b00", "--target", target],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert late.returncode == 0, late.stderr


# ── --json: one shape per command (docs/audit-json.md), integers as JSON integers ───────

@pytest.mark.parametrize(("args", "message", "code"), [
    (["show", "a05"], apb.RecordDetail, 0),
    (["replay", "a16"], apb.ReplayResponse, 0),
    (["whatif", "a05", "--set", "income=45000"], apb.WhatIfResponse, 0),
    (["sensitivity", "a05", "--feature", "fico", "--from", "300", "--to", "850", "--steps",
      "5"], apb.SensitivityResponse, 0),
    (["verify"], apb.VerifyLedgerResponse, 0),
    (["violations"], apb.ViolationsResponse, 0),
    (["guards"], apb.GuardsResponse, 0),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_json_answers_have_their_shape_and_integers_as_numbers(
    audit_sidecar: AuditedSidecar, args: list[str], message: type, code: int
) -> None:
    data = cli_json(audit_sidecar, *args, code=code)
    assert shape_problems(data, message.DESCRIPTOR) == []


def test_json_of_show_and_records_has_int64_fields_as_numbers(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    entry = audit_ledger.entries["b02"]
    shown = cli_json(audit_sidecar, "show", "b02")
    assert isinstance(shown, dict)
    assert (shown["seq"], shown["received_us"]) == (entry.seq, entry.received_us)
    assert shown["request_bytes"] > 0 and isinstance(shown["request_bytes"], int)
    listed = cli_json(audit_sidecar, "records", "--limit", "3")
    assert isinstance(listed, list) and len(listed) == 3
    for item in listed:
        assert shape_problems(item, apb.RecordSummary.DESCRIPTOR) == []
    assert [r["seq"] for r in listed] == [audit_ledger.entries[f"b0{i}"].seq for i in (7, 6, 5)]


def test_json_of_replay_range_is_one_event_object_a_line(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    out = cli(audit_sidecar, "replay-range", "--candidate", str(audit_ledger.models.v2),
              "--max-listed", "2", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [list(line) for line in lines] == [["changed"], ["changed"], ["summary"]]
    for line in lines[:2]:
        assert shape_problems(line["changed"], apb.ChangedDecision.DESCRIPTOR) == []
    summary = lines[-1]["summary"]
    assert shape_problems(summary, apb.ReplaySummary.DESCRIPTOR) == []
    assert (summary["records"], summary["failed"]) == (33, 0)


def test_json_of_drift_and_bias_is_the_full_report(
    audit_sidecar: AuditedSidecar, audit_ledger: AuditLedger
) -> None:
    middle = str(audit_ledger.entries["a12"].received_us)
    drift = cli_json(audit_sidecar, "drift", "--since", middle, "--reference-until", middle)
    assert isinstance(drift, dict)
    assert sorted(drift) == sorted(f.name for f in dataclasses.fields(DriftReport))
    assert isinstance(drift["rows"], int) and drift["rows"] > 0
    bias = cli_json(audit_sidecar, "bias", "--attribute", "fico", "--bins", "600,700",
                    "--favorable", "label=1")
    assert isinstance(bias, dict)
    assert sorted(bias) == sorted(f.name for f in dataclasses.fields(BiasReport))
    assert all(isinstance(g["n"], int) for g in bias["groups"])
