"""Is the provider Sluice's own mock? Asked of the provider, not guessed from its address.

The mock marks every answer with :data:`shared.config.MOCK_HEADER`, even a 401, so the edge
asks ``GET {AI_BASE_URL}/models`` without the provider key (the edge is never given it). A
definite answer is kept for the life of the process; an unreachable provider is asked again
next time, and until then nobody knows (``None``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.edge.context import SETTINGS
from shared.config import MOCK_HEADER

# /api/ai-status waits for the answer: a provider that does not answer soon is "unknown".
PROBE_TIMEOUT_S = 2.0


class ProviderProbe:
    __slots__ = ("_known", "_session", "_url")

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session, self._url = session, f"{base_url}/models"
        self._known: bool | None = None

    async def is_mock(self) -> bool | None:
        if self._known is None:
            try:
                async with self._session.get(self._url, allow_redirects=False) as resp:
                    self._known = MOCK_HEADER in resp.headers
            except (aiohttp.ClientError, TimeoutError):
                return None
        return self._known


PROBE = web.AppKey("provider_probe", ProviderProbe)


async def probe_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[PROBE] = ProviderProbe(session, app[SETTINGS].provider.ai_base_url.get())
        yield
