"""batch.lua's waiting room against a real Redis: fair shares among tenants (weighted by
estimated tokens), priority with aging within a tenant, flushing no more than the processors
and the provider's governor have room for, and the open batch of earlier versions."""

from __future__ import annotations

import asyncio
from collections import Counter

from shared.keys import TASKS_GROUP, Keys
from shared.redis_conn import RedisClient
from shared.steps import BatchPolicy, Steps
from shared.timeutil import now_ms
from tests.integration.kit import read_new, submit, waiting_room

SEED_MODE = BatchPolicy(size=1, timeout_ms=60_000, adaptive=False)
ADAPTIVE = BatchPolicy(size=3, timeout_ms=60_000, adaptive=True, aging_ms=1000)


async def place(steps: Steps, redis: RedisClient, policy: BatchPolicy = ADAPTIVE) -> None:
    """What a coordinator does with everything submitted so far."""
    entries = await read_new(redis, steps.keys.tasks_stream, TASKS_GROUP, "c1", count=1000)
    await steps.batch("add", now=now_ms(), policy=policy,
                      entries=[(e, f["id"]) for e, f in entries])


async def order(redis: RedisClient, keys: Keys) -> list[str]:
    """Task ids in the order they were flushed."""
    return [t for _e, f in await redis.xrange(keys.batches_stream) for t in f["t"].split(",")]


async def room(steps: Steps, free: int, room: int = 1000) -> None:
    """One live processor reporting ``free`` slots and ``room`` provider calls."""
    await steps.report_capacity(name="p1", free=free, expiry_ms=now_ms() + 60_000, taken=0,
                                inflight=0, room=room)


async def drain(steps: Steps, redis: RedisClient, keys: Keys, n: int) -> list[str]:
    """Let ``n`` tasks go, one slot at a time (a provider with room for one call)."""
    for _ in range(n):
        await redis.set(keys.batch_backlog, 0)  # the last one was taken
        await room(steps, free=1)
        await steps.batch("idle", now=now_ms(), policy=ADAPTIVE)
    return await order(redis, keys)


