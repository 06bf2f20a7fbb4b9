"""Access control: tokens (hashed at rest) with roles on the audit port, optional tokens on
the inference port, token rotation without a restart, and the `mlwitness audit` CLI.

Real things: the demo credit model, a sidecar on 127.0.0.1 with its ledger under a tmp dir,
access files written by `mlwitness token add`, tritonclient and the generated audit stub as
callers. Every audit call — answered or refused — must be on the ledger with who made it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import stat
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from audit_support import run_cli
from conftest import CreditModel
from security_support import (
    Pki,
    Served,
    add_identity,
    add_token,
    audit_stub,
    bearer,
    make_pki,
    sidecars,
    status_of,
    triton,
)
from sidecar import free_ports, raw_rpc, read_ledger
from tritonclient.grpc import service_pb2

from mlwitness import cli
from mlwitness.analytics.baseline import build_baseline
from mlwitness.auth import hash_token
from mlwitness.inference import refusals
from mlwitness.ledger.verify import verify
from mlwitness.protocol import audit_pb2 as apb

GUARDS_TOML = "version = 1\n[outputs.probabilities_1]\nmin = 0.0\nmax = 1.0\n"
NEW_GUARDS_TOML = "version = 1\n[outputs.probabilities_1]\nmin = 0.0\nmax = 0.999\n"
BANDS = ("18-25", "26-40", "41-65")
ROTATION_S = 2.5  # the access file is re-read about once a second

Start = Callable[..., Served]


@dataclass
class Deployment:
    served: Served
    access: Path
    tokens: dict[str, str]  # name -> token
    request_ids: list[str]


def credit_call(client: grpcclient.InferenceServerClient, credit: CreditModel, request_id: str,
                seed: int, headers: dict[str, str] | None = None,
                parameters: dict[str, str] | None = None) -> Any:
    x = credit.features(4, seed)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("credit", [tensor], request_id=request_id, headers=headers,
                        parameters=parameters, client_timeout=10)


def audit_rows(served: Served, after: int = 0) -> list[tuple[str, str, str]]:
    """(caller, status, rpc) of the audit records after seq `after`, in order."""
    return [tuple(r) for r in served.query(
        "SELECT caller, status, detail->>'rpc' FROM audit_log WHERE kind = 'audit' "
        "AND seq > ? ORDER BY seq", [after])]


def head(served: Served) -> int:
    return served.query("SELECT coalesce(max(seq), 0) FROM entries")[0][0]


@pytest.fixture
def started() -> Iterator[Start]:
    with sidecars() as start:
        yield start


@pytest.fixture(scope="module")
def deployment(credit_model: CreditModel, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    """A sidecar serving the credit model with guards, a baseline and an audit access file
    (alice: auditor, root: admin); 9 calls recorded, no credentials needed to infer."""
    root = tmp_path_factory.mktemp("access")
    access = root / "audit-access.toml"
    tokens = {name: add_token(access, name, role)
              for name, role in (("alice", "auditor"), ("root", "admin"))}
    guards = root / "guards.toml"
    guards.write_text(GUARDS_TOML)
    baseline = root / "baseline.json"
    baseline.write_text(build_baseline(credit_model.path.parent / "train.csv",
                                       model=credit_model.path, label="approved").to_json())
    with sidecars() as start:
        served = start(credit_model.path, root / "ledger.duckdb", model_name="credit",
                       features=list(credit_model.builder.FEATURES), guards=guards,
                       baseline=baseline, audit_access=access)
        ids = []
        with triton(served.address) as client:  # --inference-access is off: no token needed
            for i in range(9):
                ids.append(f"d{i}")
                credit_call(client, credit_model, ids[-1], seed=i,
                            parameters={"age_band": BANDS[i % 3]})
        yield Deployment(served, access, tokens, ids)


def read_calls(request_id: str) -> dict[str, tuple[str, Any]]:
    """Every read RPC of the audit API: name -> (method attribute, request)."""
    ref = apb.RecordRef(request_id=request_id)
    return {
        "GetRecord": ("GetRecord", apb.GetRecordRequest(ref=ref)),
        "ListRecords": ("ListRecords", apb.ListRecordsRequest(page_size=5)),
        "Replay": ("Replay", apb.ReplayRequest(ref=ref)),
        "WhatIf": ("WhatIf", apb.WhatIfRequest(ref=ref, overrides=[
            apb.Override(feature="income", value=50_000.0)])),
        "Sensitivity": ("Sensitivity", apb.SensitivityRequest(
            ref=ref, feature="income", start=10_000.0, stop=200_000.0, steps=5)),
        "ReplayRange": ("ReplayRange", apb.ReplayRangeRequest()),
        "VerifyLedger": ("VerifyLedger", apb.VerifyLedgerRequest()),
        "Drift": ("Drift", apb.DriftRequest()),
        "Bias": ("Bias", apb.BiasRequest(attribute="age_band", favorable="label=1")),
        "Violations": ("Violations", apb.ViolationsRequest()),
        "GetGuards": ("GetGuards", apb.GetGuardsRequest()),
    }


def invoke(stub: Any, method: str, request: Any, metadata: Any = None) -> Any:
    call = getattr(stub, method)
    if method == "ReplayRange":  # server streaming: the answer is the events
        return list(call(request, timeout=30, metadata=metadata))
    return call(request, timeout=30, metadata=metadata)


# ── the audit port ─────────────────────────────────────────────────────────────────────


def test_access_file_holds_hashes_never_tokens(deployment: Deployment) -> None:
    text = deployment.access.read_text()
    for name, token in deployment.tokens.items():
        assert token not in text
        assert f'sha256 = "{hash_token(token)}"' in text
        assert f'name = "{name}"' in text
    assert stat.S_IMODE(deployment.access.stat().st_mode) == 0o600
    data = tomllib.loads(text)
    assert {(t["name"], t["role"]) for t in data["tokens"]} == {("alice", "auditor"),
                                                              ("root", "admin")}
    # Nor does any token reach the ledger (not in metadata, details or stored bytes).
    stored = deployment.served.query("SELECT metadata, detail, request, response FROM entries")
    blob = b"".join(v if isinstance(v, bytes) else str(v).encode() for row in stored
                    for v in row)
    assert len(stored) > 9
    for token in deployment.tokens.values():
        assert token.encode() not in blob


@pytest.mark.parametrize("metadata", [
    None,
    bearer("mlw_not-a-token-anybody-holds"),
    [("authorization", "Basic YWxpY2U6c2VjcmV0")],
], ids=["no-credentials", "unknown-token", "not-a-bearer-token"])
def test_audit_call_without_valid_token_is_unauthenticated(deployment: Deployment,
                                                           metadata: Any) -> None:
    served = deployment.served
    before = head(served)
    channel, stub = audit_stub(served.audit_address)
    with channel:
        code = status_of(lambda: invoke(stub, "GetRecord", apb.GetRecordRequest(
            ref=apb.RecordRef(request_id="d0")), metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    ((caller, status, rpc),) = audit_rows(served, before)
    assert (caller[:15], status, rpc) == ("ipv4:127.0.0.1:", "UNAUTHENTICATED", "GetRecord")


def test_auditor_token_cannot_set_guards(deployment: Deployment) -> None:
    served = deployment.served
    before = head(served)
    channel, stub = audit_stub(served.audit_address)
    with channel:
        code = status_of(lambda: stub.SetGuards(apb.SetGuardsRequest(toml=NEW_GUARDS_TOML),
                                                timeout=10,
                                                metadata=bearer(deployment.tokens["alice"])))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        guards = stub.GetGuards(apb.GetGuardsRequest(), timeout=10,
                                metadata=bearer(deployment.tokens["alice"]))
    assert "0.999" not in guards.toml  # unchanged
    assert audit_rows(served, before) == [("token:alice", "PERMISSION_DENIED", "SetGuards"),
                                          ("token:alice", "OK", "GetGuards")]


def test_admin_token_sets_guards(deployment: Deployment) -> None:
    served = deployment.served
    before = head(served)
    channel, stub = audit_stub(served.audit_address)
    with channel:
        state = stub.SetGuards(apb.SetGuardsRequest(toml=NEW_GUARDS_TOML), timeout=10,
                               metadata=bearer(deployment.tokens["root"]))
        try:
            assert state.active and "0.999" in state.toml
            assert audit_rows(served, before) == [("token:root", "OK", "SetGuards")]
            ((caller, sha),) = served.query(
                "SELECT caller, detail->>'sha256' FROM audit_log WHERE kind = 'admin' "
                "AND seq > ?", [before])
            assert (caller, sha) == ("token:root", state.sha256)  # the guard version record
        finally:  # leave the module's sidecar with its original guards
            stub.SetGuards(apb.SetGuardsRequest(toml=GUARDS_TOML), timeout=10,
                           metadata=bearer(deployment.tokens["root"]))


def test_auditor_token_answers_every_read_rpc(deployment: Deployment) -> None:
    served = deployment.served
    before = head(served)
    calls = read_calls(deployment.request_ids[0])
    channel, stub = audit_stub(served.audit_address)
    with channel:
        answers = {name: invoke(stub, method, request, bearer(deployment.tokens["alice"]))
                   for name, (method, request) in calls.items()}
    assert answers["GetRecord"].request_id == "d0"
    assert len(answers["ListRecords"].records) == 5
    assert answers["Replay"].bit_identical
    assert answers["ReplayRange"][-1].summary.records == 9
    assert answers["ReplayRange"][-1].summary.identical == 9
    assert answers["VerifyLedger"].ok
    assert answers["Drift"].window_rows == 36
    assert {g.group for g in answers["Bias"].groups} == set(BANDS)
    assert answers["Violations"].calls == 9
    assert answers["GetGuards"].active
    assert audit_rows(served, before) == [("token:alice", "OK", name) for name in calls]


def test_every_read_rpc_refused_without_token_is_recorded(deployment: Deployment) -> None:
    served = deployment.served
    before = head(served)
    calls = read_calls(deployment.request_ids[1])
    channel, stub = audit_stub(served.audit_address)
    with channel:
        codes = {name: status_of(lambda m=method, r=request: invoke(stub, m, r))
                 for name, (method, request) in calls.items()}
    assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAUTHENTICATED)
    rows = audit_rows(served, before)
    assert [(status, rpc) for _, status, rpc in rows] == [
        ("UNAUTHENTICATED", name) for name in calls]
    assert all(caller.startswith("ipv4:127.0.0.1:") for caller, _, _ in rows)


def test_refused_audit_questions_are_tallied_per_caller_and_rpc(
        started: Start, credit_model: CreditModel, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """200 questions without a token and 3 guard changes from an auditor: a record for the
    first of each kind at once, one tally for the rest (written at shutdown: one interval
    spans the test), so that a flood from one peer costs a few records."""
    monkeypatch.setattr(refusals, "INTERVAL_S", 3600.0)
    access = tmp_path / "audit-access.toml"
    alice = add_token(access, "alice", "auditor")
    ledger = tmp_path / "ledger.duckdb"
    served = started(credit_model.path, ledger, model_name="credit", audit_access=access)
    question = apb.GetRecordRequest(ref=apb.RecordRef(request_id="nobody"))
    channel, stub = audit_stub(served.audit_address)
    with channel:
        for _ in range(200):
            assert status_of(lambda: stub.GetRecord(question, timeout=10)) == \
                grpc.StatusCode.UNAUTHENTICATED
        for _ in range(3):
            assert status_of(lambda: stub.SetGuards(apb.SetGuardsRequest(
                toml=GUARDS_TOML), timeout=10, metadata=bearer(alice))) == \
                grpc.StatusCode.PERMISSION_DENIED
    served.stop()

    rows = [(caller, status, json.loads(detail)) for caller, status, detail in read_ledger(
        ledger, "SELECT caller, status, detail FROM audit_log WHERE kind = 'audit' "
        "ORDER BY seq")]
    seen = [(status, d["rpc"], d["refused_calls"]) for _, status, d in rows]
    assert seen[:2] == [("UNAUTHENTICATED", "GetRecord", 1),
                        ("PERMISSION_DENIED", "SetGuards", 1)]
    assert sorted(seen[2:]) == [("PERMISSION_DENIED", "SetGuards", 2),  # in either order
                                ("UNAUTHENTICATED", "GetRecord", 199)]
    sent = len(question.SerializeToString())
    one = hashlib.sha256(question.SerializeToString()).digest()
    first = rows[0][2]
    (tally,) = [d for _, _, d in rows[2:] if d["rpc"] == "GetRecord"]
    assert first["received_sha256"] == one.hex() and first["received_bytes"] == sent
    assert tally["received_bytes"] == 199 * sent
    assert tally["received_digest"] == hashlib.sha256(one * 199).hexdigest()
    assert {caller for caller, status, _ in rows if status == "PERMISSION_DENIED"} == {
        "token:alice"}
    assert read_ledger(ledger, "SELECT sum(octet_length(request)) FROM entries "
                               "WHERE kind = 'audit'") == [(0,)]
    report = verify(ledger)
    assert report.ok, report.problems


def test_credentials_are_checked_before_the_request_is_read(deployment: Deployment) -> None:
    served = deployment.served
    before = head(served)
    channel, stub = audit_stub(served.audit_address)
    with channel:
        code = status_of(lambda: stub.SetGuards(apb.SetGuardsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert [(s, r) for _, s, r in audit_rows(served, before)] == [
        ("UNAUTHENTICATED", "SetGuards")]


def test_anonymous_caller_cannot_make_the_ledger_keep_large_requests(
        deployment: Deployment) -> None:
    served = deployment.served
    before = head(served)
    channel, stub = audit_stub(served.audit_address)
    big = apb.GetRecordRequest(ref=apb.RecordRef(request_id="A" * (4 << 20)))
    with channel:
        assert status_of(lambda: stub.GetRecord(big, timeout=30)) == \
            grpc.StatusCode.UNAUTHENTICATED
    ((kept,),) = served.query("SELECT octet_length(request) FROM entries WHERE seq > ?",
                              [before])
    assert kept <= 64 << 10


def test_token_rotation_takes_effect_without_restart(started: Start, credit_model: CreditModel,
                                                     tmp_path: Path) -> None:
    access = tmp_path / "audit-access.toml"
    old = add_token(access, "bob", "auditor")
    served = started(credit_model.path, tmp_path / "ledger.duckdb", model_name="credit",
                     audit_access=access)
    channel, stub = audit_stub(served.audit_address)
    with channel:
        def verify(token: str) -> Any:
            return stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=10,
                                     metadata=bearer(token))

        assert verify(old).ok
        new = add_token(access, "bob-2", "auditor")  # `mlwitness token add`
        data = tomllib.loads(access.read_text())
        kept = [t for t in data["tokens"] if t["name"] != "bob"]
        access.write_text("".join(f'[[tokens]]\nname = "{t["name"]}"\nrole = '
                                  f'"{t["role"]}"\nsha256 = "{t["sha256"]}"\n\n'
                                  for t in kept))
        edited = time.monotonic()
        while True:
            try:
                verify(old)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() - edited < ROTATION_S, "old token still accepted"
            time.sleep(0.05)
        assert verify(new).ok
    callers = [(c, s) for c, s, _ in audit_rows(served)]
    assert callers[0] == ("token:bob", "OK")
    assert callers[-2][1] == "UNAUTHENTICATED" and callers[-1] == ("token:bob-2", "OK")


def test_cli_with_token_file_and_without(deployment: Deployment, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(deployment.tokens["alice"] + "\n")
    target = deployment.served.audit_address
    shown = run_cli(target, "--token-file", str(token_file), "show", "d2")
    assert shown.returncode == 0, shown.stderr
    assert "request id d2" in shown.stdout
    refused = run_cli(target, "show", "d2")
    assert refused.returncode == 2
    assert refused.stderr.startswith("mlwitness: UNAUTHENTICATED: ")
    assert refused.stdout == ""


def test_cli_over_tls_with_token_or_client_certificate(started: Start, credit_model: CreditModel,
                                                       tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path / "pki")
    access = tmp_path / "audit-access.toml"
    token_file = tmp_path / "token"
    token_file.write_text(add_token(access, "alice", "auditor"))
    add_identity(access, pki.risk_team.subject, "auditor")
    served = started(credit_model.path, tmp_path / "ledger.duckdb", model_name="credit",
                     audit_access=access, tls_cert=pki.server.cert, tls_key=pki.server.key,
                     tls_client_ca=pki.ca.cert)
    tls = ("--ca", str(pki.ca.cert))
    with_token = run_cli(served.audit_address, *tls, "--cert", str(pki.stranger.cert),
                         "--key", str(pki.stranger.key), "--token-file", str(token_file),
                         "verify")
    assert with_token.returncode == 0, with_token.stderr
    with_cert = run_cli(served.audit_address, *tls, "--cert", str(pki.risk_team.cert),
                        "--key", str(pki.risk_team.key), "verify")
    assert with_cert.returncode == 0, with_cert.stderr
    neither = run_cli(served.audit_address, *tls, "--cert", str(pki.stranger.cert),
                      "--key", str(pki.stranger.key), "verify")
    assert neither.returncode == 2
    assert neither.stderr.startswith("mlwitness: UNAUTHENTICATED: ")
    assert audit_rows(served) == [("token:alice", "OK", "VerifyLedger"),
                                  ("mtls:CN=risk-team,O=Bank", "OK", "VerifyLedger"),
                                  ("mtls:CN=stranger,O=Bank", "UNAUTHENTICATED",
                                   "VerifyLedger")]


def test_serve_warns_at_start_when_the_audit_port_is_open(
        serve_process: Callable[..., Any], affine_model: Path, tmp_path: Path) -> None:
    """Without --audit-access the audit port answers anyone: `mlwitness serve` says so on
    stderr at start, naming the port and what may be done there; with it, it does not."""
    (port,) = free_ports(1)
    open_ = serve_process(affine_model, tmp_path / "open.duckdb", "--audit-port", str(port))
    warning = [line for line in open_.stderr().splitlines() if "has no --audit-access" in line]
    assert len(warning) == 1, open_.stderr()
    assert " WARNING " in warning[0] and f"127.0.0.1:{port}" in warning[0]
    assert "anyone who can reach it" in warning[0] and "change the guards" in warning[0]
    access = tmp_path / "audit-access.toml"
    add_token(access, "alice", "auditor")
    (port,) = free_ports(1)
    locked = serve_process(affine_model, tmp_path / "locked.duckdb", "--audit-port", str(port),
                           "--audit-access", str(access))
    assert "--audit-access" not in locked.stderr()


# ── the inference port ─────────────────────────────────────────────────────────────────


def test_inference_needs_no_token_by_default(deployment: Deployment) -> None:
    callers = deployment.served.query("SELECT DISTINCT status, caller[:15] FROM records "
                                      "WHERE request_id LIKE 'd%'")
    assert callers == [("OK", "ipv4:127.0.0.1:")]


def test_inference_access_requires_a_caller_token(started: Start, credit_model: CreditModel,
                                                  tmp_path: Path) -> None:
    access = tmp_path / "inference-access.toml"
    app = add_token(access, "scoring-app", "caller")
    served = started(credit_model.path, tmp_path / "ledger.duckdb", model_name="credit",
                     audit=False, inference_access=access)
    with triton(served.address) as client:
        refused = status_of(lambda: credit_call(client, credit_model, "i-0", 0))
        wrong = status_of(lambda: credit_call(
            client, credit_model, "i-1", 1, headers={"authorization": "Bearer mlw_nope"}))
        answer = credit_call(client, credit_model, "i-2", 2,
                             headers={"authorization": f"Bearer {app}"})
    assert (refused, wrong) == (grpc.StatusCode.UNAUTHENTICATED,) * 2
    assert answer.as_numpy("label").shape == (4,)
    rows = served.query("SELECT status, peer, message, octet_length(request), "
                        "json_extract_string(NULLIF(detail, ''), '$.received_sha256') FROM entries "
                        "WHERE kind = 'infer' "
                        "ORDER BY seq")
    assert [r[0] for r in rows] == ["UNAUTHENTICATED", "UNAUTHENTICATED", "OK"]
    # a refusal keeps who and the SHA-256 of what was sent, never the bytes themselves
    # (unkeyed: without data minimisation nothing in the request is to be withheld)
    assert rows[0][1].startswith("ipv4:127.0.0.1:") and rows[0][3] == 0
    assert len(rows[0][4]) == 64
    assert "credentials required" in rows[0][2]
    assert "unknown or revoked token" in rows[1][2]
    assert rows[2][1] == "token:scoring-app"
    assert served.query("SELECT request_id FROM records WHERE status = 'OK'") == [("i-2",)]
    assert served.query("SELECT count(*) FROM entries WHERE metadata LIKE ?",
                        [f"%{app}%"]) == [(0,)]
    metadata = json.loads(served.query("SELECT metadata FROM records WHERE seq = "
                                       "(SELECT max(seq) FROM records)")[0][0])
    assert metadata["peer"].startswith("ipv4:127.0.0.1:")
    assert "authorization" not in metadata


def credit_payload(credit: CreditModel, request_id: str) -> bytes:
    x = credit.features(4, 0)
    request = service_pb2.ModelInferRequest(model_name="credit", id=request_id)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def refuse_times(address: str, payload: bytes, times: int) -> None:
    """Send `payload` `times` times on one channel (one caller), without a token."""
    with grpc.insecure_channel(address) as channel:
        for _ in range(times):
            assert status_of(lambda: raw_rpc(channel, "ModelInfer", payload)) == \
                grpc.StatusCode.UNAUTHENTICATED


def refusal_tallies(ledger: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(caller, status, detail) of the refusal records of a closed ledger, in chain order."""
    return [(caller, status, json.loads(detail)) for caller, status, detail in read_ledger(
        ledger, "SELECT caller, status, detail FROM records WHERE status = 'UNAUTHENTICATED' "
        "ORDER BY seq")]


