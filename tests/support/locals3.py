"""A local S3 endpoint (moto's server on 127.0.0.1), for the tests and benchmarks that need a real one.

The code under test talks HTTP to it through the standard ``AWS_*`` variables, exactly as it would
to S3, so nothing in the package knows it is not AWS.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from support.localpg import ServiceUnavailable, free_port


@dataclass
class S3Server:
    """A running local endpoint and the variables that point boto3 at it."""

    endpoint: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )


def s3_environment(endpoint: str) -> dict[str, str]:
    """The variables that point boto3 at ``endpoint`` with moto's dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def moto_endpoint(log: IO[bytes] | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``moto_server`` on a free port; yield its URL; stop it on exit.

    ``env`` is the server's environment (e.g. ``INITIAL_NO_AUTH_ACTION_COUNT`` to enforce IAM).
    """
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        raise ServiceUnavailable("moto_server is missing: install moto[server] (make setup does)")
    port = free_port()
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log or subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise ServiceUnavailable(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
