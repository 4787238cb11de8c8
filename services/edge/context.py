"""The edge's shared resources, typed app keys, and the ``cleanup_ctx`` that owns them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from services.edge.settings import EdgeSettings
from shared import redis_conn
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import Steps
from shared.store import Store


@dataclass(slots=True)
class Edge:
    settings: EdgeSettings
    redis: RedisClient
    steps: Steps
    keys: Keys
    store: Store


SETTINGS = web.AppKey("settings", EdgeSettings)
EDGE = web.AppKey("edge", Edge)
# The task a request created or named, for the one summary line per request.
TASK_ID_KEY = web.RequestKey("task_id", str)


def edge_of(request: web.Request) -> Edge:
    return request.app[EDGE]


async def resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = redis_conn.connect(settings.common.redis_url,
                               max_connections=settings.redis_connections,
                               wait_s=settings.redis_wait_s)
    store = Store(settings.common.store_path)
    try:
        await store.open()
        try:
            await redis_conn.wait_until_ready(redis, settings.common.redis_url, attempts=3)
            await redis_conn.warn_if_unsafe(redis)
        except RuntimeError:
            pass  # the edge still starts: /api/health says Redis is down, submits answer 503
        keys = Keys(settings.common.redis_prefix)
        app[EDGE] = Edge(settings, redis, Steps(redis, keys), keys, store)
        yield
    finally:
        await redis.aclose()
        await store.close()
