"""After a Redis restart, every pooled connection is dead. Our client never re-sends a command
(shared/redis_conn.py), so a dead connection handed out by the pool fails the step that drew
it, and a processor restarts that step: a task mid-stream would spend one provider attempt per
dead connection and could be failed with its attempts exhausted by a mere Redis restart. The
pool must replace a connection Redis closed before handing it out."""

from __future__ import annotations

import asyncio
import signal

import pytest

from harness.processes import RedisServer
from shared import redis_conn
from shared.config import RedisOverrides
from tests.integration.redis_switches import CASES

CONNECTIONS = 10


# the processor's pool (waits as long as it takes) and everyone else's (a bounded wait)
@pytest.mark.parametrize("wait_s", [None, redis_conn.POOL_WAIT_S])
@pytest.mark.parametrize("overrides", CASES)
async def test_no_command_fails_once_redis_is_back(own_redis: RedisServer,
                                                  wait_s: float | None,
                                                  overrides: RedisOverrides) -> None:
    client = redis_conn.connect(own_redis.url, wait_s=wait_s, max_connections=64,
                                overrides=overrides)
    try:
        # Fill the pool: CONNECTIONS connections, each held by a blocking command at once.
        await asyncio.gather(*(client.blpop([f"nothing-{i}"], timeout=0.1)
                               for i in range(CONNECTIONS)))
        await asyncio.to_thread(own_redis.kill, signal.SIGKILL)
        await asyncio.to_thread(own_redis.start)  # returns once it answers PING
        replies = await asyncio.gather(*(client.incr("after-restart")
                                         for _ in range(2 * CONNECTIONS)),
                                       return_exceptions=True)
        assert [r for r in replies if isinstance(r, Exception)] == []
        assert sorted(replies) == list(range(1, 2 * CONNECTIONS + 1))  # type: ignore[type-var]
    finally:
        await client.aclose()
