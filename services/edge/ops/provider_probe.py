"""Is the provider Sluice's own mock? Asked of the provider, not guessed from its address.

The mock marks every answer with :data:`shared.config.MOCK_HEADER`, even a 401, so the edge
asks ``GET {base_url}/models`` of each provider the processors call (PROVIDERS_FILE's, else
AI_BASE_URL's one; never the edge's AI_BASE_URL when a file names the providers) without the
provider key (the edge is never given it). A
definite answer is kept for the life of the process; an unreachable provider is asked again
next time, and until then nobody knows (``None``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.edge.context import SETTINGS
from shared.config import MOCK_HEADER

# /api/ai-status waits for the answer: a provider that does not answer soon is "unknown".
PROBE_TIMEOUT_S = 2.0


class ProviderProbe:
    """Asks each of ``base_urls``: the providers the processors call (PROVIDERS_FILE's, else
    AI_BASE_URL's one)."""

    __slots__ = ("_known", "_session", "_urls")

    def __init__(self, session: aiohttp.ClientSession, base_urls: list[str]) -> None:
        self._session, self._urls = session, [f"{url}/models" for url in base_urls]
        self._known: dict[str, bool] = {}

    async def is_mock(self) -> bool | None:
        """True when every provider is the mock, False when any is not, else None (one that
        is not known yet, and none known not to be)."""
        found = await asyncio.gather(*(self._ask(url) for url in self._urls))
        if False in found:
            return False
        return True if found and all(found) else None

    async def _ask(self, url: str) -> bool | None:
        known = self._known.get(url)
        if known is None:
            try:
                async with self._session.get(url, allow_redirects=False) as resp:
                    known = self._known[url] = MOCK_HEADER in resp.headers
            except (aiohttp.ClientError, TimeoutError):
                return None
        return known


PROBE = web.AppKey("provider_probe", ProviderProbe)


async def probe_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    routing = app[SETTINGS].routing
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[PROBE] = ProviderProbe(session, [spec.base_url.get()
                                             for spec in routing.providers.values()])
        yield
