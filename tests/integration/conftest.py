"""Fixtures of the fast layer: the session's real redis-server, a key prefix of each test's own
(so tests never see each other's keys), the typed steps, and for the runner and worker tests
a real SQLite store and the real mock provider over HTTP, all in this process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from services.mockai.app import create_app
from services.mockai.settings import MockSettings
from shared import redis_conn
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import Steps
from shared.store import make_store
from tests.integration.kit import Core
from tests.integration.redis_switches import THIS_RUN


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisClient]:
    client = redis_conn.connect(redis_url, overrides=THIS_RUN)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis: RedisClient) -> AsyncIterator[Keys]:
    k = Keys("t" + uuid.uuid4().hex[:12])
    yield k
    stale = [key async for key in redis.scan_iter(match=f"{{{k.prefix}}}:*", count=1000)]
    if stale:
        await redis.delete(*stale)


@pytest.fixture
def steps(redis: RedisClient, keys: Keys) -> Steps:
    return Steps(redis, keys)


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    """The mock provider's /v1 base URL: a real HTTP server of this test's own (its fault
    counters and request records are the test's alone)."""
    server = TestServer(create_app(MockSettings(ttft_ms=0, tokens_per_s=0)))
    await server.start_server()
    yield str(server.make_url("/v1"))
    await server.close()


@pytest.fixture
async def core(redis_url: str, redis: RedisClient, keys: Keys, steps: Steps, mock_url: str,
               store_url: str) -> AsyncIterator[Core]:
    store = make_store(store_url)
    await store.open()
    c = Core(redis_url=redis_url, redis=redis, keys=keys, steps=steps, store=store,
             mock_url=mock_url)
    yield c
    await c.close()
    await store.close()
