"""The edge's steps against a real Redis: submit (and what a refusal leaves: nothing), cancel
of a queued task versus a running one, retry of a failed task (from its store row when Redis
forgot it)."""

from __future__ import annotations

import asyncio

import orjson

from shared import tasks
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import (
    HELD,
    MISSING,
    AlreadyTerminal,
    CancelledNow,
    CancelRequested,
    Conflict,
    Created,
    Existing,
    Forgotten,
    NotFailed,
    RateLimited,
    Requeued,
    Steps,
    StillActive,
    StoredTask,
    TenantLimits,
    TooManyActive,
)
from shared.timeutil import now_ms
from tests.integration.kit import (
    QUEUED_EVENT,
    begun,
    complete,
    contents,
    events,
    next_message,
    request,
    submit,
)

HOUR_MS = 3_600_000


async def submit_idem(steps: Steps, idem_key: str, body_hash: str) -> object:
    return await steps.submit(
        task_id=tasks.new_task_id(), tenant="acme", request_json=orjson.dumps(request()),
        model="mock-r1", now=now_ms(), idem_key=idem_key, body_hash=body_hash,
        idempotency_ttl_s=60, first_event=QUEUED_EVENT, task_ttl_s=600,
        limits=TenantLimits(0, HOUR_MS, 0))


