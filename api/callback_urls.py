"""Checks of the ``callbackUrl`` a client gives: creditq will call it, so it must not point inside our network.

http(s) only, no credentials in it, and no private, loopback, link-local or otherwise non-public address,
whether written as a literal IP or reached through a hostname (resolved here, off the event loop), unless
``CREDITQ_ALLOW_PRIVATE_CALLBACKS`` is set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_SECONDS = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _public(ip: IPAddress) -> bool:
    # is_global is False for private, loopback, link-local, CGNAT, reserved, unspecified and IPv4-mapped
    # addresses; multicast is refused on its own since some of it counts as global.
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    # loop.getaddrinfo runs socket.getaddrinfo in the default thread pool.
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def problem(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not be a callback URL, or None if it may."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if allow_private:
        return None
    host = parts.hostname
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await _resolve(host, port or (443 if parts.scheme == "https" else 80))
        except (OSError, TimeoutError, UnicodeError):
            return f"host {host!r} does not resolve"
    if not addresses:
        return f"host {host!r} does not resolve"
    if not all(_public(ip) for ip in addresses):
        return "must not point to a private, loopback or link-local address"
    return None
