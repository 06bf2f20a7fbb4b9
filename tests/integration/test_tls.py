"""TLS on the inference and audit ports, mTLS identities, and TLS to the upstream.

Certificates are made per module with `cryptography` (tests/support/security_support.py): a CA the
sidecar trusts, a server certificate for 127.0.0.1, client certificates it signs, and a
second CA nobody trusts. Callers are tritonclient (inference) and the generated audit stub.
A failed handshake is UNAVAILABLE to a gRPC client: that is the status asserted. The
forwarding tests' TLS upstream is a second mlwitness sidecar in embedded mode (an honest v2
server that serves TLS and can demand client certificates; MLServer is not set up for TLS).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from models import AFFINE_B, AFFINE_W
from security_support import (
    Pki,
    Served,
    add_identity,
    audit_stub,
    make_pki,
    sidecars,
    status_of,
    triton,
)

from mlwitness.protocol import audit_pb2 as apb

MODEL = "affine"  # the served name: the model file's stem
GUARDS_TOML = "version = 1\n[outputs.score]\nmin = -1000.0\nmax = 1000.0\n"

Start = Callable[..., Served]


@pytest.fixture
def started() -> Iterator[Start]:
    with sidecars() as start:
        yield start


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def affine(tmp_path_factory: pytest.TempPathFactory, affine_model: Path) -> Path:
    """The affine model under the file name `affine.onnx` (served as `affine`)."""
    path = tmp_path_factory.mktemp("model") / "affine.onnx"
    path.write_bytes(affine_model.read_bytes())
    return path


def x_input(seed: int = 0) -> tuple[np.ndarray, list[grpcclient.InferInput]]:
    x = np.random.default_rng(seed).integers(-8, 8, (3, 4)).astype(np.float32)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return x, [tensor]


def infer(client: grpcclient.InferenceServerClient, request_id: str, seed: int = 0
          ) -> np.ndarray:
    """One call; checks the answer is the model's (exact: dyadic weights) and returns y."""
    x, inputs = x_input(seed)
    y = client.infer(MODEL, inputs, request_id=request_id, client_timeout=10).as_numpy("y")
    np.testing.assert_array_equal(y, x @ AFFINE_W + AFFINE_B)
    return y


def get_record(stub: Any, request_id: str) -> apb.RecordDetail:
    request = apb.GetRecordRequest(ref=apb.RecordRef(request_id=request_id))
    return stub.GetRecord(request, timeout=10)


def refused_both_ports(served: Served, **credentials: Any) -> tuple[grpc.StatusCode, ...]:
    """The statuses of an inference call and an audit call made with these credentials."""
    with triton(served.address, **credentials) as client:
        inference = status_of(lambda: client.infer(MODEL, x_input()[1], client_timeout=10))
    channel, stub = audit_stub(served.audit_address, **credentials)
    with channel:
        audit = status_of(lambda: stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=10))
    return inference, audit


def tls(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"tls_cert": pki.server.cert, "tls_key": pki.server.key, **more}


UNAVAILABLE_BOTH = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)


# ── TLS ────────────────────────────────────────────────────────────────────────────────


def test_tls_client_trusting_the_ca_uses_both_ports(started: Start, pki: Pki, affine: Path,
                                                    tmp_path: Path) -> None:
    served = started(affine, tmp_path / "ledger.duckdb", **tls(pki))
    with triton(served.address, ca=pki.ca.cert) as client:
        infer(client, "tls-1")
    channel, stub = audit_stub(served.audit_address, ca=pki.ca.cert)
    with channel:
        record = get_record(stub, "tls-1")
    assert record.status == "OK"
    assert record.caller.startswith("ipv4:127.0.0.1:")  # no identity: the network peer
    assert served.query("SELECT request_id, status FROM records") == [("tls-1", "OK")]
    ((caller, rpc),) = served.query("SELECT caller, detail->>'rpc' FROM audit_log "
                                    "WHERE kind = 'audit'")
    assert (caller[:15], rpc) == ("ipv4:127.0.0.1:", "GetRecord")


def test_tls_also_verifies_for_localhost(started: Start, pki: Pki, affine: Path,
                                         tmp_path: Path) -> None:
    served = started(affine, tmp_path / "ledger.duckdb", audit=False, **tls(pki))
    with triton(f"localhost:{served.running.port}", ca=pki.ca.cert) as client:
        infer(client, "by-name")


