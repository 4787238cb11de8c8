"""Connection pools wait for a free connection instead of failing, on one Redis and on a
cluster; a wait that times out says "pool exhausted", never "Redis unreachable", and the edge
answers 503 only then or when Redis really is unreachable, logging which."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from harness.waiting import until
from services.edge.context import EDGE
from shared import redis_conn
from shared.keys import Keys
from shared.redis_conn import UNAVAILABLE, GatedCluster, PoolExhausted, RedisClient
from tests.integration.edge_client import running_edge
from tests.integration.redis_switches import THIS_RUN


@pytest.fixture(params=["plain", "cluster"])
def any_url(request: pytest.FixtureRequest) -> str:
    fixture = "redis_url" if request.param == "plain" else "redis_cluster_url"
    return str(request.getfixturevalue(fixture))


@contextlib.asynccontextmanager
async def holding_every_connection(client: RedisClient) -> AsyncIterator[None]:
    """Take the one connection (or turn) a client of ``max_connections=1`` has."""
    if isinstance(client, GatedCluster):
        async with client.turn():
            yield
        return
    assert isinstance(client, Redis)
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        yield
    finally:
        await pool.release(conn)


async def test_commands_beyond_the_pool_wait_for_a_connection(any_url: str) -> None:
    client = redis_conn.connect(any_url, max_connections=2, wait_s=30, overrides=THIS_RUN)
    stream = Keys("p" + uuid.uuid4().hex[:8]).events("t")
    try:
        # Each holds its connection for 25 ms: 12 of them on 2 connections must take turns.
        replies = await asyncio.gather(*(client.xread({stream: "0-0"}, block=25)
                                         for _ in range(12)))
        assert all(not r for r in replies)
    finally:
        await client.aclose()


async def test_a_wait_that_times_out_is_pool_exhausted(any_url: str) -> None:
    client = redis_conn.connect(any_url, max_connections=1, wait_s=0.05,
                                overrides=THIS_RUN)
    try:
        await client.ping()
        async with holding_every_connection(client):
            with pytest.raises(PoolExhausted) as caught:
                await client.ping()
            assert isinstance(caught.value, UNAVAILABLE)  # never sent: loops may run it again
        assert await client.ping()
    finally:
        await client.aclose()


async def test_the_edge_says_pool_exhausted_or_unreachable(redis_url: str,
                                                           tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, EDGE_REDIS_CONNECTIONS="1",
                            EDGE_REDIS_WAIT_S="0.05") as edge:
        redis = edge.client.app[EDGE].redis
        with capture_logs() as logs:
            async with holding_every_connection(redis):
                r = await edge.client.post("/api/tasks", json={"prompt": "x"})
                assert r.status == 503 and r.headers["Retry-After"] == "1"
            r = await edge.client.post("/api/tasks", json={"prompt": "x"})
            assert r.status == 202, await r.text()
        events = [e["event"] for e in logs]
        assert "redis_pool_exhausted" in events and "redis_unavailable" not in events, logs
    async with running_edge("redis://127.0.0.1:1/0", tmp_path) as edge:
        with capture_logs() as logs:
            r = await edge.client.post("/api/tasks", json={"prompt": "x"})
            assert r.status == 503
        events = [e["event"] for e in logs]
        assert "redis_unavailable" in events and "redis_pool_exhausted" not in events, logs


async def test_a_failed_connect_gives_its_turn_back() -> None:
    # One connection, nothing listening: each command fails to connect. Were the turn kept,
    # the second command would wait out the pool and say "exhausted" instead of "refused".
    client = redis_conn.connect("redis://127.0.0.1:1/0", max_connections=1, wait_s=0.05,
                                overrides=THIS_RUN)
    try:
        for _ in range(3):
            with pytest.raises(UNAVAILABLE) as caught:
                await client.ping()
            assert not isinstance(caught.value, PoolExhausted)
    finally:
        await client.aclose()


async def test_a_cancelled_command_gives_its_turn_back(redis_url: str) -> None:
    client = redis_conn.connect(redis_url, max_connections=1, wait_s=0.05,
                                overrides=THIS_RUN)
    stream = Keys("p" + uuid.uuid4().hex[:8]).events("t")
    try:
        pool = client.connection_pool
        assert isinstance(pool, redis_conn.WaitingPool)
        blocked = asyncio.ensure_future(client.xread({stream: "$"}, block=10_000))

        async def taken() -> bool:  # the one connection, by the read waiting on Redis
            return bool(pool.holding)

        await until(taken, 10, "the blocked read to hold the pool's one connection")
        blocked.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await blocked
        assert await client.ping()  # within 0.05 s: the turn came back
    finally:
        await client.aclose()
