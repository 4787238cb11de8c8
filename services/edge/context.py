"""The edge's shared resources, typed app keys, and the ``cleanup_ctx`` that owns them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from services.edge.settings import EdgeSettings
from shared import redis_conn, redis_watch
from shared.keys import Keys
from shared.redis_conn import WAIT_OUT, RedisClient
from shared.steps import Steps
from shared.store import Store, make_store
from shared.store_check import StoreCheck, check_identity


@dataclass(slots=True)
class Edge:
    settings: EdgeSettings
    redis: RedisClient
    steps: Steps
    keys: Keys
    store: Store
    store_check: StoreCheck


SETTINGS = web.AppKey("settings", EdgeSettings)
EDGE = web.AppKey("edge", Edge)
# The task a request created or named, for the one summary line per request.
TASK_ID_KEY = web.RequestKey("task_id", str)
STORE_PATIENCE_S = 1.0


def edge_of(request: web.Request) -> Edge:
    return request.app[EDGE]


async def resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # No timer per Redis command (a tenth of the edge's CPU per submit): a probe answers a
    # command Redis leaves unanswered for EDGE_REDIS_TIMEOUT_S with a 503 (shared/redis_watch).
    async with redis_watch.watched(settings.common.redis_url,
                                   timeout_s=settings.redis_timeout_s,
                                   max_connections=settings.redis_connections,
                                   wait_s=settings.redis_wait_s,
                                   overrides=settings.common.redis_overrides) as redis:
        # Reads the edge cannot answer from Redis wait briefly for the store, then answer 503.
        store = make_store(settings.common.store_url.get(),
                           pool_size=settings.common.store_pool_size,
                           patience_s=STORE_PATIENCE_S)
        try:
            await store.open()
            keys = Keys(settings.common.redis_prefix)
            try:
                await redis_conn.wait_until_ready(redis, settings.common.redis_url, attempts=3)
                await redis_conn.warn_if_unsafe(redis)
                await check_identity(store, redis, keys)
            except (redis_conn.RedisUnreachable, *WAIT_OUT):
                pass  # the edge still starts: /api/health says Redis is down, submits answer 503
            check = StoreCheck(store, settings.store_check_interval_s)
            app[EDGE] = Edge(settings, redis, Steps(redis, keys), keys, store, check)
            yield
        finally:
            await store.close()