def test_plaintext_client_is_unavailable_on_both_ports(started: Start, pki: Pki,
                                                       affine: Path, tmp_path: Path) -> None:
    served = started(affine, tmp_path / "ledger.duckdb", **tls(pki))
    assert refused_both_ports(served) == UNAVAILABLE_BOTH
    assert served.query("SELECT count(*) FROM entries WHERE kind <> 'admin'") == [(0,)]


def test_client_trusting_another_ca_is_unavailable(started: Start, pki: Pki, affine: Path,
                                                   tmp_path: Path) -> None:
    served = started(affine, tmp_path / "ledger.duckdb", **tls(pki))
    assert refused_both_ports(served, ca=pki.rogue_ca.cert) == UNAVAILABLE_BOTH
    assert served.query("SELECT count(*) FROM entries WHERE kind <> 'admin'") == [(0,)]


# ── mTLS ───────────────────────────────────────────────────────────────────────────────


def test_mtls_without_client_certificate_is_unavailable(started: Start, pki: Pki,
                                                        affine: Path, tmp_path: Path) -> None:
    served = started(affine, tmp_path / "ledger.duckdb", **tls(pki, tls_client_ca=pki.ca.cert))
    assert refused_both_ports(served, ca=pki.ca.cert) == UNAVAILABLE_BOTH


def test_mtls_certificate_from_untrusted_ca_is_unavailable(started: Start, pki: Pki,
                                                           affine: Path, tmp_path: Path
                                                           ) -> None:
    served = started(affine, tmp_path / "ledger.duckdb", **tls(pki, tls_client_ca=pki.ca.cert))
    # Same subject as the trusted risk-team certificate, signed by the other CA.
    assert pki.rogue_client.subject == pki.risk_team.subject
    assert refused_both_ports(served, ca=pki.ca.cert, client=pki.rogue_client) == \
        UNAVAILABLE_BOTH
    assert served.query("SELECT count(*) FROM entries WHERE kind <> 'admin'") == [(0,)]


def test_mtls_subject_is_the_caller_on_the_ledger(started: Start, pki: Pki, affine: Path,
                                                  tmp_path: Path) -> None:
    served = started(affine, tmp_path / "ledger.duckdb", **tls(pki, tls_client_ca=pki.ca.cert))
    assert pki.risk_team.subject == "CN=risk-team,O=Bank"
    with triton(served.address, ca=pki.ca.cert, client=pki.risk_team) as client:
        infer(client, "m-1")
    ((caller, metadata),) = served.query("SELECT caller, metadata FROM records")
    assert caller == "mtls:CN=risk-team,O=Bank"
    assert json.loads(metadata)["peer"].startswith("ipv4:127.0.0.1:")  # kept beside it
    channel, stub = audit_stub(served.audit_address, ca=pki.ca.cert, client=pki.risk_team)
    with channel:
        assert get_record(stub, "m-1").caller == "mtls:CN=risk-team,O=Bank"
    assert served.query("SELECT caller, status, detail->>'rpc' FROM audit_log "
                        "WHERE kind = 'audit'") == [("mtls:CN=risk-team,O=Bank", "OK",
                                                     "GetRecord")]


def test_mtls_without_an_access_file_grants_auditor_never_admin(
        started: Start, pki: Pki, affine: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """mTLS and no --audit-access: a certificate the CA signed may audit (the documented
    "mTLS only" deployment), but changing guards needs an identity an access file makes
    admin. The start-up warning says so."""
    guards = tmp_path / "guards.toml"
    guards.write_text(GUARDS_TOML)
    served = started(affine, tmp_path / "ledger.duckdb", guards=guards,
                     **tls(pki, tls_client_ca=pki.ca.cert))
    channel, stub = audit_stub(served.audit_address, ca=pki.ca.cert, client=pki.risk_team)
    with channel:
        before = stub.GetGuards(apb.GetGuardsRequest(), timeout=10).sha256
        assert stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=10).ok
        denied = status_of(lambda: stub.SetGuards(
            apb.SetGuardsRequest(toml=GUARDS_TOML.replace("1000.0", "999.0")), timeout=10))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
        assert stub.GetGuards(apb.GetGuardsRequest(), timeout=10).sha256 == before
    subject = "mtls:CN=risk-team,O=Bank"
    assert served.query("SELECT caller, status, detail->>'rpc' FROM audit_log "
                        "WHERE kind = 'audit' ORDER BY seq") == [
        (subject, "OK", "GetGuards"), (subject, "OK", "VerifyLedger"),
        (subject, "PERMISSION_DENIED", "SetGuards"), (subject, "OK", "GetGuards")]
    ((message,),) = served.query("SELECT message FROM audit_log WHERE status = "
                                 "'PERMISSION_DENIED'")
    assert "--audit-access" in message
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and "has no --audit-access" in r.getMessage()]
    assert len(warnings) == 1 and served.audit_address in warnings[0]
    assert "client certificate" in warnings[0] and "admin" in warnings[0]


