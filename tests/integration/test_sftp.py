"""The SFTP connection against OpenSSH: what it negotiates, and downloads of the size it announces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dx.shared.config import ConnectionCfg
from dx.shared.connections.sftp import READ_BYTES, SftpRemote
from tests.support.sshd import Sftp, running_sshd

#: OpenSSH's sftp-server serves reads of up to 255 KiB (SFTP_MAX_READ_LENGTH) and says so.
OPENSSH_READ_BYTES = 255 * 1024


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


def test_a_download_asks_for_reads_of_the_size_the_server_announces(sshd: Sftp, monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    # Given a file of 3 MB and a few bytes (the last read is a short one) on OpenSSH, which announces its limits
    data = os.urandom(3 * 1024 * 1024 + 123)
    sshd.put("limits/big.bin", data)
    with connected(sshd, monkeypatch) as remote:
        # When it is fetched / Then reads of 255 KiB were asked for, and every byte arrived in order
        assert remote.read_size() == OPENSSH_READ_BYTES
        assert remote.fetch("limits/big.bin", tmp_path).read_bytes() == data


def test_a_server_refusing_to_announce_limits_is_read_in_paramiko_s_size(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    # Given an sshd whose SFTP server refuses the limits request
    data = os.urandom(1024 * 1024 + 7)
    with running_sshd("-P limits") as refusing:
        refusing.put("limits/big.bin", data)
        with connected(refusing, monkeypatch) as remote:
            # When the file is fetched / Then reads of 32 KiB were asked for, and the bytes are whole
            assert remote.read_size() == READ_BYTES
            assert remote.fetch("limits/big.bin", tmp_path).read_bytes() == data
