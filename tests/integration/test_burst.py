"""The real coordinator and processor loops in process, in burst mode (run until there is no
more work, as arq's burst mode), with a real SQLite store and the real mock provider."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from harness.waiting import until
from shared.keys import BATCHES_GROUP
from shared.steps import CancelledNow, CancelRequested
from shared.store import TaskRow
from shared.timeutil import now_ms
from tests.integration.kit import (
    BURST_TIMEOUT_S,
    QUIET,
    Core,
    begun,
    deltas,
    events,
    mid_stream,
)


async def test_a_burst_runs_every_task_to_its_row_and_terminal_state(core: Core) -> None:
    ids = [await core.submit({**QUIET, "content_tokens": 4}, prompt=f"question {n}")
           for n in range(4)]
    await core.burst(core.processor(PROCESSOR_CONCURRENCY="2"))
    calls = {c["content"] for c in await core.mock_requests()}
    assert len(calls) == 4
    batch_ids = set()
    for tid in ids:
        row = await core.store.get_task(tid)
        assert row is not None and row["status"] == "succeeded" and row["content"] in calls
        evs = await events(core.redis, core.keys, tid)
        assert [k for k, _d in evs if k != "content"] == ["status", "status", "status", "done"]
        assert deltas(evs) == row["content"]
        assert await core.redis.hget(core.keys.task(tid), "status") == "succeeded"
        batch_ids.add(row["batch_id"])
    # Batches of BATCH_SIZE=3: one full, one flushed by the end of the coordinator's burst.
    flushed = await core.redis.xrange(core.keys.batches_stream)
    assert sorted(f["r"] for _e, f in flushed) == ["forced", "size"]
    assert batch_ids == {f["b"] for _e, f in flushed}
    assert await core.store.count("batches") == 2
    assert (await core.redis.xpending(core.keys.batches_stream, BATCHES_GROUP))["pending"] == 0
    # The processor left the pool as it stopped.
    assert await core.redis.zscore(core.keys.processors_alive, "p1") is None


async def test_the_last_task_of_a_batch_acknowledges_its_entry_in_its_complete_step(
        core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    # One batch of three; the third answers last (its first token 300 ms later), once the
    # other two have finished: its complete.lua acknowledges the batch, no XACK of its own.
    ids = [await core.submit({**QUIET, "content_tokens": 2, "ttft_ms": ttft},
                             prompt=f"question {n}") for n, ttft in enumerate((0, 0, 300))]
    processor = core.processor(PROCESSOR_CONCURRENCY="3")
    acks: list[tuple[object, ...]] = []
    xack = processor.redis.xack

    async def counted(*args: object, **kwargs: object) -> object:
        acks.append(args)
        return await xack(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(processor.redis, "xack", counted)
    await core.burst(processor)
    for tid in ids:
        assert await core.redis.hget(core.keys.task(tid), "status") == "succeeded"
    assert (await core.redis.xpending(core.keys.batches_stream, BATCHES_GROUP))["pending"] == 0
    assert acks == []
    assert await core.store.count("batches") == 1


async def test_a_draining_processor_hands_its_task_off_and_another_finishes_it(
        core: Core) -> None:
    # Attempt 1 stalls mid-stream (the fault fires once); attempt 2, elsewhere, runs through.
    tid = await core.submit({**QUIET, "content_tokens": 5,
                             "fault": {"stall_after": 2, "stall_s": 60, "times": 1}})
    await core.coordinator().run_burst()
    draining = core.processor("p1", DRAIN_S="0")
    async with asyncio.timeout(BURST_TIMEOUT_S):
        running = asyncio.create_task(draining.run(burst=True))
        await mid_stream(core, tid)
        [(old_entry, _fields)] = await core.redis.xrange(core.keys.batches_stream)
        draining.stop()  # SIGTERM: drain_s=0, so hand off at once
        await running
    entries = await core.redis.xrange(core.keys.batches_stream)
    assert [f["r"] for _e, f in entries] == ["forced", "handoff"]
    assert entries[1][1]["t"] == tid
    assert entries[0][0] == old_entry
    # The old entry acknowledged; the new one not read by anyone yet.
    assert (await core.redis.xpending(core.keys.batches_stream, BATCHES_GROUP))["pending"] == 0
    assert await core.redis.exists(core.keys.lease(tid)) == 0  # released: no wait for expiry
    assert await core.store.get_task(tid) is None
    assert await core.redis.hget(core.keys.task(tid), "status") == "running"

    async with asyncio.timeout(BURST_TIMEOUT_S):
        await core.processor("p2").run(burst=True)
    row = await core.store.get_task(tid)
    assert row is not None
    assert (row["status"], row["processor"], row["attempts"]) == ("succeeded", "p2", 2)

    async def first_closed_second_done() -> bool:
        first, second = await core.mock_requests()
        return bool(first["outcome"] == "disconnected" and second["content"] == row["content"])
    await until(first_closed_second_done, 10,
                "the mock to see the first call closed and the second answered")
    evs = await events(core.redis, core.keys, tid)
    assert ("reset", {"attempt": 2}) in evs


async def test_a_stored_result_is_adopted_without_calling_the_provider(core: Core) -> None:
    # A holder stored the row, then died before marking the task finished in Redis.
    tid = await core.submit(QUIET)
    taken = await begun(core.steps, tid, "dead-holder")
    h = taken.task
    await core.store.save_task(TaskRow(
        id=tid, tenant="acme", status="succeeded", model="mock-r1", request=h["request"],
        content="the stored answer", reasoning_content="", finish_reason="stop",
        prompt_tokens=2, completion_tokens=3, total_tokens=5, attempts=1, error=None,
        batch_id=None, processor="dead", fence=taken.fence, created_at=int(h["created_at"]),
        started_at=int(h["started_at"]), completed_at=int(h["started_at"]) + 10))
    await core.redis.delete(core.keys.lease(tid))  # its lease expired
    await core.burst()
    assert await core.mock_requests() == []  # the provider was not called again
    h = await core.redis.hgetall(core.keys.task(tid))
    assert h["status"] == "succeeded"
    assert orjson.loads(h["result"])["content"] == "the stored answer"
    evs = await events(core.redis, core.keys, tid)
    assert evs[-1][0] == "done" and evs[-1][1]["result"]["content"] == "the stored answer"
    # What the dead holder streamed may lack its last deltas (they go with complete.lua):
    # clients are told to reset, and the stream's text is the row's.
    assert evs[-3:-1] == [("reset", {"attempt": 1}), ("content", {"delta": "the stored answer"})]
    assert deltas(evs[-3:]) == "the stored answer"
    row = await core.store.get_task(tid)
    assert row is not None and (row["content"], row["processor"]) == ("the stored answer", "dead")


async def test_a_queued_task_cancelled_is_never_sent_and_a_running_one_ends_cancelled(
        core: Core) -> None:
    queued = await core.submit(QUIET)
    running = await core.submit({**QUIET, "fault": {"stall_after": 1, "stall_s": 60}})
    assert await core.steps.cancel(task_id=queued, tenant="acme", now=now_ms()) == CancelledNow()
    await core.coordinator().run_burst()
    processor = core.processor()
    async with asyncio.timeout(BURST_TIMEOUT_S):
        run = asyncio.create_task(processor.run(burst=True))
        await mid_stream(core, running)
        assert await core.steps.cancel(task_id=running, tenant="acme",
                                       now=now_ms()) == CancelRequested()
        await run

    async def upstream_closed() -> bool:
        return [c["outcome"] for c in await core.mock_requests()] == ["disconnected"]
    await until(upstream_closed, 10, "the running task's call to be closed")  # the only one
    for tid in (queued, running):
        row = await core.store.get_task(tid)
        assert row is not None and row["status"] == "cancelled"
        assert await core.redis.hget(core.keys.task(tid), "status") == "cancelled"


@pytest.mark.first_store_only
async def test_a_burst_with_no_work_ends_within_a_few_polls(core: Core) -> None:
    """BURST_POLL_S's promise, that a burst ends a few ms after its work does: no loop of the
    processor (the governor's settling among them) sits out a tick of its own once drained."""
    started = asyncio.get_running_loop().time()
    await core.burst()
    # Before, the governor's last settle waited out its 0.5 s tick: every burst took that.
    assert asyncio.get_running_loop().time() - started < 0.45