def test_mtls_identities_get_roles_from_the_access_file(started: Start, pki: Pki,
                                                        affine: Path, tmp_path: Path) -> None:
    access = tmp_path / "audit-access.toml"
    add_identity(access, pki.risk_team.subject, "auditor")
    guards = tmp_path / "guards.toml"
    guards.write_text(GUARDS_TOML)
    served = started(affine, tmp_path / "ledger.duckdb", guards=guards, audit_access=access,
                     **tls(pki, tls_client_ca=pki.ca.cert))
    with triton(served.address, ca=pki.ca.cert, client=pki.risk_team) as client:
        infer(client, "r-1")  # the inference port needs no role: --inference-access is off
    channel, stub = audit_stub(served.audit_address, ca=pki.ca.cert, client=pki.risk_team)
    with channel:
        assert get_record(stub, "r-1").caller == "mtls:CN=risk-team,O=Bank"
        denied = status_of(lambda: stub.SetGuards(apb.SetGuardsRequest(toml=GUARDS_TOML),
                                                  timeout=10))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
    # A certificate the CA signed but the access file does not name: no role at all.
    channel, stub = audit_stub(served.audit_address, ca=pki.ca.cert, client=pki.stranger)
    with channel:
        unknown = status_of(lambda: get_record(stub, "r-1"))
        assert unknown == grpc.StatusCode.UNAUTHENTICATED
    assert served.query("SELECT caller, status, detail->>'rpc' FROM audit_log "
                        "WHERE kind = 'audit' ORDER BY seq") == [
        ("mtls:CN=risk-team,O=Bank", "OK", "GetRecord"),
        ("mtls:CN=risk-team,O=Bank", "PERMISSION_DENIED", "SetGuards"),
        ("mtls:CN=stranger,O=Bank", "UNAUTHENTICATED", "GetRecord"),
    ]


def test_mtls_common_name_cannot_pose_as_another_subject(started: Start, pki: Pki,
                                                         affine: Path, tmp_path: Path) -> None:
    """A certificate whose only attribute is CN "risk-team,O=Bank" has the subject
    `CN=risk-team\\,O=Bank`; it must not match the identity `CN=risk-team,O=Bank`."""
    sneaky = pki.ca.issue("sneaky", "risk-team,O=Bank", organisation=None)
    assert sneaky.subject == "CN=risk-team\\,O=Bank"
    access = tmp_path / "audit-access.toml"
    add_identity(access, pki.risk_team.subject, "admin")
    served = started(affine, tmp_path / "ledger.duckdb", audit_access=access,
                     **tls(pki, tls_client_ca=pki.ca.cert))
    channel, stub = audit_stub(served.audit_address, ca=pki.ca.cert, client=sneaky)
    with channel:
        assert status_of(lambda: stub.VerifyLedger(apb.VerifyLedgerRequest(), timeout=10)) == \
            grpc.StatusCode.UNAUTHENTICATED
    assert served.query("SELECT caller, status FROM audit_log WHERE kind = 'audit'") == [
        ("mtls:CN=risk-team\\,O=Bank", "UNAUTHENTICATED")]


def test_mtls_identity_with_caller_role_may_infer(started: Start, pki: Pki, affine: Path,
                                                  tmp_path: Path) -> None:
    access = tmp_path / "inference-access.toml"
    add_identity(access, "CN=risk-team", "caller")  # a CN alone names the certificate too
    served = started(affine, tmp_path / "ledger.duckdb", audit=False, inference_access=access,
                     **tls(pki, tls_client_ca=pki.ca.cert))
    with triton(served.address, ca=pki.ca.cert, client=pki.risk_team) as client:
        infer(client, "c-1")
    with triton(served.address, ca=pki.ca.cert, client=pki.stranger) as client:
        assert status_of(lambda: infer(client, "c-2")) == grpc.StatusCode.UNAUTHENTICATED
    rows = served.query("SELECT caller, status FROM records ORDER BY seq")
    assert rows[0] == ("mtls:CN=risk-team,O=Bank", "OK")
    assert rows[1][1] == "UNAUTHENTICATED"
    assert len(rows) == 2