async def test_submit_stores_and_queues_the_task(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    now = now_ms()
    tid = await submit(steps, now=now)
    h = await redis.hgetall(keys.task(tid))
    assert {k: h[k] for k in ("id", "tenant", "status", "model", "created_at", "attempts",
                              "fence")} == {"id": tid, "tenant": "acme", "status": "queued",
                                            "model": "mock-r1", "created_at": str(now),
                                            "attempts": "0", "fence": "0"}
    assert orjson.loads(h["request"]) == request()
    assert await events(redis, keys, tid) == [("status", {"status": "queued"})]
    assert [f for _e, f in await redis.xrange(keys.tasks_stream)] == [{"id": tid}]
    assert await redis.zscore(keys.tenant_active("acme"), tid) == now
    assert 0 < await redis.ttl(keys.task(tid)) <= 600


async def test_a_rate_limited_submit_leaves_no_key_behind(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    limits, now = TenantLimits(rate_per_window=1, window_ms=HOUR_MS, max_active=0), now_ms()
    await submit(steps, limits=limits, now=now)
    before = await contents(redis, keys)
    refused = await steps.submit(
        task_id=tasks.new_task_id(), tenant="acme", request_json=b"{}", model="m", now=now,
        idem_key="k1", body_hash="h1", idempotency_ttl_s=60, first_event=QUEUED_EVENT,
        task_ttl_s=600, limits=limits)
    assert isinstance(refused, RateLimited) and refused.retry_after_s >= 1
    assert await contents(redis, keys) == before


async def test_a_submit_over_the_active_cap_leaves_no_key_behind(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    limits = TenantLimits(rate_per_window=0, window_ms=HOUR_MS, max_active=1)
    first = await submit(steps, limits=limits)
    before = await contents(redis, keys)
    refused = await steps.submit(
        task_id=tasks.new_task_id(), tenant="acme", request_json=b"{}", model="m", now=now_ms(),
        idem_key="k1", body_hash="h1", idempotency_ttl_s=60, first_event=QUEUED_EVENT,
        task_ttl_s=600, limits=limits)
    assert refused == TooManyActive(1)
    assert await contents(redis, keys) == before
    # Once the first is terminal it no longer counts.
    assert await steps.cancel(task_id=first, tenant="acme", now=now_ms()) == CancelledNow()
    await submit(steps, limits=limits)


async def test_an_idempotent_replay_answers_the_first_task_and_writes_nothing(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    created = await submit_idem(steps, "k1", "h1")
    assert isinstance(created, Created)
    before = await contents(redis, keys)
    assert await submit_idem(steps, "k1", "h1") == Existing(created.id)
    assert await submit_idem(steps, "k1", "other body") == Conflict(created.id)
    assert await contents(redis, keys) == before


async def test_submits_in_flight_together_share_round_trips_and_each_gets_its_own_answer(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    # 40 submits at once, as 40 requests to one edge: one pipeline per round trip, never one
    # round trip each; the same Idempotency-Key twice in one pipeline still makes one task.
    plain = [submit(steps) for _ in range(38)]
    twice = [submit_idem(steps, "k-same", "h1"), submit_idem(steps, "k-same", "h1")]
    *ids, first, second = await asyncio.gather(*plain, *twice)
    assert isinstance(first, Created) and second == Existing(first.id)
    assert len(set(ids)) == 38
    assert await redis.xlen(keys.tasks_stream) == 39
    assert steps._together["submit"].round_trips < 40 / 2


async def test_cancel_of_a_queued_task_cancels_it_now(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    assert await steps.cancel(task_id=tid, tenant="acme", now=now_ms()) == CancelledNow()
    h = await redis.hgetall(keys.task(tid))
    assert (h["status"], orjson.loads(h["error"])) == ("cancelled", tasks.CANCELLED_ERROR)
    assert (await events(redis, keys, tid))[-1] == ("cancelled", {"status": "cancelled"})
    assert await redis.zscore(keys.tenant_active("acme"), tid) is None
    # No processor will run it.
    assert await steps.begin(task_id=tid, token="t", ttl_ms=1000, now=now_ms(),
                             processor="p1") == AlreadyTerminal("cancelled")
    assert await steps.cancel(task_id=tid, tenant="acme", now=now_ms()) == AlreadyTerminal(
        "cancelled")


async def test_cancel_of_a_running_task_flags_it_and_tells_its_holder(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.cancel_channel)
    assert await steps.cancel(task_id=tid, tenant="acme", now=now_ms()) == CancelRequested()
    assert await next_message(pubsub) == tid
    await pubsub.aclose()
    h = await redis.hgetall(keys.task(tid))
    assert (h["status"], h["cancel"]) == ("running", "1")
    assert (await events(redis, keys, tid))[-1] == ("status", {"status": "running"})
    assert await redis.zscore(keys.tenant_active("acme"), tid) is not None  # still running


async def test_cancel_answers_missing_for_another_tenant_and_writes_nothing(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await submit(steps)
    before = await contents(redis, keys)
    assert await steps.cancel(task_id=tid, tenant="other", now=now_ms()) == MISSING
    assert await steps.cancel(task_id="tsk_none", tenant="acme", now=now_ms()) == MISSING
    assert await contents(redis, keys) == before


async def failed_task(steps: Steps) -> str:
    tid = await submit(steps)
    await begun(steps, tid, "tok-a")
    assert await complete(steps, tid, "tok-a", status=tasks.FAILED) == HELD
    return tid


async def test_retry_requeues_a_failed_task_under_its_id(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await failed_task(steps)
    assert await steps.retry(task_id=tid, tenant="acme", now=now_ms(), task_ttl_s=600,
                             stored=None) == Requeued()
    h = await redis.hgetall(keys.task(tid))
    assert (h["status"], h["attempts"], h["fence"]) == ("queued", "0", "1")
    assert not {"result", "error", "completed_at", "started_at", "processor"} & set(h)
    assert await events(redis, keys, tid) == [("status", {"status": "queued", "retried": True})]
    assert await redis.zscore(keys.dead_letters, tid) is None
    assert await redis.zscore(keys.tenant_active("acme"), tid) is not None
    assert [f["id"] for _e, f in await redis.xrange(keys.tasks_stream)] == [tid, tid]
    # The fence carries on: the new run's row replaces the failed one.
    assert (await begun(steps, tid, "tok-b")).fence == 2


async def test_retry_rebuilds_a_task_redis_forgot_from_its_row(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    tid = await failed_task(steps)
    await redis.delete(keys.task(tid), keys.events(tid))
    assert await steps.retry(task_id=tid, tenant="acme", now=now_ms(), task_ttl_s=600,
                             stored=None) == MISSING
    row = StoredTask(request=orjson.dumps(request()).decode(), model="mock-r1",
                     created_at=1_700_000_000_000, fence=3)
    assert await steps.retry(task_id=tid, tenant="acme", now=now_ms(), task_ttl_s=600,
                             stored=row) == Requeued()
    h = await redis.hgetall(keys.task(tid))
    assert {k: h[k] for k in ("id", "tenant", "status", "request", "model", "created_at",
                              "fence")} == {
        "id": tid, "tenant": "acme", "status": "queued", "request": row.request,
        "model": "mock-r1", "created_at": "1700000000000", "fence": "3"}
    assert (await begun(steps, tid, "tok-b")).fence == 4


async def test_retry_refuses_a_task_not_failed_and_another_tenants(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    queued, failed = await submit(steps), await failed_task(steps)
    before = await contents(redis, keys)
    assert await steps.retry(task_id=queued, tenant="acme", now=now_ms(), task_ttl_s=600,
                             stored=None) == NotFailed()
    assert await steps.retry(task_id=failed, tenant="other", now=now_ms(), task_ttl_s=600,
                             stored=None) == MISSING
    assert await contents(redis, keys) == before


async def test_forget_takes_only_a_finished_task_of_its_tenant_and_leaves_no_key(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    created = await submit_idem(steps, "key-1", "hash-1")
    assert isinstance(created, Created)
    task_id = created.id
    await redis.zadd(keys.deadlines, {task_id: now_ms() + HOUR_MS})
    assert await steps.forget(task_id=task_id, tenant="acme") == StillActive(tasks.QUEUED)
    await begun(steps, task_id, "tok")
    assert await steps.forget(task_id=task_id, tenant="acme") == StillActive(tasks.RUNNING)
    await complete(steps, task_id, "tok", status=tasks.FAILED)  # a dead letter too
    assert await steps.forget(task_id=task_id, tenant="other") is MISSING
    assert await steps.forget(task_id=task_id, tenant="acme") == Forgotten()
    for key in (keys.task(task_id), keys.events(task_id), keys.idempotency("acme", "key-1")):
        assert not await redis.exists(key), key
    assert await redis.zscore(keys.dead_letters, task_id) is None
    assert await redis.zscore(keys.deadlines, task_id) is None
    assert await steps.forget(task_id=task_id, tenant="acme") is MISSING
    # The key is free again: a new request with it is a new task.
    again = await submit_idem(steps, "key-1", "hash-1")
    assert isinstance(again, Created) and again.id != task_id


async def test_forget_leaves_an_idempotency_key_that_names_another_task(
        redis: RedisClient, keys: Keys, steps: Steps) -> None:
    created = await submit_idem(steps, "key-2", "hash-2")
    assert isinstance(created, Created)
    await steps.cancel(task_id=created.id, tenant="acme", now=now_ms())
    await redis.set(keys.idempotency("acme", "key-2"), "tsk_other hash-2")
    assert await steps.forget(task_id=created.id, tenant="acme") == Forgotten()
    assert await redis.get(keys.idempotency("acme", "key-2")) == "tsk_other hash-2"
