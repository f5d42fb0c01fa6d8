"""The real cluster for integration tests, on loopback only.

- PostgreSQL: a fresh database per session on 127.0.0.1:5432.
- RabbitMQ: a fresh virtual host per session (no stray messages).
- Redis: 127.0.0.1:6379 (barrier keys are unique per group).
- OpenSSH: an ``sshd`` with its own config and host key on a free port,
  user ``dxsftp`` (password and key).
- SMTP: aiosmtpd on a free port, keeping every message.
- S3: moto's S3-compatible server on a free port (the object-storage staging tests).
- A browser: Debian's Chromium, headless, driven by Playwright (the console's tests).
A service that does not answer fails the session (CI never skips).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from dx.devkit.cluster import ServiceDown, Workers, private_services
from dx.devkit.s3 import S3, running_s3
from dx.devkit.smtp import Smtp
from dx.devkit.sshd import SSHD, Sftp, free_port, running_sshd


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sftp]:
    """An OpenSSH sshd on a free loopback port with a config of our own."""
    if not SSHD.exists():
        pytest.fail("OpenSSH sshd is missing: run scripts/services.sh (installs Debian's openssh-server)")
    with running_sshd() as server:
        yield server


class Mailbox(Smtp):
    """The session's SMTP server: every message it received, and a wait for one."""

    def wait_for(self, predicate: Callable[[Message], bool], timeout_s: float = 20) -> Message:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.messages:
                if predicate(m):
                    return m
            time.sleep(0.1)
        raise AssertionError(f"no such e-mail within {timeout_s} s; got {[m['Subject'] for m in self.messages]}")


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """An S3-compatible server (moto's) on a free loopback port, with the staging bucket made."""
    with running_s3() as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing: run scripts/services.sh (it installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def smtp() -> Iterator[Mailbox]:
    box = Mailbox()
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="session")
def cluster_env(tmp_path_factory: pytest.TempPathFactory, smtp: Mailbox, sshd: Sftp) -> Iterator[dict[str, str]]:
    """A private database and RabbitMQ vhost; the DX_* environment pointing at them."""
    # The watchdog leaves alone the runs that other tests leave going (a scheduler of a later test
    # would re-drive them); tests of the watchdog set their own DX_STALL_S.
    extra = {"DX_SMTP_URL": smtp.url,
             "DX_SECRET_TEST_SFTP_PASSWORD": sshd.password, "DX_SECRET_TEST_SFTP_KEY": sshd.private_key,
             "DX_STALL_S": "86400", "DX_RUN_TIMEOUT_S": "0",
             "DX_MIN_CHUNK_BYTES": "1"}  # tests cut files of a few records into several chunks
    try:
        with private_services(f"dx_test_{os.getpid()}", tmp_path_factory.mktemp("dxhome"), extra) as env:
            # tests call stages in this process too: their later stages go to this vhost's workers
            from dx.workers.broker import setup

            setup()
            yield env
    except ServiceDown as exc:
        pytest.fail(str(exc))


@pytest.fixture
def workers(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(cluster_env, tmp_path)
    yield w
    w.stop_all()


@dataclass
class Api:
    """A ``python -m dx serve`` process on a free loopback port."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str | None = None) -> Any:
        """An httpx client for the server, with the token as bearer if given."""
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def api(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """``dx serve`` as a real subprocess, answering /healthz."""
    import httpx

    port = free_port()
    log_path = tmp_path_factory.mktemp("api") / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dx", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env={**os.environ, **cluster_env}, stdout=log, stderr=log)
    server = Api(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"dx serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dx serve did not answer /healthz within 30 s: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