def test_refused_calls_are_tallied_per_caller_not_recorded_one_by_one(
        started: Start, credit_model: CreditModel, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """200 calls without a token: the first is recorded at once, the other 199 in one tally
    written at shutdown (one interval spans the whole test, however slow the machine)."""
    monkeypatch.setattr(refusals, "INTERVAL_S", 3600.0)
    access = tmp_path / "inference-access.toml"
    add_token(access, "scoring-app", "caller")
    ledger = tmp_path / "ledger.duckdb"
    served = started(credit_model.path, ledger, model_name="credit", audit=False,
                     inference_access=access)
    payload = credit_payload(credit_model, "anonymous")
    refuse_times(served.address, payload, 200)
    served.stop()

    tallies = refusal_tallies(ledger)
    assert len(tallies) == 2
    (first_caller, _, first), (caller, _, tally) = tallies
    assert first_caller == caller and caller.startswith("ipv4:127.0.0.1:")
    one = hashlib.sha256(payload).digest()
    assert first == {"refused_calls": 1, "received_bytes": len(payload),
                     "received_sha256": one.hex()}
    assert (tally["refused_calls"], tally["received_bytes"]) == (199, 199 * len(payload))
    assert tally["received_digest"] == hashlib.sha256(one * 199).hexdigest()
    assert tally["first_received_us"] <= tally["last_received_us"]
    assert read_ledger(ledger, "SELECT count(*), sum(octet_length(request)) FROM entries "
                               "WHERE kind = 'infer'") == [(2, 0)]
    report = verify(ledger)
    assert report.ok and not report.problems


def test_with_a_hash_key_refused_calls_keep_only_keyed_digests(
        started: Start, credit_model: CreditModel, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With data minimisation and a hash key, an unkeyed digest of a refused request would
    give back the values the ledger withholds to whoever tries candidates against it (the
    rest of the request being guessable too): the first refusal keeps the request's HMAC,
    the tally a SHA-256 over the HMACs."""
    monkeypatch.setattr(refusals, "INTERVAL_S", 3600.0)
    access = tmp_path / "inference-access.toml"
    add_token(access, "scoring-app", "caller")
    key = tmp_path / "hash.key"
    key.write_bytes(b"s" * 32)
    ledger = tmp_path / "ledger.duckdb"
    served = started(credit_model.path, ledger, model_name="credit", audit=False,
                     inference_access=access, hash_inputs=["customer"], hash_key=key)
    request = service_pb2.ModelInferRequest.FromString(credit_payload(credit_model, "anon"))
    request.parameters["customer"].string_param = "Jane Q. Applicant"
    payload = request.SerializeToString()
    refuse_times(served.address, payload, 200)
    served.stop()

    (_, _, first), (_, _, tally) = refusal_tallies(ledger)
    one = hmac.new(b"s" * 32, payload, hashlib.sha256)
    assert first == {"refused_calls": 1, "received_bytes": len(payload),
                     "received_hmac_sha256": one.hexdigest()}
    assert tally["refused_calls"] == 199 and tally["keyed"] is True
    assert tally["received_digest"] == hashlib.sha256(one.digest() * 199).hexdigest()
    unkeyed = hashlib.sha256(payload).hexdigest()
    assert read_ledger(ledger, "SELECT count(*) FROM entries WHERE contains(detail, ?)",
                       [unkeyed]) == [(0,)]
    assert verify(ledger).ok


def test_refusal_tallies_are_written_when_their_interval_ends(
        started: Start, credit_model: CreditModel, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refusals, "INTERVAL_S", 0.5)
    access = tmp_path / "inference-access.toml"
    add_token(access, "scoring-app", "caller")
    ledger = tmp_path / "ledger.duckdb"
    served = started(credit_model.path, ledger, model_name="credit", audit=False,
                     inference_access=access)
    payload = credit_payload(credit_model, "anonymous")
    sent = 0
    tallied: list[tuple[int]] = []
    deadline = time.monotonic() + 60
    while not tallied and sent < 5000 and time.monotonic() < deadline:
        refuse_times(served.address, payload, 5)
        sent += 5
        tallied = served.query("SELECT seq FROM records WHERE (detail->>'refused_calls')::INT "
                               "> 1 LIMIT 1")
    assert tallied, "no tally was written while the sidecar ran"
    served.stop()
    assert sum(detail["refused_calls"] for _, _, detail in refusal_tallies(ledger)) == sent


def test_inference_answer_is_the_same_with_token(started: Start, credit_model: CreditModel,
                                                 tmp_path: Path) -> None:
    """Access control changes who may ask, never the answer: same bytes with a token."""
    access = tmp_path / "inference-access.toml"
    app = add_token(access, "scoring-app", "caller")
    open_ = started(credit_model.path, tmp_path / "open.duckdb", model_name="credit",
                    audit=False)
    guarded = started(credit_model.path, tmp_path / "guarded.duckdb", model_name="credit",
                      audit=False, inference_access=access)
    with triton(open_.address) as a, triton(guarded.address) as b:
        plain = credit_call(a, credit_model, "same", 5)
        token = credit_call(b, credit_model, "same", 5,
                            headers={"authorization": f"Bearer {app}"})
    for name in ("label", "probabilities"):
        np.testing.assert_array_equal(plain.as_numpy(name), token.as_numpy(name))
    digest = [hashlib.sha256(bytes(s.query("SELECT response FROM entries WHERE "
                                           "request_id = 'same'")[0][0])).hexdigest()
              for s in (open_, guarded)]
    assert digest[0] == digest[1]


def test_token_add_writes_any_name_as_data_and_keeps_the_files_mode(tmp_path: Path) -> None:
    """A name is written as a TOML string, never as TOML: quotes, backslashes and
    newlines could otherwise add an entry with another role (or break the file)."""
    access = tmp_path / "access.toml"
    access.write_text("")
    access.chmod(0o640)  # readable by the sidecar's group
    sneaky = 'carol"\nrole = "admin"\n[[tokens]]\nname = "x'
    names = ("CORP\\alice", "bob\\u0041", "zoë", 'carol", role = "admin')
    for name in names:
        add_token(access, name, "caller")
    assert stat.S_IMODE(access.stat().st_mode) == 0o640
    data = tomllib.loads(access.read_text())
    assert [(t["name"], t["role"]) for t in data["tokens"]] == [(n, "caller") for n in names]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["token", "add", "--file", str(access), "--name", sneaky,
                         "--role", "caller"])
    assert code == 2  # a name with a newline is refused
    assert len(tomllib.loads(access.read_text())["tokens"]) == len(names)
