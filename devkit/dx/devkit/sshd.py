"""A private OpenSSH sshd on a free loopback port, for the tests and the benchmark.

Independent of ``dx`` and of pytest: it starts Debian's ``/usr/sbin/sshd``
with a config, host key and client key of its own, serving SFTP to user
``dxsftp`` (password and key), can stop and restart it, and removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: The SFTP user the server accepts (created if missing).
SFTP_USER = "dxsftp"
#: Debian's OpenSSH server binary.
SSHD = Path("/usr/sbin/sshd")
#: Where the SFTP test user's password is kept between sessions (root only).
PASSWORD_FILE = Path("/var/lib/dx-test/sftp-password")


def free_port() -> int:
    """A TCP port nothing listens on, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
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
    """The running sshd: where it listens, its pinned key, its client root on disk."""

    port: int
    host_key: str
    root: Path
    password: str
    private_key: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    user: str = SFTP_USER

    def start(self) -> None:
        """Start sshd (again) on the same port with the same keys."""
        with open(self.workdir / "sshd.log", "ab") as log:
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.workdir / "sshd_config")],
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

    def freeze_sessions(self) -> None:
        """SIGSTOP the sessions it serves: a transfer stalls where it is, as on a network gone quiet."""
        for pid in _descendants(self.proc.pid) if self.proc is not None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def put(self, rel: str, data: bytes) -> Path:
        """Place a file in the client's space as the SFTP user would."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.adopt(path)

    def adopt(self, path: Path) -> Path:
        """Hand a file written under the root to the SFTP user, settled (not being written any more)."""
        old = time.time() - 60
        os.utime(path, (old, old))
        for p in (path, *[q for q in path.parents if self.root in q.parents or q == self.root]):
            shutil.chown(p, self.user, self.user)
        return path


def _sftp_user_password() -> str:
    """The test user's password: made once per machine and kept in a root-only file, so that
    sessions running side by side (several checkouts) do not change it under each other."""
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


@contextmanager
def running_sshd(sftp_flags: str = "") -> Iterator[Sftp]:
    """An OpenSSH sshd on a free loopback port with a config of our own; stopped on exit.

    ``sftp_flags`` go to its SFTP server (``-P limits``: refuse that extension)."""
    if not SSHD.exists():
        raise RuntimeError("OpenSSH sshd is missing: run scripts/services.sh (installs Debian's openssh-server)")
    work = Path(tempfile.mkdtemp(prefix="dx-sshd-"))  # outside 0700 temp folders: dxsftp must enter it
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
Subsystem sftp internal-sftp {sftp_flags}
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
