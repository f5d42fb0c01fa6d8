"""The SFTP connection against OpenSSH: what it negotiates, transfers in the request size it announces,
sessions kept between tasks."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest

from dx.devkit.sshd import Sftp, running_sshd
from dx.shared.config import ConnectionCfg
from dx.shared.connections import Remote, open_remote
from dx.shared.connections import sftp as sftp_module
from dx.shared.connections.sftp import REQUEST_BYTES, SftpRemote
from dx.shared.errors import ErrorCode, RunError
from dx.shared.settings import get_settings

#: OpenSSH's sftp-server serves reads and writes of up to 255 KiB (SFTP_MAX_READ_LENGTH) and says so.
OPENSSH_REQUEST_BYTES = 255 * 1024


@pytest.fixture(autouse=True)
def loopback_trusted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test servers listen on loopback, which tenant connections reach only when the platform trusts it."""
    monkeypatch.setenv("DX_TRUSTED_HOSTS", "127.0.0.1")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _cfg(server: Sftp, monkeypatch: pytest.MonkeyPatch) -> ConnectionCfg:
    """A connection to ``server`` by password (the same for every test sshd)."""
    monkeypatch.setenv("DX_SECRET_TEST_SFTP_PASSWORD", server.password)
    return ConnectionCfg(id="probe", tenant="probe", type="sftp", host="127.0.0.1", port=server.port,
                         username=server.user, host_key=server.host_key, root=str(server.root),
                         password="${DX_SECRET_TEST_SFTP_PASSWORD}")


@contextmanager
def connected(server: Sftp, monkeypatch: pytest.MonkeyPatch) -> Iterator[SftpRemote]:
    """dx's own new session with ``server``."""
    remote = SftpRemote.connect(_cfg(server, monkeypatch))
    try:
        yield remote
    finally:
        remote.close()


