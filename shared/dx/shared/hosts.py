"""Which hosts a tenant's connection may reach, and the addresses it connects to.

A connection's host is the tenant's choice; the network the workers sit in is
the platform's. So a connection reaches public addresses only: a host that is,
or resolves to, a loopback, private (RFC 1918, IPv6 ULA), link-local (the
cloud metadata service 169.254.169.254 among them), shared (CGNAT
100.64.0.0/10), unspecified, multicast or reserved address is refused with
HOST_NOT_ALLOWED, unless the platform trusts it (``DX_TRUSTED_HOSTS``:
networks and host names). An IPv6 address that carries an IPv4 one
(``::ffff:127.0.0.1``, 6to4, NAT64) is judged by both.

The host name is resolved once, every address it gives is checked, and the
connection is made to those addresses only (``open_socket``, or libpq's
``hostaddr``): a DNS answer that changes in between (rebinding) cannot lead it
elsewhere.

A trusted host, as written in the connection (its name listed, or an address
in a listed network), may also be reached without TLS (a client database's
``sslmode`` disable, allow or prefer): the platform vouches for that network.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from dx.shared.errors import ErrorCode, RunError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

#: A host name: dot-separated labels of letters, digits, `-` and `_` (no path, port, user, comma or space).
HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
#: Shared address space (RFC 6598, carrier-grade NAT): not public, though Python calls it neither private nor global.
SHARED = ip_network("100.64.0.0/10")
#: NAT64's well-known prefix: its addresses carry an IPv4 address in their last 32 bits.
NAT64 = ip_network("64:ff9b::/96")
#: What to do about a refused host, in every message that refuses one.
ASK_THE_PLATFORM = ("tenant connections reach public addresses only; if it really is the client's server, "
                    "the platform's operator must list it in DX_TRUSTED_HOSTS")


@dataclass(frozen=True)
class TrustedHosts:
    """The networks and host names the platform lets tenant connections reach although they are
    not public (``DX_TRUSTED_HOSTS``)."""

    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> tuple[TrustedHosts, list[str]]:
        """The set a comma-separated list of networks (``10.20.0.0/16``), addresses and host names
        stands for, and the problems of the entries that are none of these."""
        networks: list[IPNetwork] = []
        names: set[str] = set()
        problems = []
        for entry in filter(None, (e.strip() for e in text.split(","))):
            try:
                networks.append(ip_network(entry))
                continue
            except ValueError as exc:
                if "/" in entry or _is_literal(entry):
                    problems.append(f"{entry!r} is not a network: {exc}")
                    continue
            if HOST_NAME.match(entry):
                names.add(_name(entry))
            else:
                problems.append(f"{entry!r} is neither a network, an address nor a host name")
        return cls(tuple(networks), frozenset(names)), problems

    def trusts_address(self, address: IPAddress) -> bool:
        """Whether ``address`` lies in a trusted network."""
        return any(address in network for network in self.networks)

    def trusts_host(self, host: str) -> bool:
        """Whether the host as written is trusted: its name listed, or an address in a trusted network."""
        if _name(host) in self.names:
            return True
        address = literal(host)
        return address is not None and all(self.trusts_address(a) for a in _carried(address))


def _name(host: str) -> str:
    return host.lower().rstrip(".")


def _is_literal(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def literal(host: str) -> IPAddress | None:
    """The address a host written as a number stands for (``127.1`` and ``2130706433`` too, as the
    system's resolver reads them), without asking DNS; None for a name."""
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return _address(str(infos[0][4][0])) if infos else None


def _address(text: str) -> IPAddress:
    return ip_address(text.partition("%")[0])  # an IPv6 scope (fe80::1%eth0) is not part of the address


def _carried(address: IPAddress) -> list[IPAddress]:
    """What an address stands for: a mapped IPv6 address (``::ffff:127.0.0.1``) its IPv4 address; a
    6to4 or NAT64 one both itself and the IPv4 address it carries; any other itself."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address.sixtofour is not None:
            return [address, address.sixtofour]
        if address in NAT64:
            return [address, IPv4Address(int(address) & 0xFFFFFFFF)]
    return [address]


def _kind(one: IPv4Address | IPv6Address) -> str | None:
    if one in SHARED:
        return "shared (carrier-grade NAT)"
    if one.is_global and not one.is_multicast:
        return None
    for attribute in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(one, f"is_{attribute}"):
            return attribute.replace("_", "-")
    return "non-public"


def forbidden(address: IPAddress, trusted: TrustedHosts) -> str | None:
    """What kind of internal address this is (``loopback``, ``private``…), unless the platform trusts
    it; None for a public or trusted one."""
    for one in _carried(address):
        what = _kind(one)
        if what and not trusted.trusts_address(one):
            return what
    return None


def _a(kind: str) -> str:
    """The kind of an address with its article (an unspecified, a private)."""
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def literal_problem(host: str, trusted: TrustedHosts) -> str | None:
    """Why a host written as an address may not be reached (None: it may, or it is a name, which
    only the worker resolves)."""
    address = literal(host)
    if address is None or _name(host) in trusted.names:
        return None
    what = forbidden(address, trusted)
    return f"{host} is {_a(what)} address: {ASK_THE_PLATFORM}" if what else None


def resolve(host: str, port: int, trusted: TrustedHosts) -> list[str]:
    """Every address ``host`` stands for, in the resolver's order, each checked: HOST_NOT_ALLOWED for
    an internal one the platform does not trust, CONNECTION_FAILED for a name that does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise RunError(ErrorCode.CONNECTION_FAILED, f"{host} does not resolve to an address "
                       f"({type(exc).__name__}): check the connection's host") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if _name(host) in trusted.names:
        return addresses
    for text in addresses:
        address = _address(text)
        what = forbidden(address, trusted)
        if what:
            said = f"{host} is" if address == literal(host) else f"{host} resolves to {address}, which is"
            raise RunError(ErrorCode.HOST_NOT_ALLOWED, f"{said} {_a(what)} address: nothing was sent to it; "
                           f"{ASK_THE_PLATFORM}")
    return addresses


def open_socket(addresses: list[str], port: int, timeout_s: float) -> socket.socket:
    """A TCP connection, packets sent at once (TCP_NODELAY), to the first of ``addresses`` that
    answers; the last one's OSError when none does."""
    last: OSError = OSError("no address to connect to")
    for text in addresses:
        try:
            sock = socket.create_connection((text, port), timeout=timeout_s)
        except OSError as exc:
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last
