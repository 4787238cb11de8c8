"""Bearer API keys mapped to tenants. With no keys configured the edge runs open (one tenant,
``public``) and says so in its log and in /api/health."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from services.edge.context import SETTINGS
from services.edge.errors import ApiError

OPEN_TENANT = "public"
TENANT = web.RequestKey("tenant", str)
PUBLIC_PATHS = frozenset({"/api/health", "/api/openapi.json"})


def find_tenant(keys: dict[str, str], presented: str) -> str | None:
    """Compare against every key, always all of them, in constant time. Digests are compared
    rather than the keys themselves so that not even a key's length shows in the timing."""
    found = None
    candidate = hashlib.sha256(presented.encode(errors="surrogateescape")).digest()
    for key, tenant in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), candidate):
            found = tenant
    return found


def authenticate(request: web.Request) -> None:
    """Set the request's tenant from its API key, or raise 401."""
    keys = request.app[SETTINGS].api_keys.get()
    if not keys:
        request[TENANT] = OPEN_TENANT
        return
    if request.path in PUBLIC_PATHS:
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    tenant = find_tenant(keys, presented.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer)",
                       headers={"WWW-Authenticate": "Bearer"})
    request[TENANT] = tenant


def tenant_of(request: web.Request) -> str:
    return request[TENANT]
