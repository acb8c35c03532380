"""Where a webhook may be sent: the form of its URL and the addresses its host resolves to.

Checked when a tenant registers an endpoint (the API) and again before every attempt (the
worker), which then connects to the very address it checked (:func:`resolve` returns it).
So a name that resolved to a public address at registration and resolves to 127.0.0.1 or
169.254.169.254 later (DNS rebinding) is refused then too, and there is no second lookup
between the check and the connection for it to change in between.

The rule: every address the host resolves to must be globally routable. Loopback, private,
link-local, shared (CGNAT), multicast, reserved and unspecified addresses are refused, also
when written inside an IPv6 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``,
6to4 ``2002::/16``), unless an operator allows their network
(``KDSERVE_WEBHOOK_ALLOWED_NETWORKS``). Any spelling of an address (``0x7f.1``,
``2130706433``) is caught, since it is the resolved address that is checked.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import anyio
import httpx

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

SETTING = "KDSERVE_WEBHOOK_ALLOWED_NETWORKS"
MAX_URL_LENGTH = 2048
_NAT64 = IPv6Network("64:ff9b::/96")


class UrlRefused(ValueError):
    """A webhook URL kdserve will not send to; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """A webhook URL, parsed: ``host`` is the name to resolve (IDNA, ASCII)."""

    url: httpx.URL
    host: str
    port: int

    def at(self, address: IPAddress) -> httpx.URL:
        """The URL with its host replaced by ``address``: connect there, and nowhere else."""
        return self.url.copy_with(host=str(address))

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    """Check the URL's form: http or https, a host, no user name or password."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UrlRefused(f"not a URL ({exc}); send an absolute http(s) URL") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(
            f"the URL's scheme is {parsed.scheme or 'missing'!r}; use https:// (or http://)"
        )
    if parsed.userinfo:
        raise UrlRefused(
            "the URL carries a user name or password; remove them: the endpoint checks each "
            "request's webhook-signature instead"
        )
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UrlRefused("the URL has no host; send an absolute http(s) URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return Target(url=parsed, host=host, port=port)


def _judged(address: IPAddress) -> IPAddress:
    """The address a connection to ``address`` reaches: the IPv4 address written inside an
    IPv4-mapped, NAT64 or 6to4 address (whose prefixes are special-purpose themselves, so
    only what they carry says whether they are public), else the address itself."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def _kind(address: IPAddress) -> str | None:
    """What makes the address non-public, or None for a globally routable one."""
    # Most specific first: 169.254.169.254 is link-local (and private), 127.0.0.1 loopback.
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


def refusal(address: IPAddress, allowed: Sequence[Network] = ()) -> str | None:
    """Why ``address`` is refused (``"a private address"``), or None if it may be reached."""
    reached = _judged(address)
    kind = _kind(reached)
    if kind is None or any(reached in net for net in allowed):
        return None
    inside = "" if reached == address else f" ({reached} inside it)"
    return f"a {kind} address{inside}"


def check_address(host: str, address: IPAddress, allowed: Sequence[Network] = ()) -> None:
    reason = refusal(address, allowed)
    if reason is not None:
        net = IPv4Network(address) if isinstance(address, IPv4Address) else IPv6Network(address)
        raise UrlRefused(
            f"{host} resolves to {address}, {reason}; webhooks are sent to public addresses "
            f"only. An operator can allow a network with {SETTING} (e.g. {SETTING}={net})"
        )


async def resolve(target: Target, allowed: Sequence[Network] = ()) -> list[IPAddress]:
    """Every address the host resolves to, each checked; the first is the one to connect to.

    Raises:
        UrlRefused: the host does not resolve, or one of its addresses is not public (a
            name with one private address among public ones is refused: which one a client
            would connect to is not ours to choose).
    """
    try:
        infos = await anyio.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlRefused(f"{target.host} does not resolve ({exc}); check the host name") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused(f"{target.host} resolves to no address; check the host name")
    for address in addresses:
        check_address(target.host, address, allowed)
    return addresses
