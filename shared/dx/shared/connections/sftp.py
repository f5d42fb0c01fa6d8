"""The ``sftp`` connection: paramiko with the server's host key pinned.

An unknown or changed host key is a run-level error, never accepted. The
password or private key is read from its ${DX_SECRET_NAME} reference at
connect time and never logged. The TCP connection goes to the addresses
``dx.shared.connections.reach`` checked. A failure is told in our words (an
SFTP status, a socket's error), never by the server's own text, which may
echo anything. Downloads keep many read requests in flight (plain
reads wait for each reply); reads and writes are requested as large as the server
announces it serves (limits@openssh.com); an export's chunks write their parts
into the file, each at its offset.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import posixpath
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import paramiko
from paramiko.buffered_pipe import BufferedPipe
from paramiko.sftp import (
    CMD_DATA,
    CMD_EXTENDED,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_WRITE,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_file import SFTPFile

from dx.shared.config import ConnectionCfg
from dx.shared.connections import (
    UPLOAD_BLOCK_BYTES,
    FileInfo,
    confine,
    match_names,
    reach,
    resolve_secret,
    split_pattern,
)
from dx.shared.errors import STAGING_FULL_ERRNOS, ErrorCode, RunError
from dx.shared.hosts import open_socket
from dx.shared.threads import name_native

#: Key classes tried, in order, for a private key given as text.
KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
#: AES-GCM first: it authenticates as it decrypts, where CTR needs a separate HMAC that paramiko
#: computes in Python per packet.
GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
#: OpenSSH's (8.7+) extension announcing the server's largest packet, read and write, and open handles.
LIMITS = "limits@openssh.com"
#: Read and write request size of a server that announces no limit: paramiko's own, which every server serves.
REQUEST_BYTES = 32 * 1024
#: Largest request: OpenSSH announces 255 KiB; fewer, larger requests are fewer packets for paramiko
#: to handle in Python.
MAX_REQUEST_BYTES = 256 * 1024
#: How long a worker keeps an idle session for its next task on the same connection.
IDLE_S = 60.0
#: Read requests a download keeps outstanding (64 of 255 KiB: 16 MiB on the way).
READS_IN_FLIGHT = 64


class TransferError(OSError):
    """A transfer that went wrong in a way we saw ourselves (its text is ours)."""


def summary(exc: BaseException) -> str:
    """What went wrong, in our words: an SFTP status (no such file, permission denied: paramiko gives
    them an errno) or a socket's error number, never the text that came with it (an SFTP server's
    message for any other status is its own free text)."""
    if isinstance(exc, TransferError):
        return str(exc)
    if isinstance(exc, EOFError):
        return "the server ended the file or the session early"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError):
        return os.strerror(exc.errno) if exc.errno else "the SFTP server answered failure"
    if isinstance(exc, paramiko.SSHException):
        return "the SSH session failed"
    return type(exc).__name__


def _failed(what: str, exc: OSError) -> RunError:
    """A refusal (permission denied) blames the file or folder: SOURCE_UNREADABLE; anything else (a session
    that dropped, a file that came short) the transfer: TRANSFER_FAILED, tried again."""
    code = ErrorCode.SOURCE_UNREADABLE if isinstance(exc, PermissionError) else ErrorCode.TRANSFER_FAILED
    return RunError(code, f"{what}: {summary(exc)}")


@contextmanager
def _in_our_words() -> Iterator[None]:
    """An OSError raised inside as the same kind of error with our text (a missing file stays a
    FileNotFoundError)."""
    try:
        yield
    except OSError as exc:
        if exc.errno:
            raise OSError(exc.errno, os.strerror(exc.errno)) from None
        raise OSError(summary(exc)) from None
    except EOFError as exc:
        raise EOFError(summary(exc)) from None


def _no_delay_socket(cfg: ConnectionCfg) -> socket.socket:
    """A TCP connection to the server's checked addresses that sends each SSH packet at once
    (TCP_NODELAY), from the handshake on: Nagle's algorithm holds back a download's small read
    requests and the handshake's own messages. CONNECTION_FAILED when no address answers."""
    addresses = reach(cfg)
    try:
        return open_socket(addresses, cfg.port, cfg.timeout_s)
    except OSError as exc:
        raise RunError(ErrorCode.CONNECTION_FAILED, f"{cfg.host}:{cfg.port} is not reachable: {summary(exc)}") from None


class _Replies:
    """Where paramiko hands over the replies to a download's read requests (its ``fileobj`` protocol)."""

    def __init__(self) -> None:
        self.by_request: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        self.by_request[num] = kind, msg


