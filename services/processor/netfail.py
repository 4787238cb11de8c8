"""A failed connection to a provider, said so an operator can act on it: host, port, cause."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp


def connection_failure(exc: aiohttp.ClientError, url: str) -> str:
    """What went wrong, with host, port and cause: ``connect to 127.0.0.1:8090 refused``."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{host}:{port}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"connect to {where} failed: the name {host} does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"connect to {where} failed: its TLS certificate was refused"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return f"connect to {where} refused"
        cause = os_error.strerror or type(os_error).__name__
        return f"connect to {where} failed: {cause}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection before answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the answer from {where} broke off: {exc}"
    return f"connection to {where} failed: {type(exc).__name__}"
