"""The auditor's connection to the audit service: address, TLS and the access token.

`stub` builds the `AuditServiceStub` for `mlwitness audit` from its options and the
environment. The address is `--target`, else `MLWITNESS_AUDIT_TARGET`, else
`DEFAULT_TARGET`. The token is read from `--token-file`, else `MLWITNESS_TOKEN_FILE`, else
taken from `MLWITNESS_TOKEN`. With `--ca` or `--cert` the channel is TLS (mTLS with
`--cert`/`--key`) and the token travels as call credentials; otherwise the channel is
plaintext and the token is added to each call's metadata. Messages have no size limit.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import grpc

from mlwitness.protocol import audit_pb2_grpc
from mlwitness.settings import Settings

# Where `mlwitness serve` puts its audit service by default.
DEFAULT_TARGET = f"{Settings.host}:{Settings.audit_port}"


class _Token(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, context: Any, callback: Any) -> None:
        callback((("authorization", f"Bearer {self.token}"),), None)


def _read_token(args: argparse.Namespace) -> str | None:
    path = args.token_file or os.environ.get("MLWITNESS_TOKEN_FILE")
    if path:
        return Path(path).expanduser().read_text().strip()
    return os.environ.get("MLWITNESS_TOKEN") or None


def stub(args: argparse.Namespace) -> audit_pb2_grpc.AuditServiceStub:
    """A stub on a new channel to the audit service named by `args` (see above)."""
    target = args.target or os.environ.get("MLWITNESS_AUDIT_TARGET") or DEFAULT_TARGET
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    token = _read_token(args)
    if args.ca or args.cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes() if args.ca else None,
            private_key=Path(args.key).read_bytes() if args.key else None,
            certificate_chain=Path(args.cert).read_bytes() if args.cert else None,
        )
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.metadata_call_credentials(_Token(token))
            )
        channel = grpc.secure_channel(target, credentials, options=options)
        return audit_pb2_grpc.AuditServiceStub(channel)
    channel = grpc.insecure_channel(target, options=options)
    if token:  # plaintext: attach the token per call (only sensible on a trusted network)
        channel = grpc.intercept_channel(channel, _TokenInterceptor(token))
    return audit_pb2_grpc.AuditServiceStub(channel)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)