def test_aes_gcm_is_negotiated_with_openssh(sshd: Sftp, monkeypatch: pytest.MonkeyPatch) -> None:
    no_delay_at_handshake: list[int] = []
    init = sftp_module._Transport.__init__

    def recording(self: paramiko.Transport, sock: socket.socket, *args: object, **kwargs: object) -> None:
        no_delay_at_handshake.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        init(self, sock, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(sftp_module._Transport, "__init__", recording)
    with connected(sshd, monkeypatch) as remote:
        transport = remote.sftp.get_channel().get_transport()
        assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2
        # and each packet goes at once, from the handshake on: a download's small read requests, and the
        # handshake's messages, are not held back by Nagle
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert no_delay_at_handshake == [1]
        # and the session's replies are buffered in a bytearray (dx's _BytesPipe), not paramiko's array
        assert isinstance(remote.sftp.get_channel().in_buffer, sftp_module._BytesPipe)
        # and its thread (the decryption's) is named for the operating system
        assert Path(f"/proc/self/task/{transport.native_id}/comm").read_text() == "dx-ssh\n"


def test_a_server_not_listening_is_a_connection_failure(sshd: Sftp, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    cfg = _cfg(sshd, monkeypatch).model_copy(update={"port": port})
    with pytest.raises(RunError) as refused:
        SftpRemote.connect(cfg)
    assert refused.value.code is ErrorCode.CONNECTION_FAILED
    assert refused.value.message.startswith(f"127.0.0.1:{port} is not reachable")


def _write_requests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every write request paramiko sends from now on (each goes to the real server)."""
    sizes: list[int] = []
    write = paramiko.SFTPFile._write

    def recording(self: paramiko.SFTPFile, data: bytes) -> int:
        sizes.append(n := write(self, data))
        return n
    monkeypatch.setattr(paramiko.SFTPFile, "_write", recording)
    return sizes


def _fetch_and_upload_again(server: Sftp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: bytes,
                            request_bytes: int) -> None:
    """Fetch a file holding ``data`` and upload it again: requests of ``request_bytes`` asked for
    both ways, every byte arrived in order both ways."""
    server.put("limits/big.bin", data)
    writes = _write_requests(monkeypatch)
    with connected(server, monkeypatch) as remote:
        assert remote.request_sizes() == (request_bytes, request_bytes)
        fetched = remote.fetch("limits/big.bin", tmp_path)
        with open(fetched, "rb") as fh:
            remote.upload(fh, "limits/again.bin")
    assert fetched.read_bytes() == data
    assert (server.root / "limits/again.bin").read_bytes() == data
    assert max(writes) == request_bytes and sum(writes) == len(data)


def test_transfers_ask_for_requests_of_the_size_the_server_announces(sshd: Sftp, monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    # Given a file of 3 MB and a few bytes (the last request is a short one), and OpenSSH, which announces its limits
    # When it is fetched and uploaded again / Then in requests of 255 KiB, every byte both ways
    _fetch_and_upload_again(sshd, monkeypatch, tmp_path, os.urandom(3 * 1024 * 1024 + 123), OPENSSH_REQUEST_BYTES)


def test_a_server_refusing_to_announce_limits_gets_paramiko_s_request_size(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    # Given an sshd whose SFTP server refuses the limits request
    with running_sshd("-P limits") as refusing:
        # When a file is fetched and uploaded again / Then in requests of 32 KiB, every byte both ways
        _fetch_and_upload_again(refusing, monkeypatch, tmp_path, os.urandom(1024 * 1024 + 7), REQUEST_BYTES)


def test_a_download_gets_every_byte_when_the_server_answers_reads_shorter_than_asked(
        sshd: Sftp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given a file of 5 MB and some bytes, and reads asked for in 1 MiB, 4 times what OpenSSH answers
    data = os.urandom(5 * 1024 * 1024 + 321)
    sshd.put("short/big.bin", data)
    asked: list[int] = []
    reply = sftp_module._Replies._async_response

    def recording(self: sftp_module._Replies, kind: int, msg: paramiko.Message, num: int) -> None:
        asked.append(num)
        reply(self, kind, msg, num)
    monkeypatch.setattr(sftp_module._Replies, "_async_response", recording)
    request = 1024 * 1024
    with connected(sshd, monkeypatch) as remote:
        remote._sizes = (request, OPENSSH_REQUEST_BYTES)
        # When it is fetched / Then every byte arrives in order, the rest of each short reply asked for again
        fetched = remote.fetch("short/big.bin", tmp_path)
    assert fetched.read_bytes() == data
    assert len(asked) == -(-len(data) // request)  # one pipelined request per MiB; the rest of each asked by itself


def test_pieces_placed_by_sessions_at_once_make_one_file(sshd: Sftp, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given three pieces of 1 MB and some bytes, for a file in folders not there yet
    pieces = [os.urandom(1024 * 1024 + n) for n in (5, 11, 3)]
    offsets = [3 + sum(len(p) for p in pieces[:i]) for i in range(3)]
    temp = "sessions-at-once/new/.all.csv.part-1"  # a folder no other test writes
    # When three sessions place a piece each at its offset at the same time, the last first
    with connected(sshd, monkeypatch) as a, connected(sshd, monkeypatch) as b, connected(sshd, monkeypatch) as c:
        threads = [threading.Thread(target=remote.place, args=(temp, [(at, io.BytesIO(piece))]))
                   for remote, at, piece in zip((c, b, a), offsets[::-1], pieces[::-1], strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # And one places a stale piece past the end, then writes the head and tail and cuts the file to its size
        end = offsets[-1] + len(pieces[-1])
        a.place(temp, [(end + 100, io.BytesIO(b"stale"))])
        a.place(temp, [(0, io.BytesIO(b"h\n\n")), (end, io.BytesIO(b"t\n"))], size=end + 2)
    # Then the file holds head, pieces in order and tail, nothing else
    assert (sshd.root / temp).read_bytes() == b"h\n\n" + b"".join(pieces) + b"t\n"


def test_a_place_outside_the_root_is_refused(sshd: Sftp, monkeypatch: pytest.MonkeyPatch) -> None:
    with connected(sshd, monkeypatch) as remote, pytest.raises(RunError) as refused:
        remote.place("../escape.csv", [(0, io.BytesIO(b"x"))])
    assert refused.value.code == ErrorCode.PATH_OUTSIDE_ROOT
    assert not (sshd.root.parent / "escape.csv").exists()


def _session(remote: Remote) -> paramiko.Transport:
    assert isinstance(remote, SftpRemote)
    transport = remote.client.get_transport()
    assert transport is not None
    return transport


def test_a_session_is_kept_for_the_next_task_on_the_same_connection(sshd: Sftp,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a task that used the connection and ended cleanly
    cfg = _cfg(sshd, monkeypatch)
    sshd.put("kept/a.csv", b"x\n")
    with open_remote(cfg) as first:
        kept = _session(first)
    # When the next task opens the same connection / Then it gets the same session, which works
    with open_remote(cfg) as second:
        assert _session(second) is kept
        assert [f.path for f in second.list("kept/*.csv")] == ["kept/a.csv"]
    # When a task's block raises / Then its session is closed, not kept, and the next task gets a new one
    with pytest.raises(RuntimeError), open_remote(cfg):
        raise RuntimeError("the task failed")
    assert not kept.is_active()
    with open_remote(cfg) as third:
        assert _session(third) is not kept and third.stat("kept/a.csv") is not None


def test_a_changed_secret_gets_a_new_session(sshd: Sftp, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a kept session
    cfg = _cfg(sshd, monkeypatch)
    with open_remote(cfg) as first:
        kept = _session(first)
    # When the secret the connection names changes / Then the server is asked again, and refuses
    monkeypatch.setenv("DX_SECRET_TEST_SFTP_PASSWORD", "not-the-password")
    with pytest.raises(RunError) as refused, open_remote(cfg):
        pass
    assert refused.value.code is ErrorCode.AUTHENTICATION_FAILED and kept.is_active()


def test_a_cut_or_idle_session_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    with running_sshd() as server:
        # Given a kept session, and the server restarted since (its sessions cut)
        cfg = _cfg(server, monkeypatch)
        server.put("cut/a.csv", b"x\n")
        with open_remote(cfg) as first:
            cut = _session(first)
        server.stop()
        server.start()
        # When the next task opens the connection / Then it gets a new session that works
        with open_remote(cfg) as second:
            fresh = _session(second)
            assert fresh is not cut and second.stat("cut/a.csv") is not None
        # Given a session idle for longer than IDLE_S / Then it is closed and a new one made
        monkeypatch.setattr(sftp_module, "IDLE_S", 0.0)
        with open_remote(cfg) as third:
            assert _session(third) is not fresh
        assert not fresh.is_active()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "::ffff:127.0.0.1"])
def test_an_sftp_server_on_an_internal_host_is_refused_unless_the_platform_trusts_it(
        sshd: Sftp, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    # Given a platform that trusts no internal host, and a connection to the test server's host by address or name
    cfg = _cfg(sshd, monkeypatch).model_copy(update={"host": host})
    monkeypatch.setenv("DX_TRUSTED_HOSTS", "")
    get_settings.cache_clear()
    # When it is opened / Then HOST_NOT_ALLOWED, before anything is sent
    with pytest.raises(RunError) as refused, open_remote(cfg):
        pass
    assert refused.value.code is ErrorCode.HOST_NOT_ALLOWED
    assert "DX_TRUSTED_HOSTS" in refused.value.message
