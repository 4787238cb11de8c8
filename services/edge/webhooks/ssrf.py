"""Sending to a URL a tenant chose without letting it reach inside our network.

The address is checked where it is used: the resolver below is the one aiohttp's connector
asks, and it hands back only the addresses it checked, so the IP connected to is an IP that
passed (a DNS answer that changes between a check and the connect, "DNS rebinding", cannot
slip past). aiohttp does not ask the resolver for a literal IP, so those are checked before the
request. Redirects are not followed, timeouts bound the connect and the whole exchange, and
the answer is read up to a small cap.
"""

from __future__ import annotations

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


def check_url(url: str, allow_private: bool) -> None:
    """Refuse what is wrong before any connection: the scheme, and a literal blocked IP."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddress("the URL must be http(s)://host/...")
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        if parts.hostname.lower() in ("localhost", "localhost.localdomain") \
                and not allow_private:
            raise BlockedAddress("localhost is not allowed") from None
        return
    if not allowed_ip(parts.hostname, allow_private):
        raise BlockedAddress(f"{parts.hostname} is a blocked address")


def session(settings: WebhookSettings) -> ClientSession:
    connector = TCPConnector(resolver=SafeResolver(settings.allow_private), use_dns_cache=False,
                             limit=100)
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
