"""The coordinator's flushes under its replicas' lock: a due timer is run by the replica that
holds the flush lock, a flush for room (a processor reported free slots) by whichever replica
heard the report, lock or not (batch.lua reads the room as it is, atomically)."""

from __future__ import annotations

import pytest

from shared.keys import TASKS_GROUP
from shared.timeutil import now_ms
from tests.integration.kit import Core, read_new


@pytest.mark.first_store_only  # nothing reaches the store
async def test_a_flush_for_room_goes_while_another_replica_holds_the_flush_lock(
        core: Core) -> None:
    ids = [await core.submit() for _ in range(3)]
    coordinator = core.coordinator(BATCH_ADAPTIVE="true")
    # Placed with no processor reporting room: they wait.
    await coordinator.add(await read_new(core.redis, core.keys.tasks_stream, TASKS_GROUP, "c1"))
    assert await core.redis.xlen(core.keys.batches_stream) == 0
    await core.redis.set(core.keys.flush_lock, "another-replica", px=60_000)
    await core.steps.report_capacity(name="p1", free=3, expiry_ms=now_ms() + 60_000, taken=0,
                                     inflight=0, room=100)
    assert await coordinator.flush("timer") == 0  # the timer is the lock holder's
    assert await coordinator.flush("idle") == 1
    [(_entry, batch)] = await core.redis.xrange(core.keys.batches_stream)
    assert sorted(batch["t"].split(",")) == sorted(ids)


@pytest.mark.first_store_only  # nothing reaches the store
async def test_a_step_that_flushed_for_room_hands_the_next_one_the_deadline(core: Core) -> None:
    """A capacity report's flush reads and leaves the timer's deadline: the step that ran it
    hands that on, and the next step does not read it again (a GET per report saved). A step
    that heard 'timer' (the deadline was set anew) hands nothing on: the next one reads it."""
    for _ in range(4):
        await core.submit()
    coordinator = core.coordinator(BATCH_ADAPTIVE="true")
    pubsub = core.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(core.keys.batch_channel)
    assert await pubsub.get_message(timeout=1) is None  # the subscription's confirmation
    try:
        await coordinator.add(await read_new(core.redis, core.keys.tasks_stream, TASKS_GROUP,
                                             "c1"))  # the first task set the timer: 'timer'
        assert await coordinator._timer_step(pubsub) is None
        await core.steps.report_capacity(name="p1", free=2, expiry_ms=now_ms() + 60_000,
                                         taken=0, inflight=0, room=100)  # 'capacity'
        known = await coordinator._timer_step(pubsub)
        deadline = int(await core.redis.get(core.keys.batch_deadline) or 0)
        assert known == deadline > now_ms()  # two tasks still wait for the timer
        assert await core.redis.xlen(core.keys.batches_stream) == 1
    finally:
        await pubsub.aclose()
