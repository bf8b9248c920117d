"""Client callback URLs: creditq POSTs to them, so they must not point inside our network.

Used twice: by the API at submit (a clear 422 early) and by the worker at every delivery (the check that
counts: a name may resolve elsewhere by then, as in DNS rebinding). The rules:

- http(s) only, a host, no credentials in the URL, at most :data:`MAX_URL_LENGTH` characters;
- every address the host resolves to must be public, unless ``CREDITQ_ALLOW_PRIVATE_CALLBACKS`` is true.
  Not public: loopback, private, link-local, CGNAT, reserved, unspecified, multicast, site-local (``fec0::/10``),
  and IPv6 that embeds an IPv4 address which is itself not public (IPv4-mapped ``::ffff:0:0/96``, IPv4-translated
  ``::ffff:0:0:0/96``, IPv4-compatible ``::/96``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``); the local-use NAT64 prefix ``64:ff9b:1::/48`` and
  Teredo ``2001::/32`` are refused outright (their IPv4 cannot be checked);
- at delivery (:func:`target`), the name is resolved once, checked, and the connection is made to that checked
  address (:func:`pinned_request`): no second lookup, the ``Host`` header and TLS SNI keep the name.

The resolver is a parameter (:data:`Resolver`), so tests can map names as they like without real DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_SECONDS = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_COMPAT = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT's IPv4-translated addresses (RFC 2765)
_TEREDO = ipaddress.IPv6Network("2001::/32")


class Refused(Exception):
    """A URL creditq will not call; the message says why (for a 422 detail or a delivery's ``lastError``)."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4), or None. Pure."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _TRANSLATED or (ip in _COMPAT and int(ip) > 1):  # :: and ::1 are not compatible addresses
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """May creditq connect to ``ip`` when private callbacks are not allowed? Pure."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None or ip.is_site_local or ip in _NAT64_LOCAL or ip in _TEREDO:
            return False
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
    # is_global is False for private, loopback, link-local, CGNAT, reserved and unspecified addresses; multicast
    # is refused on its own since some of it counts as global.
    return ip.is_global and not ip.is_multicast


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to now (getaddrinfo in the default thread pool, 3 s at most). Raises
    OSError, TimeoutError, UnicodeError."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (``address``, ``port``) and what to call it (``host``)."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress


def _parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a well-formed callback URL. Raises Refused."""
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise Refused("must not carry credentials")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def target(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> Target:
    """Check ``url`` and resolve its host once: the address to connect to. With ``allow_private`` any address
    is accepted (the first one resolved). Raises Refused (bad URL, no address, a non-public address)."""
    scheme, host, port = _parts(url)
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await resolver(host, port)
        except (OSError, TimeoutError, UnicodeError):
            raise Refused(f"host {host!r} does not resolve") from None
    if not addresses:
        raise Refused(f"host {host!r} does not resolve")
    # Every address must pass, not just the one we pick: a name that mixes public and private answers is refused.
    if not allow_private and not all(is_public(ip) for ip in addresses):
        raise Refused("must not point to a private, loopback or link-local address")
    return Target(url, scheme, host, port, addresses[0])


async def problem(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> str | None:
    """Why ``url`` may not be a callback URL, or None if it may (the submit-time check). With ``allow_private``
    only the URL's form is checked, no lookup is made."""
    try:
        if allow_private:
            _parts(url)
        else:
            await target(url, allow_private, resolver)
    except Refused as e:
        return str(e)
    return None


def new_webhook_client(timeout: float) -> httpx.AsyncClient:
    """The HTTP client of client webhooks, apart from the process's provider client on purpose: it ignores proxy
    variables (a proxy would make its own lookup and defeat the pinning), follows no redirects (a redirect is a
    new, unchecked URL), and keeps no idle connection (a connection made for one name must not be reused for
    another name on the same address)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=0),
    )


def pinned_request(client: httpx.AsyncClient, t: Target, content: bytes, headers: dict[str, str]) -> httpx.Request:
    """A POST of ``content`` to ``t``'s checked address: the URL names the address, the ``Host`` header and the
    TLS server name (SNI, and so certificate checking) name the host. Pure (builds, does not send)."""
    parts = urlsplit(t.url)
    literal = f"[{t.address}]" if t.address.version == 6 else str(t.address)
    default = 443 if t.scheme == "https" else 80
    netloc = literal if t.port == default else f"{literal}:{t.port}"
    host_header = (f"[{t.host}]" if ":" in t.host else t.host) + ("" if t.port == default else f":{t.port}")
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": t.host} if t.scheme == "https" else {}
    return client.build_request(
        "POST", url, content=content, headers={**headers, "Host": host_header}, extensions=extensions
    )
