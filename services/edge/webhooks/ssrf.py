"""Sending to a URL a tenant chose without letting it reach inside our network.

The address is checked where it is used: the resolver below is the one aiohttp's connector
asks, and it hands back only the addresses it checked, so the IP connected to is an IP that
passed (a DNS answer that changes between a check and the connect, "DNS rebinding", cannot
slip past). aiohttp does not ask the resolver for a literal IP, so those are checked before the
request. Redirects are not followed, timeouts bound the connect and the whole exchange, and
the answer is read up to a small cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientSession, ClientTimeout, TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from services.edge.webhooks.settings import WebhookSettings

# Besides the private, loopback and link-local ranges: the cloud metadata addresses.
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}


class BlockedAddress(Exception):
    """The target resolves to an address webhooks may not reach."""


def allowed_ip(ip: str, allow_private: bool) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr in METADATA or addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        return False
    if allow_private:
        return True
    return addr.is_global and not (addr.is_private or addr.is_loopback or addr.is_link_local)


class SafeResolver(AbstractResolver):
    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        blocked = [r["host"] for r in results if not allowed_ip(r["host"], self.allow_private)]
        if blocked:  # refuse the name outright: one bad answer makes the whole name suspect
            raise BlockedAddress(f"{host} resolves to a blocked address")
        return results

    async def close(self) -> None:
        await self._inner.close()


def numeric_host(host: str) -> str | None:
    """The IPv4 address a host spelled as a number stands for, as the resolver reads it:
    ``inet_aton``'s forms, which ``ipaddress`` does not take (``127.1``, ``0x7f000001``,
    ``2130706433``, ``0177.0.0.1``); None for a name."""
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def _loopback_name(host: str) -> bool:
    """``localhost`` and the names under it (RFC 6761), which resolvers keep on loopback."""
    return host in ("localhost", "localhost.localdomain") or host.endswith(".localhost")


def check_url(url: str, allow_private: bool) -> None:
    """Refuse what is wrong before any connection, without I/O: the scheme, a literal blocked
    IP, a blocked IP spelled as a number, and localhost's names (a final dot included: to the
    resolver ``localhost.`` is ``localhost``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddress("the URL must be http(s)://host/...")
    host = parts.hostname.lower()
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        ip = numeric_host(host.rstrip(".")) or ""
    if not ip:
        if _loopback_name(host.rstrip(".")) and not allow_private:
            raise BlockedAddress("localhost is not allowed")
        return
    if not allowed_ip(ip, allow_private):
        raise BlockedAddress(f"{parts.hostname} is a blocked address ({ip})")


async def check_resolved(url: str, settings: WebhookSettings) -> None:
    """Refuse a name that resolves, now, to a blocked address, asking the resolver deliveries
    ask (so what it refuses is refused at registration, not at every delivery for a day). A
    name that does not resolve, or not in time, passes: each delivery resolves it again, and
    the connect is checked then."""
    host = urlsplit(url).hostname
    if settings.allow_private or not host or numeric_host(host) is not None:
        return
    resolver = SafeResolver(allow_private=False)
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except UnicodeError:  # no resolver takes it (IDNA: a label empty or too long)
        raise BlockedAddress(f"{host!r} is not a host name that can be resolved") from None
    except (OSError, TimeoutError):
        return
    finally:
        await resolver.close()


def session(settings: WebhookSettings) -> ClientSession:
    # As many connections as deliveries may be in flight (lanes.py): none waits for one.
    connector = TCPConnector(resolver=SafeResolver(settings.allow_private), use_dns_cache=False,
                             limit=settings.max_in_flight)
    return ClientSession(connector=connector, timeout=ClientTimeout(
        total=settings.total_timeout_s, connect=settings.connect_timeout_s))


async def post(http: ClientSession, url: str, body: bytes, headers: dict[str, str],
               settings: WebhookSettings) -> tuple[int, bytes]:
    """POST once; (status, at most ``body_cap_bytes`` of the answer). Raises on a blocked
    target or a transport error."""
    check_url(url, settings.allow_private)
    kwargs: dict[str, Any] = {"data": body, "headers": headers, "allow_redirects": False}
    async with http.post(url, **kwargs) as resp:
        head = await resp.content.read(settings.body_cap_bytes)
        return resp.status, head
