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
