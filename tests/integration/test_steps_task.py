"""A processor's steps on one task against a real Redis: begin, count_attempt, emit, complete,
renew, renew_many, release_lease, release_lock, and the plain reads and writes."""

from __future__ import annotations

from typing import Any

import orjson

from shared import tasks
from shared.keys import BATCHES_GROUP, Keys
from shared.redis_conn import RedisClient
from shared.steps import (
    BEGUN_FIELDS,
    HELD,
    LEASE_LOST,
    MISSING,
    AlreadyTerminal,
    AttemptCounted,
    CancelRequested,
    HeldElsewhere,
    Steps,
)
from shared.timeutil import now_ms
from tests.integration.kit import begun, complete, contents, events, read_new, submit

RUNNING_EVENT = ("status", {"status": "running"})
QUEUED_EVENT = ("status", {"status": "queued"})


async def test_begin_takes_the_lease_counts_attempt_one_and_is_reentrant_for_its_token(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    first = await begun(steps, tid, "tok-a")
    assert (first.fence, first.attempts, first.counted, first.cancel_requested) == (1, 1, True,
                                                                                     False)
    # The holder gets the fields it uses, as the hash has them after the step.
    h = await redis.hgetall(keys.task(tid))
    assert (h["status"], h["processor"]) == ("running", "p1")
    assert first.task == {f: h[f] for f in BEGUN_FIELDS if f in h}
    assert {"id", "tenant", "request", "created_at", "started_at"} <= first.task.keys()
    assert await redis.get(keys.lease(tid)) == "tok-a"
    # Its own holder back after losing its connection: a new fence, attempt 1 not counted again.
    again = await begun(steps, tid, "tok-a")
    assert (again.fence, again.attempts, again.counted) == (2, 1, False)
    assert again.task == first.task  # started_at kept
    assert await events(redis, keys, tid) == [QUEUED_EVENT, RUNNING_EVENT]
    # Anyone else is refused while the lease lives, and changes nothing.
    before = await contents(redis, keys)
    assert await steps.begin(task_id=tid, token="tok-b", ttl_ms=30_000, now=now_ms(),
                             processor="p2") == HeldElsewhere()
    assert await contents(redis, keys) == before


async def test_begin_after_the_lease_expired_gives_a_higher_fence_and_counts_nothing(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    await redis.delete(keys.lease(tid))  # its holder died: the lease expired
    taken = await begun(steps, tid, "tok-b")
    assert (taken.fence, taken.attempts, taken.counted) == (2, 1, False)
    assert await redis.get(keys.lease(tid)) == "tok-b"


async def test_begin_of_a_task_whose_cancel_was_asked_counts_no_attempt(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    assert await steps.cancel(task_id=tid, tenant="acme", now=now_ms()) == CancelRequested()
    await redis.delete(keys.lease(tid))
    taken = await begun(steps, tid, "tok-b")
    assert (taken.cancel_requested, taken.counted, taken.attempts) == (True, False, 1)


async def test_begin_answers_missing_and_already_terminal(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    assert await steps.begin(task_id="tsk_none", token="t", ttl_ms=1000, now=now_ms(),
                             processor="p1") == MISSING
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    assert await complete(steps, tid, "tok-a") == HELD
    before = await contents(redis, keys)
    assert await steps.begin(task_id=tid, token="tok-b", ttl_ms=1000, now=now_ms(),
                             processor="p2") == AlreadyTerminal("succeeded")
    assert await contents(redis, keys) == before


async def test_count_attempt_adds_a_reset_after_the_first_and_needs_the_lease(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")  # attempt 1 counted by begin, no reset
    assert await steps.count_attempt(tid, "tok-a") == AttemptCounted(2)
    assert await events(redis, keys, tid) == [QUEUED_EVENT, RUNNING_EVENT,
                                              ("reset", {"attempt": 2})]
    before = await contents(redis, keys)
    assert await steps.count_attempt(tid, "tok-b") == LEASE_LOST
    assert await contents(redis, keys) == before


async def test_requeue_sends_a_rate_limited_task_back_to_the_queue_uncounted(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await redis.hset(keys.task(tid), "batch_id", "b1")
    await begun(steps, tid, "tok-a")
    assert await steps.count_attempt(tid, "tok-a") == AttemptCounted(2)  # an earlier failure
    before = await contents(redis, keys)
    assert await steps.requeue(tid, "tok-b", streamed=True) == LEASE_LOST  # not ours
    assert await contents(redis, keys) == before
    entries_before = await redis.xlen(keys.tasks_stream)
    assert await steps.requeue(tid, "tok-a", streamed=True) == HELD
    h = await redis.hgetall(keys.task(tid))
    # The refused call was no attempt; the coordinators may place it again (no batch_id).
    assert (h["status"], h["attempts"], "batch_id" in h, h["requeues"]) == (
        "queued", "1", False, "1")
    assert not await redis.exists(keys.lease(tid))
    assert (await events(redis, keys, tid))[-2:] == [
        ("reset", {"rate_limited": True}), ("status", {"status": "queued", "rate_limited": True})]
    [(_entry, fields)] = (await redis.xrange(keys.tasks_stream))[entries_before:]
    assert fields == {"id": tid}
    # Not streamed: no reset.
    await begun(steps, tid, "tok-c")
    await steps.requeue(tid, "tok-c", streamed=False)
    assert (await events(redis, keys, tid))[-2:] == [
        RUNNING_EVENT, ("status", {"status": "queued", "rate_limited": True})]


async def test_emit_appends_in_order_only_under_the_lease(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    deltas = [("content", '{"delta":"Hel"}'), ("content", '{"delta":"lo"}')]
    assert await steps.emit(tid, "tok-a", deltas) == HELD
    assert (await events(redis, keys, tid))[2:] == [("content", {"delta": "Hel"}),
                                                    ("content", {"delta": "lo"})]
    before = await contents(redis, keys)
    assert await steps.emit(tid, "tok-b", [("content", '{"delta":"stale"}')]) == LEASE_LOST
    assert await contents(redis, keys) == before
    await redis.delete(keys.lease(tid))
    before = await contents(redis, keys)
    assert await steps.emit(tid, "tok-a", [("content", '{"delta":"stale"}')]) == LEASE_LOST
    assert await contents(redis, keys) == before


async def test_complete_refuses_a_lost_lease_and_writes_nothing(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    await redis.set(keys.lease(tid), "tok-b")  # someone else holds it now
    before = await contents(redis, keys)
    assert await complete(steps, tid, "tok-a") == LEASE_LOST
    assert await contents(redis, keys) == before


async def test_complete_makes_the_task_terminal(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    assert await complete(steps, tid, "tok-a", retention_s=77) == HELD
    h = await redis.hgetall(keys.task(tid))
    assert (h["status"], orjson.loads(h["result"]), h["error"]) == ("succeeded",
                                                                   {"content": "Hi"}, "")
    assert "cancel" not in h and h["completed_at"]
    assert await redis.exists(keys.lease(tid)) == 0
    assert (await events(redis, keys, tid))[-1] == ("done", {"id": tid, "status": "succeeded"})
    assert 0 < await redis.ttl(keys.task(tid)) <= 77
    assert 0 < await redis.ttl(keys.events(tid)) <= 77
    assert await redis.zscore(keys.tenant_active("acme"), tid) is None
    assert await redis.zscore(keys.dead_letters, tid) is None
    assert await redis.hget(keys.stats, "tasks_succeeded") == "1"


async def test_complete_acknowledges_the_batch_entry_it_is_handed_under_the_lease_only(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    ours, lost = await submit(steps), await submit(steps)
    for tid in (ours, lost):
        await begun(steps, tid, "tok-a")
    for tid in (ours, lost):
        await redis.xadd(keys.batches_stream, {"b": f"b-{tid}", "t": tid})
    entries = dict((f["t"], e) for e, f in await read_new(redis, keys.batches_stream,
                                                          BATCHES_GROUP, "p1"))
    await redis.set(keys.lease(lost), "tok-b")  # someone else holds it now

    async def pending() -> set[str]:
        rows = await redis.xpending_range(keys.batches_stream, BATCHES_GROUP, "-", "+", 10)
        return {r["message_id"] for r in rows}

    def finish(tid: str) -> Any:
        return steps.complete(task_id=tid, token="tok-a", status=tasks.SUCCEEDED,
                              result_json=b'{"content":"Hi"}', error_json="", now=now_ms(),
                              retention_s=60, view_json=b"{}", ack_entry=entries[tid])
    assert await finish(lost) == LEASE_LOST
    assert await pending() == set(entries.values())  # a lost lease acknowledges nothing
    assert await finish(ours) == HELD
    assert await pending() == {entries[lost]}
    assert (await events(redis, keys, ours))[-1][0] == "done"


async def test_complete_failed_dead_letters_the_task(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    assert await complete(steps, tid, "tok-a", status=tasks.FAILED) == HELD
    assert await redis.zscore(keys.dead_letters, tid) is not None
    assert (await events(redis, keys, tid))[-1][0] == "error"
    assert await redis.hget(keys.stats, "tasks_failed") == "1"


async def test_renew_and_release_are_compare_and_set(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    a, b = await submit(steps), await submit(steps)
    await begun(steps, a, "tok-a", ttl_ms=1000)
    await begun(steps, b, "tok-b", ttl_ms=1000)
    assert await steps.renew(a, "tok-a", 60_000) == HELD
    assert 1000 < await redis.pttl(keys.lease(a)) <= 60_000
    assert await steps.renew(a, "tok-x", 90_000) == LEASE_LOST
    assert await redis.pttl(keys.lease(a)) <= 60_000
    assert await steps.renew_many([(a, "tok-a"), (b, "tok-x"), (b, "tok-b")], 50_000) == [
        HELD, LEASE_LOST, HELD]
    assert 1000 < await redis.pttl(keys.lease(b)) <= 50_000
    assert await steps.release_lease(a, "tok-x") == LEASE_LOST
    assert await redis.get(keys.lease(a)) == "tok-a"
    assert await steps.release_lease(a, "tok-a") == HELD
    assert await redis.exists(keys.lease(a)) == 0
    assert await steps.release_lease(a, "tok-a") == LEASE_LOST
    await redis.set(keys.flush_lock, "mine", px=5000)
    assert await steps.release_lock(keys.flush_lock, "theirs") == LEASE_LOST
    assert await steps.release_lock(keys.flush_lock, "mine") == HELD
    assert await redis.exists(keys.flush_lock) == 0


async def test_all_terminal_task_hash_and_keep_for(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    done, running, forgotten = await submit(steps), await submit(steps), await submit(steps)
    for tid in (done, running):
        await begun(steps, tid, "tok")
    await complete(steps, done, "tok")
    await redis.delete(keys.task(forgotten))
    assert await steps.all_terminal([done, forgotten])
    assert not await steps.all_terminal([done, running])
    assert await steps.all_terminal([])
    assert (await steps.task_hash(running))["status"] == "running"
    assert await steps.task_hash(forgotten) == {}
    await steps.keep_for(running, 33)
    assert 0 < await redis.ttl(keys.task(running)) <= 33
    assert 0 < await redis.ttl(keys.events(running)) <= 33
