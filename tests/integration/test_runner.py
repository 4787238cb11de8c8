"""TaskRun in process: the real runner, its real dependencies (Processor.deps: typed steps on a
real Redis, a real SQLite store, the real provider client) and the real mock provider over HTTP,
its faults asked for in metadata.mock."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import orjson
import pytest

from harness.waiting import until
from services.processor.assembler import ProviderError
from services.processor.runner import Outcome, TaskRun
from services.processor.worker import Processor
from shared import tasks
from shared.timeutil import now_ms
from tests.integration.kit import (
    BURST_TIMEOUT_S,
    QUIET,
    Core,
    begun,
    contents,
    deltas,
    events,
    mid_stream,
    request,
    submit,
)


async def run_task(core: Core, task_id: str, processor: Processor | None = None) -> Outcome:
    run = TaskRun((processor or core.processor()).deps, task_id, "b-test")
    async with asyncio.timeout(BURST_TIMEOUT_S):
        return await run.run()


async def test_a_run_streams_stores_and_finishes_the_task(core: Core) -> None:
    tid = await core.submit({"content_tokens": 6, **QUIET})
    assert await run_task(core, tid) is Outcome.DONE
    [call] = await core.mock_requests()
    row = await core.store.get_task(tid)
    assert row is not None
    assert (row["status"], row["content"], row["attempts"], row["fence"]) == (
        "succeeded", call["content"], 1, 1)
    h = await core.redis.hgetall(core.keys.task(tid))
    assert h["status"] == "succeeded"
    assert orjson.loads(h["result"])["content"] == call["content"]
    evs = await events(core.redis, core.keys, tid)
    assert [k for k, _d in evs if k != "content"] == ["status", "status", "done"]
    assert deltas(evs) == call["content"]
    assert evs[-1][1]["result"]["content"] == call["content"]
    assert await core.redis.exists(core.keys.lease(tid)) == 0


@pytest.mark.sqlite_only  # the store is held by a write lock on its file
async def test_the_last_piece_of_a_streamed_answer_is_relayed_before_the_row_is_stored(
        core: Core, store_url: str) -> None:
    # The store cannot take the row (another connection holds the file's write lock), yet
    # every delta of a streamed answer, its last piece too, reaches clients: only the end
    # event waits for the row.
    tid = await core.submit({"content_tokens": 8, "tokens_per_s": 40, **QUIET})
    lock = sqlite3.connect(store_url, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    run = asyncio.create_task(run_task(core, tid))
    try:
        async def sent() -> list[dict[str, Any]]:  # by the mock, to its end
            return [c for c in await core.mock_requests() if c["outcome"] == "completed"]

        [call] = await until(sent, 10, "the mock to complete the call")

        async def relayed() -> bool:
            return deltas(await events(core.redis, core.keys, tid)) == call["content"]

        await until(relayed, 10, "every delta of the call to be relayed")
        assert [k for k, _d in await events(core.redis, core.keys, tid)][-1] == "content"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert await run is Outcome.DONE
    assert [k for k, _d in await events(core.redis, core.keys, tid)][-1] == "done"


@pytest.mark.first_store_only  # nothing reaches the store
async def test_a_task_redis_no_longer_knows_ends_missing_and_one_held_elsewhere_busy(
        core: Core) -> None:
    """The two ways begin refuses a run that are not an ending of the task: each leaves it
    alone, unsent to the provider, with nothing written."""
    gone = await core.submit(QUIET)
    await core.redis.delete(core.keys.task(gone))  # expired, or removed with its tenant
    held = await core.submit(QUIET)
    await begun(core.steps, held, "another-processors-token")
    before = await contents(core.redis, core.keys)
    assert await run_task(core, gone) is Outcome.MISSING
    assert await run_task(core, held) is Outcome.BUSY
    assert await contents(core.redis, core.keys) == before
    assert await core.mock_requests() == []
    assert await core.store.count("tasks") == 0


@pytest.mark.parametrize("found_by", ["renewal", "emit"])
async def test_a_stolen_lease_ends_the_run_lost_and_it_writes_nothing(
        core: Core, found_by: str) -> None:
    # "renewal": the stream stalls after 2 tokens, so only the lease keeper's renewal can find
    # the loss; "emit": the stream goes on, and the next emit finds it.
    mock = ({"fault": {"stall_after": 2, "stall_s": 60}} if found_by == "renewal"
            else {"content_tokens": 2000, "tokens_per_s": 200})
    tid = await core.submit({**mock, **QUIET})
    processor = core.processor()
    run = asyncio.create_task(run_task(core, tid, processor))
    await mid_stream(core, tid)
    await core.redis.set(core.keys.lease(tid), "thief")
    after_theft = await contents(core.redis, core.keys)
    if found_by == "renewal":
        await processor.leases.renew_all()
    assert await run is Outcome.LOST
    assert await contents(core.redis, core.keys) == after_theft
    assert await core.store.get_task(tid) is None
    assert await core.redis.hget(core.keys.task(tid), "status") == "running"

    async def upstream_closed() -> bool:
        [call] = await core.mock_requests()
        return bool(call["outcome"] == "disconnected")
    # The upstream call was closed, not left to run.
    await until(upstream_closed, 10, "the upstream call to be closed")


async def test_backoff_honours_retry_after_capped_by_its_setting(core: Core) -> None:
    run = TaskRun(core.processor(RETRY_AFTER_CAP_S="2", RETRY_BASE_S="1",
                                 RETRY_CAP_S="30").deps, "tsk_x", "b")
    def busy(retry_after: float | None) -> ProviderError:
        return ProviderError("slow down", status=429, retry_after=retry_after)
    assert run.backoff(1, busy(0.5)) == 0.5
    assert run.backoff(3, busy(86_400)) == 2.0  # defect 1: this was 86400
    assert run.backoff(1, busy(0)) == 0.0
    # Without Retry-After: exponential, jittered down to half, capped by RETRY_CAP_S.
    assert 0.5 <= run.backoff(1, busy(None)) <= 1.0
    assert 4.0 <= run.backoff(4, busy(None)) <= 8.0
    assert 15.0 <= run.backoff(20, busy(None)) <= 30.0


@pytest.mark.parametrize(("retry_after", "cap_s", "waited_s"), [
    ("0.3", "60", 0.3),     # honoured as sent (the exponential backoff would be 10 ms)
    ("86400", "0.2", 0.2),  # a day, capped: the run finishes within the test's guard
])
async def test_a_429_with_retry_after_is_retried_after_the_capped_wait(
        core: Core, retry_after: str, cap_s: str, waited_s: float) -> None:
    tid = await core.submit({**QUIET, "content_tokens": 3, "fault": {
        "status": 429, "retry_after": retry_after, "times": 1}})
    processor = core.processor(RETRY_AFTER_CAP_S=cap_s, RETRY_BASE_S="0.01")
    # Refused: the task goes back to waiting in the queue, its lease released, uncounted.
    assert await run_task(core, tid, processor) is Outcome.REQUEUED
    h = await core.redis.hgetall(core.keys.task(tid))
    assert (h["status"], h["attempts"], h.get("batch_id")) == ("queued", "0", None)
    assert not await core.redis.exists(core.keys.lease(tid))
    evs = await events(core.redis, core.keys, tid)
    assert evs[-1] == ("status", {"status": "queued", "rate_limited": True})
    await core.burst(processor)  # placed again; the governor waits out the pause
    first, second = await core.mock_requests()
    assert (first["status"], second["status"]) == (429, 200)
    assert second["started_monotonic"] - first["finished_monotonic"] >= waited_s
    row = await core.store.get_task(tid)
    # Under the governor (the default) a rate limit is a wait, not an attempt.
    assert row is not None and (row["status"], row["attempts"]) == ("succeeded", 1)


async def test_a_diverging_retry_stores_the_new_answer_and_tells_clients_to_reset(
        core: Core) -> None:
    # A real provider at temperature > 0 answers a retry with other words: attempt 1 is cut
    # after 3 tokens, attempt 2 says something else.
    tid = await core.submit({**QUIET, "content_tokens": 8, "vary": True,
                             "fault": {"cut_after": 3, "times": 1}})
    assert await run_task(core, tid) is Outcome.DONE
    first, second = await core.mock_requests()
    assert first["outcome"] == "cut" and first["content_tokens_sent"] == 3
    assert not second["content"].startswith(first["content"])  # it really diverged
    row = await core.store.get_task(tid)
    assert row is not None and (row["content"], row["attempts"]) == (second["content"], 2)
    evs = await events(core.redis, core.keys, tid)
    reset = evs.index(("reset", {"attempt": 2}))
    assert deltas(evs[:reset]) == first["content"]
    assert deltas(evs[reset:]) == second["content"]
    assert evs[-1][0] == "done" and evs[-1][1]["result"]["content"] == second["content"]


async def test_an_answer_that_fails_midway_stores_what_clients_were_sent(core: Core) -> None:
    # Unpaced, the mock sends its whole body in one write, so the tokens before the error come
    # in the error's own read: the assembler has their text, no client was sent it, and the
    # failed task's row must not have it either.
    tid = await core.submit({**QUIET, "content_tokens": 8, "tokens_per_s": 0,
                             "fault": {"error_in_stream_after": 3}})
    assert await run_task(core, tid, core.processor(MAX_ATTEMPTS="1")) is Outcome.DONE
    [call] = await core.mock_requests()
    assert call["content_tokens_sent"] == 3
    row = await core.store.get_task(tid)
    assert row is not None and row["status"] == "failed"
    evs = await events(core.redis, core.keys, tid)
    assert evs[-1][0] == "error"
    assert (row["content"] or "") == deltas(evs)


async def test_a_task_whose_deadline_passes_while_waiting_fails_with_its_row_at_once(
        core: Core) -> None:
    tid = await core.submit({**QUIET, "content_tokens": 3})
    await core.redis.zadd(core.keys.deadlines, {tid: now_ms() - 1})  # as the edge indexes it
    processor = core.processor()
    assert await processor.sweeper.sweep_once() == 1
    # Failed in Redis, and its one row written now: not once a batch brings it to a
    # processor (while the provider is paused that may be long).
    assert (await core.redis.hget(core.keys.task(tid), "status")) == "failed"
    row = await core.store.get_task(tid)
    assert row is not None and row["status"] == "failed"
    assert orjson.loads(row["error"])["code"] == "deadline_exceeded"
    assert await core.mock_requests() == []


def unstored(prompt: str, mock: dict[str, Any]) -> dict[str, Any]:
    """A /v1/responses task's request made with ``store: false`` (its context, as the edge
    submits it)."""
    body = request(mock, prompt=prompt)
    body[tasks.RESPONSES] = {"echo": {"store": False}, "input": [{"text": prompt}]}
    return body


async def assert_tombstone_only(core: Core, task_id: str, retention_s: int,
                                *texts: str) -> None:
    row = await core.store.get_task(task_id)
    assert row is not None and row["status"] == tasks.DELETED, row
    kept = orjson.dumps(row).decode()
    assert all(text not in kept for text in texts), row
    for key in (core.keys.task(task_id), core.keys.events(task_id)):
        assert 0 < await core.redis.ttl(key) <= retention_s


async def test_a_store_false_response_leaves_a_tombstone_and_redis_lets_it_go_soon(
        core: Core) -> None:
    """No edge forgets it (one died): the store never held its request or answer, and Redis
    drops it after RESPONSES_UNSTORED_RETENTION_S, not EVENTS_RETENTION_S. Cancelled before
    it ran (its row written by the processor that finds it ended), the same."""
    processor = core.processor(RESPONSES_UNSTORED_RETENTION_S="7")
    tid = await submit(core.steps, body=unstored("Keep it secret", {"content_tokens": 6,
                                                                      **QUIET}))
    assert await run_task(core, tid, processor) is Outcome.DONE
    [call] = await core.mock_requests()
    assert (await core.redis.hgetall(core.keys.task(tid)))["status"] == "succeeded"
    await assert_tombstone_only(core, tid, 7, "Keep it secret", call["content"])

    cancelled = await submit(core.steps, body=unstored("Never run", QUIET))
    await core.steps.cancel(task_id=cancelled, tenant="acme", now=now_ms())
    assert await run_task(core, cancelled, processor) is Outcome.TERMINAL
    await assert_tombstone_only(core, cancelled, 7, "Never run")
