"""Helpers for the TLS, access-control and minimisation tests (tests/integration/test_tls.py,
tests/integration/test_access.py, tests/integration/test_minimise.py).

Real things only: certificates made on the fly with `cryptography` (a CA, a server
certificate for 127.0.0.1/localhost, client certificates it signs, and a second CA nobody
trusts), real sidecars on 127.0.0.1, tritonclient and the generated audit stub as callers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import ipaddress
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sidecar import Served, start_sidecar, start_with_audit_port
from tritonclient.utils import InferenceServerException

from mlwitness import cli
from mlwitness.protocol import audit_pb2_grpc
from mlwitness.settings import Settings

# ── certificates ───────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM key, written to files."""

    cert: Path
    key: Path
    subject: str  # RFC 4514, as grpc reports it: "CN=risk-team,O=Bank"

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True)
class Authority:
    name: str
    cert: Path  # the CA certificate (PEM): what clients or servers trust
    _key: ec.EllipticCurvePrivateKey
    _certificate: x509.Certificate
    directory: Path

    def issue(self, stem: str, common_name: str, organisation: str | None = "Bank", *,
              server: bool = False) -> KeyPair:
        """A certificate signed by this CA: a server one (SAN 127.0.0.1 and localhost) or a
        client one (extended key usage clientAuth)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(common_name, organisation)
        builder = _builder(subject, self._certificate.subject, key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                        critical=True)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return _write(self.directory, stem, cert, key)


def _name(common_name: str, organisation: str | None) -> x509.Name:
    """O=…, CN=… in that (DER) order, which RFC 4514 writes as "CN=…,O=…"."""
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation)] if organisation else []
    return x509.Name([*parts, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)))


def _write(directory: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> KeyPair:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return KeyPair(cert_path, key_path, cert.subject.rfc4514_string())


def authority(directory: Path, name: str) -> Authority:
    """A new self-signed CA whose files live in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"{name} CA", "Bank")
    cert = (_builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    pair = _write(directory, f"{name}-ca", cert, key)
    return Authority(name, pair.cert, key, cert, directory)


@dataclass(frozen=True)
class Pki:
    """Everything the tests present or trust."""

    ca: Authority  # trusted by servers and clients
    server: KeyPair  # 127.0.0.1 / localhost, signed by `ca`
    risk_team: KeyPair  # client CN=risk-team,O=Bank, signed by `ca`
    stranger: KeyPair  # client CN=stranger,O=Bank, signed by `ca`, granted nothing
    sidecar_client: KeyPair  # client CN=mlwitness-sidecar,O=Bank: the forwarder upstream
    rogue_ca: Authority  # trusted by nobody
    rogue_server: KeyPair  # 127.0.0.1, signed by the rogue CA
    rogue_client: KeyPair  # client CN=risk-team,O=Bank, signed by the rogue CA


def make_pki(directory: Path) -> Pki:
    ca = authority(directory / "trusted", "trusted")
    rogue = authority(directory / "rogue", "rogue")
    return Pki(
        ca=ca,
        server=ca.issue("server", "mlwitness.local", server=True),
        risk_team=ca.issue("risk-team", "risk-team"),
        stranger=ca.issue("stranger", "stranger"),
        sidecar_client=ca.issue("sidecar", "mlwitness-sidecar"),
        rogue_ca=rogue,
        rogue_server=rogue.issue("server", "mlwitness.local", server=True),
        rogue_client=rogue.issue("risk-team", "risk-team"),
    )


# ── sidecars with their audit port ─────────────────────────────────────────────────────


def serve(model: Path, ledger: Path, *, audit: bool = True, **overrides: Any) -> Served:
    """A sidecar on 127.0.0.1 (inference port 0). Settings.audit_port = 0 disables the audit
    server; with `audit` it gets a free one (`start_with_audit_port`)."""
    values: dict[str, Any] = dict(model=Path(model), ledger=Path(ledger), host="127.0.0.1",
                                  port=0, audit_port=0, metrics_port=0, durability="write",
                                  drain_timeout=2.0)
    values.update(overrides)
    return Served(start_with_audit_port(values) if audit else start_sidecar(Settings(**values)))


@contextlib.contextmanager
def sidecars() -> Iterator[Callable[..., Served]]:
    """`with sidecars() as start:` — `start(model, ledger, **settings)` is `serve`; every
    sidecar started is stopped on leaving the block."""
    running: list[Served] = []

    def start(model: Path, ledger: Path, **overrides: Any) -> Served:
        served = serve(model, ledger, **overrides)
        running.append(served)
        return served

    try:
        yield start
    finally:
        for served in reversed(running):
            served.stop()


# ── callers ────────────────────────────────────────────────────────────────────────────


def triton(address: str, *, ca: Path | None = None, client: KeyPair | None = None
           ) -> grpcclient.InferenceServerClient:
    """tritonclient over TLS when given a CA (and mTLS with a client pair), else plaintext."""
    if ca is None and client is None:
        return grpcclient.InferenceServerClient(address)
    return grpcclient.InferenceServerClient(
        address, ssl=True, root_certificates=str(ca) if ca else None,
        private_key=str(client.key) if client else None,
        certificate_chain=str(client.cert) if client else None)


def channel(address: str, *, ca: Path | None = None, client: KeyPair | None = None
            ) -> grpc.Channel:
    """A grpc channel: TLS when given a CA (mTLS with a client pair), else plaintext."""
    if ca is None and client is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None)
    return grpc.secure_channel(address, credentials)


def audit_stub(address: str, **kwargs: Any) -> tuple[grpc.Channel, Any]:
    ch = channel(address, **kwargs)
    return ch, audit_pb2_grpc.AuditServiceStub(ch)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# ── access files ───────────────────────────────────────────────────────────────────────


def add_token(path: Path, name: str, role: str) -> str:
    """`mlwitness token add --file PATH --name NAME --role ROLE` (run in-process, as the
    console script would); returns the token it prints once."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["token", "add", "--file", str(path), "--name", name, "--role", role])
    assert code == 0, err.getvalue()
    token = out.getvalue().strip()
    assert token.startswith("mlw_"), out.getvalue()
    return token


def add_identity(path: Path, subject: str, role: str) -> None:
    """Grant an mTLS certificate subject a role in an access file."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f'\n[[identities]]\nsubject = {json.dumps(subject)}\nrole = "{role}"\n')


def status_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status a call fails with (fails the test when it succeeds). Takes tritonclient's
    InferenceServerException ("StatusCode.UNAVAILABLE") and grpc.RpcError alike."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    except InferenceServerException as exc:
        name = (exc.status() or "").removeprefix("StatusCode.")
        return grpc.StatusCode[name]
    pytest.fail("the call succeeded; expected it to be refused")
