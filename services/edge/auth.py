"""Bearer API keys mapped to tenants. With no keys configured the edge runs open (one tenant,
``public``) and says so in its log and in /api/health."""

from __future__ import annotations

import hmac

from aiohttp import web

from services.edge.context import SETTINGS
from services.edge.errors import ApiError, Handler

OPEN_TENANT = "public"
TENANT = "tenant"
PUBLIC_PATHS = frozenset({"/api/health", "/api/openapi.json"})


def find_tenant(keys: dict[str, str], presented: str) -> str | None:
    """Compare against every key in constant time, so timing tells nothing about any key."""
    found = None
    candidate = presented.encode()
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), candidate):
            found = tenant
    return found


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[SETTINGS].api_keys
    if not keys:
        request[TENANT] = OPEN_TENANT
        return await handler(request)
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    tenant = find_tenant(keys, presented.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer)",
                       headers={"WWW-Authenticate": "Bearer"})
    request[TENANT] = tenant
    return await handler(request)


def tenant_of(request: web.Request) -> str:
    tenant: str = request[TENANT]
    return tenant
