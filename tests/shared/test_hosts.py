"""Which hosts a tenant's connection may reach: every address a name resolves to is checked, and the
connection goes to the checked addresses only."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dx.shared import hosts
from dx.shared.config import ConnectionCfg
from dx.shared.errors import ConfigError, ErrorCode, RunError
from dx.shared.hosts import TrustedHosts, open_socket, resolve
from dx.shared.settings import Settings, get_settings

NOBODY = TrustedHosts()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[str]]], None]:
    """Make names resolve to the given addresses (a name not given does not resolve)."""

    def answer(names: dict[str, list[str]]) -> None:
        real = socket.getaddrinfo

        def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
            if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
                return real(host, port, *args, **kwargs)
            if host in names:
                return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                        for a in names[host]]
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        monkeypatch.setattr(hosts.socket, "getaddrinfo", getaddrinfo)
    return answer


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd00::5", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "shared (carrier-grade NAT)"), ("100.127.255.254", "shared (carrier-grade NAT)"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("240.0.0.1", "private"),
    ("::ffff:10.1.2.3", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("2002:7f00:1::", "loopback"),            # 6to4 carrying 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),     # NAT64 carrying 169.254.169.254
])
def test_an_internal_address_is_refused_naming_its_kind(dns, address, kind):
    # Given a name resolving to an internal address, nothing trusted
    dns({"client.example": [address]})
    # When resolved for a connection / Then HOST_NOT_ALLOWED names the name, the address and its kind
    with pytest.raises(RunError) as info:
        resolve("client.example", 22, NOBODY)
    assert info.value.code is ErrorCode.HOST_NOT_ALLOWED
    article = "an" if kind == "unspecified" else "a"
    assert info.value.message.startswith(f"client.example resolves to {hosts.ip_address(address)}, which is "
                                         f"{article} {kind} address: nothing was sent to it")
    assert "DX_TRUSTED_HOSTS" in info.value.message


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_a_public_address_is_reached(dns, address):
    dns({"client.example": [address]})
    assert resolve("client.example", 22, NOBODY) == [address]


def test_every_address_a_name_resolves_to_is_checked(dns):
    # Given a name whose first address is public and whose second is the cloud metadata service
    dns({"client.example": ["8.8.8.8", "169.254.169.254"]})
    # When resolved / Then it is refused for the second
    with pytest.raises(RunError) as info:
        resolve("client.example", 443, NOBODY)
    assert (info.value.code, "169.254.169.254" in info.value.message) == (ErrorCode.HOST_NOT_ALLOWED, True)


def test_a_literal_and_its_short_forms_are_refused_as_themselves():
    # Given loopback written as an address, as the system's resolver also reads 127.1 and 2130706433
    for host in ("127.0.0.1", "127.1", "2130706433", "0"):
        with pytest.raises(RunError) as info:
            resolve(host, 5432, NOBODY)
        assert info.value.code is ErrorCode.HOST_NOT_ALLOWED
    assert resolve("localhost", 5432, TrustedHosts.parse("127.0.0.1")[0]) == ["127.0.0.1"]


def test_a_trusted_network_or_name_is_reached(dns):
    # Given the platform trusts 10.20.0.0/16 and the name crm.internal
    trusted, problems = TrustedHosts.parse(" 10.20.0.0/16 ,crm.internal,, ")
    assert problems == []
    dns({"db.client.example": ["10.20.3.4"], "CRM.internal.": ["10.99.0.1"], "other.example": ["10.21.0.1"]})
    # When resolved / Then a host in the network, and the trusted name wherever it points, are reached
    assert resolve("db.client.example", 5432, trusted) == ["10.20.3.4"]
    assert resolve("CRM.internal.", 5432, trusted) == ["10.99.0.1"]
    # and an address outside the network is not
    with pytest.raises(RunError):
        resolve("other.example", 5432, trusted)


def test_a_name_that_does_not_resolve_is_a_connection_failure(dns):
    dns({})
    with pytest.raises(RunError) as info:
        resolve("nowhere.example", 22, NOBODY)
    assert info.value.code is ErrorCode.CONNECTION_FAILED


@pytest.mark.parametrize(("text", "problem"), [
    ("10.0.0.1/8", "'10.0.0.1/8' is not a network: 10.0.0.1/8 has host bits set"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not a network"),
    ("db.example:5432", "'db.example:5432' is neither a network, an address nor a host name"),
])
def test_a_bad_trusted_hosts_entry_is_reported(text, problem):
    problems = TrustedHosts.parse(f"127.0.0.1,{text}")[1]
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_the_trusted_hosts_setting_is_read_and_checked_with_the_others(tmp_path):
    # Given DX_TRUSTED_HOSTS with a network, an address and a name / When settings are read / Then they are kept
    settings = Settings.from_env({"DX_HOME": str(tmp_path), "DX_TRUSTED_HOSTS": "10.1.0.0/16,127.0.0.1,sftp.lan"})
    assert settings.trusted_hosts.trusts_host("10.1.2.3") and settings.trusted_hosts.trusts_host("sftp.lan")
    assert not settings.trusted_hosts.trusts_host("10.2.0.1")
    # And unset, nothing is trusted
    assert Settings.from_env({"DX_HOME": str(tmp_path)}).trusted_hosts == NOBODY
    # And a bad entry is reported as a settings problem
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DX_HOME": str(tmp_path), "DX_TRUSTED_HOSTS": "10.1.0.1/16"})
    assert "DX_TRUSTED_HOSTS: '10.1.0.1/16' is not a network" in str(info.value)


def test_open_socket_connects_to_the_first_address_that_answers():
    # Given a listener on loopback, and a first address where nothing listens
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # When connected to [nothing, listener] / Then the listener gets the connection, packets sent at once
        with open_socket(["127.0.0.2", "127.0.0.1"], port, 2) as sock:
            assert sock.getpeername() == ("127.0.0.1", port)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.fixture
def trusted_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DX_TRUSTED_HOSTS", "127.0.0.1")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_the_client_database_is_reached_at_the_address_that_was_checked(dns, trusted_loopback, monkeypatch):
    # Given a name that resolves to a trusted address, and a driver that records how it is asked to connect
    from dx.shared.connections import postgres

    dns({"db.client.example": ["127.0.0.1"]})
    asked: dict[str, Any] = {}

    def connect(**kwargs: Any) -> None:
        asked.update(kwargs)
        raise postgres.psycopg.OperationalError("connection refused")
    monkeypatch.setattr(postgres.psycopg, "connect", connect)
    monkeypatch.setenv("DX_SECRET_TEST_PW", "pw")
    cfg = ConnectionCfg(id="c", tenant="t", type="postgres", host="db.client.example", dbname="crm",
                        username="u", password="${DX_SECRET_TEST_PW}")
    # When connecting
    with pytest.raises(RunError):
        postgres.connect(cfg)
    # Then libpq gets the checked address (no lookup of its own), the name for the certificate, and TLS verify-full
    assert (asked["host"], asked["hostaddr"], asked["sslmode"]) == ("db.client.example", "127.0.0.1", "verify-full")
    assert asked["sslrootcert"]