async def test_a_tenants_few_tasks_overtake_another_tenants_earlier_burst(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    await room(steps, free=0)  # saturated: everything waits
    burst = [await submit(steps, tenant="a") for _ in range(30)]
    await place(steps, redis)
    few = [await submit(steps, tenant="b") for _ in range(3)]
    await place(steps, redis)
    assert await redis.get(keys.waiting_count) == "33"
    flushed = await drain(steps, redis, keys, 6)
    # Equal shares: the tenants alternate, b's tasks in their own order; FIFO would have sent
    # 30 of a's first.
    assert flushed == [burst[0], few[0], burst[1], few[1], burst[2], few[2]]


async def test_weights_divide_the_flushes_by_estimated_tokens(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    await steps.set_tenant_weights({"heavy": 3})
    await room(steps, free=0)
    heavy = [await submit(steps, tenant="heavy", cost=100) for _ in range(60)]
    light = [await submit(steps, tenant="light", cost=100) for _ in range(60)]
    big = [await submit(steps, tenant="big", cost=300) for _ in range(60)]
    await place(steps, redis)
    await drain(steps, redis, keys, 30)  # past the head start each had (one batch)
    flushed = Counter((await drain(steps, redis, keys, 50))[30:])
    share = {name: sum(flushed[t] for t in ids)
             for name, ids in (("heavy", heavy), ("light", light), ("big", big))}
    # Token shares 3 : 1 : 1, so tasks 3 : 1 : 1/3 (big's tasks cost three times as much):
    # 34.6, 11.5 and 3.8 of 50.
    assert share == {"heavy": 35, "light": 11, "big": 4}


async def test_a_tenant_back_from_idle_has_banked_no_credit(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    await room(steps, free=0)
    await submit(steps, tenant="b")
    await place(steps, redis)
    await drain(steps, redis, keys, 1)
    a_tasks = [await submit(steps, tenant="a") for _ in range(20)]
    await place(steps, redis)
    await drain(steps, redis, keys, 10)  # a alone for a while: b's share is not saved up
    b_tasks = [await submit(steps, tenant="b") for _ in range(10)]
    await place(steps, redis)
    flushed = (await drain(steps, redis, keys, 8))[11:]
    # b may go one batch (3) ahead of where a is being served (and the one a had begun),
    # then they alternate: b gets no run of nine to catch up on a's ten.
    assert flushed == [*b_tasks[:4], a_tasks[10], b_tasks[4], a_tasks[11], b_tasks[5]]


async def test_a_tenant_with_nothing_waiting_goes_a_batch_ahead_of_a_burst(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    await room(steps, free=0)
    burst = [await submit(steps, tenant="a") for _ in range(30)]
    await place(steps, redis)
    await drain(steps, redis, keys, 5)
    few = [await submit(steps, tenant="b") for _ in range(3)]
    await place(steps, redis)
    assert (await drain(steps, redis, keys, 5))[5:] == [*few, burst[5], burst[6]]


async def test_lower_priority_numbers_go_first_and_high_ones_still_go(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    await room(steps, free=0)
    now = now_ms()
    early = [await submit(steps, now=now - 5_000 + i) for i in range(3)]
    urgent = await submit(steps, now=now, priority=-10)
    late = await submit(steps, now=now, priority=10)
    fresh = await submit(steps, now=now + 20_000)  # submitted 20 aging steps later
    await place(steps, redis)
    flushed = await drain(steps, redis, keys, 6)
    # -10 steps of 1 s put the urgent task 5 s ahead of tasks queued 5 s earlier; +10 steps
    # put the late one behind those, but ahead of a task submitted 20 s after it: aging.
    assert flushed == [urgent, *early, late, fresh]
    assert await redis.hget(keys.task(urgent), "priority") == "-10"


async def test_no_more_leaves_than_the_governor_has_room_for(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    ids = [await submit(steps) for _ in range(10)]
    # Three processors with 32 free slots each, but the provider has room for 4 calls: each
    # processor sees the same cluster-wide room, so it counts once.
    for name in ("p1", "p2", "p3"):
        await steps.report_capacity(name=name, free=32, expiry_ms=now_ms() + 60_000, taken=0,
                                    inflight=0, room=4)
    await place(steps, redis)
    assert await order(redis, keys) == ids[:4]
    assert [len(f["t"].split(",")) for _e, f in await redis.xrange(keys.batches_stream)] == [3, 1]
    assert await redis.get(keys.batch_backlog) == "4"
    assert await waiting_room(redis, keys) == ids[4:]


async def test_idle_flushes_at_once_from_many_replicas_send_no_more_than_the_room(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    # Coordinators answer a capacity report with an 'idle' flush and no lock: twelve at once
    # (three replicas, four reports each) still send each task once, and only 5 in all.
    ids = [await submit(steps) for _ in range(10)]
    await place(steps, redis)
    await room(steps, free=5)
    await asyncio.gather(*(steps.batch("idle", now=now_ms(), policy=ADAPTIVE)
                           for _ in range(12)))
    assert await order(redis, keys) == ids[:5]
    assert await waiting_room(redis, keys) == ids[5:]


async def test_seed_mode_flushes_full_batches_in_fair_order_without_capacity(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    a = [await submit(steps, tenant="a") for _ in range(4)]
    b = [await submit(steps, tenant="b") for _ in range(2)]
    await place(steps, redis, SEED_MODE)
    assert await order(redis, keys) == [a[0], b[0], a[1], b[1], a[2], a[3]]
    assert await redis.get(keys.waiting_count) == "0"
    assert await redis.get(keys.batch_deadline) is None


async def test_the_timer_sends_one_batch_and_rearms_for_the_rest(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    policy = BatchPolicy(size=2, timeout_ms=500, adaptive=True)
    now = now_ms()
    ids = [await submit(steps) for _ in range(5)]
    await place(steps, redis, policy)  # no processor: all wait
    state = await steps.batch("timer", now=now + 60_000, policy=policy)
    assert (state.open_len, state.deadline_ms, state.flushed) == (3, now + 60_500, 1)
    assert await order(redis, keys) == ids[:2]


async def test_tasks_of_an_earlier_versions_open_batch_join_the_waiting_room(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    ids = [await submit(steps) for _ in range(2)]
    await read_new(redis, keys.tasks_stream, TASKS_GROUP, "c1")
    for t in ids:  # as the batcher before the waiting room left them
        await redis.hset(keys.task(t), "open", "1")
    await redis.rpush(keys.open_batch, *ids)
    state = await steps.batch("flush", now=now_ms(), policy=ADAPTIVE)
    assert state.flushed == 1 and await order(redis, keys) == ids
    assert not await redis.exists(keys.open_batch)


async def test_a_due_timer_with_nothing_waiting_is_cleared(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    now = now_ms()
    await redis.set(keys.waiting_count, 2)  # left behind: nothing is in any line
    await redis.set(keys.batch_deadline, now - 1)
    state = await steps.batch("timer", now=now, policy=ADAPTIVE)
    assert (state.open_len, state.deadline_ms, state.flushed) == (0, 0, 0)


async def test_a_batch_sent_for_room_is_named_by_how_full_it_is(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    await room(steps, free=32)
    await submit(steps)
    await place(steps, redis)  # one task, room for 32: sent at once, not a full batch
    for _ in range(3):
        await submit(steps)
    await place(steps, redis)
    assert [f["r"] for _e, f in await redis.xrange(keys.batches_stream)] == ["idle", "size"]
