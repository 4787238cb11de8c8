"""Bearer API keys mapped to tenants, and admin keys. With no keys configured the edge runs
open (one tenant, ``public``) and says so in its log and in /api/health.

Admin keys (``EDGE_ADMIN_KEYS``) are good only on the admin and status paths (``/metrics``,
the dashboard's ``/api/admin/*``, ``/api/async-status`` and ``/api/ai-status``), where they see
every tenant; a tenant's key there sees only its own tenant's tasks and figures (``scope``),
and ``METRICS_TOKEN`` opens ``/metrics`` alone."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from services.edge.context import SETTINGS
from services.edge.plumbing.errors import ApiError

OPEN_TENANT = "public"
TENANT = web.RequestKey("tenant", str)
ADMIN = web.RequestKey("admin", bool)
PUBLIC_PATHS = frozenset({"/api/health", "/api/openapi.json"})
METRICS_PATH = "/metrics"
ADMIN_PREFIX = "/api/admin/"
STATUS_PATHS = frozenset({"/api/async-status", "/api/ai-status"})  # a tenant's, or an admin's
DASHBOARD_PREFIX = "/dashboard"  # the page and its files: no data, the page asks for a key


def find_tenant(keys: dict[str, str], presented: str) -> str | None:
    """Compare against every key, always all of them, in constant time. Digests are compared
    rather than the keys themselves so that not even a key's length shows in the timing."""
    found = None
    candidate = hashlib.sha256(presented.encode(errors="surrogateescape")).digest()
    for key, tenant in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), candidate):
            found = tenant
    return found


def _unauthorized(what: str = "a valid API key") -> ApiError:
    return ApiError(401, "unauthorized", f"{what} is required (Authorization: Bearer)",
                    headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: web.Request) -> None:
    """Set the request's tenant (and whether it is an admin) from its key, or raise 401."""
    settings = request.app[SETTINGS]
    path = request.path
    if settings.open_admin:
        request[TENANT] = OPEN_TENANT
        return
    if path in PUBLIC_PATHS or path.startswith(DASHBOARD_PREFIX):
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip() if scheme.lower() == "bearer" else ""
    if path == METRICS_PATH or path.startswith(ADMIN_PREFIX):
        _authenticate_admin(request, presented)
        return
    if path in STATUS_PATHS and presented and find_tenant(settings.admin_keys.get(), presented):
        request[ADMIN] = True
        request[TENANT] = ""
        return
    if not settings.api_keys.get():
        request[TENANT] = OPEN_TENANT
        return
    tenant = find_tenant(settings.api_keys.get(), presented) if presented else None
    if tenant is None:
        raise _unauthorized()
    request[TENANT] = tenant


def _authenticate_admin(request: web.Request, presented: str) -> None:
    settings = request.app[SETTINGS]
    if presented and find_tenant(settings.admin_keys.get(), presented):
        request[ADMIN] = True
        request[TENANT] = ""
        return
    token = settings.metrics.token.get()
    if (request.path == METRICS_PATH and presented and token
            and hmac.compare_digest(hashlib.sha256(token.encode()).digest(),
                                    hashlib.sha256(presented.encode(
                                        errors="surrogateescape")).digest())):
        request[ADMIN] = True
        request[TENANT] = ""
        return
    tenant = find_tenant(settings.api_keys.get(), presented) if presented else None
    if tenant is not None and request.path != METRICS_PATH:
        request[TENANT] = tenant  # the dashboard's data, limited to this tenant's tasks
        return
    if tenant is not None:
        raise ApiError(403, "forbidden", "/metrics needs an admin key or METRICS_TOKEN")
    raise _unauthorized("an admin key (EDGE_ADMIN_KEYS)")


def tenant_of(request: web.Request) -> str:
    return request[TENANT]


def is_admin(request: web.Request) -> bool:
    """Sees every tenant: an admin key, or an edge with no keys at all."""
    return request.get(ADMIN, False) or request.app[SETTINGS].open_admin


def scope(request: web.Request) -> str | None:
    """Whose figures this request may see: None for every tenant's (an admin key, or an edge
    with no keys at all), else its own tenant's."""
    return None if is_admin(request) else tenant_of(request)
