"""A real S3 API for tests: moto's server on 127.0.0.1, in this process.

    @pytest.fixture
    def s3_server(monkeypatch):
        with running_s3(monkeypatch) as server:
            yield server

    bucket = s3_server.create_bucket(object_lock=True)
    store = open_store(f"s3://{bucket}/prefix")

`running_s3` points the standard AWS environment (fake credentials, region, endpoint) at the
server for the test and takes it away afterwards, so that code under test finds the server
exactly as it would find S3. Bucket names are unique per call: moto keeps its state per
process, and the server's state is wiped when the context ends.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's account for any access key it does not know

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise


class S3Server:
    """moto's S3 on 127.0.0.1; `stop` closes the port (callers are refused) and `start`
    opens it again on the same port, with every bucket and object still there."""

    def __init__(self) -> None:
        self.port = 0
        self._moto: ThreadedMotoServer | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        moto.start()
        self.port = moto.get_host_and_port()[1]
        self._moto = moto

    def stop(self) -> None:
        moto, self._moto = self._moto, None
        if moto is None:
            return
        moto.stop()
        # ThreadedMotoServer.stop only ends the serving loop; without this the socket
        # would go on accepting connections that nobody answers, and hold the port.
        server: Any = moto._server
        server.server_close()

    def client(self) -> Any:
        """A plain boto3 client of this server, for fixtures to arrange what tests need."""
        if self._client is None:
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self._client

    def create_bucket(self, *, object_lock: bool = False) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(
            Bucket=name,
            CreateBucketConfiguration={"LocationConstraint": REGION},
            ObjectLockEnabledForBucket=object_lock,
        )
        return name

    def seed(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Put many objects straight into the server's memory: through HTTP, moto takes
        about 13 ms an object on the test machines, and listing tests need thousands."""
        from moto.s3.models import s3_backends

        backend = s3_backends[ACCOUNT]["aws"]
        for key, data in objects.items():
            backend.put_object(bucket, key, data)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass


def point_aws_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Set the standard AWS environment of this test to fake credentials for `endpoint`,
    and hide anything of the machine's (profiles, web identity, instance metadata)."""
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@contextlib.contextmanager
def running_s3(monkeypatch: pytest.MonkeyPatch | None = None) -> Iterator[S3Server]:
    """A started S3Server, wiped and stopped at the end; with `monkeypatch`, the AWS
    environment of the test points at it. Starting one takes milliseconds, but stopping
    one takes up to half a second (werkzeug's polling): share one per module where tests
    do not stop it, and give the test environment to each test with `point_aws_at`."""
    server = S3Server()
    server.start()
    if monkeypatch is not None:
        point_aws_at(monkeypatch, server.endpoint)
    try:
        yield server
    finally:
        if server._moto is None:  # a test stopped it: start it to wipe its state
            server.start()
        server.reset()
        server.stop()
