"""The SFTP connection against OpenSSH: what it negotiates."""

from __future__ import annotations

import pytest

from dx.shared.config import ConnectionCfg
from dx.shared.connections.sftp import SftpRemote
from tests.support.sshd import Sftp


def test_aes_gcm_is_negotiated_with_openssh(sshd: Sftp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_TEST_SFTP_KEY", sshd.private_key)
    cfg = ConnectionCfg(id="probe", tenant="probe", type="sftp", host="127.0.0.1", port=sshd.port, username=sshd.user,
                        host_key=sshd.host_key, root=str(sshd.root), private_key="${DX_TEST_SFTP_KEY}")
    remote = SftpRemote.connect(cfg)
    try:
        transport = remote.sftp.get_channel().get_transport()
        assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2
    finally:
        remote.close()
