"""Many calls of one script in one round trip, against a real Redis.

Lane (shared/redis_fence.py; used by shared/coalesce.py), groups written the moment they form:
each reply in its place across groups written back to back, a group that forms while a round
trip is on its way going out before that returns, and a lost connection failing the groups
written on it, then replaced. A call Redis cannot be sent fails alone in its group, on the
lane and in the pipeline that follows a round trip."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from harness.waiting import until
from shared import redis_conn, redis_fence
from shared.coalesce import LANE_MIN_POOL, Coalescer
from tests.integration.redis_switches import CASES, THIS_RUN

ADD = """if ARGV[1] == 'bad' then return redis.error_reply('ERR refused: ' .. ARGV[2]) end
return redis.call('INCRBY', KEYS[1], ARGV[2])"""

# Busy for ~0.15 s, then adds: long enough to be cancelled while its reply is awaited, or for
# a group to form behind it. A call whose first argument is 'quick' (one of the group that
# forms behind) adds at once: the test waits for one busy call, not one per call.
SLOW_ADD = """if ARGV[1] ~= 'quick' then
  local t = redis.call('TIME')
  local start = t[1] * 1000000 + t[2]
  repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 150000
end
return redis.call('INCRBY', KEYS[1], ARGV[#ARGV])"""


@pytest.fixture(params=CASES)
async def client(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    c = redis_conn.connect(redis_url, overrides=request.param)
    assert isinstance(c, Redis)
    yield c
    await c.aclose()


async def ready(lane: redis_fence.Lane) -> None:
    async def check() -> bool:
        return lane.ready()
    await until(check, 10, "the lane to be ready")


async def ready_lane(client: Redis) -> tuple[redis_fence.Lane, str]:
    """A lane with its connection, and ADD's sha."""
    sha = await client.script_load(ADD)
    lane = redis_fence.Lane(client)
    await ready(lane)
    return lane, sha


def adds(sha: str, key: str, amounts: list[Any]) -> list[tuple[Any, ...]]:
    return [("EVALSHA", sha, 1, key, "bad" if a == "bad" else "ok", a) for a in amounts]


async def test_groups_written_back_to_back_each_get_their_own_replies(client: Redis) -> None:
    key = "l" + uuid.uuid4().hex[:8]
    lane, sha = await ready_lane(client)
    first = lane.send(adds(sha, key, [1, 2, "bad"]))
    second = lane.send(adds(sha, key, [10, 20]))
    third = lane.send(adds(sha, key, [100]))
    one, two, three = await asyncio.gather(first, second, third)
    assert one[:2] == [1, 3] and isinstance(one[2], ResponseError)
    assert (two, three) == ([13, 33], [133])
    assert lane.ready()  # nothing left unread: the lane takes the next group
    await client.delete(key)


async def test_a_lost_connection_fails_the_groups_on_it_and_the_lane_gets_another(
        client: Redis) -> None:
    key = "l" + uuid.uuid4().hex[:8]
    lane, sha = await ready_lane(client)
    first = lane.send(adds(sha, key, [1]))
    second = lane.send(adds(sha, key, [2]))
    lane._conn._writer.transport.abort()  # the connection is lost before any reply is read
    for group in (first, second):
        with pytest.raises(RedisConnectionError):
            await group
    assert not lane.ready()  # and it starts getting a fresh connection
    await ready(lane)
    assert await lane.send(adds(sha, key, [5])) == [int(await client.get(key) or 0)]
    await client.delete(key)


async def slow_call_in_flight(client: Redis, key: str, group: int = 3,
                              needs_lane: bool = True) -> tuple[Coalescer, asyncio.Task[Any]]:
    """A coalescer of SLOW_ADD in groups of ``group``, its lane ready, and a lone call on its
    way (Redis busy ~0.15 s with it)."""
    script = client.register_script(SLOW_ADD)
    await client.script_load(SLOW_ADD)
    coalescer = Coalescer(client, script, group=group)
    if coalescer._lane is not None:
        await ready(coalescer._lane)
    elif needs_lane:
        pytest.skip("the lane is off")
    await client.ping()  # a pooled connection is open: the lone call is written at once
    return coalescer, asyncio.create_task(coalescer([key], ["ok", 1]))


async def test_a_group_that_forms_during_a_round_trip_goes_out_before_it_returns(
        client: Redis) -> None:
    key = "l" + uuid.uuid4().hex[:8]
    coalescer, in_flight = await slow_call_in_flight(client, key)
    # One loop turn at a time: the lone call is on its way, then the group's first steps.
    await until(lambda: coalescer._busy, 5, "the lone call to be on its way", interval=0)
    group = [asyncio.create_task(coalescer([key], ["quick", n])) for n in (10, 100, 1000)]
    await until(lambda: coalescer.round_trips >= 2, 5, "the group's round trip", interval=0)
    assert not in_flight.done()  # the group went out while the round trip was on its way
    results = await asyncio.gather(in_flight, *group)
    assert sorted(results) == [1, 11, 111, 1111]
    assert coalescer.round_trips == 2  # the lone call, then the group on the lane
    await client.delete(key)


async def test_a_lane_idle_past_the_health_check_interval_takes_a_checked_connection(
        client: Redis) -> None:
    key = "l" + uuid.uuid4().hex[:8]
    lane, sha = await ready_lane(client)
    first = lane._conn
    await client.client_kill_filter(_id=await _client_id(lane))  # Redis closes it, unseen
    lane._used_at -= first.health_check_interval  # and it has been idle that long
    assert not lane.ready()
    await ready(lane)
    assert await lane.send(adds(sha, key, [7])) == [7]
    await client.delete(key)


async def _client_id(lane: redis_fence.Lane) -> int:
    (reply,) = await lane.send([("CLIENT", "ID")])
    return int(reply)


async def test_the_lane_gives_its_connection_back_only_once_its_groups_are_read(
        client: Redis, redis_url: str) -> None:
    small = redis_conn.connect(redis_url, max_connections=1,  # the lane will hold the one
                               overrides=THIS_RUN)
    assert isinstance(small, Redis)
    key = "l" + uuid.uuid4().hex[:8]
    sha = await client.script_load(SLOW_ADD)
    try:
        lane = redis_fence.Lane(small)
        await ready(lane)
        group = lane.send(adds(sha, key, [3]))  # Redis busy ~0.15 s before this reply comes
        waiting = asyncio.create_task(small.incrby(key + "x", 5))  # for the pool's turn
        lane._used_at -= lane._conn.health_check_interval  # the lane swaps its connection now
        assert not lane.ready()
        # The command waiting for a turn gets the connection the lane gives back: its own
        # reply, never the group's, and the group its own.
        assert await waiting == 5
        assert await group == [3]
    finally:
        await small.aclose()
        await client.delete(key, key + "x")


@pytest.mark.parametrize("group", [3, 100], ids=["on-the-lane", "after-the-round-trip"])
async def test_a_call_redis_cannot_be_sent_fails_alone_in_its_group(client: Redis,
                                                                    group: int) -> None:
    key = "l" + uuid.uuid4().hex[:8]
    coalescer, in_flight = await slow_call_in_flight(client, key, group, needs_lane=group < 100)
    async with asyncio.timeout(5):  # a call left unsettled would hang here
        # One loop turn at a time: the lone call is on its way.
        await until(lambda: coalescer._busy, 5, "the lone call to be on its way", interval=0)
        replies = await asyncio.gather(coalescer([key], ["quick", 10]),
                                       coalescer([key], [None]),
                                       coalescer([key], ["quick", 100]), return_exceptions=True)
        assert await in_flight == 1
    # None: nothing Redis can be sent; the two others are
    assert [type(r) for r in replies] == [int, DataError, int], replies
    assert sorted([replies[0], replies[2]]) == [11, 111]  # type: ignore[type-var]
    assert coalescer.round_trips == 2  # the lone call, then the group of the other two
    assert coalescer._lane is None or coalescer._lane.ready()  # nothing left unread
    assert int(await client.get(key) or 0) == 111
    await client.delete(key)


async def test_a_pool_too_small_to_spare_a_connection_has_no_lane(redis_url: str) -> None:
    small = redis_conn.connect(redis_url, max_connections=LANE_MIN_POOL - 1,
                               overrides=THIS_RUN)
    try:
        assert Coalescer(small, small.register_script(ADD))._lane is None
    finally:
        await small.aclose()
