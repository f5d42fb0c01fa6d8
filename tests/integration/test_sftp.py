"""The SFTP connection against OpenSSH: what it negotiates, and transfers in the request size it announces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest

from dx.shared.config import ConnectionCfg
from dx.shared.connections.sftp import REQUEST_BYTES, SftpRemote
from tests.support.sshd import Sftp, running_sshd

#: OpenSSH's sftp-server serves reads and writes of up to 255 KiB (SFTP_MAX_READ_LENGTH) and says so.
OPENSSH_REQUEST_BYTES = 255 * 1024


@contextmanager
def connected(server: Sftp, monkeypatch: pytest.MonkeyPatch) -> Iterator[SftpRemote]:
    """dx's connection to ``server``, by password (the same for every test sshd)."""
    monkeypatch.setenv("DX_TEST_SFTP_PASSWORD", server.password)
    cfg = ConnectionCfg(id="probe", tenant="probe", type="sftp", host="127.0.0.1", port=server.port,
                        username=server.user, host_key=server.host_key, root=str(server.root),
                        password="${DX_TEST_SFTP_PASSWORD}")
    remote = SftpRemote.connect(cfg)
    try:
        yield remote
    finally:
        remote.close()


def test_aes_gcm_is_negotiated_with_openssh(sshd: Sftp, monkeypatch: pytest.MonkeyPatch) -> None:
    with connected(sshd, monkeypatch) as remote:
        transport = remote.sftp.get_channel().get_transport()
        assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2


def _write_requests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every write request paramiko sends from now on (each goes to the real server)."""
    sizes: list[int] = []
    write = paramiko.SFTPFile._write

    def recording(self: paramiko.SFTPFile, data: bytes) -> int:
        sizes.append(n := write(self, data))
        return n
    monkeypatch.setattr(paramiko.SFTPFile, "_write", recording)
    return sizes


def test_transfers_ask_for_requests_of_the_size_the_server_announces(sshd: Sftp, monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    # Given a file of 3 MB and a few bytes (the last request is a short one), and OpenSSH, which announces its limits
    data = os.urandom(3 * 1024 * 1024 + 123)
    sshd.put("limits/big.bin", data)
    writes = _write_requests(monkeypatch)
    with connected(sshd, monkeypatch) as remote:
        # When it is fetched and uploaded again
        assert remote.request_sizes() == (OPENSSH_REQUEST_BYTES, OPENSSH_REQUEST_BYTES)
        fetched = remote.fetch("limits/big.bin", tmp_path)
        with open(fetched, "rb") as fh:
            remote.upload(fh, "limits/again.bin")
    # Then every byte arrived in order both ways, written in requests of 255 KiB
    assert fetched.read_bytes() == data
    assert (sshd.root / "limits/again.bin").read_bytes() == data
    assert max(writes) == OPENSSH_REQUEST_BYTES and sum(writes) == len(data)


def test_a_server_refusing_to_announce_limits_gets_paramiko_s_request_size(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    # Given an sshd whose SFTP server refuses the limits request
    data = os.urandom(1024 * 1024 + 7)
    with running_sshd("-P limits") as refusing:
        refusing.put("limits/big.bin", data)
        writes = _write_requests(monkeypatch)
        with connected(refusing, monkeypatch) as remote:
            # When the file is fetched and uploaded again
            assert remote.request_sizes() == (REQUEST_BYTES, REQUEST_BYTES)
            fetched = remote.fetch("limits/big.bin", tmp_path)
            with open(fetched, "rb") as fh:
                remote.upload(fh, "limits/again.bin")
        # Then requests of 32 KiB were asked for, and the bytes are whole both ways
        assert fetched.read_bytes() == data
        assert (refusing.root / "limits/again.bin").read_bytes() == data
        assert max(writes) == REQUEST_BYTES and sum(writes) == len(data)
