"""Who may ask what: bearer tokens (hashed at rest) and mTLS identities mapped to roles.

Access file (TOML, `--audit-access` / `--inference-access`):

    [[tokens]]
    name = "alice"                 # who: recorded on the ledger as token:alice
    role = "auditor"               # auditor | admin | caller
    sha256 = "9f86d08…"            # SHA-256 (hex) of the token; the token itself is never stored

    [[identities]]
    subject = "CN=risk-team,O=Bank"   # an mTLS client certificate subject (or its CN)
    role = "admin"

Roles: `auditor` reads records, replays, asks what-if, drift, bias and violations; `admin`
can also change guards and erase records; `caller` may call the inference port when it
requires credentials.
A call with no credentials is UNAUTHENTICATED, one with unknown credentials too, and a
known principal without the role an RPC needs is PERMISSION_DENIED. Tokens travel as gRPC
metadata `authorization: Bearer <token>`.

With mTLS and no access file, a verified client certificate gets the role its port needs
(`caller` or `auditor`) and no more: only an access file can make anyone `admin`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlwitness.errors import ConfigError, PermissionDenied, Unauthenticated

ROLES = ("caller", "auditor", "admin")
# RPCs that need more than the auditor role.
ADMIN_RPCS = frozenset({"SetGuards", "Erase"})


@dataclass(frozen=True)
class Principal:
    name: str  # e.g. token:alice, mtls:CN=risk-team,O=Bank
    role: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "mlw_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Access:
    """The parsed access file: token hashes and certificate subjects with their roles."""

    tokens: dict[str, tuple[str, str]]  # sha256 → (name, role)
    identities: dict[str, str]  # subject or CN → role

    @classmethod
    def load(cls, path: Path) -> Access:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read access file {path}: {exc}") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "access file") -> Access:
        unknown = set(data) - {"tokens", "identities"}
        if unknown:
            raise ConfigError(f"{where}: unknown sections {sorted(unknown)}")
        tokens: dict[str, tuple[str, str]] = {}
        for i, entry in enumerate(_tables(data, "tokens", where)):
            name, role, digest = entry.get("name"), entry.get("role"), entry.get("sha256", "")
            if not isinstance(name, str) or not isinstance(digest, str):
                raise ConfigError(f"{where}: tokens[{i}]: name and sha256 must be strings "
                                  "(in quotes)")
            if not name or role not in ROLES:
                raise ConfigError(f"{where}: tokens[{i}] needs a name and a role in {ROLES}")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ConfigError(f"{where}: tokens[{i}] ({name}): sha256 must be 64 hex "
                                  "digits (the hash of the token, never the token)")
            tokens[digest.lower()] = (name, role)
        identities: dict[str, str] = {}
        for i, entry in enumerate(_tables(data, "identities", where)):
            subject, role = entry.get("subject"), entry.get("role")
            if not isinstance(subject, str) or not subject or role not in ROLES:
                raise ConfigError(f"{where}: identities[{i}] needs a subject and a role in "
                                  f"{ROLES}")
            identities[subject] = role
        return cls(tokens, identities)


def _tables(data: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """`[[key]]` entries; ConfigError for anything else (e.g. `[key]`, one table)."""
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{where}: {key} must be [[{key}]] tables (double brackets), one "
                          f"per entry")
    return entries


def _level(role: str) -> int:
    return ROLES.index(role)


class Authenticator:
    """Turns presented credentials into a Principal and checks its role for an RPC."""

    def __init__(self, access: Access | None, *, required_role: str) -> None:
        self.access = access
        self.required_role = required_role

    @property
    def enabled(self) -> bool:
        return self.access is not None

    def authenticate(self, token: str | None, subjects: list[str]) -> Principal | None:
        """The principal behind the credentials; None when access control is off and no
        verified certificate (`subjects`, from mTLS) names the caller."""
        if self.access is None:
            if subjects:  # mTLS alone: the port's own role, never admin
                return Principal(f"mtls:{subjects[0]}", self.required_role)
            return None
        if token:
            digest = hash_token(token)
            for known, (name, role) in self.access.tokens.items():
                if hmac.compare_digest(known, digest):
                    return Principal(f"token:{name}", role)
            raise Unauthenticated("unknown or revoked token")
        for subject in subjects:
            granted = self.access.identities.get(subject)
            if granted is not None:  # named by the full subject, whichever form matched
                return Principal(f"mtls:{subjects[0]}", granted)
        if subjects:
            raise Unauthenticated(f"client certificate {subjects[0]!r} is not granted a role")
        raise Unauthenticated("credentials required: send `authorization: Bearer <token>` "
                              "or a client certificate")

    def authorize(self, principal: Principal | None, rpc: str) -> None:
        if principal is None:
            return
        needed = "admin" if rpc in ADMIN_RPCS else self.required_role
        if _level(principal.role) < _level(needed):
            how = "" if self.access is not None else (
                " (granted only by an access file: --audit-access)")
            raise PermissionDenied(f"{principal.name} has role {principal.role}; {rpc} needs "
                                   f"{needed}{how}")


def bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
