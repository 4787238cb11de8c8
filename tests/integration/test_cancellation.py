"""A cancelled service loop stops, even when the cancel lands inside a redis-py call.

On Python 3.11 redis-py sends each command through ``asyncio.wait_for``, which swallows a
cancellation that arrives just as the write completes (gh-86296). A TaskGroup aborting after
one failure then waited forever on such a loop: the process stayed alive with no heartbeat."""

from __future__ import annotations

import asyncio

from shared import redis_conn
from shared.loops import forever, until_redis_answers


async def _cancel_many(make_loop, rounds: int = 60) -> int:  # type: ignore[no-untyped-def]
    """Start a loop, cancel it after a varying delay; count loops still running 5 s later."""
    stuck = 0
    for i in range(rounds):
        task = asyncio.create_task(make_loop())
        await asyncio.sleep(0.0005 * (i % 9))
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        if not task.done():
            stuck += 1
            task.cancel()
            await asyncio.wait({task}, timeout=5)
    return stuck


async def test_forever_stops_when_cancelled_inside_a_redis_call(redis_url: str) -> None:
    redis = redis_conn.connect(redis_url, wait_s=None, max_connections=4)
    try:
        async def step() -> None:
            await redis.eval("return 1", 0)  # type: ignore[misc]

        stuck = await _cancel_many(lambda: forever(step, "test", asyncio.Event()))
        assert stuck == 0, f"{stuck} of 60 cancelled loops went on running"
    finally:
        await redis.aclose()


async def test_until_redis_answers_stops_when_cancelled(redis_url: str) -> None:
    redis = redis_conn.connect(redis_url, max_connections=4)
    try:
        async def flaky() -> None:
            await redis.eval("return 1", 0)  # type: ignore[misc]
            raise ConnectionError("as if Redis had gone")  # retried until it answers

        stuck = await _cancel_many(lambda: until_redis_answers(flaky, "test"))
        assert stuck == 0, f"{stuck} of 60 cancelled retries went on running"
    finally:
        await redis.aclose()
