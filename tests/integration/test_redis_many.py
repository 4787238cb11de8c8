"""Many calls of one script in one round trip (shared/redis_conn.py, evalsha_all), against a
real Redis: each call's reply or error in its place, nothing left on the connection for the
next command, and a read cut short drops its connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from shared import redis_conn

ADD = """if ARGV[1] == 'bad' then return redis.error_reply('ERR refused: ' .. ARGV[2]) end
return redis.call('INCRBY', KEYS[1], ARGV[2])"""

# Busy for ~0.2 s, then adds: long enough to be cancelled while its reply is awaited.
SLOW_ADD = """local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 200000
return redis.call('INCRBY', KEYS[1], ARGV[1])"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    c = redis_conn.connect(redis_url)
    assert isinstance(c, Redis)
    yield c
    await c.aclose()


async def test_each_call_gets_its_reply_or_its_error_in_place(client: Redis) -> None:
    key = "m" + uuid.uuid4().hex[:8]
    sha = await client.script_load(ADD)
    calls = [([key], ["ok", n]) for n in (1, 2, 3, 4, 5)]
    calls[2] = ([key], ["bad", "third"])
    replies = await redis_conn.evalsha_all(client, sha, calls)
    assert replies[:2] == [1, 3] and replies[3:] == [7, 12]
    assert isinstance(replies[2], ResponseError) and "refused: third" in str(replies[2])
    # nothing of the batch is left on the pooled connection for the next command
    assert await client.incrby(key, 100) == 112
    await client.delete(key)


async def test_a_script_redis_does_not_know_is_a_noscript_error_for_each_call(
        client: Redis) -> None:
    replies = await redis_conn.evalsha_all(client, "0" * 40, [(["a"], [1]), (["b"], [2])])
    assert [type(r) for r in replies] == [NoScriptError, NoScriptError]
    assert await client.ping()


async def test_a_read_cut_short_drops_its_connection(client: Redis) -> None:
    key = "m" + uuid.uuid4().hex[:8]
    sha = await client.script_load(SLOW_ADD)
    await client.ping()  # connected, so the call below goes straight to its read
    pool = client.connection_pool
    assert isinstance(pool, redis_conn.WaitingPool)
    call = asyncio.create_task(redis_conn.evalsha_all(client, sha, [([key], [1]), ([key], [2])]))
    while not pool.holding:  # noqa: ASYNC110 (one loop turn: the call is on its read)
        await asyncio.sleep(0)
    conn = next(iter(pool.holding))
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not conn.is_connected and not pool.holding
    # The scripts still ran; the next command gets its own reply, not one of theirs.
    assert await client.incrby(key, 10) == 13
    await client.delete(key)