def test_refused_inference_call_names_the_certificate(started: Start, pki: Pki, affine: Path,
                                                      tmp_path: Path) -> None:
    access = tmp_path / "inference-access.toml"
    add_identity(access, pki.risk_team.subject, "caller")
    served = started(affine, tmp_path / "ledger.duckdb", audit=False, inference_access=access,
                     **tls(pki, tls_client_ca=pki.ca.cert))
    with triton(served.address, ca=pki.ca.cert, client=pki.stranger) as client:
        assert status_of(lambda: infer(client, "n-1")) == grpc.StatusCode.UNAUTHENTICATED
    assert served.query("SELECT caller, status FROM records") == [
        ("mtls:CN=stranger,O=Bank", "UNAUTHENTICATED")]


# ── TLS to the upstream (forwarding mode) ──────────────────────────────────────────────

def test_forwarding_over_tls_with_upstream_ca(started: Start, pki: Pki, affine: Path,
                                              tmp_path: Path) -> None:
    """Forwarding with --upstream-ca to a TLS upstream works.

    The upstream is a second mlwitness sidecar in embedded mode serving the same ONNX
    file over TLS: the simplest honest v2 server that serves TLS and can require client
    certificates. What is under test is the forwarder's TLS client side."""
    upstream = started(affine, tmp_path / "upstream.duckdb", audit=False, **tls(pki))
    front = started(affine, tmp_path / "front.duckdb", audit=False,
                    upstream=upstream.address, upstream_ca=pki.ca.cert)
    with triton(front.address) as client:
        infer(client, "f-1")
    assert front.query("SELECT request_id, status FROM records") == [("f-1", "OK")]
    ((rid, status, caller),) = upstream.query("SELECT request_id, status, caller FROM records")
    assert (rid, status, caller[:15]) == ("f-1", "OK", "ipv4:127.0.0.1:")


def test_forwarding_with_mtls_to_the_upstream(started: Start, pki: Pki, affine: Path,
                                              tmp_path: Path) -> None:
    """--upstream-cert/--upstream-key against an upstream (a second, embedded-mode mlwitness
    sidecar over TLS) that requires client certificates: the upstream records the
    forwarder's certificate subject; a forwarder without one is refused (UNAVAILABLE)."""
    upstream = started(affine, tmp_path / "upstream.duckdb", audit=False,
                       **tls(pki, tls_client_ca=pki.ca.cert))
    front = started(affine, tmp_path / "front.duckdb", audit=False,
                    upstream=upstream.address, upstream_ca=pki.ca.cert,
                    upstream_cert=pki.sidecar_client.cert, upstream_key=pki.sidecar_client.key)
    with triton(front.address) as client:
        infer(client, "fm-1")
    assert upstream.query("SELECT request_id, status, caller FROM records") == [
        ("fm-1", "OK", "mtls:CN=mlwitness-sidecar,O=Bank")]
    # The same forwarder without a client certificate: the upstream refuses the handshake.
    bare = started(affine, tmp_path / "bare.duckdb", audit=False,
                   upstream=upstream.address, upstream_ca=pki.ca.cert)
    with triton(bare.address) as client:
        assert status_of(lambda: infer(client, "fm-2")) == grpc.StatusCode.UNAVAILABLE
    assert bare.query("SELECT request_id, status FROM records") == [("fm-2", "UNAVAILABLE")]


@pytest.mark.parametrize("upstream_ca", [None, "rogue"], ids=["no-upstream-ca", "wrong-ca"])
def test_forwarding_to_a_tls_upstream_without_its_ca_is_unavailable(
        started: Start, pki: Pki, affine: Path, tmp_path: Path, upstream_ca: str | None
) -> None:
    """Without --upstream-ca (plaintext to a TLS port), or trusting another CA, forwarding
    to the TLS upstream (an embedded-mode mlwitness sidecar) fails with UNAVAILABLE."""
    upstream = started(affine, tmp_path / "upstream.duckdb", audit=False, **tls(pki))
    front = started(affine, tmp_path / "front.duckdb", audit=False, upstream=upstream.address,
                    upstream_ca=pki.rogue_ca.cert if upstream_ca else None)
    with triton(front.address) as client:
        assert status_of(lambda: infer(client, "u-1")) == grpc.StatusCode.UNAVAILABLE
    assert front.query("SELECT request_id, status FROM records") == [("u-1", "UNAVAILABLE")]
    assert upstream.query("SELECT count(*) FROM records") == [(0,)]
