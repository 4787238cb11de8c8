"""An aiohttp middleware counting requests by route template and status, for the services
whose own request path has no other layer to put it in (the mock provider)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from shared import metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(service: str) -> Middleware:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started, status = time.perf_counter(), 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.http_requests.labels(service, route, request.method, str(status)).inc()
            metrics.http_duration.labels(service, route).observe(time.perf_counter() - started)

    return count
