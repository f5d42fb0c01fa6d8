"""The real cluster for integration tests, on loopback only.

- PostgreSQL: a fresh database per session on 127.0.0.1:5432.
- RabbitMQ: a fresh virtual host per session (no stray messages).
- Redis: 127.0.0.1:6379 (barrier keys are unique per group).
- OpenSSH: an ``sshd`` with its own config and host key on a free port,
  user ``dxsftp`` (password and key).
- SMTP: aiosmtpd on a free port, keeping every message.
A service that does not answer fails the session (CI never skips).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller

SFTP_USER = "dxsftp"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Where the SFTP test user's password is kept between test sessions (root only).
PASSWORD_FILE = Path("/var/lib/dx-test/sftp-password")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Sftp:
    """The test sshd: where it listens, its pinned key, its client root on disk."""

    port: int
    host_key: str
    root: Path
    password: str
    private_key: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start sshd (again) on the same port with the same keys."""
        log = open(self.workdir / "sshd.log", "ab")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.workdir / "sshd_config")],
                                     stderr=log)
        wait_port(self.port)

    def stop(self) -> None:
        """Stop sshd and the sessions it serves: a transfer in progress breaks off."""
        if self.proc is None:
            return
        sessions = _descendants(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(10)
        for pid in sessions:  # the listener's exit leaves its session processes running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def put(self, rel: str, data: bytes) -> Path:
        """Place a file in the client's space as the SFTP user would."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        old = time.time() - 60  # settled: not being written any more
        os.utime(path, (old, old))
        for p in (path, *[q for q in path.parents if self.root in q.parents or q == self.root]):
            shutil.chown(p, SFTP_USER, SFTP_USER)
        return path


def _sftp_user_password() -> str:
    """The test user's password: made once per machine and kept in a root-only file, so that
    test sessions running side by side (several checkouts) do not change it under each other."""
    PASSWORD_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(PASSWORD_FILE.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["id", SFTP_USER], capture_output=True).returncode != 0:
            _run("useradd", "--create-home", "--shell", "/usr/sbin/nologin", SFTP_USER)
            PASSWORD_FILE.unlink(missing_ok=True)
        if not PASSWORD_FILE.exists():
            PASSWORD_FILE.touch(mode=0o600)
            PASSWORD_FILE.write_text(secrets.token_urlsafe(16))
        password = PASSWORD_FILE.read_text()
        subprocess.run(["chpasswd"], input=f"{SFTP_USER}:{password}".encode(), check=True, capture_output=True)
        return password


def _descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, and theirs, by id."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return children + [d for c in children for d in _descendants(c)]


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sftp]:
    """An OpenSSH sshd on a free loopback port with a config of our own."""
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("OpenSSH sshd is missing: run scripts/services.sh (installs Debian's openssh-server)")
    work = Path(tempfile.mkdtemp(prefix="dx-sshd-"))  # outside pytest's 0700 folder: dxsftp must enter it
    os.chmod(work, 0o755)
    password = _sftp_user_password()
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host_ed25519"))
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "client_ed25519"))
    keys = work / "authorized_keys"
    keys.mkdir()
    shutil.copy(work / "client_ed25519.pub", keys / SFTP_USER)
    root = work / "exchange"
    root.mkdir()
    shutil.chown(root, SFTP_USER, SFTP_USER)
    port = free_port()
    (work / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {work}/host_ed25519
PidFile {work}/sshd.pid
AuthorizedKeysFile {keys}/%u
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers {SFTP_USER}
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    host_key = " ".join((work / "host_ed25519.pub").read_text().split()[:2])
    server = Sftp(port, host_key, root, password, (work / "client_ed25519").read_text(), work)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Mailbox:
    """Every message the test SMTP server received."""

    port: int
    messages: list[Message] = field(default_factory=list)

    def wait_for(self, predicate: Callable[[Message], bool], timeout_s: float = 20) -> Message:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.messages:
                if predicate(m):
                    return m
            time.sleep(0.1)
        raise AssertionError(f"no such e-mail within {timeout_s} s; got {[m['Subject'] for m in self.messages]}")


@pytest.fixture(scope="session")
def smtp() -> Iterator[Mailbox]:
    box = Mailbox(free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture(scope="session")
def cluster_env(tmp_path_factory: pytest.TempPathFactory, smtp: Mailbox, sshd: Sftp) -> Iterator[dict[str, str]]:
    """A private database and RabbitMQ vhost; the DX_* environment pointing at them."""
    name = f"dx_test_{os.getpid()}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}; run scripts/services.sh")
    try:
        _run("rabbitmqctl", "-q", "add_vhost", name)
        _run("rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"RabbitMQ did not accept a test vhost: {exc.stderr!r}; run scripts/services.sh")
    home = tmp_path_factory.mktemp("dxhome")
    env = {
        "DX_HOME": str(home),
        "DX_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        "DX_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{name}",
        "DX_REDIS_URL": "redis://127.0.0.1:6379/0",
        "DX_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}",
        "DX_STAGING_DIR": str(home / "staging"),
        "DX_TEST_SFTP_PASSWORD": sshd.password,
        "DX_TEST_SFTP_KEY": sshd.private_key,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from dx.shared.settings import get_settings

    get_settings.cache_clear()
    from dx.shared import db

    db.migrate()
    from dx.workers.broker import setup

    setup()
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Workers:
    """Separate ``dx worker`` processes, stopped with SIGTERM at the end."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = dict(env), logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 2, threads: int = 1) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            log = open(self.logdir / f"worker-{len(self.procs)}.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "dx", "worker", "--threads", str(threads)],
                                    env={**os.environ, **self.env}, stderr=log, stdout=log)
            self.procs.append(proc)
            started.append(proc)
        return started

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


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
