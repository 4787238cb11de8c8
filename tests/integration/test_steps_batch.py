"""The coordinator's and the processors' queue steps against a real Redis: batch (add, timer,
idle, flush), report_capacity, heartbeat, handoff."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from shared import redis_conn
from shared.keys import BATCHES_GROUP, TASKS_GROUP, Keys
from shared.redis_conn import RedisClient
from shared.steps import BatchPolicy, BatchState, Steps
from shared.timeutil import now_ms
from tests.integration.kit import next_message, read_new, submit, waiting_room

SIZE = 4
POLICY = BatchPolicy(size=SIZE, timeout_ms=60_000, adaptive=False)


async def batches(redis: RedisClient, keys: Keys) -> list[dict[str, Any]]:
    return [{**f, "t": f["t"].split(","), "entry": entry_id}
            for entry_id, f in await redis.xrange(keys.batches_stream)]


async def queued(steps: Steps, redis: RedisClient, n: int) -> list[tuple[str, str]]:
    """``n`` submitted tasks as one coordinator reads them: (tasks stream entry, task id)."""
    for _ in range(n):
        await submit(steps)
    return [(eid, f["id"]) for eid, f in
            await read_new(redis, steps.keys.tasks_stream, TASKS_GROUP, "c1", count=n)]


async def test_every_task_lands_in_exactly_one_batch_under_two_coordinators(
        redis_url: str, redis: RedisClient, keys: Keys, steps: Steps) -> None:
    other = redis_conn.connect(redis_url)
    try:
        a, b = steps, Steps(other, keys)
        ids = [await submit(a) for _ in range(60)]
        stream = keys.tasks_stream
        read_a = await read_new(redis, stream, TASKS_GROUP, "a", count=40)
        await read_new(redis, stream, TASKS_GROUP, "b", count=40)
        # b takes over everything read so far, a's entries too, as a coordinator does with
        # entries whose reader it thinks dead (xautoclaim): both now place the same 40 tasks.
        _next, claimed, _gone = await redis.xautoclaim(stream, TASKS_GROUP, "b", min_idle_time=0,
                                                       start_id="0-0", count=100)
        entries_a = [(eid, f["id"]) for eid, f in read_a]
        entries_b = [(eid, f["id"]) for eid, f in reversed(claimed)]
        assert len(entries_b) == 60 and len(set(entries_a) & set(entries_b)) == 40

        async def place(s: Steps, entries: list[tuple[str, str]]) -> None:
            for i in range(0, len(entries), 3):
                await s.batch("add", now=now_ms(), policy=POLICY, entries=entries[i:i + 3])

        await asyncio.gather(place(a, entries_a), place(b, entries_b))
        still_open = await waiting_room(redis, keys)
        flushed = await batches(redis, keys)
        placed = Counter([t for batch in flushed for t in batch["t"]] + still_open)
        assert placed == Counter(ids)  # each task once: none lost, none twice
        assert all(len(batch["t"]) == SIZE for batch in flushed)
        assert len(still_open) < SIZE
        for batch in flushed:
            for t in batch["t"]:
                assert await redis.hget(keys.task(t), "batch_id") == batch["b"]
        assert (await redis.xpending(stream, TASKS_GROUP))["pending"] == 0  # all acknowledged
        assert int(await redis.hget(keys.stats, "batched_tasks")) == 60 - len(still_open)
    finally:
        await other.aclose()


async def test_add_flushes_full_batches_and_opens_a_timer(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.batch_channel)
    entries = await queued(steps, redis, 7)
    now = now_ms()
    state = await steps.batch("add", now=now, policy=BatchPolicy(3, 500, False), entries=entries)
    assert state == BatchState(open_len=1, deadline_ms=now + 500, flushed=2)
    flushed = await batches(redis, keys)
    ids = [t for _e, t in entries]
    assert [b["t"] for b in flushed] == [ids[:3], ids[3:6]]
    assert {b["r"] for b in flushed} == {"size"}
    status = await redis.hgetall(keys.task(entries[0][1]))
    assert (status["status"], status["batch_id"]) == ("batched", flushed[0]["b"])
    # The first task to wait announced its timer to the coordinators; the one left still waits
    # on it.
    await redis.publish(keys.batch_channel, "end")
    assert [await next_message(pubsub) for _ in range(2)] == ["timer", "end"]
    await pubsub.aclose()


async def test_a_task_named_twice_is_placed_once_and_only_a_waiting_one_stays_marked(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    # batch.lua marks a task 'open' (placed, not yet in a batch) only if it still waits when
    # the call ends: the mark is what stops a reclaimed entry placing it again later.
    entries = await queued(steps, redis, 5)
    twice = [*entries, entries[0], entries[4]]
    state = await steps.batch("add", now=now_ms(), policy=BatchPolicy(2, 60_000, False),
                              entries=twice)
    assert (state.open_len, state.flushed) == (1, 2)
    ids = [t for _e, t in entries]
    assert [b["t"] for b in await batches(redis, keys)] == [ids[:2], ids[2:4]]
    marks = [await redis.hget(keys.task(t), "open") for t in ids]
    assert marks == [None, None, None, None, "1"]
    again = await steps.batch("add", now=now_ms(), policy=BatchPolicy(2, 60_000, False),
                              entries=[entries[4]])
    assert (again.open_len, again.flushed) == (1, 0)
    assert await waiting_room(redis, keys) == [ids[4]]


async def test_timer_flushes_only_when_due(redis: RedisClient, keys: Keys, steps: Steps) -> None:
    policy = BatchPolicy(size=10, timeout_ms=500, adaptive=False)
    now = now_ms()
    await steps.batch("add", now=now, policy=policy, entries=await queued(steps, redis, 2))
    early = await steps.batch("timer", now=now + 499, policy=policy)
    assert early == BatchState(open_len=2, deadline_ms=now + 500, flushed=0)
    due = await steps.batch("timer", now=now + 500, policy=policy)
    assert due == BatchState(open_len=0, deadline_ms=0, flushed=1)
    assert [b["r"] for b in await batches(redis, keys)] == ["timer"]
    assert await redis.hget(keys.stats, "batches_timer") == "1"


async def test_idle_flushes_when_live_processors_have_spare_slots(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    policy = BatchPolicy(size=10, timeout_ms=60_000, adaptive=True)
    now = now_ms()
    # No live processor: the tasks wait for the timer.
    state = await steps.batch("add", now=now, policy=policy, entries=await queued(steps, redis, 2))
    assert state.flushed == 0
    # A processor whose heartbeat expired does not count.
    await steps.report_capacity(name="gone", free=8, expiry_ms=now - 1,
                                taken=0, inflight=0, room=100)
    assert (await steps.batch("idle", now=now, policy=policy)).flushed == 0
    # A live one with 3 free slots: the 2 tasks are flushed at once, and so is the next one
    # (1 slot left); then the 3 flushed tasks, not yet read, take every slot (the backlog).
    await steps.report_capacity(name="p1", free=3, expiry_ms=now + 10_000,
                                taken=0, inflight=0, room=100)
    assert await steps.batch("idle", now=now, policy=policy) == BatchState(0, 0, 1)
    one = await queued(steps, redis, 1)
    assert (await steps.batch("add", now=now, policy=policy, entries=one)).flushed == 1
    assert await redis.get(keys.batch_backlog) == "3"
    # Slots all spoken for by the backlog: the next task waits.
    one = await queued(steps, redis, 1)
    assert (await steps.batch("add", now=now, policy=policy, entries=one)).flushed == 0
    assert [b["r"] for b in await batches(redis, keys)] == ["idle", "idle"]


async def test_flush_empties_the_waiting_room_whatever_its_size_and_timer(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    policy = BatchPolicy(size=10, timeout_ms=60_000, adaptive=False)
    now = now_ms()
    entries = await queued(steps, redis, 2)
    await steps.batch("add", now=now, policy=policy, entries=entries)
    assert await steps.batch("flush", now=now, policy=policy) == BatchState(0, 0, 1)
    assert await steps.batch("flush", now=now, policy=policy) == BatchState(0, 0, 0)
    flushed = await batches(redis, keys)
    assert [(b["t"], b["r"]) for b in flushed] == [([t for _e, t in entries], "forced")]


async def test_capacity_report_wakes_coordinators_only_when_a_batch_waits_and_a_slot_is_free(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.batch_channel)
    expiry = now_ms() + 3000
    report = {"name": "p1", "expiry_ms": expiry, "taken": 0, "inflight": 2, "room": 100}
    assert await steps.report_capacity(free=2, **report) == 0  # nothing waits: no wake
    await steps.batch("add", now=now_ms(), policy=POLICY, entries=await queued(steps, redis, 1))
    assert await steps.report_capacity(free=0, **report) == 1  # a batch waits, no slot
    assert await steps.report_capacity(free=1, **report) == 1  # a batch waits, a free slot
    await redis.publish(keys.batch_channel, "end")
    seen: list[str] = []
    while not seen or seen[-1] != "end":
        seen.append(await next_message(pubsub))
    assert seen == ["timer", "capacity", "end"]
    await pubsub.aclose()
    assert await redis.hget(keys.processors_free, "p1") == "1"
    assert await redis.hget(keys.processors_inflight, "p1") == "2"
    assert await redis.zscore(keys.processors_alive, "p1") == expiry
    # Tasks taken off the backlog are counted off it, never below zero.
    await redis.set(keys.batch_backlog, 5)
    await steps.report_capacity(free=1, **{**report, "taken": 3})
    assert await redis.get(keys.batch_backlog) == "2"
    await steps.report_capacity(free=1, **{**report, "taken": 3})
    assert await redis.get(keys.batch_backlog) == "0"


async def test_handoff_requeues_the_unfinished_tasks_and_acknowledges_the_old_entry(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    entries = await queued(steps, redis, 3)
    ids = [t for _e, t in entries]
    await steps.batch("add", now=now_ms(), policy=BatchPolicy(3, 60_000, False), entries=entries)
    [(old, fields)] = await read_new(redis, keys.batches_stream, BATCHES_GROUP, "p1")
    assert await redis.get(keys.batch_backlog) == "3"
    n = await steps.handoff(entry_id=old, batch_id=fields["b"], now=now_ms(),
                            task_ids=[ids[0], ids[2]])
    assert n == 2
    assert (await redis.xpending(keys.batches_stream, BATCHES_GROUP))["pending"] == 0
    [(new, again)] = await read_new(redis, keys.batches_stream, BATCHES_GROUP, "p2")
    assert new != old
    assert (again["b"], again["t"], again["r"]) == (fields["b"], f"{ids[0]},{ids[2]}", "handoff")
    assert await redis.get(keys.batch_backlog) == "5"
    assert await redis.hget(keys.stats, "handoffs") == "1"
    # Nothing left to hand off: the entry is only acknowledged.
    assert await steps.handoff(entry_id=new, batch_id=fields["b"], now=now_ms(), task_ids=[]) == 0
    assert (await redis.xpending(keys.batches_stream, BATCHES_GROUP))["pending"] == 0
    assert await redis.xlen(keys.batches_stream) == 2



async def test_heartbeat_renews_its_coordinator_and_names_processors_gone_long_ago(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    now = now_ms()
    await redis.zadd(keys.coordinators_alive, {"c-old": now - 120_000, "c1": now - 1})
    await redis.zadd(keys.processors_alive, {"p-old": now - 120_000, "p-late": now - 1000,
                                             "p-live": now + 5000})
    gone = await steps.heartbeat(name="c1", expiry_ms=now + 600, forget_before_ms=now - 60_000)
    assert gone == ["p-old"]  # a processor only late is not forgotten yet
    coords = dict(await redis.zrange(keys.coordinators_alive, 0, -1, withscores=True))
    assert coords == {"c1": now + 600}
    assert await redis.zcard(keys.processors_alive) == 3  # the caller removes what is gone
