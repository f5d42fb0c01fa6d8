"""An S3-compatible server on a free loopback port, for the tests and the cluster harness.

moto's server (``moto_server``, the ``moto[server]`` package) speaks the S3 API over HTTP and keeps
objects in its own process; ``running_s3`` starts it, makes a bucket, yields the DX_STAGING_URL and
credentials that point at it, and stops it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dx.devkit.sshd import free_port, wait_port

#: The executable of moto's server, beside this interpreter's.
MOTO_SERVER = Path(sys.executable).with_name("moto_server")


@dataclass(frozen=True)
class S3:
    """A running server: its endpoint, the staging bucket, and the environment that selects it."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """DX_STAGING_URL and the S3 credentials (any pair: the server checks none)."""
        host = self.endpoint.removeprefix("http://")
        return {"DX_STAGING_URL": f"s3://{self.bucket}/dx?endpoint_override={host}&scheme=http&region=us-east-1",
                "AWS_ACCESS_KEY_ID": "dx-test", "AWS_SECRET_ACCESS_KEY": "dx-test-secret"}

    def keys(self, prefix: str = "") -> list[str]:
        """The keys of the bucket's objects under ``prefix`` (ListObjectsV2, one page)."""
        with urllib.request.urlopen(f"{self.endpoint}/{self.bucket}?list-type=2&prefix={prefix}") as answer:
            body = answer.read().decode()
        return [part.split("</Key>", 1)[0] for part in body.split("<Key>")[1:]]


@contextmanager
def running_s3(bucket: str = "dx-staging") -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1, with ``bucket`` made."""
    if not MOTO_SERVER.exists():
        raise RuntimeError(f"{MOTO_SERVER} is missing: install the test extra (moto[server])")
    port = free_port()
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        server = S3(f"http://127.0.0.1:{port}", bucket)
        urllib.request.urlopen(urllib.request.Request(f"{server.endpoint}/{bucket}", method="PUT")).close()
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