def _read_pipelined(sftp: paramiko.SFTPClient, handle: object, size: int, request: int, out: IO[bytes]) -> None:
    """The file's first ``size`` bytes into ``out``, in order, with READS_IN_FLIGHT read requests
    outstanding, every one sent and answered in this thread. paramiko's prefetch sends its requests
    from a thread of its own while the reader spins, holding a lock, until the sender has noted the
    request a reply answers, which on a busy machine starves the sender."""
    replies, pending = _Replies(), deque[tuple[int, int, int]]()  # (request, offset, length), in file order
    offset = 0
    while offset < size or pending:
        while offset < size and len(pending) < READS_IN_FLIGHT:
            length = min(request, size - offset)
            num = sftp._async_request(replies, CMD_READ, handle, int64(offset), int(length))  # type: ignore[attr-defined]
            pending.append((num, offset, length))
            offset += length
        num, at, length = pending.popleft()
        while num not in replies.by_request:
            sftp._read_response()  # type: ignore[attr-defined]  # one reply, handed to whoever asked
        kind, msg = replies.by_request.pop(num)
        while True:
            if kind == CMD_STATUS:
                sftp._convert_status(msg)  # type: ignore[attr-defined]  # raises: EOF, or the server's error
            if kind != CMD_DATA:
                raise TransferError(f"the server answered a read with message type {kind}")
            data = msg.get_string()
            out.write(data)
            at, length = at + len(data), length - len(data)
            if not length:
                break
            # a shorter reply than asked (a server's own limit): the rest by a request of its own
            kind, msg = sftp._request(CMD_READ, handle, int64(at), int(length))  # type: ignore[attr-defined]


class _BytesPipe(BufferedPipe):
    """paramiko's buffer of a channel's incoming data, held in a ``bytearray`` instead of an ``array``:
    an ``array`` moves the rest of its bytes each time a read takes some from its front (each SFTP
    reply is read as its length, then its body, while up to 2 MB wait behind them), a ``bytearray``
    does not."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer += data

    def _buffer_tobytes(self, limit: int | None = None) -> bytes:
        return bytes(memoryview(self._buffer)[:limit])


def _open_sftp(client: paramiko.SSHClient) -> paramiko.SFTPClient:
    """The SFTP session of ``client``'s connection, its channel reading through ``_BytesPipe`` (set
    before the subsystem starts, so no byte has arrived yet)."""
    transport = client.get_transport()
    assert transport is not None
    channel = transport.open_session()
    channel.in_buffer = _BytesPipe()
    channel.invoke_subsystem("sftp")
    return paramiko.SFTPClient(channel)


class _Transport(paramiko.Transport):
    """paramiko's transport with AES-GCM preferred (still offering every other cipher), its thread
    named ``dx-ssh`` for the operating system (``dx.shared.threads``)."""

    _preferred_ciphers = (*GCM, *(c for c in paramiko.Transport._preferred_ciphers  # type: ignore[attr-defined]
                                  if c not in GCM))

    def run(self) -> None:
        name_native("dx-ssh")
        super().run()


def _private_key(text: str, passphrase: str | None) -> paramiko.PKey:
    for cls in KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.SSHException:
            continue
    raise RunError(ErrorCode.AUTHENTICATION_FAILED, "the private key could not be read (wrong format or passphrase)")


def _unknown_key(cfg: ConnectionCfg, offered: str, pinned: str) -> RunError:
    """HOST_KEY_UNKNOWN: the server's key is not of the pinned type; never accepted."""
    return RunError(ErrorCode.HOST_KEY_UNKNOWN,
                    f"{cfg.host}:{cfg.port} offered a {offered} host key, none of that type is pinned ({pinned}); "
                    f"check `ssh-keyscan -p {cfg.port} {cfg.host}` out of band and pin the key")


