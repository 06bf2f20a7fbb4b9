"""TLS for both ports and the upstream channel, and the caller's identity on a call."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc

from mlwitness.auth import Authenticator, Principal, bearer
from mlwitness.errors import ConfigError, PermissionDenied, Unauthenticated


def _read(path: Any, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc


def server_credentials(cert: Any, key: Any, client_ca: Any) -> grpc.ServerCredentials | None:
    """TLS server credentials; with a client CA, clients must present a certificate it
    signed (mTLS). None when no certificate is configured (plaintext)."""
    if not cert and not key:
        if client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise ConfigError("--tls-cert and --tls-key go together")
    _check_pair(cert, key, "--tls-cert", "--tls-key")
    if client_ca:
        _check_ca(client_ca, "--tls-client-ca")
    root = _read(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def channel_credentials(ca: Any, cert: Any, key: Any) -> grpc.ChannelCredentials | None:
    """Credentials for the upstream channel (TLS with --upstream-ca; mTLS adds a client
    certificate). None for plaintext."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ConfigError("--upstream-cert and --upstream-key go together")
    if cert:
        _check_pair(cert, key, "--upstream-cert", "--upstream-key")
    if ca:
        _check_ca(ca, "--upstream-ca")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "upstream CA") if ca else None,
        private_key=_read(key, "upstream client key") if key else None,
        certificate_chain=_read(cert, "upstream client certificate") if cert else None,
    )


def _check_pair(cert: Any, key: Any, cert_flag: str, key_flag: str) -> None:
    """gRPC reports a bad certificate or key only as "failed to bind" (server) or a
    handshake that never succeeds (client): check them here and say which is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Judge only "is this a certificate and its key", not OpenSSL's security level (a
    # 1024-bit key is refused at level 2, while gRPC's BoringSSL serves it).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ConfigError(f"{cert_flag} {cert} and {key_flag} {key} are not a PEM certificate "
                          f"and its private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {cert_flag}/{key_flag}: {exc}") from None


def _check_ca(ca: Any, flag: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise ConfigError(f"{flag} {ca} holds no PEM CA certificate ({exc.reason or exc})"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {ca}: {exc}") from None


def _rfc4514(value: str) -> str:
    """An attribute value escaped as in an RFC 4514 name (as grpc renders x509_subject), so
    a CN such as "risk-team,O=Bank" cannot pass for the subject CN=risk-team,O=Bank."""
    last = len(value) - 1
    return "".join("\\" + c if c in '"+,;<>\\' or (i == 0 and c in "# ")
                   or (i == last and c == " ") else c for i, c in enumerate(value))


def subjects(context: Any) -> list[str]:
    """The verified client certificate's subject (and CN=…) from an mTLS call."""
    auth = context.auth_context() or {}
    out = []
    for key in ("x509_subject", "x509_common_name"):
        for value in auth.get(key, ()):
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            out.append(text if key == "x509_subject" else f"CN={_rfc4514(text)}")
    return out


def identify(auth: Authenticator, context: Any, rpc: str, *, mtls: bool = False
             ) -> tuple[str, Principal | None]:
    """(caller name for the ledger, principal). Raises Unauthenticated/PermissionDenied.
    Without access control or mTLS the caller is the network peer; with mTLS alone, the
    certificate, in the port's own role (never admin). A refusal carries `caller`: the
    identity refused (token name, certificate subject) or "" if unknown."""
    if not auth.enabled and not mtls:
        return context.peer() or "", None
    found = subjects(context) if mtls else []
    try:
        principal = auth.authenticate(bearer(context.invocation_metadata()), found)
    except Unauthenticated as exc:  # a verified certificate still says who was refused
        exc.caller = f"mtls:{found[0]}" if found else ""  # type: ignore[attr-defined]
        raise
    try:
        auth.authorize(principal, rpc)
    except PermissionDenied as exc:
        exc.caller = principal.name if principal else ""  # type: ignore[attr-defined]
        raise
    if principal is not None:
        return principal.name, principal
    return context.peer() or "", None
