"""Emits of many tasks, coalesced (shared/coalesce.py) against a real Redis: each task's events
in its order, each call its own reply, fewer round trips than calls, and a script Redis lost
sent again."""

from __future__ import annotations

import asyncio

from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import HELD, LEASE_LOST, Steps
from tests.integration.kit import begun, events, submit

TASKS, EMITS = 20, 15


async def _stream(steps: Steps, task_id: str, token: str, tag: str) -> list[object]:
    return [await steps.emit(task_id, token, [("content", f'{{"delta":"{tag}{i} "}}')])
            for i in range(EMITS)]


async def test_concurrent_emits_keep_each_tasks_order_in_fewer_round_trips(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    ids = [await submit(steps) for _ in range(TASKS)]
    for n, tid in enumerate(ids):
        await begun(steps, tid, f"tok-{n}")
    replies = await asyncio.gather(*(_stream(steps, tid, f"tok-{n}", f"t{n}.")
                                     for n, tid in enumerate(ids)))
    assert all(r == HELD for task in replies for r in task)
    for n, tid in enumerate(ids):
        deltas = [d["delta"] for kind, d in (await events(redis, keys, tid)) if kind == "content"]
        assert deltas == [f"t{n}.{i} " for i in range(EMITS)]
    round_trips = steps._together["emit"].round_trips
    assert round_trips < TASKS * EMITS / 2, round_trips


async def test_a_lost_lease_fails_only_its_own_call(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    ids = [await submit(steps) for _ in range(6)]
    for tid in ids:
        await begun(steps, tid, "tok-a")
    await redis.set(keys.lease(ids[2]), "tok-b")  # someone else holds this one now
    replies = await asyncio.gather(*(steps.emit(tid, "tok-a", [("content", '{"delta":"x"}')])
                                     for tid in ids))
    assert replies == [HELD, HELD, LEASE_LOST, HELD, HELD, HELD]
    assert [k for k, _d in await events(redis, keys, ids[2])] == ["status", "status"]


async def test_a_script_redis_lost_is_sent_again(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    ids = [await submit(steps) for _ in range(6)]
    for tid in ids:
        await begun(steps, tid, "tok-a")
    await steps.emit(ids[0], "tok-a", [("content", '{"delta":"first"}')])
    await redis.script_flush()  # as a restarted Redis forgets every script
    replies = await asyncio.gather(*(steps.emit(tid, "tok-a", [("content", '{"delta":"x"}')])
                                     for tid in ids))
    assert replies == [HELD] * 6
    for tid in ids:
        assert (await events(redis, keys, tid))[-1] == ("content", {"delta": "x"})
