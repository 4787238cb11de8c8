"""The edge's ``/metrics`` and its per-request figures."""

from __future__ import annotations

from aiohttp import web

from services.edge.context import edge_of
from shared import figures, metrics
from shared.redis_conn import UNAVAILABLE


async def serve(request: web.Request) -> web.Response:
    """Prometheus exposition; the queue gauges are read from Redis now (authenticate() has
    already asked for an admin key or METRICS_TOKEN when keys are set)."""
    edge = edge_of(request)
    try:
        await figures.refresh_queue(edge.redis, edge.keys)
    except UNAVAILABLE:
        metrics.redis_errors.labels("scrape").inc()  # the rest of the page is still true
    return web.Response(body=metrics.exposition(), content_type=metrics.CONTENT_TYPE,
                        charset="utf-8")


def observe(request: web.Request, status: int, seconds: float) -> None:
    """Count one answered request under its route's template (never its path: ids stay out
    of the labels)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.http_requests.labels("edge", route, request.method, str(status)).inc()
    metrics.http_duration.labels("edge", route).observe(seconds)
