"""After a Redis restart the lane's held connection (shared/redis_conn.py, ``Lane``) is dead:
Redis closed it, and the socket has seen EOF, though its transport is not closing (a
half-closed TCP connection). Our client never re-sends a command, so a group written on it
would fail every call in it with Redis already back. The lane must take a fresh connection
before it writes a group, at once, not after idling past the health-check interval."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer
from harness.waiting import until
from shared import redis_conn, redis_fence
from shared.coalesce import GROUP, Coalescer
from shared.config import RedisOverrides
from tests.integration.redis_switches import CASES, THIS_RUN

ADD = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def ready(lane: redis_fence.Lane, within_s: float = 10.0) -> None:
    async def check() -> bool:
        return lane.ready()
    await until(check, within_s, "the lane to be ready")


# groups of 4 (12 calls: a lone one, then two groups on the lane) and the coalescer's own size
@pytest.mark.parametrize("group", [4, GROUP])
@pytest.mark.parametrize("overrides", CASES)
async def test_coalesced_calls_all_succeed_once_redis_is_back(own_redis: RedisServer,
                                                             group: int,
                                                             overrides: RedisOverrides) -> None:
    client = redis_conn.connect(own_redis.url, overrides=overrides)
    assert isinstance(client, Redis)
    key = "r" + uuid.uuid4().hex[:8]
    try:
        coalescer = Coalescer(client, client.register_script(ADD), group=group)
        if coalescer._lane is not None:  # REDIS_OVERRIDES=-lane: the groups wait their turn
            await ready(coalescer._lane)
        assert await coalescer([key], [1]) == 1
        await asyncio.to_thread(own_redis.stop)
        await asyncio.to_thread(own_redis.start)  # the same port; returns once it answers PING
        calls = 3 * group
        replies = await asyncio.gather(*(coalescer([key], [1]) for _ in range(calls)),
                                       return_exceptions=True)
        assert [f"{type(r).__name__}: {r}" for r in replies if isinstance(r, Exception)] == []
        # AOF on: the call before the restart is kept, each one after it added once
        assert sorted(replies) == list(range(2, calls + 2))  # type: ignore[type-var]
    finally:
        await client.aclose()


async def test_a_lane_whose_transport_is_closing_reopens_at_once(own_redis: RedisServer) -> None:
    client = redis_conn.connect(own_redis.url, overrides=THIS_RUN)
    assert isinstance(client, Redis)
    try:
        lane = redis_fence.Lane(client)
        await ready(lane)
        first = lane._conn
        first._writer.transport.close()
        assert not lane.ready()
        await ready(lane, within_s=2)  # not after idling 15 s
        assert lane._conn is not None and lane._conn._writer.transport is not None
        assert not lane._conn._writer.transport.is_closing()
        (reply,) = await lane.send([("PING",)])
        assert reply is True or reply == "PONG"
    finally:
        await client.aclose()
