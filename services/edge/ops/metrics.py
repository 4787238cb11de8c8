"""The edge's ``/metrics`` and its per-request figures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from services.edge.context import EDGE, edge_of
from shared import figures, metrics, rollup
from shared.governor import read_providers
from shared.redis_conn import UNAVAILABLE
from shared.timeutil import now_ms


async def serve(request: web.Request) -> web.Response:
    """Prometheus exposition; the queue gauges are read from Redis now (authenticate() has
    already asked for an admin key or METRICS_TOKEN when keys are set)."""
    edge = edge_of(request)
    try:
        await figures.refresh_queue(edge.redis, edge.keys)
    except UNAVAILABLE:
        metrics.redis_errors.labels("scrape").inc()  # the rest of the page is still true
    return web.Response(body=metrics.exposition("edge"), content_type=metrics.CONTENT_TYPE,
                        charset="utf-8")


async def rollup_ctx(app: web.Application) -> AsyncIterator[None]:
    """Flush this edge's share of the dashboard's history; sample the queue's depth and the
    provider governors' windows and calls in flight (summed over providers)."""
    edge = app[EDGE]

    async def depth() -> dict[str, float]:
        await figures.refresh_queue(edge.redis, edge.keys)
        governed = await read_providers(edge.redis, edge.keys, now_ms())
        return {"depth": sum(metrics.queue_depth.labels(s)._value.get()
                             for s in ("queued", "waiting", "batched")),
                "window": sum(float(p.get("window") or p.get("limit") or 0) for p in governed),
                "gov_in_flight": sum(int(p.get("in_flight") or 0) for p in governed)}

    async with rollup.flushing(edge.redis, edge.keys, depth):
        yield


# (route, method, status) -> its counter and histogram: labels() costs more than inc() on the
# submit path, and the set is bounded by the router's routes.
_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe(request: web.Request, status: int, seconds: float) -> None:
    """Count one answered request under its route's template (never its path: ids stay out
    of the labels)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    key = (route, request.method, status)
    series = _series.get(key)
    if series is None:
        series = _series[key] = (
            metrics.http_requests.labels("edge", route, request.method, str(status)),
            metrics.http_duration.labels("edge", route))
    series[0].inc()
    series[1].observe(seconds)