class SftpRemote:
    """A client space on an SFTP server, confined under the connection's root."""

    def __init__(self, client: paramiko.SSHClient, sftp: paramiko.SFTPClient, cfg: ConnectionCfg) -> None:
        self.client, self.sftp, self.cfg = client, sftp, cfg
        self._sizes: tuple[int, int] | None = None

    @classmethod
    def connect(cls, cfg: ConnectionCfg) -> SftpRemote:
        """Connect and authenticate, pinning the configured host key."""
        assert cfg.host and cfg.host_key and cfg.username
        where = f"{cfg.host}:{cfg.port}"
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key_type, key_b64 = cfg.host_key.split()[:2]
        try:
            pinned = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
        except (ValueError, paramiko.SSHException) as exc:
            raise RunError(ErrorCode.CONFIG_INVALID, f"connection {cfg.id}: host_key is not a valid key: {exc}") from exc
        name = cfg.host if cfg.port == 22 else f"[{cfg.host}]:{cfg.port}"
        client.get_host_keys().add(name, key_type, pinned)
        password = resolve_secret(cfg.password)
        pkey = _private_key(resolve_secret(cfg.private_key) or "", resolve_secret(cfg.passphrase)) \
            if cfg.private_key else None
        sock = _no_delay_socket(cfg)
        try:
            client.connect(cfg.host, cfg.port, username=cfg.username, password=password, pkey=pkey,
                           look_for_keys=False, allow_agent=False, sock=sock,
                           banner_timeout=cfg.timeout_s, auth_timeout=cfg.timeout_s,
                           transport_factory=_Transport)  # type: ignore[arg-type]  # the stubs lag paramiko 5
            sftp = _open_sftp(client)
        except paramiko.BadHostKeyException as exc:
            client.close()
            offered = exc.key.get_name()
            if offered != exc.expected_key.get_name():
                raise _unknown_key(cfg, offered, key_type) from None
            raise RunError(ErrorCode.HOST_KEY_MISMATCH,
                           f"{where} offered a {offered} host key that differs from the pinned one; "
                           "if the server's key really changed, check it out of band and update host_key") from None
        except paramiko.AuthenticationException:
            client.close()
            raise RunError(ErrorCode.AUTHENTICATION_FAILED,
                           f"{where} refused user {cfg.username!r}: check the secret the connection names") from None
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc):  # paramiko's RejectPolicy: no pinned key matched the host name
                raise _unknown_key(cfg, "unpinned", key_type) from None
            raise RunError(ErrorCode.CONNECTION_FAILED, f"{where}: the SSH handshake failed (not an SSH server, "
                           "no algorithm in common, or the session was refused)") from None
        except (TimeoutError, OSError, EOFError) as exc:
            client.close()
            raise RunError(ErrorCode.CONNECTION_FAILED, f"{where} is not reachable: {summary(exc)}") from None
        return cls(client, sftp, cfg)

    def close(self) -> None:
        self.client.close()

    def alive(self) -> bool:
        """Whether the session still answers (one round trip): a kept session may have been cut."""
        try:
            self.sftp.normalize(".")
        except (OSError, EOFError, paramiko.SSHException):
            return False
        return True

    def list(self, pattern: str) -> list[FileInfo]:
        folder, name = split_pattern(pattern)
        try:
            entries = self.sftp.listdir_attr(confine(self.cfg.root, folder))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _failed(f"{folder!r} cannot be listed", exc) from None
        regular = {e.filename: e for e in entries if e.st_mode is not None and stat.S_ISREG(e.st_mode)}
        return [FileInfo(posixpath.join(folder, n), regular[n].st_size or 0, int(regular[n].st_mtime or 0))
                for n in match_names(list(regular), name)]

    def stat(self, path: str) -> FileInfo | None:
        try:
            st = self.sftp.stat(confine(self.cfg.root, path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _failed(f"{path!r} cannot be read", exc) from None
        return FileInfo(path, st.st_size or 0, int(st.st_mtime or 0))

    def fetch(self, path: str, staging: Path) -> Path:
        """Download to the staging folder, many reads in flight; returns the local copy."""
        local = staging / posixpath.basename(path)
        try:
            with self.sftp.open(confine(self.cfg.root, path), "rb") as src, open(local, "wb") as out:
                size = src.stat().st_size or 0
                _read_pipelined(self.sftp, src.handle, size, self.request_sizes()[0], out)
            if (received := local.stat().st_size) != size:
                raise TransferError(f"{size} bytes announced, {received} received")
        except EOFError:
            raise RunError(ErrorCode.TRANSFER_FAILED, f"{path!r} ended early while it was downloaded") from None
        except FileNotFoundError:
            raise RunError(ErrorCode.SOURCE_NOT_FOUND, f"{path!r} does not exist on {self.cfg.host}") from None
        except OSError as exc:
            if exc.errno in STAGING_FULL_ERRNOS:
                raise  # our disk, not the client's file: retried, then STAGING_FULL (dx.workers.crashed)
            raise _failed(f"{path!r} could not be downloaded", exc) from None
        return local

    def request_sizes(self) -> tuple[int, int]:
        """(read, write) request sizes: what the server announces it serves whole (a read reply
        shorter than asked leaves a gap in paramiko's prefetch, filled by a synchronous read each
        time), at most MAX_REQUEST_BYTES; REQUEST_BYTES when it announces nothing or refuses to say."""
        if self._sizes is None:
            try:
                _, reply = self.sftp._request(CMD_EXTENDED, LIMITS)  # type: ignore[attr-defined]
                reply.get_int64()  # the largest packet
                announced = reply.get_int64(), reply.get_int64()
            except (OSError, EOFError, paramiko.SSHException):
                announced = 0, 0
            read, write = (min(max(n, REQUEST_BYTES), MAX_REQUEST_BYTES) if n else REQUEST_BYTES for n in announced)
            self._sizes = read, write
        return self._sizes

    def _makedirs(self, folder: str) -> None:
        """Create ``folder`` (absolute, confined) and its missing parents; one created meanwhile by another
        session (the chunks of an export write into one folder at once) is fine."""
        try:
            self.sftp.stat(folder)
        except FileNotFoundError:
            self._makedirs(posixpath.dirname(folder))
            try:
                self.sftp.mkdir(folder)
            except OSError as refused:
                try:
                    self.sftp.stat(folder)
                except FileNotFoundError:
                    raise refused from None

    def move(self, path: str, new_path: str) -> None:
        target = confine(self.cfg.root, new_path)
        with _in_our_words():
            self._makedirs(posixpath.dirname(target))
            self.sftp.posix_rename(confine(self.cfg.root, path), target)

    def upload(self, source: IO[bytes], path: str) -> None:
        target = confine(self.cfg.root, path)
        try:
            self._makedirs(posixpath.dirname(target))
            with self.sftp.open(target, "wb") as fh:
                self._send(fh, source)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._write_failed(path, exc) from None

    def place(self, path: str, pieces: Sequence[tuple[int, IO[bytes]]], size: int | None = None) -> None:
        """Opened for writing, created if missing, never truncated on opening (paramiko's modes truncate or
        append): each stream is written at its offset."""
        target = confine(self.cfg.root, path)
        try:
            self._makedirs(posixpath.dirname(target))
            kind, reply = self.sftp._request(CMD_OPEN, target, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE,  # type: ignore[attr-defined]
                                             SFTPAttributes())
            if kind != CMD_HANDLE:
                raise paramiko.SFTPError("the server answered an open with no handle")
            with SFTPFile(self.sftp, reply.get_binary(), "wb") as fh:
                for offset, source in pieces:
                    fh.seek(offset)
                    self._send(fh, source)
                if size is not None:
                    fh.truncate(size)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._write_failed(path, exc) from None

    def _send(self, fh: SFTPFile, source: IO[bytes]) -> None:
        """Write the stream from the file's position, in pipelined requests as large as the server serves
        (its replies are checked when the file is closed)."""
        fh.set_pipelined(True)
        fh.MAX_REQUEST_SIZE = self.request_sizes()[1]
        while block := source.read(UPLOAD_BLOCK_BYTES):
            fh.write(block)

    def _write_failed(self, path: str, exc: BaseException) -> RunError:
        return RunError(ErrorCode.TARGET_WRITE_FAILED, f"{path!r} could not be written on {self.cfg.host}: "
                        f"{summary(exc)}")

    def remove(self, path: str) -> None:
        with _in_our_words():
            self.sftp.remove(confine(self.cfg.root, path))


class SessionPool:
    """Idle sessions of a worker process, by connection, for the next task that needs the same one.
    A handshake would otherwise be paid by every chunk of an export and by each plan and reduce: a
    kept session answering a round trip is taken instead. A session is used by one task at a time; one idle longer than IDLE_S is closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[tuple[float, SftpRemote]]] = {}

    def take(self, cfg: ConnectionCfg) -> SftpRemote:
        """A session of ``cfg``'s: a kept one that still answers, else a new one."""
        key = _identity(cfg)
        while True:
            with self._lock:
                now = time.monotonic()
                stale = [r for sessions in self._idle.values() for t, r in sessions if now - t > IDLE_S]
                for sessions in self._idle.values():
                    sessions[:] = [(t, r) for t, r in sessions if now - t <= IDLE_S]
                kept = self._idle.get(key)
                remote = kept.pop()[1] if kept else None
            for old in stale:
                old.close()
            if remote is None:
                return SftpRemote.connect(cfg)
            if remote.alive():
                return remote
            remote.close()

    def give(self, cfg: ConnectionCfg, remote: SftpRemote) -> None:
        """Keep a session whose task ended cleanly."""
        with self._lock:
            self._idle.setdefault(_identity(cfg), []).append((time.monotonic(), remote))


def _identity(cfg: ConnectionCfg) -> str:
    """What a kept session must match: the connection's settings and its secrets' values (the
    settings name them only), hashed, so that a changed secret gets a new session."""
    secrets = "\0".join(resolve_secret(r) or "" for r in (cfg.password, cfg.private_key, cfg.passphrase))
    return cfg.model_dump_json() + hashlib.sha256(secrets.encode()).hexdigest()


#: The worker process's pool.
POOL = SessionPool()
